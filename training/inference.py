"""What inference needs, for swap, export and evaluation alike: a generator and its identity encoder from
any checkpoint form (a run dir, its final/, a checkpoint folder, a generator file, a converted official
folder), the official eval.py image handling, and photo I/O.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from pipeline.dataset import atomic_open
from training.checkpoint import (
    EMA_FILE,
    GENERATOR_FILE,
    STATE_FILE,
    NotAGenerator,
    generator_spec,
    read_generator_spec,
    spec_config,
)
from training.config import load_config
from training.models import Generator, IdentityEncoder, build_generator

# ---------------------------------------------------------------------------------------------
# The official eval.py image handling, recorded in a converted generator's spec (`preprocess`)

OFFICIAL_EVAL = {
    "name": "alphaface-official-eval",
    "source": {"size": 112, "resample": "bilinear", "quantize": "trunc"},  # (x*255).int()/127.5 - 1
    "target": {"size": 256, "resample": "bilinear"},  # read in [0, 1]
    "output": {"quantize": "trunc"},  # (y*255).clamp(0, 255).byte()
}


def _resize(path: Path, size: int) -> Image.Image:
    # torchvision's Resize((s, s)) on a PIL image is PIL's bilinear resize
    with Image.open(path) as img:
        return img.convert("RGB").resize((size, size), Image.BILINEAR)


def _to_unit(img: Image.Image) -> Tensor:
    # exactly torchvision's ToTensor: uint8 -> float, divided by 255
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)  # (3, H, W)


def official_source(path: Path, preprocess: dict[str, Any] = OFFICIAL_EVAL) -> Tensor:
    """``(1, 3, 112, 112)`` in [-1, 1]: ``(ToTensor(Resize(112)(img)) * 255).int() / 127.5 - 1``."""
    x = _to_unit(_resize(path, int(preprocess["source"]["size"])))
    return ((x * 255.0).int() / 127.5 - 1.0)[None]


def official_target(path: Path, preprocess: dict[str, Any] = OFFICIAL_EVAL) -> Tensor:
    """``(3, 256, 256)`` in [0, 1]: ``ToTensor(Resize(256)(img))``."""
    return _to_unit(_resize(path, int(preprocess["target"]["size"])))


def official_uint8(x: Tensor) -> Tensor:
    """``(3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8 as eval.py writes it: x255, clamp, truncate."""
    return (x * 255.0).clamp(0, 255).byte().permute(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# Loading a generator


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP-wrapped checkpoints (accelerate saves them wrapped) prefix every key with `module.`."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def resolve_generator(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(weights file, spec) for any of the accepted --checkpoint forms."""
    path = Path(path)
    if path.is_file():
        return path, read_generator_spec(path)
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
    try:
        state = load_file(str(weights))
    except SafetensorError as e:  # a header that reads, over a file cut short
        raise NotAGenerator(weights, e) from None
    model.load_state_dict(_strip_module(state), strict=True)
    return model.eval().requires_grad_(False).to(device), spec


def load_identity(spec: dict[str, Any], cfg: Any) -> IdentityEncoder:
    """The run's identity encoder, or the one given (`cfg.id_weights`, `cfg.emap`, `cfg.id_arch`)."""
    from training.models.identity import build_identity

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

UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what a bad image file raises in Pillow


def load_rgb(path: Path) -> Image.Image:
    """A photo as RGB, EXIF orientation applied, fully decoded (a truncated file fails here)."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")


def load_face(path: Path, size: int) -> torch.Tensor:
    """An aligned face crop as (3, size, size) in [0, 1] (EXIF orientation applied, bicubic resize)."""
    rgb = load_rgb(path)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255  # (3, H, W)


def save_image(x: torch.Tensor, path: Path, truncate: bool = False) -> None:
    """(3, H, W) in [0, 1] to a PNG or JPEG (by suffix), atomically; rounded, or truncated as the
    official eval.py does (`truncate`, for converted official weights)."""
    scaled = x.clamp(0, 1) * 255
    array = (scaled if truncate else scaled.round()).byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    save_photo(Image.fromarray(array, "RGB"), path)


def save_photo(image: Image.Image, path: Path) -> None:
    """An RGB image in the format its suffix names (JPEG at quality 95), atomically."""
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_open(path, "wb") as f:
        image.save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def copy_file(src: Path, dst: Path) -> None:
    with atomic_open(dst, "wb") as f:
        f.write(src.read_bytes())
