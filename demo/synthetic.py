"""Synthetic face datasets, drawn with PIL, for tests and the demo (no external assets).

    python -m demo.synthetic --out DIR --layout vggface2-hq|celeba-hq \
        [--identities N --per-identity M --seed S --size PX]

Each identity keeps its face shape, skin tone, hair, eye spacing and facial hair; each image varies
head yaw and pitch, expression, glasses, hat, an occluding object, lighting and background, so a
captioner has something to describe. The ground truth goes to `DIR/synthetic_attributes.jsonl`,
one JSON line per image.

The files use the real on-disk layouts:

- `vggface2-hq`: `DIR/n000001/0001_01.jpg`, ... (512 px by default).
- `celeba-hq`: `DIR/CelebA-HQ-img/{0..N-1}.jpg` (1024 px by default), `CelebA-HQ-to-CelebA-mapping.txt`,
  CelebA's `identity_CelebA.txt` and `list_eval_partition.txt`, and CelebAMask-HQ part masks
  `CelebAMask-HQ-mask-anno/<idx // 2000>/<idx:05d>_<class>.png` (512 px, 0/255).

Conventions: yaw > 0 turns the face towards the image's right, pitch > 0 tilts it up (degrees).
`l_*` / `r_*` mask classes are the subject's left / right (image right / left). The same seed
gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipeline.sources import SYNTHETIC_MARKER

LAYOUTS = ("vggface2-hq", "celeba-hq")
DEFAULT_SIZE = {"vggface2-hq": 512, "celeba-hq": 1024}
MASK_SIZE = 512  # CelebAMask-HQ annotations are 512x512 whatever the image size
MASKS_PER_FOLDER = 2000  # CelebAMask-HQ-mask-anno/<idx // 2000>/
ATTRIBUTES_FILE = SYNTHETIC_MARKER  # its presence marks the data synthetic (pipeline.sources)

EXPRESSIONS = ("neutral", "smile", "open_mouth", "frown")
OCCLUDERS = ("hand", "mask", "microphone")
LIGHTINGS = ("even", "left", "right", "top", "dim", "bright")
BACKGROUND_PATTERNS = ("plain", "gradient", "striped", "checkered", "dotted")
MASK_CLASSES = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
# CelebA's three eval partitions are contiguous ranges of its 202,599 original images.
CELEBA_PARTITION_RANGES = {0: (0, 162770), 1: (162770, 182637), 2: (182637, 202599)}
CELEBA_IDENTITIES = 10177

COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (52, 97, 170),
    "green": (64, 140, 80),
    "red": (170, 50, 50),
    "gray": (128, 128, 128),
    "yellow": (220, 190, 70),
    "purple": (110, 70, 150),
    "orange": (225, 130, 50),
    "teal": (40, 140, 140),
    "pink": (220, 140, 170),
    "white": (235, 235, 230),
}
SKIN_TONES = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (160, 104, 70), (110, 70, 45)]
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (25, 22, 20),
    "dark brown": (65, 42, 28),
    "brown": (110, 72, 40),
    "blond": (215, 180, 110),
    "red": (160, 70, 35),
    "gray": (160, 160, 160),
}
EYE_COLOURS = [(70, 45, 25), (50, 90, 150), (60, 110, 70), (30, 30, 30)]

Colour = tuple[int, int, int]
Point = tuple[float, float]


# ---------------------------------------------------------------------------------------------
# What varies: identities and per-image looks


@dataclass(frozen=True)
class Identity:
    name: str  # folder name (vggface2-hq) or CelebA identity number (celeba-hq)
    face_w: float  # head width and height, relative to the average
    face_h: float
    skin: Colour
    hair_colour: str
    hair_style: str  # "short" | "long" | "buzz"
    eye_spacing: float  # eye centre offset from the face midline, in face half-widths
    eye_size: float
    eye_colour: Colour
    nose_length: float
    mouth_width: float
    brow_thickness: float
    facial_hair: str | None  # None | "beard" | "mustache"
    earrings: bool
    necklace: bool
    cloth: Colour


@dataclass(frozen=True)
class Look:
    yaw: float  # degrees, > 0 turns the face to the image's right
    pitch: float  # degrees, > 0 tilts the face up
    expression: str
    glasses: bool
    hat: bool
    occluder: str | None
    lighting: str
    background: str  # "<pattern> <colour>"


def _clamp(colour: list[float]) -> Colour:
    r, g, b = (max(0, min(255, round(c))) for c in colour)
    return r, g, b


def _jitter(rng: random.Random, colour: Colour, amount: int) -> Colour:
    return _clamp([c + rng.randint(-amount, amount) for c in colour])


def make_identity(rng: random.Random, name: str) -> Identity:
    return Identity(
        name=name,
        face_w=rng.uniform(0.86, 1.14),
        face_h=rng.uniform(0.9, 1.1),
        skin=_jitter(rng, rng.choice(SKIN_TONES), 10),
        hair_colour=rng.choice(sorted(HAIR_COLOURS)),
        hair_style=rng.choice(("short", "long", "buzz")),
        eye_spacing=rng.uniform(0.3, 0.44),
        eye_size=rng.uniform(0.8, 1.2),
        eye_colour=rng.choice(EYE_COLOURS),
        nose_length=rng.uniform(0.8, 1.2),
        mouth_width=rng.uniform(0.8, 1.2),
        brow_thickness=rng.uniform(0.7, 1.4),
        facial_hair=rng.choices([None, "beard", "mustache"], weights=[6, 2, 2])[0],
        earrings=rng.random() < 0.2,
        necklace=rng.random() < 0.15,
        cloth=_jitter(rng, rng.choice(list(COLOURS.values())), 30),
    )


def make_look(rng: random.Random) -> Look:
    return Look(
        yaw=round(rng.uniform(-60.0, 60.0), 1),
        pitch=round(rng.uniform(-25.0, 25.0), 1),
        expression=rng.choice(EXPRESSIONS),
        glasses=rng.random() < 0.3,
        hat=rng.random() < 0.25,
        occluder=rng.choices([None, *OCCLUDERS], weights=[6, 1, 1, 1])[0],
        lighting=rng.choice(LIGHTINGS),
        background=f"{rng.choice(BACKGROUND_PATTERNS)} {rng.choice(sorted(COLOURS))}",
    )


# ---------------------------------------------------------------------------------------------
# Geometry: a face is a list of parts in unit coordinates, drawn back to front


@dataclass(frozen=True)
class Part:
    shape: str  # "ellipse" | "polygon" | "line"
    xy: tuple[float, ...]  # unit coordinates: an ellipse's box, or polygon / line points
    fill: Colour | None
    label: str | None  # CelebAMask-HQ class; None: hides what is behind it, has no class itself
    width: float = 0.0  # outline / line width, in units of the image side
    outline: Colour | None = None
    overlay: bool = False  # glasses: a mask of its own that hides no other class


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> tuple[float, ...]:
    return (cx - abs(rx), cy - abs(ry), cx + abs(rx), cy + abs(ry))


def _flat(points: list[Point]) -> tuple[float, ...]:
    return tuple(c for p in points for c in p)


def _shade(colour: Colour, factor: float) -> Colour:
    return _clamp([c * factor for c in colour])


class _Head:
    """Projects points on the face (u across, v down, both in [-1, 1]) for a given yaw and pitch.

    The head is treated as a sphere-like surface: a point at angle asin(u) across appears at
    sin(asin(u) + yaw), so features slide sideways and foreshorten as the head turns.
    """

    def __init__(self, ident: Identity, look: Look) -> None:
        self.cx, self.cy = 0.5, 0.47
        self.a, self.b = 0.21 * ident.face_w, 0.27 * ident.face_h  # half-width, half-height
        self.yaw, self.pitch = math.radians(look.yaw), math.radians(look.pitch)

    def angle_u(self, u: float) -> float:
        return math.asin(max(-1.0, min(1.0, u))) + self.yaw

    def point(self, u: float, v: float, depth: float = 0.0) -> Point:
        """`depth` > 0 lifts the point off the surface (the nose tip) so it moves more."""
        psi = math.asin(max(-1.0, min(1.0, v))) - self.pitch
        x = self.cx + self.a * (math.sin(self.angle_u(u)) + depth * math.sin(self.yaw))
        y = self.cy + self.b * (math.sin(psi) - depth * math.sin(self.pitch))
        return x, y

    def squash(self, u: float, v: float) -> tuple[float, float]:
        """Foreshortening of a small feature at (u, v): (horizontal, vertical) scale."""
        psi = math.asin(max(-1.0, min(1.0, v))) - self.pitch
        return max(0.15, math.cos(self.angle_u(u))), max(0.3, math.cos(psi))

    def outline(self) -> tuple[float, float, float, float]:
        """Face silhouette ellipse (cx, cy, rx, ry): narrower and shifted as the head turns."""
        return (
            self.cx + 0.12 * self.a * math.sin(self.yaw),
            self.cy - 0.08 * self.b * math.sin(self.pitch),
            self.a * (0.88 + 0.12 * math.cos(self.yaw)),
            self.b * (0.94 + 0.06 * math.cos(self.pitch)),
        )


def _curve(head: _Head, u0: float, u1: float, v_of_u: Callable[[float], float], n: int = 9) -> list[Point]:
    return [head.point(u, v_of_u(u)) for u in np.linspace(u0, u1, n).tolist()]


def _hair_parts(ident: Identity, head: _Head, behind: bool) -> list[Part]:
    colour = HAIR_COLOURS[ident.hair_colour]
    fcx, fcy, rx, ry = head.outline()
    if behind:
        if ident.hair_style != "long":
            return []
        # long hair falls behind the head down to the shoulders
        top = fcy - ry * 1.08
        pts = [(fcx - rx * 1.2, fcy + ry * 0.9), (fcx - rx * 1.15, top + ry * 0.3), (fcx, top)]
        pts += [(fcx + rx * 1.15, top + ry * 0.3), (fcx + rx * 1.2, fcy + ry * 0.9)]
        return [Part("polygon", _flat(pts), colour, "hair")]
    # the scalp: the top of an ellipse slightly larger than the head, closed by the hairline,
    # which follows the head (looking up shows less hair, turning shifts the parting)
    grow = 1.02 if ident.hair_style == "buzz" else 1.09
    hairline_v = -0.62 if ident.hair_style == "buzz" else -0.5
    arc = [
        (fcx + rx * grow * math.cos(t), fcy - 0.04 + ry * grow * math.sin(t))
        for t in np.linspace(math.pi * 1.05, math.pi * 1.95, 15).tolist()
    ]
    hairline = _curve(head, 0.97, -0.97, lambda u: hairline_v + 0.12 * u * u, n=13)
    return [Part("polygon", _flat(arc + hairline), colour, "hair")]


@dataclass(frozen=True)
class ExpressionStyle:
    """How far each expression moves the eyes, brows and mouth (fractions of the head)."""

    eye_open: dict[str, float]  # eye opening, x neutral's
    brow_lift: dict[str, float]  # brows up (negative) or down
    frown_inner_drop: float  # inner brow ends pulled towards the nose
    mouth_width: dict[str, float]  # mouth width, x neutral's
    corner: dict[str, float]  # mouth corners up (negative) or down
    gap: dict[str, float]  # the opening between the lips (neutral: 0.006)
    teeth: tuple[str, ...]  # expressions that show teeth
    teeth_width: float  # of the mouth's
    teeth_div: float  # the teeth's lower edge: gap / teeth_div above the mouth's centre line (negative: below)


# demo and tests: realistic, 1-2 px apart at 64 px
SUBTLE = ExpressionStyle(
    eye_open={"smile": 0.7, "open_mouth": 1.25, "frown": 0.85}, brow_lift={"open_mouth": -0.06, "frown": 0.03},
    frown_inner_drop=0.05, mouth_width={}, corner={"smile": -0.06, "frown": 0.05},
    gap={"open_mouth": 0.08, "smile": 0.012}, teeth=("open_mouth", "smile"), teeth_width=0.6, teeth_div=6,
)  # fmt: skip
# demo.world: drawn large enough that a small network at 64 px can read them (SUBTLE stays near chance there)
BOLD = ExpressionStyle(
    eye_open={"smile": 0.45, "open_mouth": 1.5, "frown": 0.75}, brow_lift={"open_mouth": -0.14, "frown": 0.06},
    frown_inner_drop=0.12, mouth_width={"smile": 1.2, "open_mouth": 0.85}, corner={"smile": -0.16, "frown": 0.14},
    gap={"open_mouth": 0.22, "smile": 0.05}, teeth=("smile",), teeth_width=0.7, teeth_div=-3,
)  # fmt: skip


def _eye_parts(ident: Identity, look: Look, head: _Head, side: int, style: ExpressionStyle = SUBTLE) -> list[Part]:
    """side = +1 for the subject's left eye (image right), -1 for the right eye."""
    label, brow_label = ("l_eye", "l_brow") if side > 0 else ("r_eye", "r_brow")
    u, v = side * ident.eye_spacing, -0.05
    sx, sy = head.squash(u, v)
    x, y = head.point(u, v)
    open_ = style.eye_open.get(look.expression, 1.0)
    rx, ry = 0.04 * ident.eye_size * sx, 0.019 * ident.eye_size * sy * open_
    iris = 0.55 * ry / max(open_, 0.7)
    parts = [
        Part("ellipse", _ellipse(x, y, rx, ry), (245, 245, 240), label, 0.003, _shade(ident.skin, 0.6)),
        Part("ellipse", _ellipse(x, y, min(iris, rx), iris), ident.eye_colour, label),
        Part("ellipse", _ellipse(x, y, min(iris, rx) * 0.45, iris * 0.45), (10, 10, 10), label),
    ]
    # brows: raised when surprised, pulled down towards the nose when frowning
    lift = style.brow_lift.get(look.expression, 0.0)
    inner_drop = style.frown_inner_drop if look.expression == "frown" else 0.0
    inner = head.point(side * (ident.eye_spacing - 0.16), -0.22 + lift + inner_drop)
    outer = head.point(side * (ident.eye_spacing + 0.2), -0.24 + lift)
    mid = head.point(side * (ident.eye_spacing + 0.02), -0.28 + lift)
    brow = _shade(HAIR_COLOURS[ident.hair_colour], 0.8)
    parts.append(Part("line", _flat([inner, mid, outer]), brow, brow_label, 0.011 * ident.brow_thickness))
    return parts


