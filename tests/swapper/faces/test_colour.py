"""Colour matching: the swap takes the target face's Lab statistics inside the face region."""

from __future__ import annotations

import numpy as np

from swapper.faces.blend import ellipse_mask
from swapper.faces.colour import lab_to_rgb, match_colour, rgb_to_lab
from tests.swapper.faces.builders import smooth_face


def test_lab_round_trips_every_colour_to_within_one_level():
    rgb = np.random.default_rng(0).integers(0, 256, (4096, 3), dtype=np.uint8)
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)).astype(int) - rgb).max() <= 1
    white, black = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0]], np.uint8))
    np.testing.assert_allclose(white, [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(black, [0, 0, 0], atol=0.01)


def test_a_tinted_swap_takes_the_targets_colour_inside_the_face():
    target = smooth_face(64, seed=3)
    tinted = np.clip(target.astype(int) * [0.7, 0.9, 1.3] + [10, 0, 0], 0, 255).astype(np.uint8)  # bluer, darker
    weights = ellipse_mask(64, "ffhq")
    matched = match_colour(tinted, target, weights)

    def mean_lab(img: np.ndarray) -> np.ndarray:
        lab = rgb_to_lab(img)
        return (lab * weights[..., None]).sum((0, 1)) / weights.sum()

    before = np.abs(mean_lab(tinted) - mean_lab(target)).max()
    after = np.abs(mean_lab(matched) - mean_lab(target)).max()
    assert before > 5 and after < 1.0
    assert np.array_equal(match_colour(tinted, target, np.zeros_like(weights)), tinted)  # no region: unchanged
