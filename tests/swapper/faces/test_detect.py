"""Detectors: SCRFD decoding on an ONNX graph with known outputs; the landmarks file; face selection."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from swapper.faces.detect import (
    Face,
    LandmarksFile,
    Scrfd,
    anchor_centres,
    decode,
    group_outputs,
    nms,
    parse_detector,
    save_landmarks,
    select_faces,
)

INPUT = 64  # the graph's (static) input side: 8x8, 4x4 and 2x2 locations, 2 anchors each
ANCHORS = {8: 128, 16: 32, 32: 8}
KPS_UNITS = np.array([[-1, -0.5], [1, -0.5], [0, 0.25], [-0.75, 1], [0.75, 1]], np.float32)  # in strides


def anchor(stride: int, x: int, y: int, k: int) -> int:
    """Row of the anchor at location (x, y), anchor k: rows run over y, then x, then the 2 anchors."""
    return 2 * (y * (INPUT // stride) + x) + k


def scrfd_outputs() -> dict[str, np.ndarray]:
    """Known SCRFD head outputs (distances in strides), as insightface's det_10g names its kinds."""
    out = {f"score_{s}": np.zeros((n, 1), np.float32) for s, n in ANCHORS.items()}
    out |= {f"bbox_{s}": np.zeros((n, 4), np.float32) for s, n in ANCHORS.items()}
    out |= {f"kps_{s}": np.zeros((n, 10), np.float32) for s, n in ANCHORS.items()}
    # face A: stride 8, location (3, 2), anchor 1 -> centre (24, 16)
    a = anchor(8, 3, 2, 1)
    out["score_8"][a], out["bbox_8"][a], out["kps_8"][a] = 0.9, [1, 1.5, 2, 2.5], KPS_UNITS.ravel()
    # A's duplicate at the location's other anchor: lower score, nearly the same box -> suppressed
    out["score_8"][a - 1], out["bbox_8"][a - 1] = 0.8, [1, 1.5, 2, 2.25]
    # face B: stride 32, location (1, 1), anchor 0 -> centre (32, 32); overlaps A with IoU 0.378 < 0.4
    b = anchor(32, 1, 1, 0)
    out["score_32"][b], out["bbox_32"][b], out["kps_32"][b] = 0.7, [0.5, 0.5, 0.5, 0.5], KPS_UNITS.ravel() * 0.5
    # below the threshold
    out["score_16"][anchor(16, 2, 2, 1)], out["bbox_16"][anchor(16, 2, 2, 1)] = 0.3, [1, 1, 1, 1]
    # stride 16, location (0, 0), anchor 0 gets its score from the input (below): centre (0, 0)
    out["bbox_16"][0] = [0.25, 0.25, 0.25, 0.25]
    return out


def build_scrfd(path) -> None:
    """An ONNX graph with SCRFD's input and 9 outputs. All outputs are constants except the first
    stride-16 score, which is the network input's channel 0 at pixel (0, 0): the image's red there,
    as (R - 127.5) / 128, if the preprocessing swaps to RGB and normalises as insightface does."""
    consts = scrfd_outputs()
    nodes, inits = [], []
    for name, value in consts.items():
        if name != "score_16":
            inits.append(numpy_helper.from_array(value, f"{name}_value"))
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              [("starts", [0, 0, 0, 0]), ("ends", [1, 1, 1, 1]), ("shape", [1, 1])]]  # fmt: skip
    nodes.append(helper.make_node("Slice", ["input.1", "starts", "ends"], ["pixel"]))
    nodes.append(helper.make_node("Reshape", ["pixel", "shape"], ["pixel_2d"]))
    inits.append(numpy_helper.from_array(consts["score_16"][1:], "score_16_rest"))
    nodes.append(helper.make_node("Concat", ["pixel_2d", "score_16_rest"], ["score_16"], axis=0))
    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]  # insightface's order
    for name in order:
        if name != "score_16":
            nodes.append(helper.make_node("Identity", [f"{name}_value"], [name]))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(consts[n].shape)) for n in order]
    graph = helper.make_graph(
        nodes, "scrfd-test", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        outputs, initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_anchor_centres_are_stride_multiples_repeated_per_anchor():
    c = anchor_centres(2, 3, 16)
    assert c.shape == (12, 2)
    np.testing.assert_array_equal(c[:6], [[0, 0], [0, 0], [16, 0], [16, 0], [32, 0], [32, 0]])
    np.testing.assert_array_equal(anchor_centres(2, 2, 32)[anchor(32, 1, 1, 0)], [32, 32])


def test_decode_threshold_and_distances_by_hand():
    outputs = scrfd_outputs()
    outputs["score_16"][0] = 0.0
    arrays = [outputs[f"{k}_{s}"] for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    scores, boxes, kps = decode(arrays, (INPUT, INPUT), threshold=0.5)
    order = np.argsort(-scores)
    np.testing.assert_allclose(scores[order], [0.9, 0.8, 0.7])
    np.testing.assert_allclose(boxes[order][0], [24 - 8, 16 - 12, 24 + 16, 16 + 20])  # centre (24, 16), x 8
    np.testing.assert_allclose(boxes[order][2], [16, 16, 48, 48])  # centre (32, 32), 0.5 x 32
    np.testing.assert_allclose(kps[order][0], [[16, 12], [32, 12], [24, 18], [18, 24], [30, 24]])
    np.testing.assert_allclose(kps[order][2], [[16, 24], [48, 24], [32, 36], [20, 48], [44, 48]])
    # the same outputs in any order, and with a leading batch dimension, decode the same
    shuffled = [arrays[i][None] for i in (8, 0, 4, 2, 6, 1, 5, 3, 7)]
    again = decode(shuffled, (INPUT, INPUT), threshold=0.5)
    np.testing.assert_allclose(np.sort(again[0]), np.sort(scores))


def test_nms_by_hand():
    boxes = np.array([[16, 4, 40, 36], [16, 4, 40, 34], [16, 16, 48, 48]], np.float32)
    # IoU(0, 1) = 25*31 / (25*33) = 0.94 -> suppressed; IoU(0, 2) = 525 / 1389 = 0.378 -> kept
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4) == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.3) == [0]
    assert nms(boxes, np.array([0.5, 0.8, 0.7]), 0.4) == [1, 2]


