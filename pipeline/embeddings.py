"""The embeddings Parquet: `DATASET/embeddings/<clip-tag>/NNNNNN.parquet`, one row per sample of a shard.

    key             string
    text_emb        float16[D], L2-normalised CLIP text embedding of the caption
    image_emb       float16[D], L2-normalised CLIP image embedding of the image
    text_image_sim  float32, their cosine
    text_truncated  bool, the caption is longer than CLIP's context
    text_empty      bool
    attr_<name>_emb float16[D] per attribute (structured datasets embedded with --attributes)

The schema metadata names the CLIP (`clip_tag`, `clip_model`, `clip_pretrained`, `quick_gelu`, ...);
`embeddings/<clip-tag>/clip.json` records how to rebuild that exact tower (see `clip_record`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset import DatasetDir, atomic_open, atomic_write_json, sanitize
from pipeline.prompts import PROMPTS

FORMAT_VERSION = "1"
CLIP_RECORD = "clip.json"


class EmbeddingsInvalid(ValueError):
    """An embeddings Parquet that is unreadable, partial, or made for another model or shard."""


def attribute_names(prompt_id: str | None) -> list[str]:
    """The attribute fields of a structured prompt, from its JSON schema (sorted)."""
    for prompt in PROMPTS.values():
        if prompt.prompt_id == prompt_id:
            if prompt.json_schema is None:
                break
            return sorted(prompt.json_schema["properties"])
    raise ValueError(
        f"--attributes needs a structured-caption dataset (pipeline.caption --prompt structured); "
        f"this one was captioned with prompt {prompt_id!r}"
    )


def attribute_column(name: str) -> str:
    return f"attr_{sanitize(name)}_emb"


def embeddings_schema(dim: int, attributes: list[str], metadata: dict[str, str]) -> pa.Schema:
    vec = pa.list_(pa.float16(), dim)
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("text_emb", vec, nullable=False),
        pa.field("image_emb", vec, nullable=False),
        pa.field("text_image_sim", pa.float32(), nullable=False),
        pa.field("text_truncated", pa.bool_(), nullable=False),
        pa.field("text_empty", pa.bool_(), nullable=False),
    ]
    fields += [pa.field(attribute_column(a), vec, nullable=False) for a in attributes]
    return pa.schema(fields, metadata=metadata)


def vectors(x: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float32 -> fixed-size list<float16>[D]."""
    flat = pa.array(x.astype(np.float16).reshape(-1))  # (N * D,)
    return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])


def write_embeddings(path: Path, schema: pa.Schema, columns: dict[str, Any]) -> None:
    table = pa.Table.from_pydict(columns, schema=schema)
    # Page checksums let a reader tell a damaged file from a good one, beyond a missing footer.
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", write_page_checksum=True, use_dictionary=["key"])


def read_embeddings(path: Path, tag: str, rows: int | None = None, attributes: list[str] | None = None) -> pa.Table:
    """Read a whole embeddings Parquet, verifying it; raises EmbeddingsInvalid with the reason."""
    try:
        # ParquetFile, not read_table: read_table's dataset layer costs more than reading a shard's rows
        with pq.ParquetFile(path, page_checksum_verification=True) as f:
            table = f.read()
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:  # truncated, garbage, or a failed page checksum
        raise EmbeddingsInvalid(f"{path} is unreadable (a partial or damaged file): {e}") from e
    meta = decode_metadata(table.schema)
    if meta.get("clip_tag") != tag:
        raise EmbeddingsInvalid(
            f"{path} holds embeddings of {meta.get('clip_tag')!r}, not of the requested CLIP {tag!r}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise EmbeddingsInvalid(f"{path} has format version {meta.get('format_version')!r}, not {FORMAT_VERSION}")
    if rows is not None and table.num_rows != rows:
        raise EmbeddingsInvalid(f"{path} has {table.num_rows} rows where the shard has {rows} samples")
    wanted = [attribute_column(a) for a in attributes or []]
    missing = [c for c in ["key", "text_emb", "image_emb", "text_image_sim", *wanted] if c not in table.column_names]
    if missing:
        raise EmbeddingsInvalid(f"{path} lacks columns {missing}")
    return table


def decode_metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def file_metadata(path: Path) -> dict[str, str]:
    """The schema metadata of an embeddings Parquet (its footer alone), decoded."""
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException, ValueError) as e:
        raise EmbeddingsInvalid(f"{path} is unreadable (a partial or damaged file; rerun make embed): {e}") from e
    return decode_metadata(schema)


