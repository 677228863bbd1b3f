"""The demo's pasted-back picture: faces placed in a scene with known landmarks, swapped, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from demo.faces import SCENE, pasted_back_demo
from tests.swapper.faces.builders import smooth_face


def test_pasted_back_demo_swaps_every_placed_face(tmp_path, tiny_generator):
    crops = []
    for seed in (40, 41, 42):
        crops.append(tmp_path / f"crop{seed}.png")
        Image.fromarray(smooth_face(128, seed)).save(crops[-1])
    result = pasted_back_demo(tiny_generator, crops[0], crops[1:], tmp_path / "faces")
    assert result["faces_swapped"] == 2
    assert Image.open(result["picture"]).size == (2 * SCENE[0] + 8, SCENE[1])
    scene, swapped = np.asarray(Image.open(result["scene"])), np.asarray(Image.open(result["swapped"]))
    changed = (scene != swapped).any(-1)
    assert 0.02 < changed.mean() < 0.5  # the two inner faces, not the scene
    assert len(json.loads(Path(result["landmarks"]).read_text())["scene.png"]) == 2
