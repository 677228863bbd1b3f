"""The YUV 4:2:0 canvas: crops like the RGB frame it encodes, pastes only inside the face's box."""

from __future__ import annotations

import av
import numpy as np
from PIL import Image

from swapper.faces.align import invert, warp
from swapper.faces.blend import crop_mask
from swapper.faces.canvas import RgbCanvas, Yuv420Canvas, rgb_to_yuv_matrix
from tests.swapper.faces.builders import background, similarity
from tests.swapper.faces.test_blend import reach

SIZE = 64


def i420(rgb: np.ndarray, colorspace: str = "ITU709") -> np.ndarray:
    """An RGB picture as FFmpeg's swscale encodes it to limited-range yuv420p."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", dst_colorspace=colorspace)
    return frame.to_ndarray(format="yuv420p")


def test_the_matrix_matches_swscale():
    colours = np.array([[200, 30, 60], [10, 220, 90], [90, 90, 240], [255, 255, 255], [0, 0, 0]], np.uint8)
    rgb = np.repeat(np.repeat(colours[None], 16, 0), 16, 1)  # (16, 80, 3): flat 16x16 patches
    for name, code in (("ITU709", 1), ("ITU601", 5)):
        ours, offset = rgb_to_yuv_matrix(code, 1)
        canvas = Yuv420Canvas(i420(rgb, name), 80, 16, code, 1)
        expected = colours @ ours.T + offset  # (5, 3)
        np.testing.assert_allclose(canvas.y[8, 8::16], expected[:, 0], atol=0.6)
        np.testing.assert_allclose(canvas.u[4, 4::8], expected[:, 1], atol=0.6)
        np.testing.assert_allclose(canvas.rgb((0, 0, 80, 16))[8, 8::16], colours, atol=1)


def test_crop_and_paste_in_yuv_agree_with_rgb():
    w, h = 320, 240
    picture = background(w, h, seed=1)
    array = i420(picture)
    canvas = Yuv420Canvas(array.copy(), w, h, 1, 1)
    rgb = RgbCanvas(canvas.to_image())
    m = invert(similarity(1.7, 15.0, (110.0, 30.0)))  # frame -> crop
    err = canvas.crop(m, SIZE).astype(int) - warp(picture, m, SIZE)  # against the picture before 4:2:0
    assert np.abs(err).mean() < 1.0 and np.abs(err).max() <= 6 and np.abs(err.mean((0, 1))).max() < 0.3  # no bias

    swap = np.full((SIZE, SIZE, 3), (200, 120, 40), np.uint8)
    mask = crop_mask("feather", SIZE, "ffhq")
    canvas.paste(swap, m, mask)
    rgb.paste(swap, m, mask)
    may_change, covered = reach(np.asarray(mask), m, h, w)
    y_before, y_after = array[:h], canvas.array[:h]
    np.testing.assert_array_equal(y_after[~may_change], y_before[~may_change])  # luma bit-exact outside
    chroma_free = ~may_change.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))  # 2x2 blocks the mask never reaches
    u_before, u_after = array[h:].reshape(-1)[: (h // 2) * (w // 2)], canvas.u.reshape(-1)
    np.testing.assert_array_equal(u_after[chroma_free.reshape(-1)], u_before[chroma_free.reshape(-1)])
    expected_y = rgb_to_yuv_matrix(1, 1)[0][0] @ [200, 120, 40] + 16
    assert np.abs(y_after[covered].astype(float) - expected_y).max() <= 0.5
    # seen as RGB, the YUV paste is the RGB paste (up to chroma subsampling at the rim)
    diff = np.abs(np.asarray(canvas.to_image()).astype(int) - np.asarray(rgb.image))
    assert diff[covered].max() <= 2 and diff.mean() < 0.5


def test_a_yuv_canvas_writes_into_its_own_array():
    array = i420(background(64, 48, seed=2))
    canvas = Yuv420Canvas(array, 64, 48, 2, 0)
    canvas.paste(np.zeros((SIZE, SIZE, 3), np.uint8), invert(similarity(0.5, 0.0, (16.0, 8.0))),
                 crop_mask("feather", SIZE, "ffhq"))  # fmt: skip
    assert canvas.array is array and array[20, 32] < 30  # black pasted into the planes themselves
    assert isinstance(canvas.to_image(), Image.Image) and canvas.to_image().size == (64, 48)
