"""Measuring a unit of work (the faces of one FF++ pair, or a chunk of aligned pairs), its part on disk
(UNIT.npz of vectors first, then UNIT.parquet of rows, which marks the part done), and latency."""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.dataset import atomic_open
from swapper.evaluate.config import EvalConfig
from swapper.evaluate.swappers import Batch, quantise
from swapper.faces.swapper import to_tensor
from swapper.metrics import MetricModel
from swapper.metrics import retrieval as ret


@dataclass
class Unit:
    name: str  # the part's file stem
    pairs: list[str]  # pair names in the unit
    rows: list[dict[str, Any]] = field(default_factory=list)  # per frame pair: pair, target, source, frames
    targets: list[np.ndarray] = field(default_factory=list)  # (S, S, 3) uint8 per row
    sources: list[np.ndarray] = field(default_factory=list)  # (S, S, 3) uint8 per row
    source_arcface: list[np.ndarray] = field(default_factory=list)  # (112, 112, 3) uint8 per row (ffpp)
    source_paths: list[Path] = field(default_factory=list)  # per row (pairs)
    gallery: dict[str, list[np.ndarray]] = field(default_factory=dict)  # source key -> its (S, S, 3) crops
    masks: list[np.ndarray] = field(default_factory=list)  # (S, S) bool per row: where the swap may change (pairs)


@dataclass
class Models:
    recogniser: MetricModel
    pose: MetricModel
    expression: MetricModel
    fid: MetricModel | None


