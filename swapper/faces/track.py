"""Steady video: faces tracked from frame to frame by box overlap, their landmarks smoothed over time.

A detector finds each frame's landmarks anew, a pixel or two off each time, and the pasted face
shimmers. `FaceTracker` follows each face through a clip (a face keeps its track while its box
overlaps the one it had, so two people never swap places) and runs a one-euro filter (Casiez et
al., 2012) on its five points: a low-pass whose cut-off rises with the points' speed, so a still
face is held steady and a moving one is followed without lag. The speed is measured in face sizes
per second, so one setting serves small and large faces. The centre of the five points (the head's
motion, with five points' jitter averaged) follows speed closely (beta 20); the shape around it
(turns, tilts, expressions) changes more slowly and is smoothed harder (beta 0.5). Tuned on a head
drifting 40 px/s with 1.5 px of detector noise at 25 frames/s: the points' error falls to about 55%
of the raw detections' while moving and 38% while still (tests/swapper/faces/test_track.py). A cut
(a new shot) resets every track: the caller says where cuts are (`is_cut` compares frame thumbnails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from swapper.faces.detect import Face


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class OneEuro:
    """One-euro filter over an array of points; speeds are divided by `scale` (the face's size)."""

    min_cutoff: float = 1.0  # Hz: the cut-off of a still face (lower: steadier, more lag)
    beta: float = 2.0  # how fast the cut-off rises with speed (in face sizes per second)
    d_cutoff: float = 1.0  # Hz: the cut-off of the speed estimate itself
    value: np.ndarray | None = None
    speed: np.ndarray | None = None

    def __call__(self, x: np.ndarray, dt: float, scale: float) -> np.ndarray:
        if self.value is None:
            self.value, self.speed = x.copy(), np.zeros_like(x)
            return x.copy()
        a_d = _alpha(self.d_cutoff, dt)
        self.speed = a_d * (x - self.value) / dt + (1 - a_d) * self.speed
        cutoff = self.min_cutoff + self.beta * float(np.abs(self.speed).max()) / max(scale, 1e-6)
        a = _alpha(cutoff, dt)
        self.value = a * x + (1 - a) * self.value
        return self.value.copy()


@dataclass
class Track:
    """One face through a clip. Its points are smoothed as a centre (the mean of the five: where the head
    moves, with the jitter of five points averaged) and a shape around it (turns, tilts and expressions)."""

    box: np.ndarray
    centre: OneEuro
    shape: OneEuro
    box_filter: OneEuro

    def smooth(self, kps: np.ndarray, dt: float, scale: float) -> np.ndarray:
        mid = kps.mean(axis=0)
        return self.centre(mid, dt, scale) + self.shape(kps - mid, dt, scale)


class FaceTracker:
    """Per clip: `__call__(faces, cut)` -> the same faces with smoothed landmarks and boxes, in order."""

    def __init__(
        self, fps: float, min_cutoff: float = 1.0, beta: float = 20.0, shape_beta: float = 0.5, min_iou: float = 0.3
    ) -> None:
        self.dt = 1.0 / fps if fps > 0 else 1.0 / 25
        self.min_cutoff, self.beta, self.shape_beta, self.min_iou = min_cutoff, beta, shape_beta, min_iou
        self.tracks: list[Track] = []

    def __call__(self, faces: list[Face], cut: bool = False) -> list[Face]:
        if cut:
            self.tracks = []
        free = list(self.tracks)
        tracks: list[Track] = []
        out = []
        for face in sorted(faces, key=lambda f: f.area, reverse=True):  # big faces claim their track first
            best = max(free, key=lambda t: box_iou(t.box, face.bbox), default=None)
            if best is not None and box_iou(best.box, face.bbox) >= self.min_iou:
                free.remove(best)
                track = best
            else:
                track = Track(
                    face.bbox,
                    OneEuro(self.min_cutoff, self.beta),
                    OneEuro(self.min_cutoff, self.shape_beta),
                    OneEuro(self.min_cutoff, self.beta),
                )
            scale = float(max(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]))
            track.box = face.bbox
            kps = track.smooth(np.asarray(face.kps, np.float64), self.dt, scale)
            bbox = track.box_filter(np.asarray(face.bbox, np.float64), self.dt, scale)
            tracks.append(track)
            out.append((face, Face(bbox, kps, face.score)))
        self.tracks = tracks  # a face not seen this frame loses its track
        order = {id(f): i for i, f in enumerate(faces)}
        return [smoothed for face, smoothed in sorted(out, key=lambda p: order[id(p[0])])]


def is_cut(previous: np.ndarray | None, current: np.ndarray, threshold: float = 40.0) -> bool:
    """Whether two frames' small luma thumbnails (uint8) differ as a new shot does: mean absolute
    difference above `threshold` of 255 (a moving face changes a few percent of the frame)."""
    if previous is None or previous.shape != current.shape:
        return previous is not None
    return float(np.abs(previous.astype(np.int16) - current.astype(np.int16)).mean()) > threshold
