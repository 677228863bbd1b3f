"""The swap stage: inference with a trained generator.

    python -m training.swap --checkpoint RUN_DIR_OR_GENERATOR_FILE --source IMG --target IMG_OR_DIR \
        --output PATH [--id-weights W --emap E --id-arch r50] [--batch-size 16] [--device auto]

    source -> identity encoder -> id embedding ─┐
    target(s) -> resize to the run's size ─────> generator -> swap (PNG or JPEG by suffix)

Inputs are aligned face crops (as in training); they are resized to the generator's image size
(256 for the real presets). A target folder is swapped in batches and written to the `--output`
folder under the same stems (`.png`). `--checkpoint` is a run directory (its `final/`), a `final/`
folder, a checkpoint folder `checkpoints/step_NNNNNNN` (its EMA weights, else the raw generator's),
or a `generator.safetensors` with its `generator.json` beside it. The identity encoder is the one
recorded with the generator unless `--id-weights` (and `--emap`) say otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from pipeline.dataset import atomic_open
from pipeline.distributed import resolve_device
from training.checkpoint import EMA_FILE, GENERATOR_FILE, STATE_FILE, generator_spec, spec_config
from training.config import load_config
from training.models import Generator, IdentityEncoder, build_generator

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class SwapConfig:
    # --- model
    checkpoint: Path  # run dir, final/ dir, checkpoint dir, or generator .safetensors (+ .json)
    id_weights: Path | None = None  # identity encoder checkpoint; default: the one recorded with the generator
    emap: Path | None = None  # InSwapper emap .npy; default: the recorded one
    id_arch: str | None = None  # r50 | r100; default: the recorded one
    # --- images
    source: Path = Path("source.jpg")  # the face whose identity is transferred
    target: Path = Path("target.jpg")  # an image, or a folder of images
    output: Path = Path("swap.png")  # a file for one target, a folder for a target folder
    # --- compute
    batch_size: int = 16  # targets per forward pass
    device: str | None = None  # cpu | cuda | auto

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if not Path(self.source).is_file():
            raise FileNotFoundError(f"--source {self.source} is not a file")
        if not Path(self.target).exists():
            raise FileNotFoundError(f"--target {self.target} does not exist")


# ---------------------------------------------------------------------------------------------
# Loading a generator


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP-wrapped checkpoints (accelerate saves them wrapped) prefix every key with `module.`."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def resolve_generator(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(weights file, spec) for any of the accepted --checkpoint forms."""
    path = Path(path)
    if path.is_file():
        spec_path = path.with_suffix(".json")
        if not spec_path.is_file():
            raise FileNotFoundError(
                f"{path} has no {spec_path.name} beside it (written with it at the end of training)"
            )
        return path, json.loads(spec_path.read_text(encoding="utf-8"))
    for candidate in (path / GENERATOR_FILE, path / "final" / GENERATOR_FILE):
        if candidate.is_file():
            return resolve_generator(candidate)
    if (path / STATE_FILE).is_file():  # a training checkpoint: the run's config says how to build it
        config_path = path.parent.parent / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no run config at {config_path}")
        cfg = load_config(config_path)
        gen_config = build_generator(cfg.generator, **cfg.generator_overrides).config
        step = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))["step"]
        ema = (path / EMA_FILE).is_file()
        return (path / EMA_FILE if ema else path / "model.safetensors"), generator_spec(cfg, gen_config, step, ema)
    raise FileNotFoundError(
        f"--checkpoint {path}: no generator here (expected a run dir with final/{GENERATOR_FILE}, a checkpoint "
        f"folder, or a {GENERATOR_FILE} file)"
    )


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    weights, spec = resolve_generator(path)
    model = Generator(spec_config(spec))
    model.load_state_dict(_strip_module(load_file(str(weights))), strict=True)
    return model.eval().requires_grad_(False).to(device), spec


