"""Paste-back: warp a swapped crop into its frame and blend it under a feathered mask.

    mask (size, size) in crop space --inverse warp--> alpha over the face's box in the frame
    frame[box] = (swap * alpha + frame * (255 - alpha)) / 255      (Pillow's masked paste)

Masks are drawn once per crop size in crop space, where the face's geometry is the template's.
Where alpha is 0 the frame keeps its bytes exactly (Pillow's masked paste computes
`(frame * 255 + 127) / 255`, which is the frame value), and nothing outside the box is touched.

- `feather`: the whole crop (face, hair and the background the generator was trained to keep),
  fading out over its outer 10%: FaceFusion's box mask with blur.
- `mask`: an ellipse over the inner face (brows to chin, cheek to cheek), placed from the
  template's landmarks, with a soft edge: only the face region changes, the target's hair and
  background are kept as they are.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from swapper.faces.align import apply, invert, template, warp, warp_mask

BLENDS = ("feather", "mask")
BOX_MARGIN = 0.02  # of the crop side: the crop's outermost pixels are bilinear edge fill
BOX_FEATHER = 0.1  # of the crop side: width of the fade
ELLIPSE_RX, ELLIPSE_RY = 1.05, 1.25  # semi-axes in eye distances
ELLIPSE_FEATHER = 0.2  # fraction of the radius that fades


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def box_mask(size: int) -> np.ndarray:
    """(size, size) float in [0, 1]: 1 inside, fading to 0 at BOX_MARGIN from the crop's edges."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    edge = np.minimum(centres, size - centres) / size  # distance to the nearer edge, in crop sides
    ramp = _smoothstep((edge - BOX_MARGIN) / BOX_FEATHER)  # (size,)
    return np.minimum(ramp[:, None], ramp[None, :])


def ellipse_mask(size: int, crop: str) -> np.ndarray:
    """(size, size) float in [0, 1]: an ellipse over the template's face, soft at the rim."""
    points = template(crop, size)
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    cx, cy = points.mean(0)
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    r = np.hypot((xs - cx) / (ELLIPSE_RX * eye_distance), (ys - cy) / (ELLIPSE_RY * eye_distance))
    return _smoothstep((1.0 - r) / ELLIPSE_FEATHER)


@lru_cache(maxsize=8)
def crop_mask(kind: str, size: int, crop: str) -> Image.Image:
    """The blend mask in crop space as an 8-bit image (what the paste warps)."""
    if kind not in BLENDS:
        raise ValueError(f"unknown blend {kind!r}; choose from {BLENDS}")
    mask = box_mask(size) if kind == "feather" else ellipse_mask(size, crop)
    return Image.fromarray(np.round(mask * 255).astype(np.uint8), "L")


def paste_box(mask: Image.Image, m: np.ndarray, frame_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The frame-pixel box (x0, y0, x1, y1) that the mask's support lands on; None if off-frame.

    One pixel of slack on each side covers the bilinear footprint.
    """
    support = mask.getbbox()  # (x0, y0, x1, y1) of the nonzero pixels, x1 and y1 exclusive
    if support is None:
        return None
    lo, hi = np.array(support[:2], float) - 1.0, np.array(support[2:], float)
    corners = np.array([lo, [hi[0], lo[1]], hi, [lo[0], hi[1]]])
    frame_pts = apply(invert(m), corners)  # (4, 2) in frame pixels
    x0, y0 = np.floor(frame_pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(frame_pts.max(0)).astype(int) + 2
    w, h = frame_size
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def paste(frame: Image.Image, swap: Image.Image | np.ndarray, m: np.ndarray, mask: Image.Image) -> tuple | None:
    """Blend `swap` (a crop, frame -> crop map `m`) into `frame` in place; returns the box touched."""
    box = paste_box(mask, m, frame.size)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    # crop -> box-local pixels: the frame map, shifted so the box's corner is the origin
    to_box = invert(m).copy()
    to_box[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    rgb = Image.fromarray(warp(swap, to_box, size))
    alpha = warp_mask(mask, to_box, size)
    frame.paste(rgb, (x0, y0), alpha)
    return box
