"""Frames the swapper reads face crops from and pastes swaps into: RGB photos and YUV video frames.

    RgbCanvas      a PIL image (photos, and video in pixel formats other than 8-bit 4:2:0)
    Yuv420Canvas   a decoded 4:2:0 video frame's planes, left in YUV: each plane is warped on its
                   own and colour is converted only at the crop's size, so every pixel outside
                   the faces' boxes is the decoder's own bytes, and a 1080p frame costs no
                   full-frame colour conversion.

Both give `crop(m, size)` (the aligned RGB crop) and `paste(swap, m, mask)` (blend the swap in
under the mask; untouched where the mask is 0). The YUV blend is the RGB blend carried through the
colour matrix (it is linear): Y under the mask at full resolution, U and V under the mask warped to
chroma resolution.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from swapper.faces.align import invert, warp, warp_float
from swapper.faces.blend import paste, paste_box

# (Kr, Kb) luma weights per FFmpeg colour space (AVColorSpace); anything else is read as BT.601,
# as FFmpeg's swscale does for untagged video.
LUMA_WEIGHTS = {1: (0.2126, 0.0722), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}  # BT.709, BT.2020
BT601 = (0.299, 0.114)
FULL_RANGE = 2  # AVCOL_RANGE_JPEG


class Canvas(Protocol):
    size: tuple[int, int]  # (width, height)

    def crop(self, m: np.ndarray, size: int) -> np.ndarray: ...

    def paste(self, swap: np.ndarray, m: np.ndarray, mask: Image.Image) -> None: ...

    def to_image(self) -> Image.Image: ...

    def thumbnail(self) -> np.ndarray: ...


THUMBNAIL = (32, 18)  # (width, height) of the luma thumbnail that tells shots apart


class RgbCanvas:
    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self.size = image.size
        self._array: np.ndarray | None = None  # the pixels as numpy, read once for all of a frame's crops

    def crop(self, m: np.ndarray, size: int) -> np.ndarray:
        if self._array is None:
            self._array = np.asarray(self.image)
        return warp(self._array, m, size)

    def paste(self, swap: np.ndarray, m: np.ndarray, mask: Image.Image) -> None:
        paste(self.image, swap, m, mask)
        self._array = None

    def put(self, pixels: np.ndarray, origin: tuple[int, int]) -> None:
        """Write (h, w, 3) uint8 pixels at `origin` (x, y): a box the device paste-back computed."""
        self.image.paste(Image.fromarray(pixels), origin)
        self._array = None

    def to_image(self) -> Image.Image:
        return self.image

    def thumbnail(self) -> np.ndarray:
        """(18, 32) uint8 luma, for cut detection."""
        return np.asarray(self.image.convert("L").resize(THUMBNAIL, Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------
# YUV <-> RGB, 8 bit


def rgb_to_yuv_matrix(colorspace: int, color_range: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, 3) matrix and (3,) offset: yuv = M @ rgb + offset, all in 0..255 units."""
    kr, kb = LUMA_WEIGHTS.get(colorspace, BT601)
    kg = 1.0 - kr - kb
    m = np.array(
        [
            [kr, kg, kb],
            [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
            [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))],
        ]
    )
    if color_range != FULL_RANGE:  # limited ("TV") range: Y in 16..235, U and V in 16..240
        m = m * np.array([[219 / 255], [224 / 255], [224 / 255]])
        return m, np.array([16.0, 128.0, 128.0])
    return m, np.array([0.0, 128.0, 128.0])


