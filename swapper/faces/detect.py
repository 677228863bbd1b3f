"""Face detectors: each maps an RGB image (and its key) to faces with 5 landmarks.

    mtcnn                MTCNN on the weights inside facenet-pytorch's wheel (swapper.faces.mtcnn): no download
    scrfd:PATH.onnx      insightface SCRFD (det_10g.onnx, det_2.5g.onnx) run by onnxruntime
    landmarks:FILE.json  faces detected elsewhere, looked up by key (the landmarks format below)
    aligned              no detector: the images are already aligned crops

The landmarks format, which `save_landmarks` writes and `LandmarksFile` reads:

    {"photo.jpg": [{"kps": [[x, y] x 5], "bbox": [x0, y0, x1, y1], "score": 0.9}],
     "sub/clip.mp4#17": [...], "sub/clip.mp4#18": []}

Keys are paths relative to the `--target` folder (a file target: its file name), and a video frame
is the video's key, `#`, and its 0-based frame index. Points are pixels in insightface's order:
left eye, right eye, nose, left mouth corner, right mouth corner (as seen in the image). `score` is
optional. A missing key, or an empty list, is a frame with no face.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.dataset import atomic_write_json

STRIDES = (8, 16, 32)  # SCRFD's three feature levels (the 9-output, keypoint models)
ANCHORS_PER_LOCATION = 2


@dataclass(frozen=True, eq=False)
class Face:
    bbox: np.ndarray  # (4,) x0, y0, x1, y1 in image pixels
    kps: np.ndarray  # (5, 2) landmarks in insightface's order
    score: float = 1.0  # detector confidence (1 for given landmarks)

    @property
    def size(self) -> float:
        """The shorter side of the box, which --min-face compares against."""
        return float(min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))

    @property
    def area(self) -> float:
        return float(max(self.bbox[2] - self.bbox[0], 0) * max(self.bbox[3] - self.bbox[1], 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "kps": [[round(float(x), 3), round(float(y), 3)] for x, y in self.kps],
            "bbox": [round(float(v), 3) for v in self.bbox],
            "score": round(float(self.score), 5),
        }


# (an image: a PIL image, or a canvas with `to_image()`; its key) -> faces
Detector = Callable[[Any, str], list[Face]]


FACE_CHOICES = "all, largest, N (the N largest) or left:N (the N-th from the left)"


def check_faces(keep: str) -> str:
    """`keep` if it is a face selection this module understands, else a ValueError naming the choices."""
    kind, _, n = keep.partition(":")
    if (
        keep in ("all", "largest")
        or (keep.isdigit() and int(keep) > 0)
        or (kind == "left" and n.isdigit() and int(n) > 0)
    ):
        return keep
    raise ValueError(f"--faces must be {FACE_CHOICES}, got {keep!r}")


def pick_faces(faces: list[Face], keep: str) -> list[Face]:
    """The faces `keep` names: all (largest first), the largest, the N largest, or the N-th from the left
    (by box centre, 1-based; none when there are fewer faces). Ranking by area follows insightface."""
    ranked = sorted(faces, key=lambda f: f.area, reverse=True)
    if keep == "all":
        return ranked
    if keep.startswith("left:"):
        by_x = sorted(faces, key=lambda f: f.bbox[0] + f.bbox[2])
        n = int(keep.partition(":")[2])
        return by_x[n - 1 : n]
    return ranked[: 1 if keep == "largest" else int(keep)]


def select_faces(faces: list[Face], keep: str, min_face: float) -> tuple[list[Face], int]:
    """(the faces to swap, how many were too small): those at least `min_face` tall, then `keep`."""
    big = [f for f in faces if f.size >= min_face]
    return pick_faces(big, keep), len(faces) - len(big)


# ---------------------------------------------------------------------------------------------
# SCRFD decoding: plain numpy, testable without a model


def anchor_centres(height: int, width: int, stride: int, anchors: int = ANCHORS_PER_LOCATION) -> np.ndarray:
    """(height * width * anchors, 2) centres (x * stride, y * stride), row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride  # (h*w, 2)
    return np.repeat(centres, anchors, axis=0)  # (h*w*anchors, 2): anchors of a location are adjacent


def distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(N, 4) left, top, right, bottom distances from each centre -> (N, 4) x0, y0, x1, y1."""
    return np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)


def distance_to_points(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(N, 2K) offsets from each centre -> (N, K, 2) points."""
    return centres[:, None, :] + distances.reshape(len(distances), distances.shape[1] // 2, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression; indices kept, best first.

    Areas use insightface's inclusive-pixel `+ 1`, so the same detections survive as in
    insightface's own SCRFD.
    """
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def group_outputs(outputs: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """SCRFD's 9 outputs by kind, finest stride first.

    The kind is told by the last dimension (1 score, 4 box distances, 10 keypoint distances), and
    the stride by the number of rows, so output names and order do not matter.
    """
    flat = [o.reshape(-1, o.shape[-1]) for o in outputs]  # a leading batch dim of 1 is dropped
    kinds = {"scores": 1, "boxes": 4, "kps": 10}
    grouped = {k: sorted((o for o in flat if o.shape[1] == c), key=len, reverse=True) for k, c in kinds.items()}
    if [len(v) for v in grouped.values()] != [len(STRIDES)] * 3:
        shapes = [tuple(o.shape) for o in outputs]
        raise ValueError(
            f"not an SCRFD model with keypoints: expected 3 score, 3 box and 3 keypoint outputs, got shapes {shapes} "
            "(use det_10g.onnx or det_2.5g.onnx from insightface's buffalo packs)"
        )
    return grouped


def decode(
    outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (N,), boxes (N, 4), kps (N, 5, 2)) above `threshold`, in network-input pixels.

    Box and keypoint distances are in units of the stride; anchors sit at (x * stride, y * stride).
    """
    grouped = group_outputs(outputs)
    scores, boxes, kps = [], [], []
    for level, stride in enumerate(STRIDES):
        h, w = input_hw[0] // stride, input_hw[1] // stride
        centres = anchor_centres(h, w, stride)
        score = grouped["scores"][level][:, 0]
        if len(score) != len(centres):
            raise ValueError(f"stride {stride}: {len(score)} anchors, expected {len(centres)} for input {input_hw}")
        hit = score >= threshold
        scores.append(score[hit])
        boxes.append(distance_to_box(centres[hit], grouped["boxes"][level][hit] * stride))
        kps.append(distance_to_points(centres[hit], grouped["kps"][level][hit] * stride))
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(kps)


def letterbox(image: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """(1, 3, H, W) float32 network input and the scale applied (insightface's preprocessing).

    The image keeps its aspect ratio, is resized to fit (width, height) = `size`, and sits at the
    top left of a black canvas; pixels become (x - 127.5) / 128, channels RGB.
    """
    w, h = size
    if image.height / image.width > h / w:
        new_h, new_w = h, int(h * image.width / image.height)
    else:
        new_w, new_h = w, int(w * image.height / image.width)
    scale = new_h / image.height
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[:new_h, :new_w] = np.asarray(image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR))
    blob = (canvas.astype(np.float32) - 127.5) / 128.0  # (H, W, 3)
    return blob.transpose(2, 0, 1)[None], scale  # (1, 3, H, W)


class Scrfd:
    """insightface's SCRFD with keypoints, on onnxruntime. The user supplies the .onnx file."""

    def __init__(
        self,
        path: str | Path,
        threshold: float = 0.5,
        nms_iou: float = 0.4,
        input_size: int = 640,
        providers: list[str] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                "the scrfd detector needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu for CUDA), "
                "or the project's extra: pip install -e '.[onnx]'"
            ) from e
        if not Path(path).is_file():
            raise FileNotFoundError(f"SCRFD model {path} not found (e.g. det_10g.onnx from insightface's buffalo_l)")
        available = ort.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=[p for p in wanted if p in available])
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape  # (1, 3, H, W); H and W may be symbolic
        static = all(isinstance(s, int) for s in shape[2:4])
        self.input_size = (shape[3], shape[2]) if static else (input_size, input_size)  # (width, height)
        self.threshold, self.nms_iou = threshold, nms_iou

    def __call__(self, image: Any, key: str = "") -> list[Face]:
        if not isinstance(image, Image.Image):  # a canvas (a video frame): full-frame RGB only when it is needed
            image = image.to_image()
        blob, scale = letterbox(image, self.input_size)
        outputs = self.session.run(None, {self.input_name: blob})
        scores, boxes, kps = decode(outputs, blob.shape[2:4], self.threshold)
        keep = nms(boxes, scores, self.nms_iou)
        return [Face(boxes[i] / scale, kps[i] / scale, float(scores[i])) for i in keep]


