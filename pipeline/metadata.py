"""The `.json` member of every sample: its fields, their one type each, and the upgrade of older shards.

Every field has the same type in every sample of every dataset. The `datasets` WebDataset builder
infers its features from the first 5 samples and casts the rest to them, so a field that is `null`
(or `[]`) early and a string (or `["truncated"]`) later breaks `load_dataset`. Hence:

    key, dataset, identity, source_path, caption, caption_model, prompt_id, finish_reason: string
    width, height: int
    transcoded_from: string, "" when the image member holds the original file's bytes
    identity: "" where the source has no identity label
    flags: {"truncated": bool, "identity_words": bool, "empty": bool}, every flag always present
    attributes: {<field>: string} with every field of the prompt's schema; structured datasets only
    meta_version: 2

Format 1 (no `meta_version`) had `flags` as a list of names and `null` for an unknown identity or
an untranscoded image. `upgrade` turns a format-1 record into format 2; readers call it on every
record they read, so older shards keep working.
"""

from __future__ import annotations

from typing import Any

META_VERSION = 2
FLAG_NAMES = ("truncated", "identity_words", "empty")  # prompts.caption_flags raises only these

_STRINGS = ("key", "dataset", "identity", "source_path", "caption", "caption_model", "prompt_id", "finish_reason")


def flags_record(flags: list[str]) -> dict[str, bool]:
    unknown = sorted(set(flags) - set(FLAG_NAMES))
    if unknown:
        raise ValueError(f"unknown caption flags {unknown}: add them to pipeline.metadata.FLAG_NAMES")
    return {name: name in flags for name in FLAG_NAMES}


def sample_meta(
    *,
    key: str,
    dataset: str,
    identity: str | None,
    source_path: str,
    width: int,
    height: int,
    caption: str,
    attributes: dict[str, str] | None,
    caption_model: str,
    prompt_id: str,
    finish_reason: str,
    flags: list[str],
    transcoded_from: str | None,
) -> dict[str, Any]:
    """One sample's `.json` record, in format 2."""
    meta: dict[str, Any] = {
        "meta_version": META_VERSION,
        "key": key,
        "dataset": dataset,
        "identity": identity or "",
        "source_path": source_path,
        "width": int(width),
        "height": int(height),
        "caption": caption,
        "caption_model": caption_model,
        "prompt_id": prompt_id,
        "finish_reason": finish_reason,
        "flags": flags_record(flags),
        "transcoded_from": transcoded_from or "",
    }
    if attributes is not None:
        meta["attributes"] = dict(attributes)
    return meta


def version_of(meta: dict[str, Any]) -> int:
    return int(meta.get("meta_version", 1))


def upgrade(meta: dict[str, Any]) -> dict[str, Any]:
    """A record of any known format, as format 2. Format-2 records come back unchanged."""
    version = version_of(meta)
    if version == META_VERSION:
        return meta
    if version != 1:
        raise ValueError(
            f"sample {meta.get('key')!r} has .json format {version}, newer than this code's {META_VERSION}: "
            "upgrade the alphaface package"
        )
    out = {k: v for k, v in meta.items() if k != "attributes" or v is not None}
    for name in _STRINGS:
        out[name] = out.get(name) or ""
    flags = out.get("flags") or []
    out["flags"] = flags_record(list(flags)) if isinstance(flags, list) else dict(flags)
    out["transcoded_from"] = out.get("transcoded_from") or ""
    out["meta_version"] = META_VERSION
    return out
