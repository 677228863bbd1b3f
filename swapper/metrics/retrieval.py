"""Identity retrieval: each query (a swap's embedding) against a gallery (one entry per source).

    sims = normalise(queries) @ normalise(gallery).T        (N, G) cosine similarities
    rank = #{gallery entries other than the own one with sim >= the own entry's sim}
    top-k hit  <=>  rank < k

Ties count against the query (pessimistic), so a degenerate recogniser cannot score by ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def gallery_entry(embeddings: np.ndarray) -> np.ndarray:
    """One source's gallery embedding: the normalised mean of its frames' normalised embeddings."""
    return normalise(normalise(embeddings).mean(0, keepdims=True))[0]


def rank(queries: np.ndarray, own: Sequence[int], gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each query's own gallery entry, its cosine with that entry); `own[i]` indexes `gallery`."""
    sims = normalise(queries) @ normalise(gallery).T  # (N, G)
    own = np.asarray(own, np.int64)
    mine = sims[np.arange(len(sims)), own]  # (N,)
    ranks = (sims >= mine[:, None]).sum(1) - 1  # the own entry is always >= itself
    return ranks, mine


def top_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of queries whose own entry is within the top k."""
    ranks = np.asarray(ranks)
    return {f"top{k}": float(100.0 * (ranks < k).mean()) if len(ranks) else float("nan") for k in ks}
