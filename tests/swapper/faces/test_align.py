"""Alignment: Umeyama recovers known similarities, and the warp recovers a placed face's crop."""

from __future__ import annotations

import numpy as np
import pytest

from swapper.faces.align import (
    ARCFACE_112,
    align,
    apply,
    arcface_crop,
    invert,
    template,
    umeyama,
    warp,
)
from tests.swapper.faces.builders import background, place, similarity, smooth_face


def test_umeyama_recovers_a_similarity_and_never_mirrors():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    t = similarity(1.7, -33.0, (12.5, -40.0))
    np.testing.assert_allclose(umeyama(src, apply(t, src)), t, atol=1e-9)
    # a mirrored target has no exact similarity; the fit is still a rotation (det > 0), not a flip
    mirrored = apply(t, src) * [-1, 1]
    fit = umeyama(src, mirrored)
    assert np.linalg.det(fit[:, :2]) > 0


def test_umeyama_is_the_least_squares_fit():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = apply(similarity(0.8, 12.0, (5.0, 7.0)), src) + rng.normal(0, 2.0, (5, 2))
    best = umeyama(src, dst)
    residual = ((apply(best, src) - dst) ** 2).sum()
    a, b = best[0, 0], best[1, 0]  # the similarity's parameters: [[a, -b, tx], [b, a, ty]]
    for da, db, dx, dy in [(0.01, 0, 0, 0), (0, 0.01, 0, 0), (0, 0, 0.3, 0), (0, 0, 0, -0.3), (-0.01, 0.01, 0, 0)]:
        other = np.array([[a + da, -(b + db), best[0, 2] + dx], [b + db, a + da, best[1, 2] + dy]])
        assert ((apply(other, src) - dst) ** 2).sum() > residual


def test_warp_uses_pixel_centre_coordinates():
    """Pixel (i, j) is the point (j, i): halving samples every other pixel exactly, a shift moves whole pixels."""
    img = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp(img, np.array([[0.5, 0, 0], [0, 0.5, 0]]), (30, 20)), img[::2, ::2])
    np.testing.assert_array_equal(warp(img, np.array([[1, 0, -3.0], [0, 1, -2.0]]), (50, 30)), img[2:32, 3:53])


@pytest.mark.parametrize(("scale", "degrees", "shift"), [(2.3, 25.0, (140.0, 60.0)), (1.25, -40.0, (120.0, 230.0))])
def test_alignment_recovers_a_face_placed_under_a_known_transform(scale, degrees, shift):
    size = 96
    face = smooth_face(size, seed=3)
    t = similarity(scale, degrees, shift)  # crop -> canvas
    canvas, kps = place(background(480, 400, seed=4), face, t)
    crop, m = align(canvas, kps, size, "ffhq")
    np.testing.assert_allclose(m, invert(t), atol=1e-9)  # the exact inverse of the placement
    err = np.abs(crop.astype(float) - face)[3:-3, 3:-3]  # the outermost pixels mix with the background
    assert err.mean() < 1.5 and err.max() < 12  # two bilinear resamplings of a smooth face
    # an alignment one degree off is clearly worse: the comparison above can tell
    wrong = warp(canvas, similarity(1, 1.0, (0, 0)) @ np.vstack([m, [0, 0, 1]]), size)
    assert np.abs(wrong.astype(float) - face)[3:-3, 3:-3].mean() > 2 * err.mean()


def test_landmarks_land_on_the_template():
    """A blob drawn at a sub-pixel landmark position ends up centred on the template point."""
    h, w = 300, 400
    ys, xs = np.mgrid[:h, :w]
    kps = apply(similarity(1.9, 17.0, (150.3, 90.7)), template("ffhq", 128))
    image = np.zeros((h, w, 3), np.uint8)
    blob = np.exp(-((xs - kps[2, 0]) ** 2 + (ys - kps[2, 1]) ** 2) / (2 * 4.0**2))  # at the nose
    image[..., 1] = np.round(blob * 255).astype(np.uint8)
    crop, _ = align(image, kps, 128, "ffhq")
    weight = crop[..., 1].astype(float)
    cy, cx = (np.mgrid[:128, :128] * weight).reshape(2, -1).sum(1) / weight.sum()
    np.testing.assert_allclose([cx, cy], template("ffhq", 128)[2], atol=0.05)


def test_crop_templates():
    np.testing.assert_allclose(template("arcface", 112), ARCFACE_112)
    np.testing.assert_allclose(template("arcface", 224), ARCFACE_112 * 2)
    # the ffhq framing is looser than ArcFace's: the eyes are closer together in the crop
    ffhq, arc = template("ffhq", 256), template("arcface", 256)
    assert np.linalg.norm(ffhq[1] - ffhq[0]) < 0.8 * np.linalg.norm(arc[1] - arc[0])
    with pytest.raises(ValueError, match="unknown crop"):
        template("celeba", 256)


def test_the_source_crop_is_the_112_arcface_crop_wherever_the_face_is():
    face = smooth_face(96, seed=5)
    to_arcface = umeyama(template("ffhq", 96), ARCFACE_112)
    expected = warp(face, to_arcface, 112).astype(float)  # straight from the face's own crop
    inside = warp(np.full((96, 96), 255, np.uint8), to_arcface, 112) == 255  # the ArcFace crop reaches past the chin
    assert inside.mean() > 0.7
    for t in (similarity(1.5, 10.0, (60.0, 50.0)), similarity(1.8, -30.0, (60.0, 140.0))):
        canvas, kps = place(background(300, 300, seed=6), face, t)
        crop = arcface_crop(canvas, kps)
        assert crop.shape == (112, 112, 3)
        assert np.abs(crop.astype(float) - expected)[inside].mean() < 1.5