def check_tag(path: Path, tag: str) -> dict[str, str]:
    """The file's metadata, refusing another CLIP's embeddings."""
    meta = file_metadata(path)
    if meta.get("clip_tag") != tag:
        raise EmbeddingsInvalid(
            f"{path} holds embeddings of {meta.get('clip_tag')!r}, not of the requested CLIP {tag!r}; refused"
        )
    return meta


# ---------------------------------------------------------------- which CLIP made them


def write_clip_record(ds: DatasetDir, tag: str, model: str, pretrained: str) -> dict[str, Any]:
    """Record beside the Parquet how to rebuild the exact tower: the model name and pretrained tag, and
    for a custom model-config JSON a copy of that file (so training needs no path repeated). Ranks
    write identical bytes, atomically, so a race between them is harmless."""
    folder = ds.embeddings_dir(tag)
    record: dict[str, Any] = {"clip_model": model, "clip_pretrained": pretrained, "model_config": None}
    if model.endswith(".json"):
        copy = folder / "model_config" / Path(model).name  # the file stem is the open_clip model name
        text = Path(model).read_bytes()
        if not copy.is_file() or copy.read_bytes() != text:
            with atomic_open(copy, "wb") as f:
                f.write(text)
        record["model_config"] = copy.relative_to(folder).as_posix()
    atomic_write_json(folder / CLIP_RECORD, record)
    return record


def clip_record(ds: DatasetDir, tag: str) -> tuple[str, str]:
    """(clip_model, clip_pretrained) to rebuild the tower of `embeddings/<tag>/`: a model name, or the
    path of the recorded model-config copy."""
    path = ds.embeddings_dir(tag) / CLIP_RECORD
    if not path.is_file():
        raise FileNotFoundError(
            f"{ds.embeddings_dir(tag)} has no {CLIP_RECORD} (embedded by an older version): rerun the same "
            "`python -m pipeline.embed` command, which records the model without recomputing finished shards, "
            "or set clip_model and clip_pretrained explicitly"
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    model = record["clip_model"]
    if record.get("model_config"):
        model = str(ds.embeddings_dir(tag) / record["model_config"])
    return model, str(record["clip_pretrained"])


def embedding_tags_of(root: Path) -> list[str]:
    """The CLIP tags a dataset has embeddings for (hidden temporary folders left out)."""
    emb = DatasetDir(Path(root)).embeddings_root
    return sorted(p.name for p in emb.iterdir() if p.is_dir() and not p.name.startswith(".")) if emb.is_dir() else []


def check_dataset(root: Path) -> None:
    """Say plainly what a --data folder is missing: the folder, its plan (captions) or its embeddings."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {root} does not exist or is not a folder")
    if not DatasetDir(root).plan_path.is_file():
        raise FileNotFoundError(
            f"{root} is not a captioned dataset (no plan.json): make one with "
            f"python -m pipeline.caption --output {root}"
        )
    if not embedding_tags_of(root):
        raise FileNotFoundError(
            f"{root} has no embeddings yet: run "
            f"python -m pipeline.embed --dataset {root} --clip-model ... --pretrained ..."
        )


def resolve_clip(datasets: list[Path], model: str = "auto") -> tuple[str, str]:
    """The one CLIP tag every dataset was embedded with (`model` auto), or the one of `model` (its
    pretrained tag unknown), rebuilt from its record as (clip_model, clip_pretrained)."""
    for root in datasets:
        check_dataset(root)
    prefix = None if model == "auto" else sanitize(Path(model).stem if model.endswith(".json") else model) + "__"
    tags = {Path(r): [t for t in embedding_tags_of(r) if prefix is None or t.startswith(prefix)] for r in datasets}
    common = set.intersection(*(set(t) for t in tags.values())) if tags else set()
    if len(common) != 1:
        found = "; ".join(f"{root}: {', '.join(t) or 'none'}" for root, t in tags.items())
        what = "no CLIP tag common to" if not common else f"several CLIP tags ({', '.join(sorted(common))}) in"
        asked = "clip_model: auto" if prefix is None else f"clip_model {model} (clip_pretrained auto)"
        raise ValueError(
            f"{asked} found {what} the datasets ({found}); set clip_model and clip_pretrained "
            "to the ones given to pipeline.embed"
        )
    tag = common.pop()
    return clip_record(DatasetDir(datasets[0]), tag)
