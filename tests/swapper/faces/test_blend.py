"""Paste-back: every pixel the face region cannot reach is bit-exact; the inside becomes the swap."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from swapper.faces.align import apply, invert
from swapper.faces.blend import box_mask, crop_mask, ellipse_mask, paste
from tests.swapper.faces.builders import similarity

SIZE = 64


def reach(mask: np.ndarray, m: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame pixel, from the geometry alone: (may change, fully covered).

    A frame pixel maps into the crop at a sub-pixel point; bilinear sampling reads its 4 integer
    neighbours. It may change if any neighbour has mask > 0, and is fully the swap if all are 255.
    """
    ys, xs = np.mgrid[:h, :w]
    u, v = apply(m, np.stack([xs.ravel(), ys.ravel()], 1)).T  # crop coordinates
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    padded = np.pad(mask, 1)  # zeros around the crop: outside the crop nothing is pasted
    any_on, all_full = np.zeros(u.shape, bool), np.ones(u.shape, bool)
    for du in (0, 1):
        for dv in (0, 1):
            cu, cv = np.clip(u0 + du + 1, 0, SIZE + 1), np.clip(v0 + dv + 1, 0, SIZE + 1)
            value = padded[cv, cu]
            any_on |= value > 0
            all_full &= value == 255
    return any_on.reshape(h, w), all_full.reshape(h, w)


@pytest.mark.parametrize("kind", ["feather", "mask"])
def test_paste_changes_only_the_face_region(kind):
    h, w = 220, 300
    frame = np.random.default_rng(0).integers(0, 100, (h, w, 3), dtype=np.uint8)  # noise: any change shows
    swap = np.full((SIZE, SIZE, 3), 200, np.uint8)
    m = invert(similarity(1.9, 21.0, (120.0, 40.0)))  # frame -> crop; the face sits inside the frame
    mask = crop_mask(kind, SIZE, "ffhq")
    image = Image.fromarray(frame)
    box = paste(image, swap, m, mask)
    out = np.asarray(image)
    may_change, covered = reach(np.asarray(mask), m, h, w)
    assert (~may_change).sum() > 0.5 * h * w
    np.testing.assert_array_equal(out[~may_change], frame[~may_change])  # bit-exact outside
    assert covered.sum() > 500
    np.testing.assert_array_equal(out[covered], 200)  # fully the swap where the mask is full
    assert (out[may_change] != frame[may_change]).any(-1).mean() > 0.9  # and the rest of the region changed
    x0, y0, x1, y1 = box
    outside_box = np.ones((h, w), bool)
    outside_box[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[outside_box], frame[outside_box])


def test_the_mask_keeps_hair_and_background_that_feather_pastes():
    box, ellipse = box_mask(SIZE), ellipse_mask(SIZE, "ffhq")
    assert box[SIZE // 2, SIZE // 2] == 1 and box[0, 0] == 0 and box[SIZE // 2, 0] == 0
    assert (box > 0).mean() > 0.85  # the whole crop, faded at its rim
    assert ellipse[int(0.6 * SIZE), SIZE // 2] == 1  # the nose and mouth region is pasted
    assert ellipse[int(0.1 * SIZE), SIZE // 2] == 0 and ellipse[SIZE // 2, 1] == 0  # hair and background kept
    assert 0.15 < (ellipse > 0).mean() < 0.4


def test_a_face_partly_outside_the_frame_pastes_what_is_inside():
    frame = np.zeros((100, 100, 3), np.uint8)
    image = Image.fromarray(frame)
    m = invert(similarity(2.0, 0.0, (-50.0, -30.0)))  # the crop's top-left quarter is off-frame
    assert paste(image, np.full((SIZE, SIZE, 3), 255, np.uint8), m, crop_mask("feather", SIZE, "ffhq")) is not None
    assert np.asarray(image)[40:70, 20:50].min() == 255
    off = invert(similarity(1.0, 0.0, (500.0, 500.0)))  # wholly off-frame: nothing to do
    assert paste(image, np.zeros((SIZE, SIZE, 3), np.uint8), off, crop_mask("feather", SIZE, "ffhq")) is None
