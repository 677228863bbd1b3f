"""Builders for odd and broken image files, shared by the image and caption-stage tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def face_like(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge size (valid CRC, so only the size is wrong)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = zlib.compress(b"\x00" * 16)
    idat = b"IDAT" + data
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(data))
        + idat
        + struct.pack(">I", zlib.crc32(idat))
    )


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif.tobytes())


def bad_and_odd_files(size: int = 64) -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, expected failure reason or None if it must be converted and kept)."""
    base = face_like(size, seed=1)
    good = jpeg_bytes(base)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    gray16 = Image.fromarray(np.arange(size * size, dtype=np.uint16).reshape(size, size) * 7)
    return {
        "truncated.jpg": (good[: len(good) // 2], "corrupt_image"),
        "empty.jpg": (b"", "empty_file"),
        "text.jpg": (b"this is not an image at all\n" * 10, "not_an_image"),
        "bomb.png": (bomb_png(), "decompression_bomb"),
        "gray.jpg": (jpeg_bytes(base.convert("L")), None),
        "cmyk.jpg": (jpeg_bytes(base.convert("CMYK")), None),
        "rgba.png": (png_bytes(rgba), None),
        "gray16.png": (png_bytes(gray16), None),
        "rotated.jpg": (exif_rotated_jpeg(face_like(size, seed=2).resize((size, size // 2))), None),
        "plain.png": (png_bytes(base), None),
    }


def write_files(folder: Path, files: dict[str, tuple[bytes, str | None]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
