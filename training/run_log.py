"""What a training run logs (main process): metric means, stats.jsonl, TensorBoard hparams, the resolved
config, and sample grids (source | target | swap) on fixed pairs that resume shows again.

    RUN_DIR/config.yaml  stats.jsonl  tensorboard/  samples/pairs.safetensors  samples/step_NNNNNNN.png
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from pipeline.dataset import atomic_open, atomic_write_bytes
from training.config import TrainConfig, load_config
from training.ema import EMA
from training.models import IdentityEncoder


@dataclass(frozen=True)
class Every:
    """A periodic job's cadence: every `period` steps, and at the last step whatever the period."""

    period: int
    last: int

    def due(self, step: int) -> bool:
        return step % self.period == 0 or step == self.last


class Meter:
    """Running sums of named scalars between two log lines; values stay on the device until read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + (v.detach().float() if isinstance(v, torch.Tensor) else float(v))
            self.counts[k] += 1

    def pop(self) -> dict[str, tuple[float, int]]:
        out = {k: (float(v), self.counts[k]) for k, v in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return out


def merge_meters(gathered: list[dict[str, tuple[float, int]]]) -> dict[str, float]:
    """Mean of each metric over every rank's values (ranks may report different terms, e.g. mask)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for part in gathered:
        for k, (s, n) in part.items():
            sums[k] += s
            counts[k] += n
    return {k: sums[k] / counts[k] for k in sorted(sums)}


def sample_grid(source: torch.Tensor, target: torch.Tensor, swap: torch.Tensor) -> Image.Image:
    """Rows of (source | target | swap), each (N, 3, H, W) in [0, 1]."""
    rows = torch.cat([source, target, swap], dim=3)  # (N, 3, H, 3W)
    grid = torch.cat(list(rows), dim=1)  # (3, N*H, 3W)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (N*H, 3W, 3)
    return Image.fromarray(array, "RGB")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_stats(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that stopped after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
    with atomic_open(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))


def hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The config flattened to TensorBoard hparam values (scalars and strings)."""
    out: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            name = f"{key}.{sub}" if sub else key
            out[name] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
    return out


def write_config(cfg: TrainConfig, run_dir: Path, start_ckpt: Path | None) -> None:
    """The resolved config into RUN_DIR/config.yaml; a resume that changes it keeps the old one beside it."""
    path = run_dir / "config.yaml"
    text = cfg.dump_yaml()
    if path.is_file() and start_ckpt is not None and path.read_text(encoding="utf-8") != text:
        old = load_config(path).to_dict()
        changed = sorted(k for k, v in cfg.to_dict().items() if old.get(k) != v)
        kept = run_dir / f"config.before-{start_ckpt.name}.yaml"
        os.replace(path, kept)
        print(f"resume with a changed config ({', '.join(changed)}); the previous one is kept as {kept}")
    atomic_write_bytes(path, text.encode("utf-8"))


def fixed_pairs(run_dir: Path) -> dict[str, torch.Tensor] | None:
    path = run_dir / "samples" / "pairs.safetensors"
    return load_file(str(path)) if path.is_file() else None


def save_fixed_pairs(run_dir: Path, source: torch.Tensor, target: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The pairs every sample grid of this run shows (the first batch's, stored so resume shows the same)."""
    pairs = {
        "source": (source[:n].float().cpu().clamp(0, 1) * 255).round().byte().contiguous(),  # (N, 3, H, W) uint8
        "target": (target[:n].float().cpu().clamp(0, 1) * 255).round().byte().contiguous(),
    }
    atomic_write_bytes(run_dir / "samples" / "pairs.safetensors", safetensors_bytes(pairs))
    return pairs


@torch.no_grad()
def write_samples(
    accelerator: Accelerator,
    run_dir: Path,
    step: int,
    fixed: dict[str, torch.Tensor],
    G: torch.nn.Module,
    ema: EMA | None,
    identity: IdentityEncoder,
) -> Path:
    device = accelerator.device
    source = fixed["source"].to(device).float() / 255
    target = fixed["target"].to(device).float() / 255
    was_training = G.training
    G.eval()
    z = identity(source)
    # the EMA weights (what the run exports) without a second copy of the generator
    swap = torch.func.functional_call(G, ema.shadow, (target, z)) if ema is not None else G(target, z)
    G.train(was_training)
    grid = sample_grid(source, target, swap.float())
    path = run_dir / "samples" / f"step_{step:07d}.png"
    with atomic_open(path, "wb") as f:
        grid.save(f, format="PNG")
    if "tensorboard" in [t.name for t in accelerator.trackers]:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_image("Samples/source_target_swap", np.asarray(grid), step, dataformats="HWC")
    return path


# ---------------------------------------------------------------------------------------------
# CLI


# ---------------------------------------------------------------------------------------------
# The periodic jobs the loop calls every step; each decides from its own cadence whether to act


class MetricLog:
    """Metric lines: means over every rank since the last line, with speed, learning rates and the data
    epoch, to TensorBoard, stats.jsonl and the progress bar. `maybe_log` is a collective on every rank."""

    def __init__(self, accelerator: Accelerator, cfg: TrainConfig, run_dir: Path, bar: Any, schedulers: dict) -> None:
        self.accelerator, self.bar, self.schedulers = accelerator, bar, schedulers
        self.every = Every(cfg.log_every, cfg.max_steps)
        self.path = run_dir / "stats.jsonl"
        self.samples_per_step = cfg.batch_size * cfg.grad_accum_steps * accelerator.num_processes
        self.meter = Meter()
        self.start, self.steps = time.perf_counter(), 0

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        self.meter.add(values)

    def maybe_log(self, step: int, epoch: int) -> None:
        self.steps += 1
        if not self.every.due(step):
            return
        elapsed = time.perf_counter() - self.start
        self.meter.add({f"LR/{name}": s.get_last_lr()[0] for name, s in self.schedulers.items()})
        metrics = merge_meters(gather_object([self.meter.pop()]))
        metrics["Speed/samples_per_s"] = self.samples_per_step * self.steps / elapsed
        metrics["Speed/step_s"] = elapsed / self.steps
        metrics["Data/epoch"] = epoch
        self.start, self.steps = time.perf_counter(), 0
        if self.accelerator.is_main_process:
            self.accelerator.log(metrics, step=step)
            append_jsonl(self.path, {"step": step, "time": round(time.time(), 3), **metrics})
            self.bar.set_postfix(samples_s=f"{metrics['Speed/samples_per_s']:.1f}", G=f"{metrics['Loss/G/total']:.3f}")


class SampleWriter:
    """Sample grids on the run's fixed pairs (main process): the first batch's pairs, kept for resume."""

    def __init__(
        self, accelerator: Accelerator, cfg: TrainConfig, run_dir: Path, G: torch.nn.Module, ema: EMA | None, identity
    ) -> None:
        self.accelerator, self.run_dir, self.G, self.ema, self.identity = accelerator, run_dir, G, ema, identity
        self.every = Every(cfg.sample_every, cfg.max_steps)
        self.num_samples = cfg.num_samples
        self.fixed = fixed_pairs(run_dir) if accelerator.is_main_process else None

    def keep_pairs(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """The first batch's pairs become the run's fixed pairs (once, main process)."""
        if self.accelerator.is_main_process and self.fixed is None and self.num_samples:
            self.fixed = save_fixed_pairs(self.run_dir, source, target, self.num_samples)

    def maybe_write(self, step: int) -> None:
        if self.fixed is not None and self.every.due(step):
            write_samples(self.accelerator, self.run_dir, step, self.fixed, self.G, self.ema, self.identity)