def _mouth_parts(ident: Identity, look: Look, head: _Head, style: ExpressionStyle = SUBTLE) -> list[Part]:
    w = 0.26 * ident.mouth_width * style.mouth_width.get(look.expression, 1.0)
    v0 = 0.5
    lip = _shade((min(255, ident.skin[0] + 20), ident.skin[1], ident.skin[2]), 0.72)
    # the corners rise in a smile and drop in a frown; the opening is a gap between the lips
    corner = style.corner.get(look.expression, 0.0)
    gap = style.gap.get(look.expression, 0.006)

    def centre(u: float) -> float:
        return v0 + corner * (u / w) ** 2

    upper_top = _curve(head, -w, w, lambda u: centre(u) - 0.05 * (1 - (u / w) ** 2) - gap / 2)
    upper_bottom = _curve(head, w, -w, lambda u: centre(u) - gap / 2 * (1 - (u / w) ** 2))
    lower_top = _curve(head, -w, w, lambda u: centre(u) + gap / 2 * (1 - (u / w) ** 2))
    lower_bottom = _curve(head, w, -w, lambda u: centre(u) + (0.06 + gap / 2) * (1 - (u / w) ** 2))
    parts = [
        Part("polygon", _flat(upper_bottom + lower_top), (60, 20, 25), "mouth"),
        Part("polygon", _flat(upper_top + upper_bottom), lip, "u_lip"),
        Part("polygon", _flat(lower_top + lower_bottom), lip, "l_lip"),
    ]
    if look.expression in style.teeth:
        tw = w * style.teeth_width
        teeth_top = _curve(head, -tw, tw, lambda u: centre(u) - gap / 2 * (1 - (u / w) ** 2))
        teeth_bottom = _curve(head, tw, -tw, lambda u: centre(u) - gap / style.teeth_div * (1 - (u / w) ** 2))
        parts.insert(1, Part("polygon", _flat(teeth_top + teeth_bottom), (240, 240, 235), "mouth"))
    return parts


