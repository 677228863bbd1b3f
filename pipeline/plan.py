"""plan.json: which inputs belong to each shard, fixed once so every rerun and every rank agrees.

The plan is listed once. Ranks that start together all list the same sorted inputs and write the
same bytes atomically, so a race between them is harmless. A rerun reads the plan and never
relists. An output directory whose plan was made with other settings is refused unless
`overwrite` is set, or no shard of it was finished (a run whose engine never started); then rank 0
clears the directory and writes the new plan while the other ranks wait for it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.dataset import DatasetDir, atomic_write_json
from pipeline.sources import SYNTHETIC_MARKER, SourceRecord, list_source

PLAN_VERSION = 1


class PlanMismatch(RuntimeError):
    """The output directory holds a plan made with different settings."""


def build_plan(fingerprint: dict[str, Any], records: list[SourceRecord], shard_size: int, name: str) -> dict[str, Any]:
    shards = [[r.to_row() for r in records[i : i + shard_size]] for i in range(0, len(records), shard_size)]
    return {
        "version": PLAN_VERSION,
        "name": name,
        "dataset": records[0].dataset if records else name,
        "fingerprint": fingerprint,
        "has_masks": any(r.mask_path for r in records),
        "synthetic": (Path(fingerprint["input"]) / SYNTHETIC_MARKER).is_file(),  # the built-in drawn faces
        "num_samples": len(records),
        "num_shards": len(shards),
        "shards": shards,
    }


def shard_records(plan: dict[str, Any], index: int) -> list[SourceRecord]:
    return [SourceRecord.from_row(plan["dataset"], row) for row in plan["shards"][index]]


def _read(ds: DatasetDir) -> dict[str, Any] | None:
    try:
        with open(ds.plan_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _clear(ds: DatasetDir) -> None:
    """Delete an old dataset for --overwrite. The stats go first, so a delete that fails part-way leaves
    no shard marked done; any failure stops the run with what could not be deleted."""
    try:
        for folder in (ds.stats_dir, ds.shards_dir, ds.errors_dir, ds.embeddings_root):
            if folder.exists():
                shutil.rmtree(folder)
        ds.plan_path.unlink(missing_ok=True)
        (ds.root / "README.md").unlink(missing_ok=True)
    except OSError as e:
        raise PlanMismatch(
            f"--overwrite could not delete the old dataset in {ds.root}: {e}; nothing was captioned"
        ) from e


def load_or_create_plan(
    ds: DatasetDir,
    fingerprint: dict[str, Any],
    list_options: dict[str, Any],
    shard_size: int,
    name: str,
    rank: int = 0,
    overwrite: bool = False,
    wait_s: float = 3600.0,
) -> dict[str, Any]:
    existing = _read(ds)
    if existing is not None and existing.get("fingerprint") == fingerprint:
        return existing
    if existing is not None and not any(ds.stats_dir.glob("*.json")):
        # nothing was finished under the old settings (say the engine never started): nothing to lose
        overwrite = True
    if existing is not None and not overwrite:
        raise PlanMismatch(
            f"{ds.root} holds a dataset planned with other settings "
            f"({_diff(existing['fingerprint'], fingerprint)}); "
            "use another --output, or --overwrite to delete it and start again"
        )
    if overwrite and rank != 0:
        return _wait_for_plan(ds, fingerprint, wait_s)

    records = list_source(fingerprint["source"], Path(fingerprint["input"]), **list_options)
    if fingerprint.get("limit") is not None:
        records = records[: fingerprint["limit"]]
    plan = build_plan(fingerprint, records, shard_size, name)
    if existing is not None:  # overwrite on rank 0
        _clear(ds)
    ds.root.mkdir(parents=True, exist_ok=True)
    current = _read(ds)
    if current is None or current.get("fingerprint") != fingerprint:
        atomic_write_json(ds.plan_path, plan)
    # Another rank may have won the race; both listed the same sorted inputs, so the plans agree.
    written = _read(ds)
    if written != plan:
        raise PlanMismatch(f"{ds.plan_path} changed while it was being written: were the inputs modified?")
    return plan


def _wait_for_plan(ds: DatasetDir, fingerprint: dict[str, Any], wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        plan = _read(ds)
        if plan is not None and plan.get("fingerprint") == fingerprint:
            return plan
        time.sleep(1.0)
    raise TimeoutError(f"rank 0 did not write {ds.plan_path} within {wait_s:.0f} s")
