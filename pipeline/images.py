"""Safe image loading for the caption stage: validate, normalise to RGB, and pre-resize.

An input that is already in the dataset's image format and already plain 8-bit RGB keeps its
original bytes. Anything else (PNG/WebP into a JPEG dataset, CMYK, grayscale, 16-bit, alpha,
EXIF-rotated) is converted to RGB and re-encoded, and `transcoded_from` says what it was.
Bad inputs raise `BadInput` with a short machine-readable reason, counted in stats and errors/.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 8192 * 8192  # larger declared sizes are refused as decompression bombs
JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112
_FORMAT_OF = {"jpg": "JPEG", "png": "PNG"}


class BadInput(Exception):
    """An input that cannot be captioned. `reason` is the counted category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class LoadedImage:
    data: bytes  # what goes into the shard: the original bytes, or the RGB re-encoding
    transcoded_from: str | None  # None when `data` is the original file
    width: int  # after EXIF rotation
    height: int
    engine_image: Image.Image  # RGB, image_size x image_size, for the caption engine


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: 8-byte signature, length, type, width, height, bit depth.
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB. Alpha is composited over white; 16-bit is scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _encode(img: Image.Image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise BadInput("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:  # its message holds the BytesIO's address: not reproducible
        raise BadInput("not_an_image", "cannot identify the image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInput("decompression_bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput("corrupt_image", str(e)) from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadInput("corrupt_image", f"size {w}x{h}")
    if w * h > max_pixels:
        raise BadInput("decompression_bomb", f"declared {w}x{h} > {max_pixels} pixels")
    return img


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadInput("corrupt_image", str(e)) from None


def load_image(
    data: bytes, image_format: str = "jpg", image_size: int = 448, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Validate and normalise one input. Raises BadInput for anything that cannot be used."""
    img = _open(data, max_pixels)
    fmt, mode = img.format, img.mode
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    keep = (
        fmt == _FORMAT_OF[image_format]
        and mode == "RGB"
        and orientation == 1
        and (fmt != "PNG" or _png_bit_depth(data) == 8)
    )
    if keep:
        width, height = img.size
        if fmt == "JPEG":
            # DCT-scaled decoding: a 1024 JPEG decodes at 512, about 1.8x faster (docs/design.md §9).
            img.draft("RGB", (image_size, image_size))
        _load(img)
        engine = img if img.size == (image_size, image_size) else img.resize((image_size, image_size), Image.BICUBIC)
        return LoadedImage(data, None, width, height, engine)

    _load(img)
    rotated = ImageOps.exif_transpose(img) if orientation != 1 else img
    rgb = _to_rgb(rotated)
    what = f"{fmt}/{mode}" + (f"/exif-orientation-{orientation}" if orientation != 1 else "")
    if fmt == "PNG" and _png_bit_depth(data) == 16:
        what += "/16-bit"
    engine = rgb.resize((image_size, image_size), Image.BICUBIC)
    return LoadedImage(_encode(rgb, image_format), what, rgb.width, rgb.height, engine)


def build_celeba_labels(root: Path, prefix: str, labels: tuple[str, ...], size: int = 512) -> bytes:
    """CelebAMask-HQ part masks `<prefix>_<class>.png` as one label-map PNG: pixel = index in `labels`
    (0 = background, where no part is). Parts are painted in label order, so where two overlap the
    later class wins, as in CelebAMask-HQ's own conversion (g_mask.py)."""
    label_map = np.zeros((size, size), dtype=np.uint8)
    found = 0
    for index, cls in enumerate(labels[1:], start=1):
        path = root / f"{prefix}_{cls}.png"
        if not path.is_file():
            continue
        try:
            with Image.open(path) as part:
                part = part.convert("L")
                if part.size != (size, size):
                    part = part.resize((size, size), Image.NEAREST)
                label_map[np.asarray(part) > 127] = index
        except (OSError, SyntaxError, ValueError) as e:
            raise BadInput("corrupt_mask", f"{path.name}: {e}") from None
        found += 1
    if found == 0:
        raise BadInput("mask_missing", f"no {prefix}_<class>.png parts")
    buf = io.BytesIO()
    Image.fromarray(label_map, "L").save(buf, format="PNG")
    return buf.getvalue()


def check_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A mask file kept as given (the official layout's): its bytes, once they decode as an image. A
    mask in another format than PNG is re-encoded as PNG (lossless), as the `.mask.png` member says."""
    try:
        img = _open(data, max_pixels)
        _load(img)
    except BadInput as e:
        raise BadInput("corrupt_mask", f"{e.reason}: {e.detail}" if e.detail else e.reason) from None
    if img.format == "PNG":
        return data
    return _encode(img if img.mode in ("1", "L", "RGB", "RGBA") else img.convert("RGB"), "png")