# ---------------------------------------------------------------------------------------------
# MTCNN


class MtcnnDetector:
    """`mtcnn`: swapper.faces.mtcnn.Mtcnn as a Detector. Its boxes are 1-based (the original release's
    convention); here they move to the landmarks' pixel-index coordinates, as every other detector gives."""

    def __init__(self, threshold: float = 0.7, min_face: float = 20.0, device: str = "cpu") -> None:
        from swapper.faces.mtcnn import Mtcnn

        # P-Net's pyramid starts at min_face: faces smaller than what the swap keeps need not be looked for
        self.mtcnn = Mtcnn(device=device, min_face_size=max(20.0, min_face), thresholds=(0.6, 0.7, threshold))

    def __call__(self, image: Any, key: str = "") -> list[Face]:
        if not isinstance(image, Image.Image):  # a canvas (a video frame): full-frame RGB only when it is needed
            image = image.to_image()
        return [
            Face(np.asarray(d.box, np.float64) - 1.0, d.landmarks.astype(np.float64), d.score)
            for d in self.mtcnn(image)
        ]


# ---------------------------------------------------------------------------------------------
# Given landmarks


def _parse_face(key: str, raw: Any) -> Face:
    try:
        kps = np.asarray(raw["kps"], np.float64)
        bbox = np.asarray(raw["bbox"], np.float64)
        score = float(raw.get("score", 1.0))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"landmarks {key!r}: each face needs 'kps' (5 x [x, y]) and 'bbox' ([x0, y0, x1, y1])") from e
    if kps.shape != (5, 2) or bbox.shape != (4,) or not (np.isfinite(kps).all() and np.isfinite(bbox).all()):
        raise ValueError(f"landmarks {key!r}: kps must be 5 x [x, y] and bbox [x0, y0, x1, y1], got {raw}")
    return Face(bbox, kps, score)


class LandmarksFile:
    """Faces from a landmarks JSON file (format in the module docstring), looked up by key."""

    def __init__(self, path: str | Path) -> None:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"landmarks file {path} is not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a landmarks file is a JSON object mapping keys to lists of faces")
        self.path = Path(path)
        self.faces = {str(k): [_parse_face(k, f) for f in v] for k, v in raw.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.faces

    def __call__(self, image: Any, key: str) -> list[Face]:
        return self.faces.get(key, [])  # the pixels are not needed


def save_landmarks(path: str | Path, faces: dict[str, list[Face]]) -> None:
    """Write detections in the landmarks format, atomically (a cache other runs can reuse)."""
    atomic_write_json(Path(path), {k: [f.to_json() for f in v] for k, v in sorted(faces.items())})


def frame_key(video_key: str, index: int) -> str:
    return f"{video_key}#{index}"


DETECTORS = "mtcnn, scrfd:PATH.onnx, landmarks:FILE.json or aligned"


def parse_detector(spec: str, threshold: float = 0.5, min_face: float = 20.0, device: str = "cpu") -> Detector | None:
    """`mtcnn`, `scrfd:PATH.onnx`, `landmarks:FILE.json` or `aligned` (None: no detector). `threshold` is
    the detector's score threshold (MTCNN's last stage never goes below its own 0.7)."""
    kind, _, arg = spec.partition(":")
    if kind == "aligned" and not arg:
        return None
    if kind == "mtcnn" and not arg:
        return MtcnnDetector(max(threshold, 0.7), min_face, device)
    if kind == "scrfd" and arg:
        return Scrfd(arg, threshold=threshold)
    if kind == "landmarks" and arg:
        if not Path(arg).is_file():
            raise FileNotFoundError(f"--detector landmarks:{arg}: no such file")
        return LandmarksFile(arg)
    raise ValueError(f"--detector must be {DETECTORS}, got {spec!r}")