def _nose_parts(ident: Identity, head: _Head) -> list[Part]:
    length = 0.25 * ident.nose_length
    bridge = head.point(0.0, -0.02)
    tip = head.point(0.0, -0.02 + length, depth=0.22)
    left = head.point(0.1, length, depth=0.05)
    right = head.point(-0.1, length, depth=0.05)
    colour = _shade(ident.skin, 0.88)
    parts = [Part("polygon", _flat([bridge, left, tip, right]), colour, "nose")]
    for u in (0.05, -0.05):
        x, y = head.point(u, length + 0.005, depth=0.08)
        parts.append(Part("ellipse", _ellipse(x, y, 0.007, 0.004), _shade(ident.skin, 0.45), "nose"))
    return parts


def _ear_parts(ident: Identity, head: _Head, behind: bool) -> list[Part]:
    """Ears sit at +-90 degrees on the head: at the silhouette when frontal, over the face cheek
    when the head turns away from them, hidden when they turn behind the head."""
    fcx, fcy, rx, ry = head.outline()
    parts = []
    for side, label in ((1, "l_ear"), (-1, "r_ear")):
        angle = side * math.pi / 2 + head.yaw
        c = math.cos(angle)
        if c < -0.5 or (c > 0.15) == behind:
            continue
        x = fcx + rx * math.sin(angle) * 0.98
        y = fcy + 0.05 * ry - 0.08 * ry * math.sin(head.pitch)
        ear_w = 0.045 * max(0.5, abs(math.sin(angle)) if c <= 0.15 else 1.0)
        parts.append(Part("ellipse", _ellipse(x, y, ear_w, 0.085), _shade(ident.skin, 0.93), label))
        if ident.earrings:
            parts.append(Part("ellipse", _ellipse(x, y + 0.095, 0.012, 0.012), (230, 200, 60), "ear_r"))
    return parts


