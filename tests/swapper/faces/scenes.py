"""Test scenes made from real photos: the astronaut's head pasted at known sizes and rotations.

Coordinates: points are in pixel-index coordinates (centre of pixel (row, col) at (x=col, y=row)), the convention of
the detector's landmarks. PIL's affine transform works in continuous coordinates (pixel centres at +0.5), so the
forward maps below convert between the two.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
HAND_POINTS_FILE = HERE / "data" / "astronaut_landmarks.json"

# Head region of skimage.data.astronaut() pasted into scenes: centre and semi-axes (x, y) of an ellipse that holds
# the hair, face and chin but little of the suit (the suit's ring would look like a second "face" outline).
HEAD_CENTRE = (224.0, 118.0)
HEAD_AXES = (78.0, 92.0)


def astronaut() -> np.ndarray:
    from skimage import data  # dev-only dependency; imported here so the module loads without it

    return data.astronaut()


def grace_hopper() -> Image.Image:
    """matplotlib's sample photo of Grace Hopper (600x512 RGB); matplotlib is a dependency of the project."""
    import matplotlib

    return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")


def hand_points() -> np.ndarray:
    """The five hand-placed astronaut landmarks, (5, 2) float64, in the detector's order."""
    record = json.loads(HAND_POINTS_FILE.read_text())
    return np.array([record["points"][name] for name in record["order"]], dtype=np.float64)


def hand_uncertainty() -> np.ndarray:
    record = json.loads(HAND_POINTS_FILE.read_text())
    return np.array([record["uncertainty_px"][name] for name in record["order"]], dtype=np.float64)


@dataclass(frozen=True)
class Placement:
    """Where a pasted head goes: rotation in degrees (counter-clockwise as seen on screen), scale, and the point of
    the canvas (index coordinates) that the head centre lands on."""

    angle_deg: float
    scale: float
    centre: tuple[float, float]

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, t) with canvas_point = A @ source_point + t, both in index coordinates."""
        theta = math.radians(self.angle_deg)
        c, s = math.cos(theta), math.sin(theta)
        # y points down on screen, so counter-clockwise on screen is this matrix (not the textbook one).
        a = self.scale * np.array([[c, s], [-s, c]])
        t = np.asarray(self.centre) - a @ np.asarray(HEAD_CENTRE)
        return a, t

    def map_points(self, points: np.ndarray) -> np.ndarray:
        a, t = self.matrix()
        return points @ a.T + t


def gradient_canvas(width: int, height: int) -> Image.Image:
    """A plain diagonal grey-blue gradient: no face-like structure, but not a flat colour either."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xx / width + yy / height) / 2
    rgb = np.stack([90 + 100 * ramp, 110 + 90 * ramp, 140 + 70 * (1 - ramp)], axis=2)
    return Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), "RGB")


def paste_head(canvas: Image.Image, source: Image.Image, placement: Placement) -> None:
    """Paste the astronaut's head onto the canvas (in place), rotated and scaled with a feathered elliptical mask."""
    a, t = placement.matrix()
    inverse = np.linalg.inv(a)
    # PIL wants, for each canvas pixel (continuous coords u'), the source point u = inv(A) (u' - t'),
    # where in continuous coordinates t' = t + 0.5 - A @ (0.5, 0.5).
    t_cont = t + 0.5 - a @ np.array([0.5, 0.5])
    offset = -inverse @ t_cont
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = source.transform(canvas.size, Image.AFFINE, coeffs, resample=Image.BICUBIC)
    mask = Image.new("L", source.size, 0)
    cx, cy = HEAD_CENTRE
    ax, ay = HEAD_AXES
    ImageDraw.Draw(mask).ellipse((cx - ax, cy - ay, cx + ax, cy + ay), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(4))
    warped_mask = mask.transform(canvas.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)
    canvas.paste(warped, (0, 0), warped_mask)


# The multi-face scene of the tests: three heads, different sizes and in-plane rotations.
SCENE_SIZE = (1024, 768)
SCENE_PLACEMENTS = (
    Placement(angle_deg=20.0, scale=1.0, centre=(210.0, 230.0)),
    Placement(angle_deg=-25.0, scale=0.5, centre=(520.0, 150.0)),
    Placement(angle_deg=-12.0, scale=1.5, centre=(740.0, 470.0)),
)


def three_face_scene() -> tuple[Image.Image, list[np.ndarray]]:
    """The scene and, per head, where the hand-placed points land (in SCENE_PLACEMENTS order)."""
    canvas = gradient_canvas(*SCENE_SIZE)
    source = Image.fromarray(astronaut())
    for placement in SCENE_PLACEMENTS:
        paste_head(canvas, source, placement)
    return canvas, [placement.map_points(hand_points()) for placement in SCENE_PLACEMENTS]


def hd_frame() -> Image.Image:
    """A 1920x1080 frame with one face (the astronaut photo at 2x, head about 220 px wide) on a gradient."""
    canvas = gradient_canvas(1920, 1080)
    photo = Image.fromarray(astronaut()).resize((1024, 1024), Image.BICUBIC)
    canvas.paste(photo, (700, 40))
    return canvas
