"""Resumable training checkpoints (the generator file that later stages read is training.artifact's).

    RUN_DIR/checkpoints/step_NNNNNNN/   accelerator.save_state (G, D, optimisers, schedulers, RNG per rank)
                                        + ema.safetensors + trainer_state.json (step, data position per rank)

A checkpoint is written under `.step_NNNNNNN.tmp` and renamed when every rank has finished, so a
process killed while writing leaves only a temporary folder, which resume ignores and removes.
`trainer_state.json` is written last inside the temporary folder, and only folders holding it count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from pipeline.dataset import atomic_write_bytes, atomic_write_json
from training.artifact import CHECKPOINT_EMA as EMA_FILE
from training.artifact import CHECKPOINT_STATE as STATE_FILE
from training.config import TrainConfig
from training.data import Position
from training.ema import EMA
from training.guards import check_replicas
from training.run_log import Every

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"step_(\d{7,})")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete checkpoint folders a killed process left half-written. Main process only."""
    root = Path(run_dir) / CHECKPOINTS
    stale = [*root.glob(".step_*.tmp"), *root.glob(".step_*.old")]  # nothing when root does not exist
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def save_checkpoint(
    accelerator: Any, run_dir: Path, step: int, state: dict[str, Any], ema: EMA | None, keep: int
) -> Path:
    """Every rank calls this. Writes `step_NNNNNNN` atomically and keeps the newest `keep`."""
    final = checkpoint_path(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # models, optimisers, schedulers, scaler; each rank its own RNG state
    if accelerator.is_main_process:
        if ema is not None:
            atomic_write_bytes(tmp / EMA_FILE, safetensors_bytes(ema.state_dict()))
        atomic_write_json(tmp / STATE_FILE, state)  # last: marks the folder complete
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (e.g. a rerun): move the old one out of the way first
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        for _, old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path, ema: EMA | None) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote; returns the trainer state."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    accelerator.load_state(str(path))
    if ema is not None:
        if not (path / EMA_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {EMA_FILE}, but this run has EMA on (ema_decay > 0)")
        ema.load_state_dict(load_file(str(path / EMA_FILE)))
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """The loop's checkpoint job: `maybe_save` writes one when its cadence says so (every rank calls it:
    the data positions and replica checksums are gathered from all of them). `last` is the newest
    complete checkpoint, the one an error message can point to."""

    def __init__(self, accelerator: Any, cfg: TrainConfig, run_dir: Path, ema: EMA | None, last: Path | None) -> None:
        self.accelerator, self.cfg, self.run_dir, self.ema, self.last = accelerator, cfg, run_dir, ema, last
        self.every = Every(cfg.checkpoint_every, cfg.max_steps)

    def maybe_save(self, step: int, position: Position, G: nn.Module, D: nn.Module) -> None:
        if not self.every.due(step):
            return
        cfg, world = self.cfg, self.accelerator.num_processes
        state = {
            "step": step,
            "positions": gather_object([{"epoch": position.epoch, "batches": position.batches}]),  # per rank
            "replicas": check_replicas(G, D, step),  # per rank: weight checksums, all equal
            "world_size": world,
            "num_workers": cfg.num_workers,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
        }
        self.last = save_checkpoint(self.accelerator, self.run_dir, step, state, self.ema, cfg.keep_checkpoints)

    def resume_position(self, state: dict[str, Any]) -> Position:
        """This rank's data position in a checkpoint; a new epoch when the read order cannot carry over."""
        cfg, accelerator = self.cfg, self.accelerator
        same = (state["world_size"], state["num_workers"], state["batch_size"], state["seed"]) == (
            accelerator.num_processes,
            cfg.num_workers,
            cfg.batch_size,
            cfg.seed,
        )
        if same:
            p = state["positions"][accelerator.process_index]
            return Position(p["epoch"], p["batches"])
        # The read order depends on these settings, so the exact position cannot carry over.
        epoch = max(p["epoch"] for p in state["positions"]) + 1
        accelerator.print(
            f"warning: world size, workers, batch size or seed differ from the checkpoint's; the data restarts at "
            f"epoch {epoch} (models and optimisers resume exactly, the data order does not)"
        )
        return Position(epoch, 0)