def _glasses_parts(ident: Identity, head: _Head, rng: random.Random) -> list[Part]:
    frame = rng.choice([(20, 20, 20), (120, 80, 40), (180, 180, 190), (150, 30, 30)])
    parts, inner = [], []
    for side in (1, -1):
        u, v = side * ident.eye_spacing, -0.04
        sx, sy = head.squash(u, v)
        x, y = head.point(u, v)
        box = _ellipse(x, y, 0.06 * sx, 0.045 * sy)
        parts.append(Part("ellipse", box, None, "eye_g", 0.007, frame, overlay=True))
        inner.append(head.point(side * (ident.eye_spacing - 0.28), v))
        temple_u = side * min(0.99, ident.eye_spacing + 0.6)
        if math.cos(head.angle_u(temple_u)) > 0.1:
            parts.append(
                Part(
                    "line",
                    _flat([head.point(side * (ident.eye_spacing + 0.3), v), head.point(temple_u, v)]),
                    frame,
                    "eye_g",
                    0.006,
                    overlay=True,
                )  # fmt: skip
            )
    parts.append(Part("line", _flat(inner), frame, "eye_g", 0.006, overlay=True))
    return parts


def _hat_parts(head: _Head, rng: random.Random) -> list[Part]:
    colour = _jitter(rng, rng.choice(list(COLOURS.values())), 25)
    fcx, fcy, rx, ry = head.outline()
    band_y = fcy - ry * 0.62 - 0.05 * math.sin(head.pitch)
    crown = [(fcx + rx * 1.05 * math.cos(t), band_y + ry * 0.75 * math.sin(t))
             for t in np.linspace(math.pi, 2 * math.pi, 15).tolist()]  # fmt: skip
    shift = 0.1 * rx * math.sin(head.yaw)  # the brim points where the face points
    brim = _ellipse(fcx + shift, band_y, rx * 1.45, 0.03 + 0.03 * abs(math.sin(head.pitch)))
    return [Part("polygon", _flat(crown), colour, "hat"), Part("ellipse", brim, _shade(colour, 0.8), "hat")]


