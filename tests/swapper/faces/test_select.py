"""Which faces a swap touches, on real photos: every face of a scene and nothing else, the N-th from the left,
the largest, and only the faces like a reference photo's (FaceFusion's selectors)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from swapper import swap
from tests.swapper.faces import scenes


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The three astronaut heads (sizes 1.0, 0.5, 1.5; rotated) and, per head, its hand-placed points."""
    root = tmp_path_factory.mktemp("scene")
    image, points = scenes.three_face_scene()
    image.save(root / "scene.png")
    Image.fromarray(scenes.astronaut()).save(root / "astronaut.png")
    return root, points


def swapped(tmp_path, tiny_generator, source, target, *extra) -> tuple[np.ndarray, dict]:
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}.png"
    common = ["--output", str(out), "--device", "cpu", "--no-progress", "--min-face", "20"]
    summary = swap.main(["--checkpoint", str(tiny_generator), "--source", str(source), "--target", str(target),
                         *common, *extra])  # fmt: skip
    changed = np.abs(np.asarray(Image.open(out)).astype(int) - np.asarray(Image.open(target))).sum(axis=2) > 0
    return changed, summary


def near(changed: np.ndarray, points: np.ndarray, radius: float) -> float:
    """The share of the region within `radius` eye distances of a face's points that changed."""
    centre, eyes = points.mean(0), np.linalg.norm(points[1] - points[0])
    ys, xs = np.mgrid[: changed.shape[0], : changed.shape[1]]
    region = np.hypot(xs - centre[0], ys - centre[1]) < radius * eyes
    return float(changed[region].mean())


def owner(changed: np.ndarray, faces: list[np.ndarray]) -> np.ndarray:
    """Changed pixels farther than 4 eye distances from every face: paste-back where no face is."""
    ys, xs = np.nonzero(changed)
    far = np.ones(len(xs), bool)
    for points in faces:
        centre, eyes = points.mean(0), np.linalg.norm(points[1] - points[0])
        far &= np.hypot(xs - centre[0], ys - centre[1]) >= 4 * eyes
    return far


def test_every_face_of_a_scene_and_nothing_else(tmp_path, tiny_generator, scene):
    root, faces = scene
    changed, summary = swapped(tmp_path, tiny_generator, root / "astronaut.png", root / "scene.png")
    assert summary["faces_swapped"] == 3
    assert all(near(changed, points, 1.0) > 0.5 for points in faces)  # the paste-back landed on each face
    assert not owner(changed, faces).any()  # and nowhere else


def test_the_nth_from_the_left_and_the_largest(tmp_path, tiny_generator, scene):
    root, faces = scene  # left to right: scale 1.0 (x 210), 0.5 (x 520), 1.5 (x 740)
    second, summary = swapped(tmp_path, tiny_generator, root / "astronaut.png", root / "scene.png", "--faces", "left:2")
    assert summary["faces_swapped"] == 1
    assert near(second, faces[1], 1.0) > 0.5 and near(second, faces[0], 2.0) == near(second, faces[2], 2.0) == 0
    largest, _ = swapped(tmp_path, tiny_generator, root / "astronaut.png", root / "scene.png", "--faces", "largest")
    assert near(largest, faces[2], 1.0) > 0.5 and near(largest, faces[0], 2.0) == near(largest, faces[1], 2.0) == 0
    _, none = swapped(tmp_path, tiny_generator, root / "astronaut.png", root / "scene.png", "--faces", "left:3")
    assert none["faces_swapped"] == 1  # left:3 is the third of three


def test_a_reference_photo_picks_its_person_among_others(tmp_path, tiny_generator, scene):
    root, _ = scene
    canvas = scenes.gradient_canvas(1100, 560)  # the astronaut beside Grace Hopper, each at its own photo's scale
    canvas.paste(Image.fromarray(scenes.astronaut()), (20, 20))
    canvas.paste(scenes.grace_hopper(), (560, 20))
    canvas.save(tmp_path / "two.png")
    both, summary = swapped(tmp_path, tiny_generator, root / "astronaut.png", tmp_path / "two.png")
    assert summary["faces_swapped"] == 2
    picked, summary = swapped(tmp_path, tiny_generator, root / "astronaut.png", tmp_path / "two.png",
                              "--reference", str(root / "astronaut.png"), "--reference-distance", "0.5")  # fmt: skip
    assert summary["faces_swapped"] == 1 and summary["faces_not_the_reference"] == 1
    assert picked[:, :560].any() and not picked[:, 560:].any()  # the astronaut's half only
