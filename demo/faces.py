"""A pasted-back picture for `make demo`: faces placed into a scene with known landmarks, then swapped.

    aligned crops --known similarity--> a scene (+ the landmarks JSON they imply)
    scene --python -m swapper.swap --detector landmarks:--> the swap pasted back into the scene
    [scene | swapped] --> DIR/faces_in_the_wild.png

The crops are treated as FFHQ-framed (the `ffhq` crop convention), so their 5 landmarks are the
template's points; placing a crop moves the points with it. Nothing is detected, so no detector
weights are needed: this shows the alignment and the paste-back, not a detector.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from swapper.faces.align import apply, template, warp

# (scale, degrees, (x, y)) per face: crop -> scene, for crops scaled to CROP px
PLACEMENTS = ((1.35, 14.0, (150.0, 60.0)), (0.8, -22.0, (470.0, 190.0)))
CROP = 256
SCENE = (768, 512)


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def scene_background(w: int, h: int) -> np.ndarray:
    """A room-like backdrop: a vertical gradient and a few soft panels."""
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(70 + 90 * t), int(90 + 60 * t), int(120 + 40 * t)))
    for i, box in enumerate(((40, 330, 260, 500), (300, 20, 420, 160), (600, 300, 740, 480))):
        draw.rectangle(box, fill=(120 + 30 * i, 110 + 20 * i, 90 + 10 * i))
    return np.asarray(img)


def place(scene: np.ndarray, crop: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw `crop` into `scene` under `t` (crop -> scene), with a soft edge; returns (scene, kps)."""
    h, w = scene.shape[:2]
    size = crop.shape[0]
    d = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5)  # distance to the nearer edge
    edge = np.minimum.outer(d, d)
    cover = np.clip(edge / (0.04 * size), 0, 1)  # fade over the outer 4%
    alpha = warp(np.round(cover * 255).astype(np.uint8), t, (w, h)).astype(np.float64)[..., None] / 255
    out = warp(crop, t, (w, h)) * alpha + scene * (1 - alpha)
    return np.round(out).astype(np.uint8), apply(t, template("ffhq", size))


def load_crop(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((CROP, CROP), Image.Resampling.BICUBIC))


def face_entry(kps: np.ndarray) -> dict[str, Any]:
    lo, hi = kps.min(0), kps.max(0)
    pad = float((hi - lo).max()) * 0.7
    return {"kps": kps.round(2).tolist(), "bbox": [*(lo - pad).round(2).tolist(), *(hi + pad).round(2).tolist()]}


def pasted_back_demo(
    checkpoint: str | Path,
    source: str | Path,
    targets: list[str | Path],
    out: str | Path,
    blend: str = "mask",
    device: str = "cpu",
) -> dict[str, Any]:
    """Swap `source`'s identity onto the `targets` crops (up to two) placed in one scene; write the picture.

    `source` and `targets` are aligned face crops (the demo's synthetic VGGFace2-HQ images). The
    source goes into a scene of its own, so it too is found through the landmarks file. `mask`
    blending changes only the inner face, so the picture shows what moved.
    """
    from swapper import swap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source_scene, source_kps = place(scene_background(*SCENE), load_crop(Path(source)), similarity(1.1, -8, (250, 80)))
    scene, faces = scene_background(*SCENE), []
    for path, (scale, degrees, shift) in zip(targets, PLACEMENTS, strict=False):
        scene, kps = place(scene, load_crop(Path(path)), similarity(scale, degrees, shift))
        faces.append(kps)
    Image.fromarray(source_scene).save(out / "source_scene.png")
    Image.fromarray(scene).save(out / "scene.png")
    landmarks = out / "landmarks.json"
    entries = {"source_scene.png": [face_entry(source_kps)], "scene.png": [face_entry(k) for k in faces]}
    landmarks.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    swapped = out / "scene_swapped.png"
    summary = swap.main(
        [
            "--checkpoint", str(checkpoint), "--source", str(out / "source_scene.png"),
            "--target", str(out / "scene.png"), "--output", str(swapped),
            "--detector", f"landmarks:{landmarks}", "--blend", blend, "--min-face", "0",
            "--device", device, "--no-progress",
        ]
    )  # fmt: skip
    picture = Image.new("RGB", (SCENE[0] * 2 + 8, SCENE[1]), (255, 255, 255))
    picture.paste(Image.open(out / "scene.png"), (0, 0))
    picture.paste(Image.open(swapped), (SCENE[0] + 8, 0))
    picture.save(out / "faces_in_the_wild.png")
    print(f"faces in the wild: {out / 'faces_in_the_wild.png'} (scene | swapped)", file=sys.stderr)
    return {
        "picture": str(out / "faces_in_the_wild.png"),
        "scene": str(out / "scene.png"),
        "swapped": str(swapped),
        "landmarks": str(landmarks),
        "faces_swapped": summary["faces_swapped"],
    }