def _occluder_parts(ident: Identity, look: Look, head: _Head, rng: random.Random) -> list[Part]:
    if look.occluder == "hand":
        skin = _shade(ident.skin, 0.97)
        side = rng.choice((1, -1))
        x, y = head.point(side * 0.45, 0.55)
        parts = [Part("ellipse", _ellipse(x, y + 0.09, 0.07, 0.08), skin, None, 0.003, _shade(skin, 0.75))]
        for i in range(4):
            fx = x - 0.05 + i * 0.033
            finger = (fx - 0.014, y - 0.1 + abs(i - 1.5) * 0.02, fx + 0.014, y + 0.06)
            parts.append(Part("ellipse", finger, skin, None, 0.003, _shade(skin, 0.75)))
        return parts
    if look.occluder == "mask":
        colour = rng.choice([(200, 225, 240), (240, 240, 240), (40, 40, 45)])
        top = _curve(head, -0.85, 0.85, lambda u: 0.12 + 0.1 * u * u, n=11)
        bottom = _curve(head, 0.8, -0.8, lambda u: 0.92 - 0.25 * u * u, n=11)
        parts = [Part("polygon", _flat(top + bottom), colour, None, 0.003, _shade(colour, 0.8))]
        for side in (1, -1):
            if math.cos(head.angle_u(side * 0.99)) > -0.2:
                strap = [head.point(side * 0.85, 0.2), head.point(side * 0.99, 0.05)]
                parts.append(Part("line", _flat(strap), _shade(colour, 0.9), None, 0.006))
        return parts
    if look.occluder == "microphone":
        x, y = head.point(rng.uniform(-0.3, 0.3), 0.72)
        handle = [(x - 0.018, y + 0.04), (x + 0.018, y + 0.04), (x + 0.03, 1.02), (x - 0.03, 1.02)]
        return [
            Part("polygon", _flat(handle), (30, 30, 35), None),
            Part("ellipse", _ellipse(x, y, 0.05, 0.055), (150, 150, 155), None, 0.004, (90, 90, 95)),
        ]
    return []


