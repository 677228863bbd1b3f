"""The Hub layout that `pipeline.publish` stages and the card describes, and the licence policy.

    README.md                            the card; its `configs` and `dataset_info.features` make
                                         `datasets.load_dataset(repo)` work with no type inference
    assets/*.png                         plots shown in the card
    data/<name>-NNNNNN.parquet           default: annotations + CLIP embeddings, one file per shard
    data/<name>-NNNNNN.tar               --include-images: the WebDataset shards (the default config) ...
    annotations/<name>-NNNNNN.parquet    ... with the annotations beside them

The annotation columns are the `.json` member's fields (pipeline.metadata), with one type each.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset import DatasetDir
from pipeline.embeddings import file_metadata
from pipeline.metadata import FLAG_NAMES
from pipeline.sources import SYNTHETIC_MARKER

DATA_DIR = "data"  # annotation Parquet by default; the WebDataset tars with --include-images
ANNOTATIONS_DIR = "annotations"  # the annotation Parquet when the tars take data/
ASSETS_DIR = "assets"  # plots shown in the card


# ---------------------------------------------------------------- licences


@dataclass(frozen=True)
class SourceInfo:
    """What the card and publish need to know about a source dataset's terms."""

    template: str  # file name in data_cards/
    pretty: str  # human name
    images_redistributable: bool  # False: images only to private or gated repos, with the terms printed


LICENCES: dict[str, SourceInfo] = {
    # Non-commercial research only; forbids copying, publishing or distributing any part of the dataset.
    "celeba-hq": SourceInfo("celeba-hq.md", "CelebA-HQ", images_redistributable=False),
    # Web photographs, largely copyrighted by their owners.
    "vggface2-hq": SourceInfo("vggface2-hq.md", "VGGFace2-HQ", images_redistributable=False),
    # The official AlphaFace sample data: FFHQ and LPFF crops, whose images keep their own (mostly
    # non-commercial or unknown) licences.
    "alphaface": SourceInfo("generic.md", "AlphaFace sample data (FFHQ/LPFF)", images_redistributable=False),
}


def source_of(plan: dict[str, Any]) -> str:
    return str(plan.get("fingerprint", {}).get("source") or plan.get("dataset") or "folder")


def source_info(plan: dict[str, Any]) -> SourceInfo:
    """Known sources by name. Any other (`folder`) gets the generic card, named after the dataset; its
    terms are unknown to us, so they are treated as restrictive until the user edits the card."""
    name = str(plan.get("name") or plan.get("dataset") or "images")
    known = LICENCES.get(source_of(plan), SourceInfo("generic.md", name, images_redistributable=False))
    if is_synthetic(plan):  # drawn faces in a real dataset's layout: no person, no third-party terms
        return SourceInfo("synthetic.md", f"Synthetic ({known.pretty} layout)", images_redistributable=True)
    return known


def is_synthetic(plan: dict[str, Any]) -> bool:
    """The built-in synthetic faces (plans made before the `synthetic` field: the input's marker file)."""
    if "synthetic" in plan:
        return bool(plan["synthetic"])
    root = plan.get("fingerprint", {}).get("input")
    return bool(root) and (Path(root) / SYNTHETIC_MARKER).is_file()


def public_model_name(model: str) -> str:
    """A model as a card may name it: a Hub id or open_clip name as it is; a local path by its folder or
    file name, so no card shows a machine's paths."""
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) and not model.startswith(".") and not Path(model).exists():
        return model
    return f"{Path(model).name} (a local checkpoint)"


def split_of(plan: dict[str, Any]) -> str:
    """The Hub split name: the CelebA split the plan was made for, else `train`."""
    split = str(plan.get("fingerprint", {}).get("split") or "train")
    return {"val": "validation"}.get(split, split)  # the Hub's canonical split names


# ---------------------------------------------------------------- layout and schemas


def embedding_column(tag: str, field: str) -> str:
    """Published name of an embeddings column: the CLIP tag first, so several models can coexist."""
    return f"{tag}__{field}"