def _compose(m: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The (2, 3) affine map `m` after `a`."""
    return np.hstack([m[:, :2] @ a[:, :2], m[:, :2] @ a[:, 2:] + m[:, 2:]])


def _plane_map(m: np.ndarray, scale: int, origin: tuple[int, int]) -> np.ndarray:
    """Plane-box pixels -> crop, for a plane at 1/`scale` resolution whose box starts at `origin`.

    Chroma sample (j, i) sits at the centre of the 2x2 luma pixels it covers, luma 2 (j, i) + 0.5.
    """
    shift = (scale - 1) / 2
    to_frame = np.array([[scale, 0.0, scale * origin[0] + shift], [0.0, scale, scale * origin[1] + shift]])
    return _compose(m, to_frame)


class Yuv420Canvas:
    """The planes of an 8-bit 4:2:0 frame of even width and height, as one I420 array.

    `array` is (H * 3 / 2, W): Y, then U and V (each (H/2, W/2), packed into rows of W), the layout
    PyAV's `to_ndarray`/`from_ndarray` use for yuv420p. Crops and pastes warp each plane on its own
    (Pillow, 8-bit) and convert colour only at the crop's size, so a face costs a few warps of its
    box, whatever the frame's size.
    """

    def __init__(self, array: np.ndarray, width: int, height: int, colorspace: int, color_range: int) -> None:
        if width % 2 or height % 2 or array.shape != (height * 3 // 2, width):
            raise ValueError(f"not an even-sized I420 array: {array.shape} for {width}x{height}")
        self.array, self.size = array, (width, height)
        self.y = array[:height]
        chroma = array[height:].reshape(-1)  # a view: U then V, each (H/2, W/2)
        n = (height // 2) * (width // 2)
        self.u, self.v = chroma[:n].reshape(height // 2, -1), chroma[n:].reshape(height // 2, -1)
        self.to_yuv, self.offset = rgb_to_yuv_matrix(colorspace, color_range)
        self.to_rgb = np.linalg.inv(self.to_yuv)

    def _even_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int] | None:
        w, h = self.size
        x0, y0 = max(int(np.floor(x0)) // 2 * 2, 0), max(int(np.floor(y0)) // 2 * 2, 0)
        x1, y1 = min(-(-int(np.ceil(x1)) // 2) * 2, w), min(-(-int(np.ceil(y1)) // 2) * 2, h)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def _planes(self, box: tuple[int, int, int, int]) -> list[tuple[np.ndarray, int, tuple[int, int]]]:
        """(the plane's view of the box, its scale, the box's origin in plane pixels) for Y, U, V."""
        x0, y0, x1, y1 = box
        half = (slice(y0 // 2, y1 // 2), slice(x0 // 2, x1 // 2))
        return [(self.y[y0:y1, x0:x1], 1, (x0, y0)), (self.u[half], 2, (x0 // 2, y0 // 2)),
                (self.v[half], 2, (x0 // 2, y0 // 2))]  # fmt: skip

    def yuv_to_rgb(self, yuv: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 YUV -> (..., 3) uint8 RGB."""
        rgb = (yuv.astype(np.float32) - self.offset.astype(np.float32)) @ self.to_rgb.T.astype(np.float32)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def rgb_to_yuv(self, rgb: np.ndarray) -> np.ndarray:
        yuv = rgb.astype(np.float32) @ self.to_yuv.T.astype(np.float32) + self.offset.astype(np.float32)
        return np.clip(yuv + 0.5, 0, 255).astype(np.uint8)

    def rgb(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB of an even-aligned box (chroma repeated 2x2)."""
        y, u, v = (plane for plane, _, _ in self._planes(box))
        yuv = np.stack([y, u.repeat(2, 0).repeat(2, 1), v.repeat(2, 0).repeat(2, 1)], axis=-1)  # (h, w, 3)
        return self.yuv_to_rgb(yuv)

    def to_image(self) -> Image.Image:
        return Image.fromarray(self.rgb((0, 0, *self.size)))

    def thumbnail(self) -> np.ndarray:
        """(18, 32) uint8 luma (the Y plane itself), for cut detection."""
        return np.asarray(Image.fromarray(self.y).resize(THUMBNAIL, Image.Resampling.BILINEAR))

    def crop(self, m: np.ndarray, size: int) -> np.ndarray:
        """The aligned RGB crop: each plane warped to the crop (reading only its footprint), then
        converted at the crop's size."""
        planes = self._planes((0, 0, *self.size))
        yuv = [warp(plane, _plane_map(m, scale, origin), size) for plane, scale, origin in planes]
        return self.yuv_to_rgb(np.stack(yuv, axis=-1))  # (size, size, 3)

    def paste(self, swap: np.ndarray, m: np.ndarray, mask: Image.Image) -> None:
        """Blend the swap into each plane under the mask, both warped to that plane's resolution.

        The swap is converted to YUV at the crop's size and warped with its mask in one pass per
        resolution (Y and mask to the luma box; U, V and mask to the chroma box).
        """
        box = paste_box(mask, m, self.size)
        if box is not None:
            box = self._even_box(*box)
        if box is None:
            return
        layers = np.dstack([self.rgb_to_yuv(np.asarray(swap)), np.asarray(mask)])  # (S, S, 4): Y, U, V, mask
        (y, _, origin), (u, _, half_origin), (v, _, _) = self._planes(box)
        luma = warp_float(layers[..., [0, 3]], invert(_plane_map(m, 1, origin)), (y.shape[1], y.shape[0]))
        chroma = warp_float(layers[..., 1:], invert(_plane_map(m, 2, half_origin)), (u.shape[1], u.shape[0]))
        for plane, value, alpha in ((y, luma[..., 0], luma[..., 1]), (u, chroma[..., 0], chroma[..., 2]),
                                    (v, chroma[..., 1], chroma[..., 2])):  # fmt: skip
            a = alpha / 255
            blended = np.rint(value * a + plane * (1 - a)).astype(np.uint8)  # convex: stays in 0..255
            plane[...] = np.where(alpha > 0, blended, plane)  # where the mask is 0, the decoder's bytes