def face_parts(ident: Identity, look: Look, rng: random.Random, style: ExpressionStyle = SUBTLE) -> list[Part]:
    """Every part of one image, back to front."""
    head = _Head(ident, look)
    fcx, fcy, rx, ry = head.outline()
    skin = ident.skin
    neck_x = fcx - 0.05 * rx * math.sin(head.yaw)
    neck = [(neck_x - rx * 0.5, fcy + ry * 0.6), (neck_x + rx * 0.5, fcy + ry * 0.6),
            (neck_x + rx * 0.6, 0.9), (neck_x - rx * 0.6, 0.9)]  # fmt: skip
    shoulders = [(0.06, 1.01), (0.14, 0.88), (0.35, 0.83), (0.65, 0.83), (0.86, 0.88), (0.94, 1.01)]
    parts = [
        *_hair_parts(ident, head, behind=True),
        Part("polygon", _flat(neck), _shade(skin, 0.85), "neck"),
        Part("polygon", _flat(shoulders), ident.cloth, "cloth", 0.003, _shade(ident.cloth, 0.7)),
    ]
    if ident.necklace:
        chain = [(neck_x - rx * 0.55, 0.8), (neck_x, 0.84), (neck_x + rx * 0.55, 0.8)]
        parts.append(Part("line", _flat(chain), (225, 200, 90), "neck_l", 0.007))
    parts += _ear_parts(ident, head, behind=True)
    parts.append(Part("ellipse", _ellipse(fcx, fcy, rx, ry), skin, "skin", 0.003, _shade(skin, 0.8)))
    parts += _ear_parts(ident, head, behind=False)
    if ident.facial_hair == "beard":
        jaw = _curve(head, -0.95, 0.95, lambda u: 0.3 + 0.12 * u * u, n=11)
        chin = [(fcx + rx * 0.9 * math.cos(t), fcy + ry * 1.02 * math.sin(t))
                for t in np.linspace(0.15 * math.pi, 0.85 * math.pi, 11).tolist()]  # fmt: skip
        parts.append(Part("polygon", _flat(jaw + chin), _shade(HAIR_COLOURS[ident.hair_colour], 0.9), "skin"))
    parts += _hair_parts(ident, head, behind=False)
    parts += _nose_parts(ident, head)
    if ident.facial_hair in ("beard", "mustache"):
        mustache = _curve(head, -0.3, 0.3, lambda u: 0.36 + 0.1 * u * u) + _curve(
            head, 0.3, -0.3, lambda u: 0.43 + 0.05 * u * u
        )
        parts.append(Part("polygon", _flat(mustache), _shade(HAIR_COLOURS[ident.hair_colour], 0.8), "skin"))
    parts += _mouth_parts(ident, look, head, style)
    # the eye on the far side of a turned head is drawn first, so the nose can hide it
    for side in sorted((1, -1), key=lambda s: math.cos(head.angle_u(s * ident.eye_spacing))):
        parts += _eye_parts(ident, look, head, side, style)
    if look.glasses:
        parts += _glasses_parts(ident, head, rng)
    if look.hat:
        parts += _hat_parts(head, rng)
    parts += _occluder_parts(ident, look, head, rng)
    return parts


# ---------------------------------------------------------------------------------------------
# Rendering


def _px(xy: tuple[float, ...], size: int) -> list[float]:
    return [c * size for c in xy]


def _draw(draw: ImageDraw.ImageDraw, part: Part, size: int, fill: Any, outline: Any) -> None:
    width = max(1, round(part.width * size)) if part.width else 0
    xy = _px(part.xy, size)
    if part.shape == "ellipse":
        draw.ellipse(xy, fill=fill, outline=outline, width=width or 1)
    elif part.shape == "polygon":
        draw.polygon(xy, fill=fill, outline=outline, width=width or 1)
    elif part.shape == "line":
        draw.line(xy, fill=fill if fill is not None else outline, width=width, joint="curve")
    else:
        raise ValueError(f"unknown shape {part.shape!r}")


