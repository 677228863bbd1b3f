"""The generated Markdown sections of a card: captioning, statistics, data format, release terms."""

from __future__ import annotations

import json
from typing import Any

from pipeline.card.facts import attribute_table
from pipeline.hub import ANNOTATIONS_DIR, ASSETS_DIR, DATA_DIR, SourceInfo, embedding_column
from pipeline.sources import CELEBA_LABELS, MASK_CELEBA_LABELS, MASK_REGION

# What a `.mask.png` member holds, by the shards' `mask_format` (shards before it hold binary regions).
MASK_DESCRIPTIONS = {
    MASK_CELEBA_LABELS: "a CelebAMask-HQ label map: one channel, pixel = class index ("
    + ", ".join(f"{i} {c}" for i, c in enumerate(CELEBA_LABELS))
    + "; where parts overlap, the later class wins)",
    MASK_REGION: "a binary region: white where the swap may repaint the face, black elsewhere",
}


def pct(n: int | float, total: int) -> str:
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
                _row("Failed", f"{facts['failed_total']:,} ({pct(facts['failed_total'], inputs)})"),
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
        _table(["Flag", "Samples", "Share"], [[f"`{k}`", f"{v:,}", pct(v, n)] for k, v in facts["flags"].items()])
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
                f"{c['truncated']:,} ({pct(c['truncated'], c['rows'])})",
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