SHARDS_GLOB = "shards/*.tar"  # the dataset directory's own WebDataset shards (pipeline.dataset)


def hub_configs(include_images: bool, split: str, local: bool = False) -> list[dict[str, Any]]:
    """The README `configs`, so `datasets.load_dataset(folder)` reads them: the staged layout, or
    (`local`) the dataset directory as the caption stage wrote it, whose shards are the tars."""
    # `datasets` infers one builder for all of a repo's configs, so the annotation Parquet that sits beside
    # the tars gets no config of its own; the card shows how to load it with the parquet builder.
    default = SHARDS_GLOB if local else f"{DATA_DIR}/*.tar" if include_images else f"{DATA_DIR}/*.parquet"
    return [{"config_name": "default", "data_files": [{"split": split, "path": default}]}]


def annotation_fields(structured: list[str] | None) -> list[pa.Field]:
    """The `.json` fields as annotation columns; `attributes` only where the prompt is structured."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("identity", pa.string()),
        pa.field("source_path", pa.string()),
        pa.field("caption", pa.string()),
    ]
    if structured:
        fields.append(pa.field("attributes", pa.struct([pa.field(a, pa.string()) for a in structured])))
    return fields + [
        pa.field("flags", pa.struct([pa.field(f, pa.bool_()) for f in FLAG_NAMES])),
        pa.field("finish_reason", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("prompt_id", pa.string()),
        pa.field("caption_model", pa.string()),
        pa.field("transcoded_from", pa.string()),
    ]


def json_member_type(structured: list[str] | None) -> pa.StructType:
    """The `.json` member as one Arrow struct: the annotation fields plus `meta_version`."""
    return pa.struct([*annotation_fields(structured), pa.field("meta_version", pa.int32())])


def published_schema(
    ds: DatasetDir, tags: list[str], first_shard: int, structured: list[str] | None, facts: dict[str, Any]
) -> pa.Schema:
    """The annotation Parquet schema: fixed columns, then each tag's embedding columns, prefixed by the tag."""
    fields = annotation_fields(structured)
    clip: dict[str, Any] = {}
    for tag in tags:
        path = ds.embeddings_path(tag, first_shard)
        schema, meta = pq.read_schema(path), file_metadata(path)
        columns = []
        for f in schema:
            if f.name != "key":
                fields.append(pa.field(embedding_column(tag, f.name), f.type))
                columns.append(embedding_column(tag, f.name))
        clip[tag] = {
            "model": meta.get("clip_model"),
            "pretrained": meta.get("clip_pretrained"),
            "embed_dim": int(meta["embed_dim"]) if "embed_dim" in meta else None,
            "context_length": int(meta["context_length"]) if "context_length" in meta else None,
            "quick_gelu": json.loads(meta.get("quick_gelu", "false")),
            "precision": meta.get("precision"),
            "columns": columns,
        }
    about = {"source": facts["source"], "prompt_id": facts["prompt_id"], "clip": clip}
    return pa.schema(fields, metadata={"alphaface": json.dumps(about, sort_keys=True)})


def dataset_features(
    schema: pa.Schema, include_images: bool, structured: list[str] | None, image_ext: str, with_mask: bool
) -> list[dict[str, Any]]:
    """The card's `dataset_info.features` for the default config, in the Hub's YAML form.

    With them `datasets` casts every sample to the declared types instead of guessing from the first 5.
    """
    import datasets

    if not include_images:
        return datasets.Features.from_arrow_schema(schema)._to_yaml_list()
    json_features = datasets.Features.from_arrow_schema(pa.schema(list(json_member_type(structured))))
    features = {
        "__key__": datasets.Value("string"),
        "__url__": datasets.Value("string"),
        image_ext: datasets.Image(),
        "json": dict(json_features),
        "txt": datasets.Value("string"),
    }
    if with_mask:
        features["mask.png"] = datasets.Image()
    return datasets.Features(features)._to_yaml_list()