def _background(look: Look, size: int, rng: random.Random) -> Image.Image:
    pattern, colour_name = look.background.split(" ", 1)
    base = COLOURS[colour_name]
    light, dark = _shade(base, 1.25), _shade(base, 0.7)
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    if pattern == "gradient":
        for y in range(size):
            t = y / max(1, size - 1)
            draw.line([(0, y), (size, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(light, dark)))
    elif pattern == "striped":
        step = max(2, round(size * rng.uniform(0.04, 0.1)))
        for x in range(0, size, 2 * step):
            draw.rectangle([x, 0, x + step - 1, size], fill=light)
    elif pattern == "checkered":
        step = max(2, round(size * rng.uniform(0.06, 0.14)))
        for i, x in enumerate(range(0, size, step)):
            for j, y in enumerate(range(0, size, step)):
                if (i + j) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=dark)
    elif pattern == "dotted":
        for _ in range(40):
            x, y, r = rng.random() * size, rng.random() * size, size * rng.uniform(0.01, 0.04)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=light)
    return img


def _apply_lighting(img: Image.Image, lighting: str) -> Image.Image:
    size = img.size[0]
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if lighting == "left":
        gain = np.tile(1.3 - 0.75 * ramp, (size, 1))  # bright on the image's left
    elif lighting == "right":
        gain = np.tile(0.55 + 0.75 * ramp, (size, 1))
    elif lighting == "top":
        gain = np.tile((1.3 - 0.7 * ramp)[:, None], (1, size))
    elif lighting == "dim":
        gain = np.full((size, size), 0.5, dtype=np.float32)
    elif lighting == "bright":
        gain = np.full((size, size), 1.35, dtype=np.float32)
    else:
        return img
    arr = np.asarray(img, dtype=np.float32) * gain[:, :, None]  # (H, W, 3)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_image(look: Look, parts: list[Part], size: int, rng: random.Random) -> Image.Image:
    img = _background(look, size, rng)
    draw = ImageDraw.Draw(img)
    for part in parts:
        _draw(draw, part, size, part.fill, part.outline)
    return _apply_lighting(img, look.lighting)


def render_masks(parts: list[Part], size: int = MASK_SIZE) -> dict[str, Image.Image]:
    """CelebAMask-HQ-style part masks: each class where it is visible (later parts hide earlier
    ones), glasses on their own. Every class the face has gets a file, even if it ends up hidden."""
    index = {name: i + 1 for i, name in enumerate(MASK_CLASSES)}
    hidden = len(MASK_CLASSES) + 1  # occluders: hide parts, have no class
    labels = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(labels)
    overlays: dict[str, Image.Image] = {}
    for part in parts:
        if part.overlay:
            mask = overlays.setdefault(part.label or "", Image.new("L", (size, size), 0))
            # an annotator's glasses mask covers the lenses too, not just the frame
            _draw(ImageDraw.Draw(mask), part, size, 255, 255)
            continue
        value = index[part.label] if part.label else hidden
        _draw(draw, part, size, value, value)
    arr = np.asarray(labels)
    present = {p.label for p in parts if p.label and not p.overlay}
    masks = {name: Image.fromarray(np.where(arr == index[name], 255, 0).astype(np.uint8), "L") for name in present}
    masks.update(overlays)
    return {name: masks[name] for name in MASK_CLASSES if name in masks}


# ---------------------------------------------------------------------------------------------
# Layouts


def _attributes(rel: str, ident: Identity, look: Look) -> dict[str, Any]:
    return {
        "path": rel,
        "identity": ident.name,
        "yaw": look.yaw,
        "pitch": look.pitch,
        "expression": look.expression,
        "glasses": look.glasses,
        "hat": look.hat,
        "occluder": look.occluder,
        "lighting": look.lighting,
        "background": look.background,
        "hair": f"{ident.hair_style} {ident.hair_colour}",
        "facial_hair": ident.facial_hair,
    }


def mask_relpath(idx: int, name: str) -> str:
    """Where CelebAMask-HQ keeps the `name` part mask of CelebA-HQ image `idx`."""
    return f"CelebAMask-HQ-mask-anno/{idx // MASKS_PER_FOLDER}/{idx:05d}_{name}.png"


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=95)


