"""The card's plots (assets/*.png): failures and flags, caption length, attributes, CLIP similarity."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipeline.card.facts import attribute_table
from pipeline.dataset import atomic_write_bytes
from pipeline.prompts import WORD_LIMITS


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    # No "Software" entry: the same facts give the same bytes, so a re-upload is a no-op.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def _hbar(ax: Any, counts: dict[str, int], title: str, unit: str = "samples") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    if not counts:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    labels = [k if len(k) <= 40 else k[:37] + "..." for k in counts]
    ax.barh(range(len(counts)), list(counts.values()), color="#4c72b0")
    ax.set_yticks(range(len(counts)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(unit, fontsize=8)


def write_plots(facts: dict[str, Any], assets_dir: Path) -> dict[str, str]:
    """PNG plots of the facts into `assets_dir`. Returns {plot name: file name}."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

    assets_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    counts = facts["caption_word_counts"]
    if counts:
        lo, hi = min(counts), max(counts)
        ax.hist(counts, bins=range(lo, hi + 2), color="#4c72b0", align="left")
    limit = WORD_LIMITS.get(str(facts["prompt_id"]))
    if limit is not None:
        ax.axvline(limit, color="#c44e52", linestyle="--", label=f"{limit} words (prompt)")
        ax.legend(fontsize=8)
    ax.set_xlabel("words per caption")
    ax.set_ylabel("captions")
    ax.set_title(f"Caption length ({facts['samples']:,} captions)", fontsize=10)
    _save(fig, assets_dir / "caption_words.png")
    written["caption_words"] = "caption_words.png"

    fig = Figure(figsize=(8, 3), layout="constrained")
    left, right = fig.subplots(1, 2)
    _hbar(left, facts["failed"], "Failures by reason", unit="inputs")
    _hbar(right, facts["flags"], "Flags")
    _save(fig, assets_dir / "outcomes.png")
    written["outcomes"] = "outcomes.png"

    if facts["attributes"]:
        names = list(facts["attributes"])
        cols = 3
        rows = (len(names) + cols - 1) // cols
        fig = Figure(figsize=(12, 2.6 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, name in zip(axes, names):
            _hbar(ax, attribute_table(facts, name), name)
        for ax in axes[len(names) :]:
            ax.set_axis_off()
        _save(fig, assets_dir / "attributes.png")
        written["attributes"] = "attributes.png"

    if any(c["sims"] for c in facts["clip"].values()):
        fig = Figure(figsize=(6.4, 3.2), layout="constrained")
        ax = fig.subplots()
        for tag, c in facts["clip"].items():
            ax.hist(c["sims"], bins=40, alpha=0.6, label=tag)
        ax.set_xlabel("cosine(CLIP text, CLIP image)")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
        ax.set_title("Caption-image agreement under CLIP", fontsize=10)
        _save(fig, assets_dir / "clip_similarity.png")
        written["clip_similarity"] = "clip_similarity.png"
    return written
