"""Dataset cards (docs/design.md §8): README.md rendered from a dataset's own stats, with plots in assets/.
The card command is `pipeline.card`; `pipeline.publish` renders the same card with `render_card`.

    stats/ + embeddings/ (facts) -> plots (assets/*.png) -> template (data_cards/*.md) -> README.md

The template is chosen by the plan's source (`data_cards/<source>.md`, else `generic.md`). Its YAML
front matter holds the source's licence terms; the code adds `size_categories`, `configs` (the Hub
layout that `pipeline.publish` stages, so `datasets.load_dataset` works) and, for releases with
images, the gating prompt. `$name` placeholders are filled with `string.Template` (no code runs
from a template); data_cards/README.md lists them. `pipeline.publish` renders the card with the
same `render_card`.
"""

from __future__ import annotations

import io
import json
import statistics
import string
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

import data_cards
from pipeline.dataset import DatasetDir, atomic_write_bytes
from pipeline.embeddings import decode_metadata
from pipeline.hub import (
    ANNOTATIONS_DIR,
    ASSETS_DIR,
    DATA_DIR,
    SourceInfo,
    dataset_features,
    embedding_column,
    hub_configs,
    public_model_name,
    published_schema,
    source_info,
    source_of,
    split_of,
)
from pipeline.prompts import PROMPTS, SOURCE_PROMPT, WORD_LIMITS, word_stats
from pipeline.sources import CELEBA_LABELS, MASK_CELEBA_LABELS, MASK_REGION

TEMPLATES_DIR = Path(data_cards.__file__).resolve().parent  # package data: a wheel install has them too

ATTRIBUTE_VALUES_SHOWN = 8  # per attribute, in the card's tables and plot
# What a `.mask.png` member holds, by the shards' `mask_format` (shards before it hold binary regions).
MASK_DESCRIPTIONS = {
    MASK_CELEBA_LABELS: "a CelebAMask-HQ label map: one channel, pixel = class index ("
    + ", ".join(f"{i} {c}" for i, c in enumerate(CELEBA_LABELS))
    + "; where parts overlap, the later class wins)",
    MASK_REGION: "a binary region: white where the swap may repaint the face, black elsewhere",
}


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


# ---------------------------------------------------------------- plots


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


def attribute_table(facts: dict[str, Any], name: str) -> dict[str, int]:
    """The most common values of one attribute, plus `(other)` so the counts sum to the samples."""
    values = facts["attributes"][name]
    top = dict(list(values.items())[:ATTRIBUTE_VALUES_SHOWN])
    other = facts["samples"] - sum(top.values())
    if other > 0:
        top["(other)"] = other
    return top


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


# ---------------------------------------------------------------- markdown sections


