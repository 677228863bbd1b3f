"""Builders for the faces and evaluation tests: synthetic faces and scenes, known similarities, landmarks
files and real H.264 videos written with PyAV (the fixtures are in tests/swapper/faces/conftest.py)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from swapper.faces.align import apply, template, warp

GEN_SIZE = 64  # the tiny generator's input side in these tests


def smooth_face(size: int, seed: int) -> np.ndarray:
    """(size, size, 3) uint8: an 8x8 grid of random colours, bicubically upsampled (smooth, so
    bilinear resampling is accurate), with dark eye and mouth spots on the ffhq template points."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(40, 216, (8, 8, 3), dtype=np.uint8))
    face = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)).astype(np.float64)
    ys, xs = np.mgrid[:size, :size]
    for x, y in template("ffhq", size):
        spot = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * (0.02 * size) ** 2))
        face *= 1 - 0.6 * spot[..., None]
    return np.clip(face.round(), 0, 255).astype(np.uint8)


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    """(2, 3) map: rotate by `degrees`, scale, then shift."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def place(canvas: np.ndarray, crop: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw `crop` into `canvas` under `t` (crop -> canvas); returns (new canvas, its 5 landmarks)."""
    h, w = canvas.shape[:2]
    warped = warp(crop, t, (w, h)).astype(np.float64)
    cover = warp(np.full(crop.shape[:2], 255, np.uint8), t, (w, h)).astype(np.float64)[..., None] / 255
    out = np.clip(np.round(warped * cover + canvas * (1 - cover)), 0, 255).astype(np.uint8)
    return out, apply(t, template("ffhq", crop.shape[0]))


def background(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR))


def face_entry(kps: np.ndarray) -> dict:
    """One face in the landmarks format; the box is the points' extent, grown to a head."""
    lo, hi = kps.min(0), kps.max(0)
    pad = (hi - lo).max() * 0.6
    return {"kps": kps.round(3).tolist(), "bbox": [*(lo - pad).round(3).tolist(), *(hi + pad).round(3).tolist()]}


def write_landmarks(path: Path, entries: dict[str, list[np.ndarray]]) -> Path:
    path.write_text(json.dumps({k: [face_entry(p) for p in v] for k, v in entries.items()}))
    return path


def write_video(
    path: Path,
    frames: list[np.ndarray],
    fps: int = 24,
    audio_seconds: float | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """An H.264 MP4 (and an AAC sine track) written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "10"}
        a = None
        if audio_seconds:
            a = out.add_stream("aac", rate=48000)
            a.layout = "mono"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        if a is not None:
            n, chunk = int(48000 * audio_seconds), 1024
            t = np.arange(n) / 48000
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, n, chunk):
                samples = wave[start : start + chunk][None]  # (1, n): planar mono
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48000, start
                for packet in a.encode(frame):
                    out.mux(packet)
            for packet in a.encode():
                out.mux(packet)


def decode_video(path: Path, fmt: str = "rgb24") -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]
