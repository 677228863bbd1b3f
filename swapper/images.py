"""Photos in and out, and the official eval.py image handling (recorded in a converted generator's spec
as `preprocess`, so swap and evaluate feed official weights exactly as eval.py does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from pipeline.dataset import atomic_open

# ---------------------------------------------------------------------------------------------
# The official eval.py image handling

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


def to_unit(img: Image.Image | np.ndarray) -> Tensor:
    """An RGB image as (3, H, W) float in [0, 1]: exactly torchvision's ToTensor (uint8 / 255)."""
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)  # (3, H, W)


def official_source(path: Path, preprocess: dict[str, Any] = OFFICIAL_EVAL) -> Tensor:
    """``(1, 3, 112, 112)`` in [-1, 1]: ``(ToTensor(Resize(112)(img)) * 255).int() / 127.5 - 1``."""
    x = to_unit(_resize(path, int(preprocess["source"]["size"])))
    return ((x * 255.0).int() / 127.5 - 1.0)[None]


def official_target(path: Path, preprocess: dict[str, Any] = OFFICIAL_EVAL) -> Tensor:
    """``(3, 256, 256)`` in [0, 1]: ``ToTensor(Resize(256)(img))``."""
    return to_unit(_resize(path, int(preprocess["target"]["size"])))


def official_uint8(x: Tensor) -> Tensor:
    """``(3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8 as eval.py writes it: x255, clamp, truncate."""
    return (x * 255.0).clamp(0, 255).byte().permute(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# Photos

UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)  # what a bad image file raises in Pillow


def load_rgb(path: Path) -> Image.Image:
    """A photo as RGB, EXIF orientation applied, fully decoded (a truncated file fails here)."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")


def load_face(path: Path, size: int) -> Tensor:
    """An aligned face crop as (3, size, size) in [0, 1] (EXIF orientation applied, bicubic resize)."""
    rgb = load_rgb(path)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return to_unit(rgb)


def save_image(x: Tensor, path: Path, truncate: bool = False) -> None:
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