def features(model: MetricModel, crops: torch.Tensor, batch_size: int) -> np.ndarray:
    """`model` over `crops` in fixed batches, so the same crops always meet the same arithmetic."""
    out = [model(crops[i : i + batch_size]).cpu() for i in range(0, len(crops), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def measure(unit: Unit, swapper: Any, models: Models, cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    """The unit's per-row scalars and vectors, and its gallery entries."""
    n, bs = len(unit.rows), cfg.batch_size
    gallery_keys = sorted(unit.gallery)
    gallery = [ret.gallery_entry(features(models.recogniser, to_tensor(unit.gallery[k], device), bs))
               for k in gallery_keys]  # fmt: skip
    arrays: dict[str, np.ndarray] = {
        "gallery_keys": np.array(gallery_keys, dtype=str),
        "gallery": np.stack(gallery).astype(np.float32) if gallery else np.zeros((0, 0), np.float32),
    }
    if n == 0:
        return {"rows": [], "arrays": arrays}
    targets = to_tensor(unit.targets, device)
    swaps = []
    for i in range(0, n, bs):
        batch = Batch(
            targets[i : i + bs],
            to_tensor(unit.sources[i : i + bs], device),
            to_tensor(unit.source_arcface[i : i + bs], device) if unit.source_arcface else None,
            unit.source_paths[i : i + bs] if unit.source_paths else None,
        )
        swaps.append(quantise(swapper(batch), swapper.truncate))
    swap = torch.cat(swaps)  # (n, 3, S, S)
    pose_s, pose_t = features(models.pose, swap, bs), features(models.pose, targets, bs)
    exp_s, exp_t = features(models.expression, swap, bs), features(models.expression, targets, bs)
    arrays["swap_id"] = features(models.recogniser, swap, bs)
    if models.fid is not None:
        arrays["fid_swap"], arrays["fid_target"] = features(models.fid, swap, bs), features(models.fid, targets, bs)
    pose_err = np.linalg.norm(pose_s.astype(np.float64) - pose_t, axis=1)
    exp_err = np.linalg.norm(exp_s.astype(np.float64) - exp_t, axis=1)
    axes = against_truth(unit.rows, pose_s, pose_t, exp_s, exp_t, getattr(models.expression, "classes", None))
    outside = outside_changed(swap, targets, unit.masks, cfg.outside_threshold) if unit.masks else np.full(n, np.nan)
    rows = []
    for i, row in enumerate(unit.rows):
        rows.append({
            **ROW_DEFAULTS, "source_key": row["source"], "target_key": row["target"], **row,
            "yaw_error": float(axes[0][i]), "pitch_error": float(axes[1][i]),
            "expression_match": _or_null(axes[2][i]), "outside_changed": _or_null(outside[i]),
            "yaw": float(pose_s[i, 0]), "pitch": float(pose_s[i, 1]), "roll": float(pose_s[i, 2]),
            "target_yaw": float(pose_t[i, 0]), "target_pitch": float(pose_t[i, 1]), "target_roll": float(pose_t[i, 2]),
            "pose_error": float(pose_err[i]),
            "expression_error": float(exp_err[i]),
        })  # fmt: skip
    return {"rows": rows, "arrays": arrays}


def _or_null(x: float) -> float | None:
    """Not measured (no classifier, no mask) is null in the rows, so tables of equal runs compare equal."""
    return None if np.isnan(x) else float(x)


def against_truth(
    rows: list[dict[str, Any]],
    pose_s: np.ndarray,
    pose_t: np.ndarray,
    exp_s: np.ndarray,
    exp_t: np.ndarray,
    classes: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: |yaw| and |pitch| error of the swap, and whether its expression class matches (NaN unless the
    expression model is a classifier), each against the row's truth where --truth gave one, else the target's
    own estimate."""

    def ref(key: str, estimate: np.ndarray) -> np.ndarray:
        given = [row.get(key) for row in rows]
        return np.array([estimate[i] if g is None else g for i, g in enumerate(given)], np.float64)

    yaw = np.abs(pose_s[:, 0] - ref("truth_yaw", pose_t[:, 0]))
    pitch = np.abs(pose_s[:, 1] - ref("truth_pitch", pose_t[:, 1]))
    if not classes:
        return yaw, pitch, np.full(len(rows), np.nan)
    return yaw, pitch, (exp_s.argmax(1) == ref("truth_expression", exp_t.argmax(1))).astype(np.float64)


def outside_changed(swap: torch.Tensor, targets: torch.Tensor, masks: list[np.ndarray], threshold: float) -> np.ndarray:
    """Per row: the fraction of pixels outside the mask whose largest channel change exceeds `threshold`
    (both 8-bit images; NaN where the mask covers everything)."""
    changed = ((swap - targets).abs().amax(1) > threshold + 1e-6).cpu().numpy()  # (n, S, S)
    outside = ~np.stack(masks)
    count = outside.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (changed & outside).sum((1, 2)) / count, np.nan)


ROW_SCHEMA = pa.schema([
    ("pair", pa.string()), ("target", pa.string()), ("source", pa.string()),
    ("target_frame", pa.int32()), ("source_frame", pa.int32()), ("slot", pa.int32()),
    ("yaw", pa.float32()), ("pitch", pa.float32()), ("roll", pa.float32()),
    ("target_yaw", pa.float32()), ("target_pitch", pa.float32()), ("target_roll", pa.float32()),
    ("pose_error", pa.float64()), ("expression_error", pa.float64()),
    ("source_key", pa.string()), ("target_key", pa.string()),
    ("truth_yaw", pa.float64()), ("truth_pitch", pa.float64()), ("truth_expression", pa.int32()),
    ("yaw_error", pa.float64()), ("pitch_error", pa.float64()), ("expression_match", pa.float64()),
    ("outside_changed", pa.float64()),
])  # fmt: skip
# what a row without --truth holds
ROW_DEFAULTS: dict[str, Any] = {"truth_yaw": None, "truth_pitch": None, "truth_expression": None}


def part_paths(output: Path, name: str) -> tuple[Path, Path]:
    return output / "parts" / f"{name}.npz", output / "parts" / f"{name}.parquet"


def write_part(output: Path, name: str, measured: dict[str, Any]) -> None:
    npz, parquet = part_paths(output, name)
    with atomic_open(npz, "wb") as f:
        np.savez(f, **measured["arrays"])
    table = pa.Table.from_pylist(measured["rows"], schema=ROW_SCHEMA)
    with atomic_open(parquet, "wb") as f:
        pq.write_table(table, f)


def read_part(output: Path, name: str) -> tuple[pa.Table, dict[str, np.ndarray]]:
    npz, parquet = part_paths(output, name)
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    table = pq.read_table(parquet)
    for name in ROW_SCHEMA.names:  # a part from before a column existed: its keys, and nulls
        if name not in table.column_names:
            f, like = ROW_SCHEMA.field(name), {"source_key": "source", "target_key": "target"}.get(name)
            table = table.append_column(f, table.column(like) if like else pa.nulls(table.num_rows, f.type))
    return table.select(ROW_SCHEMA.names), arrays


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU {model} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def latency(swapper: Any, cfg: EvalConfig, device: torch.device) -> dict[str, Any] | None:
    """The generator alone at batch 1 (the identity embedding is per source, computed once)."""
    if cfg.latency_runs == 0 or swapper.generator is None:
        return None
    size = swapper.image_size
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, size, size, generator=g).to(device)
    z = torch.nn.functional.normalize(torch.randn(1, swapper.generator.config.id_dim, generator=g), dim=1).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.latency_warmup):
        swapper.generator(target, z)
    sync()
    times = []
    for _ in range(cfg.latency_runs):
        start = time.perf_counter()
        swapper.generator(target, z)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "runs": cfg.latency_runs,
        "warmup": cfg.latency_warmup,
        "device": device_name(device),
        "dtype": "fp32",
        "image_size": size,
    }