def generate(
    out: str | Path,
    layout: str,
    identities: int = 4,
    per_identity: int = 3,
    seed: int = 0,
    size: int | None = None,
) -> dict[str, Any]:
    """Draw `identities x per_identity` faces into `out` in `layout`; returns a summary.

    Existing files of the same names are overwritten; nothing else in `out` is touched.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if identities < 1 or per_identity < 1:
        raise ValueError(f"identities and per_identity must be >= 1, got {identities} and {per_identity}")
    size = DEFAULT_SIZE[layout] if size is None else size
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # string-seeded generators: a person depends on (seed, identity number) and a picture on
    # (seed, identity number, image number), not on how many others are drawn
    rng = random.Random(f"{seed}:{layout}:layout")

    if layout == "vggface2-hq":
        names = [f"n{i + 1:06d}" for i in range(identities)]
        jobs = [(i, j, f"{names[i]}/{j + 1:04d}_01.jpg") for i in range(identities) for j in range(per_identity)]
    else:
        celeb_ids = rng.sample(range(1, CELEBA_IDENTITIES + 1), identities)
        names = [str(c) for c in celeb_ids]
        order = [(i, j) for i in range(identities) for j in range(per_identity)]
        rng.shuffle(order)  # CelebA-HQ numbers images without grouping them by identity
        jobs = [(i, j, f"CelebA-HQ-img/{idx}.jpg") for idx, (i, j) in enumerate(order)]

    people = [make_identity(random.Random(f"{seed}:identity:{i}"), names[i]) for i in range(identities)]
    records = []
    for idx, (i, j, rel) in enumerate(jobs):
        img_rng = random.Random(f"{seed}:image:{i}:{j}")
        look = make_look(img_rng)
        parts = face_parts(people[i], look, img_rng)
        _save_jpeg(render_image(look, parts, size, img_rng), out / rel)
        if layout == "celeba-hq":
            for name, mask in render_masks(parts).items():
                path = out / mask_relpath(idx, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                mask.save(path, "PNG")
        records.append(_attributes(rel, people[i], look))

    if layout == "celeba-hq":
        _write_celeba_lists(out, jobs, names, rng)
    _write_lines(out / ATTRIBUTES_FILE, [json.dumps(r) for r in records])
    return {
        "out": str(out),
        "layout": layout,
        "images": len(records),
        "identities": identities,
        "size": size,
        "attributes": str(out / ATTRIBUTES_FILE),
    }


def _write_celeba_lists(out: Path, jobs: list[tuple[int, int, str]], names: list[str], rng: random.Random) -> None:
    """The CelebA-HQ mapping plus CelebA's identity and partition lists for these images.

    Splits are per identity, as in CelebA: mostly train, with at least one val and one test
    identity once there are three. Each image's original CelebA number lies in its split's range.
    """
    n = len(names)
    held_out = max(1, n // 10) if n >= 3 else 0
    ranked = rng.sample(range(n), n)
    split_of = {i: 1 if r < held_out else 2 if r < 2 * held_out else 0 for r, i in enumerate(ranked)}
    taken: set[int] = set()
    orig_of: dict[int, int] = {}
    for idx, (i, _, _) in enumerate(jobs):
        lo, hi = CELEBA_PARTITION_RANGES[split_of[i]]
        orig = rng.randrange(lo, hi)
        while orig in taken:
            orig = rng.randrange(lo, hi)
        taken.add(orig)
        orig_of[idx] = orig

    mapping = ["idx orig_idx orig_file"] + [f"{idx} {orig} {orig + 1:06d}.jpg" for idx, orig in orig_of.items()]
    _write_lines(out / "CelebA-HQ-to-CelebA-mapping.txt", mapping)
    by_file = sorted((orig + 1, jobs[idx][0]) for idx, orig in orig_of.items())
    _write_lines(out / "identity_CelebA.txt", [f"{f:06d}.jpg {names[i]}" for f, i in by_file])
    _write_lines(out / "list_eval_partition.txt", [f"{f:06d}.jpg {split_of[i]}" for f, i in by_file])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m demo.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--layout", required=True, choices=LAYOUTS, help="on-disk layout to write")
    parser.add_argument("--identities", type=int, default=4, help="number of identities")
    parser.add_argument("--per-identity", type=int, default=3, help="images per identity")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512, CelebA-HQ 1024)")
    args = parser.parse_args(argv)
    summary = generate(args.out, args.layout, args.identities, args.per_identity, args.seed, args.size)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
