"""Run-directory formats: resumable checkpoints and the exported generator.

    RUN_DIR/checkpoints/step_NNNNNNN/   accelerator.save_state (G, D, optimisers, schedulers, RNG per rank)
                                        + ema.safetensors + trainer_state.json (step, data position per rank)
    RUN_DIR/final/generator.safetensors the generator to use (EMA weights when EMA is on)
    RUN_DIR/final/generator.json        how to rebuild it: preset, GeneratorConfig, image size, identity encoder

A checkpoint is written under `.step_NNNNNNN.tmp` and renamed when every rank has finished, so a
process killed while writing leaves only a temporary folder, which resume ignores and removes.
`trainer_state.json` is written last inside the temporary folder, and only folders holding it count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from pipeline.dataset import atomic_write_bytes, atomic_write_json
from training.config import TrainConfig
from training.ema import EMA
from training.models import GeneratorConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
GENERATOR_FILE = "generator.safetensors"
GENERATOR_FORMAT = "alphaface-generator/1"
SPEC_KEY = "alphaface_spec"  # the generator spec, as JSON, in the safetensors header
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


# ---------------------------------------------------------------------------------------------
# The exported generator


def identity_record(cfg: TrainConfig) -> dict[str, Any]:
    """How swap rebuilds a run's identity encoder (absolute paths: swap runs from anywhere)."""
    return {
        "arch": cfg.id_arch,
        "weights": str(Path(cfg.id_weights).resolve()) if cfg.id_weights else None,
        "emap": str(Path(cfg.emap).resolve()) if cfg.emap and cfg.use_emap else None,
        "use_emap": cfg.use_emap,
        "random": not cfg.id_weights,  # allow_random_weights runs: swap rebuilds the same seeded network
        "seed": cfg.seed,
    }


def generator_spec(cfg: TrainConfig, config: GeneratorConfig, step: int, ema: bool) -> dict[str, Any]:
    """What swap and export need to rebuild and feed a run's generator."""
    return {
        "format": GENERATOR_FORMAT,
        "preset": cfg.generator,
        "generator_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "image_size": cfg.image_size,  # the side its inputs are resized to
        "step": step,
        "ema": ema,  # EMA weights (ema_decay > 0) or the raw generator's
        "identity": identity_record(cfg),
        "clip": {"model": cfg.clip_model, "pretrained": cfg.clip_pretrained},
    }


def save_generator(folder: Path, state: dict[str, Tensor], spec: dict[str, Any]) -> Path:
    """The weights and their spec as one file, written atomically: the spec is in the safetensors header,
    so no crash can pair new weights with an old spec. `generator.json` beside it is a readable copy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GENERATOR_FILE
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": GENERATOR_FORMAT, SPEC_KEY: json.dumps(spec, sort_keys=True)}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
    atomic_write_json(path.with_suffix(".json"), spec)
    return path


class NotAGenerator(ValueError):
    """A --checkpoint file that is not a generator safetensors file (another format, or damaged)."""

    def __init__(self, path: Path, error: Exception) -> None:
        hint = ""
        if Path(path).suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):
            hint = (
                "; an official AlphaFace checkpoint (.pt) must be converted first: "
                "python -m training.convert --from alphaface-official --checkpoint FILE.pt --output DIR"
            )
        super().__init__(
            f"--checkpoint {path} is not a generator file (the .safetensors that training.train or "
            f"training.convert writes): {error}{hint}"
        )


def read_generator_spec(path: Path) -> dict[str, Any]:
    """The spec of a generator file: the one inside it; for files written before that, the `.json` beside."""
    try:
        with safe_open(str(path), framework="pt") as f:
            embedded = (f.metadata() or {}).get(SPEC_KEY)
    except SafetensorError as e:
        raise NotAGenerator(path, e) from None
    if embedded is not None:
        return json.loads(embedded)
    spec_path = Path(path).with_suffix(".json")
    if not spec_path.is_file():
        raise FileNotFoundError(f"{path} holds no spec and has no {spec_path.name} beside it")
    return json.loads(spec_path.read_text(encoding="utf-8"))


def spec_config(spec: dict[str, Any]) -> GeneratorConfig:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["generator_config"].items()}
    return GeneratorConfig(**values)