def _pct(n: int | float, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "n/a"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # Model-written values may hold `|` or newlines, which would break the table.
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _tiling(max_dynamic_patch: int, image_size: int) -> str:
    if max_dynamic_patch <= 1:
        return f"pre-resized to {image_size}x{image_size}, one 448-pixel tile (256 image tokens per image)"
    return (
        f"pre-resized to {image_size}x{image_size}, up to {max_dynamic_patch} 448-pixel tiles plus a thumbnail "
        "(256 image tokens each)"
    )


def _masks(facts: dict[str, Any]) -> str:
    return "; ".join(MASK_DESCRIPTIONS.get(f, f) for f in facts["mask_formats"]) or "none"


def captioning_section(facts: dict[str, Any]) -> str:
    out = []
    existing = [e for e in facts["engines"] if e.get("engine") == "existing"]
    for e in existing:
        rows = [
            ["Captions", f"the source's own (`txt/` files), not generated here (`{e.get('model')}`)"],
            ["Shards captioned this way", f"{e['shards']:,} of {facts['num_shards']:,}"],
        ]
        out.append(_table(["Setting", "Value"], rows))
        out.append(
            "No model ran and no prompt was given: each caption is its source file's text, with whitespace "
            "collapsed. Images whose caption file is missing, empty or not UTF-8 are counted as failures; each "
            "caption is checked for words about who the person is and flagged `identity_words` when it has any."
        )
    if existing and len(existing) == len(facts["engines"]):
        return "\n\n".join(out)
    for e in (e for e in facts["engines"] if e.get("engine") != "existing"):
        rows = [
            ["Model", f"`{e.get('model')}`"],
            ["Engine", f"{e.get('engine')} {e.get('engine_version')}"],
            ["Decoding", f"{e.get('decoding')}, at most {e.get('max_new_tokens')} new tokens"],
            ["Image size and tiling", _tiling(int(e.get("max_dynamic_patch", 1)), int(e.get("image_size", 448)))],
            ["Prompt", f"`{facts['prompt_id']}`"],
            ["Shards captioned with these settings", f"{e['shards']:,} of {facts['num_shards']:,}"],
        ]
        out.append(_table(["Setting", "Value"], rows))
    out.append(
        "Answers cut at the token limit are kept and flagged `truncated`. Each caption is checked for words "
        "about who the person is (names, gender, ethnicity, age) and flagged `identity_words` when it has any."
    )
    out.append(f"The prompt, verbatim (`prompt_id` `{facts['prompt_id']}`); the image follows the text:")
    out.append(f"```text\n{facts['prompt_text']}\n```")
    if facts["json_schema"] is not None:
        out.append(
            "Structured mode: the answer must be one JSON object matching this schema (enforced by the engine's "
            "structured output, and validated after it; a malformed answer is retried once, then counted as a "
            "failure). The caption text is composed from the fields (`Head pose: ... Gaze: ...`)."
        )
        out.append(f"```json\n{json.dumps(facts['json_schema'], indent=1)}\n```")
    return "\n\n".join(out)


def _row(label: str, value: str) -> list[str]:
    return [label, value]


def statistics_section(facts: dict[str, Any], plots: dict[str, str]) -> str:
    n, inputs = facts["samples"], facts["inputs"]
    out = [
        _table(
            ["Figure", "Value"],
            [
                _row("Inputs", f"{inputs:,}"),
                _row("Samples", f"{n:,}"),
                _row("Failed", f"{facts['failed_total']:,} ({_pct(facts['failed_total'], inputs)})"),
                _row("Shards", f"{facts['num_shards']:,}"),
                _row("Identities", f"{facts['identities']:,}"),
                _row("Images re-encoded to RGB", f"{facts['transcoded']:,}"),
                _row("Samples with a mask", f"{facts['with_mask']:,}"),
                _row("Masks", _masks(facts)),
                _row("Captioning time (sum over shards)", _duration(facts["seconds"])),
            ],
        )
    ]
    out.append("### Failures by reason\n\nInputs that were not captioned, each counted once (`errors/` in the run).")
    out.append(
        _table(["Reason", "Inputs"], [[f"`{k}`", f"{v:,}"] for k, v in facts["failed"].items()])
        if facts["failed"]
        else "None."
    )
    out.append("### Flags")
    out.append(
        _table(["Flag", "Samples", "Share"], [[f"`{k}`", f"{v:,}", _pct(v, n)] for k, v in facts["flags"].items()])
        if facts["flags"]
        else "No sample is flagged."
    )
    if facts["identity_words"]:
        words = ", ".join(f"{w} ({c:,})" for w, c in list(facts["identity_words"].items())[:15])
        out.append(f"Most common identity words: {words}.")
    if "outcomes" in plots:
        out.append(f"![Failures and flags]({ASSETS_DIR}/{plots['outcomes']})")
    w = facts["caption_words"]
    out.append("### Caption length (words)")
    if w.get("count"):
        out.append(_table(["Mean", "Min", "p50", "p95", "Max"], [[w["mean"], w["min"], w["p50"], w["p95"], w["max"]]]))
    if "caption_words" in plots:
        out.append(f"![Caption length]({ASSETS_DIR}/{plots['caption_words']})")
    out.append("### CLIP embeddings")
    if facts["clip"]:
        rows = [
            [
                f"`{c['tag']}`",
                f"`{c['model']}`",
                f"`{c['pretrained']}`",
                c["embed_dim"],
                f"{c['rows']:,}",
                f"{c['truncated']:,} ({_pct(c['truncated'], c['rows'])})",
                f"{c['empty']:,}",
                f"{c['sim_mean']:.4f}" if c["sim_mean"] is not None else "n/a",
            ]
            for c in facts["clip"].values()
        ]
        header = ["Tag", "Model", "Pretrained", "Dim", "Rows", "Truncated", "Empty", "Mean text-image cosine"]
        out.append(_table(header, rows))
        out.append(
            "Truncated: the caption is longer than CLIP's context "
            f"({next(iter(facts['clip'].values()))['context_length']} tokens), so its text embedding covers only "
            "the beginning. Embeddings are float16 and L2-normalised; the cosine is computed from the stored vectors."
        )
        if "clip_similarity" in plots:
            out.append(f"![CLIP text-image cosine]({ASSETS_DIR}/{plots['clip_similarity']})")
    else:
        out.append("This release holds no CLIP embeddings.")
    if facts["attributes"]:
        out.append(
            "### Attributes (structured captions)\n\nThe most common values of each field (lower-cased). Each shard's "
            "stats keep its 50 most common values; the rest are counted as `(other)`."
        )
        for name in facts["attributes"]:
            table = attribute_table(facts, name)
            out.append(f"**{name}**\n\n" + _table(["Value", "Samples"], [[v, f"{c:,}"] for v, c in table.items()]))
        if "attributes" in plots:
            out.append(f"![Attribute distributions]({ASSETS_DIR}/{plots['attributes']})")
    return "\n\n".join(out)


ANNOTATION_COLUMNS = [
    ("key", "string", "`<dataset>_<identity>_<stem>`, unique; the sample's key in the WebDataset shards"),
    ("dataset", "string", "the dataset name used in the keys"),
    ("identity", "string", "the source's identity label; empty where it has none"),
    ("source_path", "string", "the image's path relative to the source dataset's root"),
    ("caption", "string", "the caption"),
    ("attributes", "struct of strings", "structured captions only: one field per attribute"),
    ("flags", "struct of bools", "`truncated`, `identity_words`, `empty`: each always present, true where raised"),
    ("finish_reason", "string", "`stop` (the model ended) or `length` (cut at the token limit)"),
    ("width", "int32", "image width in pixels (after EXIF rotation)"),
    ("height", "int32", "image height in pixels"),
    ("prompt_id", "string", "the versioned prompt"),
    ("caption_model", "string", "the captioning model"),
    ("transcoded_from", "string", "the original format when the image was re-encoded to RGB; empty otherwise"),
]


def data_format_section(facts: dict[str, Any], include_images: bool, repo_id: str) -> str:
    split = facts["split"]
    name = facts["name"]
    parquet_dir = ANNOTATIONS_DIR if include_images else DATA_DIR
    out = []
    if include_images:
        out.append(
            f"The default config is the WebDataset shards, `{DATA_DIR}/{name}-NNNNNN.tar`. Each sample has the "
            f"members `<key>.{facts['image_format']}` (the image), `<key>.json` (the metadata below), `<key>.txt` "
            "(the caption)" + (f" and `<key>.mask.png` ({_masks(facts)})" if facts["with_mask"] else "") + ". "
            "The same annotations, with the CLIP embeddings, are in Parquet beside them, "
            f"`{parquet_dir}/{name}-NNNNNN.parquet`, one file per shard (columns below)."
        )
    else:
        out.append(
            f"Annotations only: one Parquet file per caption shard, `{DATA_DIR}/{name}-NNNNNN.parquet`, "
            f"split `{split}`. No image is included; join on `source_path` with your own copy of the source."
        )
    rows = [[f"`{c}`", t, d] for c, t, d in ANNOTATION_COLUMNS]
    for tag, c in facts["clip"].items():
        dim = c["embed_dim"]
        rows += [
            [
                f"`{embedding_column(tag, 'text_emb')}`",
                f"float16[{dim}]",
                f"CLIP text embedding of the caption ({tag})",
            ],
            [f"`{embedding_column(tag, 'image_emb')}`", f"float16[{dim}]", "CLIP image embedding of the image"],
            [f"`{embedding_column(tag, 'text_image_sim')}`", "float32", "cosine of the two"],
            [f"`{embedding_column(tag, 'text_truncated')}`", "bool", "caption longer than CLIP's context"],
            [f"`{embedding_column(tag, 'text_empty')}`", "bool", "empty caption"],
        ]
        rows += [
            [f"`{embedding_column(tag, f'attr_{a}_emb')}`", f"float16[{dim}]", f"CLIP text embedding of `{a}`"]
            for a in c["attributes"]
        ]
    out.append(_table(["Column", "Type", "Meaning"], rows))
    if facts["clip"]:
        out.append(
            "Each embeddings column starts with its CLIP tag (`<open_clip model>__<pretrained>`); the Parquet "
            "schema metadata (`alphaface`) also records the model, the pretrained weights and the dimension."
        )
    load = [
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{repo_id}", split="{split}")',
    ]
    if include_images:
        load += [
            'sample = ds[0]  # {"jpg": PIL image, "json": metadata, "txt": caption, "__key__": key, ...}',
            "annotations = load_dataset(",
            f'    "parquet", data_files="hf://datasets/{repo_id}/{parquet_dir}/*.parquet", split="train"',
            ")",
        ]
    else:
        load += [
            'row = ds[0]  # {"key": ..., "source_path": ..., "caption": ..., ...}',
            "",
            "# the image comes from your own copy of the source dataset",
            "from pathlib import Path",
            "from PIL import Image",
            'image = Image.open(Path("/path/to/source/root") / row["source_path"])',
        ]
    if facts["clip"]:
        tag = next(iter(facts["clip"]))
        col = embedding_column(tag, "text_emb")
        table = "annotations" if include_images else "ds"
        load += ["", f'text_emb = {table}.with_format("numpy")["{col}"]  # (N, D) float16']
    load.append("```")
    out.append("\n".join(load))
    return "\n\n".join(out)


def release_notice(info: SourceInfo, include_images: bool) -> str:
    if include_images:
        return (
            f"> **Images from {info.pretty} are included.** Their terms do not allow public redistribution, so "
            "this repository is meant to be **private or gated (manual approval)**. Do not make it public. "
            "Access is for non-commercial research under the terms in *Licences and terms* below."
        )
    return (
        f"> **Annotation-only release.** This repository holds keys, source paths, captions, attributes, flags "
        f"and CLIP embeddings, but no image. Obtain {info.pretty} yourself, under its own terms, and join on "
        "`source_path`."
    )


def release_terms(info: SourceInfo, include_images: bool) -> str:
    if info.images_redistributable:
        return "The images may be shared freely: " + (
            "they are in the WebDataset shards." if include_images else "this release holds the annotations only."
        )
    if include_images:
        return (
            f"This release **redistributes images from {info.pretty}** inside the WebDataset shards. It is meant "
            "for a private or gated repository only; by requesting access you agree to the source terms below, "
            "and to use the data for non-commercial research only."
        )
    return (
        f"This release holds **no images**, only machine-generated annotations of {info.pretty} images (captions, "
        "attributes, flags, CLIP embeddings) and the relative paths that link them to the source. These are derived "
        "data: the source's terms below still apply to them."
    )


# ---------------------------------------------------------------- the template


def template_path(plan: dict[str, Any]) -> Path:
    return TEMPLATES_DIR / source_info(plan).template


def split_front_matter(text: str, where: str) -> tuple[str, str]:
    """A template is `---\\n<yaml>\\n---\\n<markdown>`."""
    if not text.startswith("---\n"):
        raise ValueError(f"{where}: a card template starts with a YAML front matter block (---)")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError(f"{where}: the YAML front matter is not closed with ---")
    return text[4:end], text[end + 5 :]


def _substitute(text: str, values: dict[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as e:
        known = ", ".join(sorted(values))
        raise ValueError(f"{where}: unknown placeholder ${e.args[0]} (known: {known})") from None
    except ValueError as e:  # a lone `$`: write `$$` for a literal dollar sign
        raise ValueError(f"{where}: {e} (write $$ for a literal $)") from None


def card_values(
    facts: dict[str, Any], info: SourceInfo, plots: dict[str, str], include_images: bool, repo_id: str
) -> dict[str, str]:
    """The placeholders a template may use (data_cards/README.md documents them)."""
    model = facts["engines"][0]["model"] if facts["engines"] else "unknown"
    model_short = str(model).split(" (")[0].rstrip("/").split("/")[-1]  # "x (a local checkpoint)" -> "x"
    flagged = facts["flags"].get("identity_words", 0)
    first_clip = next(iter(facts["clip"].values()), None)
    return {
        "pretty_name": f"{info.pretty} face captions ({model_short}, {facts['prompt_id']})",
        "repo_id": repo_id,
        "licence_url": f"https://huggingface.co/datasets/{repo_id}#licences-and-terms",
        "dataset_name": str(facts["name"]),
        "source": facts["source"],
        "source_pretty": info.pretty,
        "split": facts["split"],
        "num_samples": f"{facts['samples']:,}",
        "num_inputs": f"{facts['inputs']:,}",
        "num_shards": f"{facts['num_shards']:,}",
        "num_identities": f"{facts['identities']:,}",
        "caption_model": f"`{model}`",
        "prompt_id": f"`{facts['prompt_id']}`",
        "caption_mode": "structured (one JSON field per attribute)"
        if facts["json_schema"]
        else "the source's own captions"
        if facts["prompt_id"] == SOURCE_PROMPT.prompt_id
        else "holistic free text",
        "clip_models": ", ".join(f"`{c['model']}` (`{c['pretrained']}`)" for c in facts["clip"].values()) or "none",
        "identity_word_share": _pct(flagged, facts["samples"]),
        "truncation_share": _pct(facts["flags"].get("truncated", 0), facts["samples"]),
        "clip_truncation_share": _pct(first_clip["truncated"], first_clip["rows"]) if first_clip else "n/a",
        "release_notice": release_notice(info, include_images),
        "release_terms": release_terms(info, include_images),
        "captioning": captioning_section(facts),
        "statistics": statistics_section(facts, plots),
        "data_format": data_format_section(facts, include_images, repo_id),
    }


def front_matter(
    template_yaml: str,
    values: dict[str, str],
    facts: dict[str, Any],
    include_images: bool,
    features: list[dict[str, Any]],
    where: str,
    local: bool = False,
) -> dict[str, Any]:
    # Values go into the YAML as JSON strings (valid YAML), so no value can change its structure.
    quoted = {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}
    meta = yaml.safe_load(_substitute(template_yaml, quoted, where)) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: the front matter must be a YAML mapping")
    meta["size_categories"] = [size_category(facts["samples"])]
    meta["configs"] = hub_configs(include_images, facts["split"], local)
    meta["dataset_info"] = {"config_name": "default", "features": features}
    if include_images:
        meta["extra_gated_prompt"] = (
            f"This repository contains face images from {facts['source_pretty']}, whose terms do not allow public "
            "redistribution. Access is granted for non-commercial research only, under the source dataset's terms "
            "(see the card's Licences and terms section)."
        )
        meta["extra_gated_fields"] = {
            "Name": "text",
            "Affiliation": "text",
            "I will use this data for non-commercial research only and accept the source dataset's terms": "checkbox",
        }
    return meta


def render_card(
    dataset_dir: str | Path,
    *,
    include_images: bool = False,
    clip_tags: list[str] | None = None,
    repo_id: str | None = None,
    assets_dir: Path | None = None,
    template: Path | None = None,
    facts: dict[str, Any] | None = None,
    local: bool = False,
) -> str:
    """The README.md text for a dataset. Plots go to `assets_dir` (shown in the card) when it is given.

    `local`: the card that lives in the dataset directory itself; its `configs` point at `shards/*.tar`,
    so `datasets.load_dataset(DATASET)` reads the directory as it stands (the staged copy publish
    makes points at its own layout)."""
    ds = DatasetDir(Path(dataset_dir))
    plan = ds.load_plan()
    facts = facts if facts is not None else dataset_facts(ds.root, clip_tags)
    plots = write_plots(facts, assets_dir) if assets_dir is not None else {}
    path = template or template_path(plan)
    head, body = split_front_matter(path.read_text(encoding="utf-8"), str(path))
    values = card_values(facts, source_info(plan), plots, include_images, repo_id or f"USER/{facts['name']}")
    structured = list(facts["json_schema"]["required"]) if facts["json_schema"] else None
    schema = published_schema(ds, list(facts["clip"]), 0, structured, facts)
    features = dataset_features(
        schema, include_images or local, structured, str(facts["image_format"]), bool(plan.get("has_masks"))
    )
    meta = front_matter(head, values, facts, include_images, features, str(path), local)
    dumped = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{dumped}---\n{_substitute(body, values, str(path))}"


def section(card: str, heading: str) -> str:
    """The text of one `## heading` section of a rendered card (publish prints the terms from it)."""
    lines = card.splitlines()
    try:
        start = lines.index(f"## {heading}") + 1
    except ValueError:
        return ""
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()
