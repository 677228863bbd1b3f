"""Steady video: a face's landmarks on a known smooth path plus detector noise come out closer to the path,
each face keeps its own track, and a cut (a new shot) resets the filter."""

from __future__ import annotations

import numpy as np

from swapper.faces.detect import Face
from swapper.faces.track import FaceTracker, is_cut

FPS = 25.0
BASE = np.array([[-20.0, -10.0], [20.0, -10.0], [0.0, 8.0], [-15.0, 25.0], [15.0, 25.0]])  # 5 points around 0


def face_at(centre: np.ndarray, scale: float = 1.0) -> Face:
    kps = centre + BASE * scale
    half = 50.0 * scale
    return Face(np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half]), kps, 0.99)


def path(t: np.ndarray) -> np.ndarray:
    """A head drifting and swaying: (n, 2) centres, in pixels, at times t (seconds)."""
    return np.stack([300 + 40 * t + 15 * np.sin(1.3 * t), 200 + 10 * np.sin(0.7 * t)], axis=1)


def errors(centres: np.ndarray, seed: int) -> tuple[float, float]:
    """(raw, smoothed) mean landmark error against the truth, once the filter has settled."""
    noise = np.random.default_rng(seed).normal(0, 1.5, (len(centres), 5, 2))  # detector jitter, 1.5 px
    tracker = FaceTracker(FPS)
    raw_err, smooth_err = [], []
    for i, c in enumerate(centres):
        truth = c + BASE
        face = Face(face_at(c).bbox, truth + noise[i], 0.99)
        (out,) = tracker([face])
        if i >= 10:
            raw_err.append(np.abs(face.kps - truth).mean())
            smooth_err.append(np.abs(out.kps - truth).mean())
    return float(np.mean(raw_err)), float(np.mean(smooth_err))


def test_smoothed_points_are_closer_to_the_path_than_the_raw_ones():
    t = np.arange(100) / FPS
    for seed in range(3):
        raw, smooth = errors(path(t), seed)  # moving: measured 0.55 of the raw error
        assert smooth < 0.7 * raw
        raw, smooth = errors(np.tile([[300.0, 200.0]], (100, 1)), seed)  # still: measured 0.38
        assert smooth < 0.5 * raw


def test_each_face_keeps_its_track_whatever_order_the_detector_gives():
    tracker = FaceTracker(FPS)
    rng = np.random.default_rng(1)
    for i in range(30):
        a, b = np.array([200.0 + i, 200.0]), np.array([600.0 - i, 220.0])
        faces = [face_at(a), face_at(b, 0.8)]
        faces = [Face(f.bbox, f.kps + rng.normal(0, 1, (5, 2)), f.score) for f in faces]
        if i % 2:
            faces.reverse()
        out = tracker(faces)
        for face, smoothed in zip(faces, out, strict=True):  # in the detector's order, each near its own face
            assert np.abs(smoothed.kps - face.kps).max() < 10


def test_a_cut_resets_the_filter():
    tracker = FaceTracker(FPS)
    for _ in range(20):
        tracker([face_at(np.array([300.0, 200.0]))])
    moved = face_at(np.array([330.0, 200.0]))  # the same place, give or take: the box still overlaps
    (lagging,) = tracker([moved])
    assert np.abs(lagging.kps - moved.kps).max() > 1  # without a cut, a jump is low-passed
    tracker = FaceTracker(FPS)
    for _ in range(20):
        tracker([face_at(np.array([300.0, 200.0]))])
    (reset,) = tracker([moved], cut=True)
    np.testing.assert_array_equal(reset.kps, moved.kps)  # a new shot starts from the detection itself


def test_cuts_are_told_from_frame_thumbnails():
    rng = np.random.default_rng(2)
    shot = rng.integers(0, 256, (18, 32), dtype=np.uint8)
    moving = np.roll(shot, 1, axis=1)
    moving[:, 0] = shot[:, 0]
    other = rng.integers(0, 256, (18, 32), dtype=np.uint8)
    assert not is_cut(None, shot) and not is_cut(shot, shot)
    assert is_cut(shot, other)
    assert not is_cut(np.full((18, 32), 100, np.uint8), np.full((18, 32), 110, np.uint8))  # a light change