def test_scrfd_on_onnxruntime_letterboxes_normalises_and_suppresses(tmp_path):
    path = tmp_path / "scrfd.onnx"
    build_scrfd(path)
    detector = Scrfd(path, threshold=0.5, nms_iou=0.4, providers=["CPUExecutionProvider"])
    assert detector.input_size == (INPUT, INPUT)  # read from the model's static input
    image = np.full((96, 128, 3), 90, np.uint8)  # 128 wide: scaled by 0.5 into the top of the 64x64 input
    image[:8, :8] = (255, 0, 0)  # pure red top-left: channel 0 after the RGB swap, (255 - 127.5) / 128
    faces = detector(Image.fromarray(image))
    assert [round(f.score, 6) for f in faces] == [round((255 - 127.5) / 128, 6), 0.9, 0.7]  # A's twin suppressed
    np.testing.assert_allclose(faces[0].bbox, np.array([-4, -4, 4, 4]) * 2)  # input pixels / 0.5
    np.testing.assert_allclose(faces[1].bbox, np.array([16, 4, 40, 36]) * 2)
    np.testing.assert_allclose(faces[1].kps, np.array([[16, 12], [32, 12], [24, 18], [18, 24], [30, 24]]) * 2)
    np.testing.assert_allclose(faces[2].bbox, np.array([16, 16, 48, 48]) * 2)
    # blue instead of red: had the detector fed BGR, this is what channel 0 would hold
    image[:8, :8] = (0, 0, 255)
    assert [round(f.score, 2) for f in detector(Image.fromarray(image))] == [0.9, 0.7]


def test_scrfd_refuses_a_model_without_keypoints():
    six = [np.zeros((n, c), np.float32) for c in (1, 4) for n in ANCHORS.values()]
    with pytest.raises(ValueError, match="not an SCRFD model with keypoints"):
        group_outputs(six)


def test_landmarks_file_round_trip_and_errors(tmp_path):
    kps = np.array([[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]], float)
    faces = {"a.jpg": [Face(np.array([5.0, 5, 25, 25]), kps, 0.9)], "clip.mp4#3": []}
    save_landmarks(tmp_path / "lm.json", faces)
    loaded = LandmarksFile(tmp_path / "lm.json")
    (face,) = loaded(Image.new("RGB", (1, 1)), "a.jpg")
    np.testing.assert_allclose(face.kps, kps)
    assert face.score == 0.9 and loaded(Image.new("RGB", (1, 1)), "clip.mp4#3") == []
    assert loaded(Image.new("RGB", (1, 1)), "missing.jpg") == []
    (tmp_path / "bad.json").write_text(json.dumps({"a.jpg": [{"kps": [[1, 2]] * 4, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match="'a.jpg'"):
        LandmarksFile(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="--detector must be"):
        parse_detector("retinaface:x.onnx")
    assert parse_detector("aligned") is None


def test_select_faces_by_size_and_count():
    def face(side: float) -> Face:
        return Face(np.array([0, 0, side, side * 1.2]), np.zeros((5, 2)))

    faces = [face(50), face(30), face(120), face(80)]
    kept, small = select_faces(faces, "all", 40)
    assert [f.size for f in kept] == [120, 80, 50] and small == 1
    assert [f.size for f in select_faces(faces, "largest", 40)[0]] == [120]
    assert [f.size for f in select_faces(faces, "2", 0)[0]] == [120, 80]
