"""Alignment: a similarity transform from a face's 5 landmarks to a template, and the warps.

    kps (5, 2) in the frame --umeyama--> M (2, 3): frame -> crop --warp--> crop (size, size, 3)

Points are in insightface's order (left eye, right eye, nose, left and right mouth corner, as seen
in the image) and in pixel-centre coordinates: pixel (i, j) is the point (j, i), as in OpenCV and
insightface. Images are warped with torch's `grid_sample` (float, rounded once; Pillow's own 8-bit
bilinear truncates, half a level darker per warp), whose align_corners=False grid puts pixel i at
(2 i + 1) / n - 1; masks use Pillow's 8-bit warp, which samples at (j + 0.5, i + 0.5), hence the
half-pixel shift in `pil_affine`.

Crops (the framing a generator was trained on; see docs/faces.md):
- `ffhq`: the FFHQ framing, as used by SimSwap's 512 pipeline and FaceFusion's `ffhq_512`. The
  official AlphaFace data (`ffhq_lpff/256_small`) and VGGFace2-HQ are crops of this kind: the
  whole head with some hair and background.
- `arcface`: the 112x112 ArcFace template scaled to the size (InSwapper's framing; insightface
  scales it the same way). It is also what the identity encoder's source crop uses, at 112.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# The insightface ArcFace template, in pixels of a 112x112 crop.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# The FFHQ framing, as fractions of the crop side (SimSwap's `ffhq` 512 template / 512).
FFHQ_UNIT = np.array(
    [[0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904], [0.39308822, 0.72541100],
     [0.61150205, 0.72490465]],
    dtype=np.float64,
)  # fmt: skip
CROPS = {"ffhq": FFHQ_UNIT, "arcface": ARCFACE_112 / 112.0}
ARCFACE_SIZE = 112


def template(crop: str, size: int) -> np.ndarray:
    """(5, 2) landmark positions of a `crop`-framed face in a size x size crop."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose from {sorted(CROPS)}")
    return CROPS[crop] * size


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) taking `src` onto `dst`.

    Umeyama (1991): the rotation comes from the SVD of the cross-covariance, with a reflection
    guard, so the result is never a mirror image. Returns the (2, 3) matrix [sR | t].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    a, b = src - mu_src, dst - mu_dst  # (N, 2)
    cov = b.T @ a / len(src)  # (2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(d) @ vt
    var_src = (a**2).sum() / len(src)
    if var_src <= 0:
        raise ValueError("the source points are all the same point")
    scale = float((s * d).sum() / var_src)
    shift = mu_dst - scale * rotation @ mu_src
    return np.hstack([scale * rotation, shift[:, None]])


