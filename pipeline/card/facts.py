"""The facts a card states, summed over a dataset's own stats, errors and embeddings Parquet."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.dataset import DatasetDir
from pipeline.embeddings import decode_metadata
from pipeline.hub import (
    public_model_name,
    source_info,
    source_of,
    split_of,
)
from pipeline.prompts import PROMPTS, word_stats
from pipeline.sources import MASK_REGION

ATTRIBUTE_VALUES_SHOWN = 8  # per attribute, in the card's tables and plot


class IncompleteDataset(ValueError):
    """A dataset the card cannot describe truthfully: unfinished shards, missing embeddings."""


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    bounds += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1B"


# ---------------------------------------------------------------- facts from the run


def embedding_tags(ds: DatasetDir, clip_tags: list[str] | None) -> list[str]:
    """The CLIP tags a card promises: the ones asked for, else every embeddings/<tag> folder."""
    if clip_tags:
        return list(dict.fromkeys(clip_tags))
    if not ds.embeddings_root.is_dir():
        return []
    return sorted(p.name for p in ds.embeddings_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def clip_facts(ds: DatasetDir, tag: str, shards: list[int]) -> dict[str, Any]:
    """Truncation, empty captions and text-image similarity of one CLIP tag, from its Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [i for i in shards if not ds.embeddings_path(tag, i).is_file()]
    if missing:
        shown = ", ".join(f"{i:06d}" for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise IncompleteDataset(
            f"embeddings/{tag} lacks {len(missing)} of {len(shards)} shards ({shown}): finish "
            "`python -m pipeline.embed` for this model, or choose other tags with --clip-tag"
        )
    rows = truncated = empty = 0
    sims: list[float] = []
    meta: dict[str, str] = {}
    for i in shards:
        path = ds.embeddings_path(tag, i)
        try:
            schema = pq.read_schema(path)
            cols = [c for c in ("text_truncated", "text_empty", "text_image_sim") if c in schema.names]
            table = pq.read_table(path, columns=cols)
        except (OSError, pa.ArrowException) as e:
            raise IncompleteDataset(f"embeddings/{tag}/{i:06d}.parquet is unreadable: {e}; rerun pipeline.embed") from e
        meta = decode_metadata(schema)
        rows += table.num_rows
        if "text_truncated" in cols:
            truncated += sum(table.column("text_truncated").to_pylist())
        if "text_empty" in cols:
            empty += sum(table.column("text_empty").to_pylist())
        if "text_image_sim" in cols:
            sims += table.column("text_image_sim").to_pylist()
    return {
        "tag": tag,
        "model": public_model_name(meta.get("clip_model", "?")),
        "pretrained": public_model_name(meta.get("clip_pretrained", "?")),
        "embed_dim": int(meta["embed_dim"]) if "embed_dim" in meta else None,
        "context_length": int(meta["context_length"]) if "context_length" in meta else 77,
        "attributes": json.loads(meta.get("attributes", "[]")),
        "rows": rows,
        "truncated": truncated,
        "truncation_rate": truncated / rows if rows else 0.0,
        "empty": empty,
        "sim_mean": statistics.fmean(sims) if sims else None,
        "sims": sims,
    }


def _merge(into: Counter[str], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] += int(v)


def _read_errors(ds: DatasetDir, index: int) -> list[dict[str, Any]]:
    path = ds.errors_path(index)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _attribute_order(schema: dict[str, Any] | None, attributes: dict[str, Any]) -> list[str]:
    """The prompt's own field order (pose first), then any field it does not list."""
    order = [a for a in (schema or {}).get("required", []) if a in attributes]
    return order + sorted(set(attributes) - set(order))


def _public_engine(engine: dict[str, Any], shards: int) -> dict[str, Any]:
    return {**engine, "model": public_model_name(str(engine.get("model", "?"))), "shards": shards}


def dataset_facts(dataset_dir: str | Path, clip_tags: list[str] | None = None) -> dict[str, Any]:
    """Everything the card states, summed over the per-shard stats (and embeddings Parquet)."""
    ds = DatasetDir(Path(dataset_dir))
    plan = ds.load_plan()
    shards = list(range(plan["num_shards"]))
    unfinished = [i for i in shards if not ds.is_done(i)]
    if unfinished:
        shown = ", ".join(f"{i:06d}" for i in unfinished[:8]) + (" ..." if len(unfinished) > 8 else "")
        raise IncompleteDataset(
            f"{ds.root}: {len(unfinished)} of {len(shards)} shards are not finished (no stats/ file: {shown}); "
            "rerun `python -m pipeline.caption` with the same arguments first"
        )
    stats = [ds.load_stats(i) for i in shards]
    prompts = {(s.get("prompt_id"), s.get("prompt_text")) for s in stats}
    if len(prompts) > 1:
        raise IncompleteDataset(f"{ds.root}: shards were captioned with different prompts: {sorted(prompts)}")
    prompt_id, prompt_text = prompts.pop() if prompts else (None, None)
    schema = next((p.json_schema for p in PROMPTS.values() if p.prompt_id == prompt_id), None)

    failed: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    id_words: Counter[str] = Counter()
    attributes: dict[str, Counter[str]] = {}
    engines: Counter[str] = Counter()
    word_counts: list[int] = []
    mask_formats: Counter[str] = Counter()  # shards with masks, by what their masks hold
    for s in stats:
        _merge(failed, s.get("failed", {}))
        _merge(flags, s.get("flags", {}))
        _merge(id_words, s.get("identity_words", {}))
        for name, values in s.get("attributes", {}).items():
            _merge(attributes.setdefault(name, Counter()), values)
        if s.get("engine"):
            engines[json.dumps(s["engine"], sort_keys=True)] += 1
        word_counts += s.get("caption_word_counts", [])
        if s.get("with_mask"):
            mask_formats[s.get("mask_format") or MASK_REGION] += 1

    failed_keys = {e.get("key") for i in shards for e in _read_errors(ds, i)}
    identities = {row[1] for rows in plan["shards"] for row in rows if row[0] not in failed_keys and row[1]}
    samples = sum(int(s.get("ok", 0)) for s in stats)
    return {
        "dataset": plan.get("dataset"),
        "name": plan.get("name"),
        "source": source_of(plan),
        "source_pretty": source_info(plan).pretty,
        "split": split_of(plan),
        "num_shards": plan["num_shards"],
        "inputs": sum(int(s.get("inputs", s.get("ok", 0))) for s in stats),
        "samples": samples,
        "failed_total": sum(failed.values()),
        "failed": dict(sorted(failed.items())),
        "flags": dict(sorted(flags.items())),
        "identity_words": dict(id_words.most_common()),
        "transcoded": sum(int(s.get("transcoded", 0)) for s in stats),
        "with_mask": sum(int(s.get("with_mask", 0)) for s in stats),
        "mask_formats": dict(sorted(mask_formats.items())),
        "identities": len(identities),
        "caption_words": word_stats(word_counts),
        "caption_word_counts": word_counts,
        # Each shard keeps its 50 most common values per attribute; what falls outside is "other".
        "attributes": {k: dict(attributes[k].most_common()) for k in _attribute_order(schema, attributes)},
        "prompt_id": prompt_id,
        "prompt_text": prompt_text,
        "json_schema": schema,
        "image_format": stats[0].get("image_format", plan.get("fingerprint", {}).get("image_format", "jpg"))
        if stats
        else "jpg",
        "engines": [_public_engine(json.loads(k), n) for k, n in sorted(engines.items())],
        "seconds": round(sum(float(s.get("seconds", 0.0)) for s in stats), 3),
        "clip": {tag: clip_facts(ds, tag, shards) for tag in embedding_tags(ds, clip_tags)},
    }


def attribute_table(facts: dict[str, Any], name: str) -> dict[str, int]:
    """The most common values of one attribute, plus `(other)` so the counts sum to the samples."""
    values = facts["attributes"][name]
    top = dict(list(values.items())[:ATTRIBUTE_VALUES_SHOWN])
    other = facts["samples"] - sum(top.values())
    if other > 0:
        top["(other)"] = other
    return top