def load_identity(spec: dict[str, Any], cfg: SwapConfig) -> IdentityEncoder:
    """The run's identity encoder, or the one given on the command line."""
    from training.train import build_identity

    rec = spec["identity"]
    if cfg.id_weights is not None:
        emap = cfg.emap or rec.get("emap")
        arch = cfg.id_arch or ("r50" if rec["arch"] == "tiny" else rec["arch"])  # real weights: a real arch
        return build_identity(arch, str(cfg.id_weights), emap and str(emap))
    if rec.get("random"):
        print(
            "note: this generator was trained with a random identity encoder (allow_random_weights); "
            "rebuilding the same seeded one",
            file=sys.stderr,
        )
        return build_identity(rec["arch"], None, rec.get("emap"), rec.get("use_emap", True), True, rec.get("seed", 0))
    weights = rec.get("weights")
    if not weights or not Path(weights).is_file():
        raise FileNotFoundError(
            f"the identity encoder recorded with the generator ({weights}) is not here; pass --id-weights (and --emap)"
        )
    emap = cfg.emap or rec.get("emap")
    return build_identity(cfg.id_arch or rec["arch"], weights, emap and str(emap), rec.get("use_emap", True))


# ---------------------------------------------------------------------------------------------
# Images


def load_face(path: Path, size: int) -> torch.Tensor:
    """An aligned face crop as (3, size, size) in [0, 1] (EXIF orientation applied, bicubic resize)."""
    with Image.open(path) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255  # (3, H, W)


def save_image(x: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] to a PNG or JPEG (by suffix), atomically."""
    array = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_open(path, "wb") as f:
        Image.fromarray(array, "RGB").save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def list_targets(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    found = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"--target {target} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


# ---------------------------------------------------------------------------------------------
# Stage


@torch.no_grad()
def run(cfg: SwapConfig) -> dict[str, Any]:
    start = time.perf_counter()
    device = torch.device(resolve_device(cfg.device))
    generator, spec = load_generator(cfg.checkpoint, device)
    identity = load_identity(spec, cfg).to(device)
    size = int(spec["image_size"])
    z = identity(load_face(Path(cfg.source), size)[None].to(device))  # (1, 512)
    targets = list_targets(Path(cfg.target))
    many = Path(cfg.target).is_dir()
    if many:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    outputs = []
    for i in range(0, len(targets), cfg.batch_size):
        chunk = targets[i : i + cfg.batch_size]
        batch = torch.stack([load_face(p, size) for p in chunk]).to(device)  # (b, 3, size, size)
        swaps = generator(batch, z.expand(len(chunk), -1))  # (b, 3, size, size)
        for path, swap in zip(chunk, swaps, strict=True):
            out = Path(cfg.output) / f"{path.stem}.png" if many else Path(cfg.output)
            save_image(swap, out)
            outputs.append(str(out))
    return {
        "generator": spec.get("preset"),
        "step": spec.get("step"),
        "image_size": size,
        "swaps": len(outputs),
        "outputs": outputs,
        "seconds": round(time.perf_counter() - start, 3),
    }


def parse_args(argv: list[str] | None = None) -> SwapConfig:
    p = argparse.ArgumentParser(prog="python -m training.swap", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN_DIR, its final/, a checkpoint, or a file")
    p.add_argument("--source", required=True, type=Path, help="the face giving the identity (aligned crop)")
    p.add_argument("--target", required=True, type=Path, help="an aligned face crop or a folder of them")
    p.add_argument("--output", required=True, type=Path, help="output image (one target) or folder (a folder)")
    p.add_argument("--id-weights", type=Path, default=None, help="identity encoder checkpoint (default: recorded)")
    p.add_argument("--emap", type=Path, default=None, help="InSwapper emap .npy (default: recorded)")
    p.add_argument("--id-arch", default=None, choices=["r50", "r100"], help="default: recorded")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default)")
    a = p.parse_args(argv)
    return SwapConfig(
        checkpoint=a.checkpoint,
        id_weights=a.id_weights,
        emap=a.emap,
        id_arch=a.id_arch,
        source=a.source,
        target=a.target,
        output=a.output,
        batch_size=a.batch_size,
        device=a.device,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    try:
        summary = run(parse_args(argv))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"training.swap: error: {e}") from e
    print(json.dumps({"swap": {k: v for k, v in summary.items() if k != "outputs"}}), file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