def estimate(kps: np.ndarray, size: int, crop: str = "ffhq") -> np.ndarray:
    """(2, 3) frame -> crop transform that puts the 5 points `kps` on the `crop` template."""
    return umeyama(np.asarray(kps, np.float64).reshape(5, 2), template(crop, size))


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a (2, 3) affine map."""
    points = np.asarray(points, np.float64)
    return points @ m[:, :2].T + m[:, 2]


def pil_affine(m_out_to_in: np.ndarray) -> tuple[float, ...]:
    """Pillow's AFFINE data for an output -> input map `p_in = A p_out + t` in pixel-centre coordinates.

    Pillow evaluates the map at output pixel centres (j + 0.5, i + 0.5) and samples the input half a
    pixel shifted too, so the same map needs the shift t + (0.5, 0.5) - A (0.5, 0.5).
    """
    a, t = m_out_to_in[:, :2], m_out_to_in[:, 2]
    t = t + 0.5 - a @ np.array([0.5, 0.5])
    return (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: a warp is a few hundred thousand pixels, and in a video run the
    decoder's and x264's threads hold the other cores, so a thread pool would only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def footprint(
    m: np.ndarray, size: tuple[int, int], shape: tuple[int, int]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """What a warp by `m` (image -> output, output `size` (w, h)) of an image of `shape` (H, W) reads.

    Returns the image region (x0, y0, x1, y1) under the output, one pixel of slack for the bilinear
    footprint, and grid_sample's (2, 3) theta from the output's normalised coordinates to that
    region's; None where the output lies wholly outside the image. Shared by the host warp and the
    device one (`device_warp.py`), so both sample the same points.
    """
    w, h = size
    back = invert(m)  # output -> image
    corners = apply(back, np.array([[-1.0, -1.0], [w, -1.0], [w, h], [-1.0, h]]))
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [shape[1], shape[0]])
    if x1 <= x0 or y1 <= y0:
        return None
    back[:, 2] -= (x0, y0)  # region pixel p is image pixel p + (x0, y0)
    rw, rh = x1 - x0, y1 - y0
    # grid_sample (align_corners=False) puts pixel centre i of n at (2 i + 1) / n - 1; theta maps the
    # output's normalised coordinates to the region's
    to_norm = np.array([[2 / rw, 0, 1 / rw - 1], [0, 2 / rh, 1 / rh - 1], [0, 0, 1]])
    from_norm = np.array([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]])
    theta = (to_norm @ np.vstack([back, [0, 0, 1]]) @ from_norm)[:2]
    return (int(x0), int(y0), int(x1), int(y1)), theta


def warp_float(image: np.ndarray | Image.Image, m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Warp `image` ((H, W) or (H, W, C)) by the (2, 3) map `m` (image -> output): float32 (h, w[, C]).

    Bilinear (torch's `grid_sample`, vectorised and threaded), 0 where the output falls outside the
    image, as insightface's crops are black there. Only the part of the image under the output is
    read, so the cost follows the output's size, not the image's.
    """
    w, h = (size, size) if isinstance(size, int) else size
    array = np.asarray(image)
    planar = array.ndim == 2
    channels = 1 if planar else array.shape[2]
    found = footprint(m, (w, h), array.shape[:2])
    if found is None:  # the output lies wholly outside the image
        return np.zeros((h, w) if planar else (h, w, channels), np.float32)
    (x0, y0, x1, y1), theta = found
    rw, rh = x1 - x0, y1 - y0
    with single_thread(), torch.inference_mode():
        region = torch.from_numpy(np.array(array[y0:y1, x0:x1], np.float32))  # (rh, rw[, C]), a copy
        region = region.reshape(rh, rw, channels).permute(2, 0, 1)[None]  # (1, C, rh, rw)
        grid = F.affine_grid(torch.from_numpy(theta[None]).float(), [1, channels, h, w], align_corners=False)
        out = F.grid_sample(region, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (1, C, h, w)
        out = out[0].permute(1, 2, 0).contiguous().numpy()  # (h, w, C)
    return out[..., 0] if planar else out


def warp(image: np.ndarray | Image.Image, m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """`warp_float` of an 8-bit image, rounded to nearest: uint8 (h, w[, C]).

    (Pillow's own 8-bit bilinear truncates: half a level darker on average, per warp.)
    """
    return np.rint(warp_float(image, m, size)).astype(np.uint8)  # convex weights: values stay in 0..255


def warp_mask(mask: Image.Image, m: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Warp an 8-bit mask with Pillow's own 8-bit bilinear (for Pillow's masked paste).

    Its truncation only ever lowers a weight a little, and 0 stays 0, which is what the
    paste-back's bit-exactness rests on.
    """
    return mask.transform(size, Image.Transform.AFFINE, pil_affine(invert(m)), resample=Image.Resampling.BILINEAR)


def align(
    image: np.ndarray | Image.Image, kps: np.ndarray, size: int, crop: str = "ffhq"
) -> tuple[np.ndarray, np.ndarray]:
    """(crop (size, size, 3) uint8, M frame -> crop) for one face."""
    m = estimate(kps, size, crop)
    return warp(image, m, size), m


def arcface_crop(image: np.ndarray | Image.Image, kps: np.ndarray) -> np.ndarray:
    """The standard 112x112 ArcFace crop (the identity encoder's input framing)."""
    return align(image, kps, ARCFACE_SIZE, "arcface")[0]
