"""MTCNN face detector (Zhang et al., 2016) running the weights that ship inside facenet-pytorch's wheel.

facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3, so it cannot be an ordinary dependency. It is
installed with ``pip install --no-deps facenet-pytorch==2.6.0`` purely as a carrier of three small state dicts
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT licence). This module never imports that package: it finds the
files with ``importlib.util.find_spec`` and loads them with ``torch.load(..., weights_only=True)``.

Conventions (chosen to reproduce facenet-pytorch's numbers, which follow the original MATLAB release):

* landmarks are in pixel-index coordinates (the centre of pixel ``(row, col)`` is ``(x=col, y=row)``), in the
  network's order: the eye on the image's left first (the subject's right eye in an upright frontal face), then the
  other eye, the nose tip, the mouth corner on the image's left, the mouth corner on the image's right;
* boxes keep the original 1-based convention of the MATLAB release, i.e. they sit about one pixel right/down of
  pixel-index coordinates. They are proposals for selection and tracking; use the landmarks for alignment.

One deliberate difference from facenet-pytorch: a box that crosses the image border is cropped with zero (black)
padding, as in the original MTCNN, instead of clipping the crop to the image and stretching it. Both give the same
result for faces inside the image; near a border the padded crop keeps the aspect ratio the nets were trained on,
and the landmarks stay consistent with the box they are decoded against.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import batched_nms

__all__ = [
    "WEIGHTS_PACKAGE",
    "Detection",
    "Mtcnn",
    "MtcnnWeightsMissing",
    "ONet",
    "PNet",
    "RNet",
    "find_weights_dir",
    "pyramid_scales",
]

WEIGHTS_PACKAGE = "facenet-pytorch==2.6.0"
INSTALL_HINT = f"pip install --no-deps {WEIGHTS_PACKAGE}"
WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")

ImageLike = Image.Image | np.ndarray


class MtcnnWeightsMissing(FileNotFoundError):
    """The MTCNN weight files (shipped inside facenet-pytorch's wheel) cannot be found."""


def _package_locations(name: str) -> list[str]:
    """Folders of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: already in sys.modules without a __spec__
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    return list(getattr(sys.modules.get(name), "__path__", None) or [])


def find_weights_dir() -> Path:
    """Folder holding pnet.pt, rnet.pt and onet.pt inside the installed facenet-pytorch, without importing it.

    Why not ``importlib.resources.files``: it imports the package, and facenet_pytorch/__init__.py pulls in modules
    that need ``requests`` and old numpy/Pillow. ``find_spec`` of a top-level name only locates it.
    """
    locations = _package_locations("facenet_pytorch")
    if not locations:
        raise MtcnnWeightsMissing(
            f"MTCNN weights not found: the facenet-pytorch package is not installed. Install it with `{INSTALL_HINT}` "
            "(--no-deps because its wheel pins torch<2.3, numpy<2 and Pillow<10.3; only its weight files are used)."
        )
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / name).is_file() for name in WEIGHT_FILES):
            return folder
    raise MtcnnWeightsMissing(
        f"facenet-pytorch is installed at {locations} but its data/ folder lacks {', '.join(WEIGHT_FILES)}. "
        f"Reinstall it with `pip install --force-reinstall --no-deps {WEIGHTS_PACKAGE}`."
    )


# ----------------------------------------------------------------------------------------------------------------
# The three networks. Attribute names must match the keys of the shipped state dicts exactly (strict loading).
# ----------------------------------------------------------------------------------------------------------------


def _flatten_whc(x: Tensor) -> Tensor:
    # The dense weights were converted from a (width, height, channel)-ordered flatten, not torch's (C, H, W).
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal net: fully convolutional; each output cell scores one 12x12 window, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # not-face / face logits
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box corrections

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) normalised image -> face probability (N, h, w) and box corrections (N, 4, h, w)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refine net: rescores 24x24 crops of the P-Net proposals and corrects their boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, 24, 24) -> face probability (N,) and box corrections (N, 4)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: final score, box corrections and five landmarks on 48x48 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # five x then five y, as fractions of the crop

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 3, 48, 48) -> face probability (N,), box corrections (N, 4), landmarks (N, 10)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_whc(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


# ----------------------------------------------------------------------------------------------------------------
# Geometry helpers. Boxes are (N, 4) float tensors x1, y1, x2, y2.
# ----------------------------------------------------------------------------------------------------------------


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which P-Net's 12 px window covers faces from min_face_size up to the image's short side."""
    # Repeated multiplication (not factor**k) keeps the scales bit-identical to the reference implementation.
    scale = 12.0 / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def _normalise(pixels: Tensor) -> Tensor:
    return (pixels - 127.5) * 0.0078125  # the nets were trained on (x - 127.5) / 128


def _square(boxes: Tensor) -> Tensor:
    """Grow each box to a square around its centre (the nets take square crops)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + (w - side) * 0.5
    y1 = boxes[:, 1] + (h - side) * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _apply_offsets(boxes: Tensor, offsets: Tensor, inclusive: bool) -> Tensor:
    """Shift each edge by a fraction of the box size (MTCNN's box regression).

    Stage 1 measures the size as x2 - x1; stages 2 and 3 as x2 - x1 + 1 (inclusive pixel count). Both come from the
    original release, and keeping them is what makes the outputs match it.
    """
    extra = 1.0 if inclusive else 0.0
    size = (boxes[:, 2:] - boxes[:, :2] + extra).repeat(1, 2)
    return boxes + offsets * size


def _bin_edges(start: Tensor, length: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Pixel ranges [lo, hi) that adaptive average pooling ('area' resize) averages to shrink `length` to `bins`.

    start and length are (N,) integer tensors; returns two (N, bins) tensors. Same integer arithmetic as torch's
    adaptive_avg_pool2d: lo = floor(i * L / n), hi = ceil((i + 1) * L / n).
    """
    i = torch.arange(bins, device=start.device)
    lo = (i * length[:, None]) // bins
    hi = ((i + 1) * length[:, None] + bins - 1) // bins
    return start[:, None] + lo, start[:, None] + hi


def _row_prefix(image: Tensor) -> Tensor:
    """(B, 3, H, W) float32 pixels -> (B, 3, H, W + 1) running sums along each row, starting at 0.

    A sum over columns [a, b) of a row is then prefix[..., b] - prefix[..., a]. Exact in float32 while a row's total
    stays below 2**24, i.e. for widths up to 65,000 px. Only one pass over the image: cheaper than a 2-D integral image,
    whose second cumsum (along H) is very slow on CPU.
    """
    return F.pad(image.cumsum(-1), (1, 0))


def _row_pool_matrix(length: int, bins: int, copies: int, device: torch.device) -> Tensor:
    """Sparse (copies * bins, copies * length) matrix whose product with a (copies * length, W) tensor 'area'-pools
    each block of `length` rows down to `bins` rows, exactly as adaptive_avg_pool2d bins them."""
    lo, hi = _bin_edges(torch.zeros(1, dtype=torch.int64), torch.tensor([length]), bins)
    counts = (hi - lo)[0]
    row = torch.repeat_interleave(torch.arange(bins), counts)
    col = lo[0][row] + torch.arange(row.shape[0]) - (torch.cumsum(counts, 0) - counts)[row]
    cols = torch.cat([col + k * length for k in range(copies)])
    crow = F.pad(torch.cumsum(counts.repeat(copies), 0), (1, 0))
    values = (1.0 / counts.to(torch.float32))[row].repeat(copies)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": SpMM on CSR has been stable for years
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(crow, cols, values, (copies * bins, copies * length), check_invariants=False)
    return matrix.to(device)


def _area_resize(prefix: Tensor, out_h: int, out_w: int, row_pool: Tensor | None = None) -> Tensor:
    """F.interpolate(image, (out_h, out_w), mode="area"), computed from the row prefix sums.

    Column pooling reads out_w pairs of prefix values per row instead of every pixel; rows are then pooled by
    adaptive_avg_pool2d, or by the sparse matrix from _row_pool_matrix when given (7x faster on CPU). The reference
    re-read the whole image at every pyramid level, which dominated the time on 1080p frames.
    """
    batch, channels, height, width = prefix.shape[0], prefix.shape[1], prefix.shape[2], prefix.shape[3] - 1
    zero = torch.zeros(1, dtype=torch.int64, device=prefix.device)
    xs, xe = _bin_edges(zero, torch.full_like(zero, width), out_w)
    xs, xe = xs[0], xe[0]
    rows = prefix.flatten(0, 2)  # index_select on a 2-D view's last dim is ~20x faster than on dim 3 of 4-D
    col_means = (rows.index_select(1, xe) - rows.index_select(1, xs)) / (xe - xs)
    if row_pool is not None:
        return (row_pool @ col_means).view(batch, channels, out_h, out_w)
    return F.adaptive_avg_pool2d(col_means.view(batch, channels, height, out_w), (out_h, out_w))


def _area_crops(prefix: Tensor, image_idx: Tensor, boxes_px: Tensor, size: int) -> Tensor:
    """Crop integer pixel boxes and 'area'-resize each to size x size, all boxes at once.

    boxes_px holds (x0, y0, width, height) in 0-based pixels; pixels outside the image count as black (the original
    MTCNN's zero padding). Each output pixel is the mean over the same source rectangle that
    F.interpolate(crop, size, mode="area") would average, so results equal crop-then-interpolate, without a Python
    loop per box. Work is proportional to the boxes' heights (one gathered row per source row and output column),
    not to their areas.
    """
    n_boxes = boxes_px.shape[0]
    channels, height, width = prefix.shape[1], prefix.shape[2], prefix.shape[3] - 1
    device = prefix.device
    xs, xe = _bin_edges(boxes_px[:, 0], boxes_px[:, 2], size)
    ys, ye = _bin_edges(boxes_px[:, 1], boxes_px[:, 3], size)
    count = (ye - ys)[:, None, :, None] * (xe - xs)[:, None, None, :]  # (N, 1, n, n), includes out-of-image pixels
    cols = torch.cat([xe.clamp(0, width), xs.clamp(0, width)], dim=1)  # (N, 2n)
    ys, ye = ys.clamp(0, height).flatten(), ye.clamp(0, height).flatten()
    # One entry per (output row bin, source row inside it): a ragged list flattened with repeat_interleave.
    rows_per_bin = ye - ys
    bin_of_row = torch.repeat_interleave(torch.arange(n_boxes * size, device=device), rows_per_bin)
    first_row = torch.cumsum(rows_per_bin, 0) - rows_per_bin
    y = ys[bin_of_row] + torch.arange(bin_of_row.shape[0], device=device) - first_row[bin_of_row]
    box_of_row = bin_of_row // size
    # Flat indices into the prefix, (rows, 2n, C): a 1-D index_select is ~4x faster than broadcast indexing.
    plane = image_idx[box_of_row, None] * channels + torch.arange(channels, device=device)
    flat = (plane * height + y[:, None]) * (width + 1)
    picked = prefix.view(-1).index_select(0, (flat[:, None, :] + cols[box_of_row, :, None]).flatten())
    picked = picked.view(-1, 2 * size, channels)
    row_sums = picked[:, :size] - picked[:, size:]  # sum over each output column's pixels, per source row
    sums = torch.zeros(n_boxes * size, size, channels, device=device).index_add_(0, bin_of_row, row_sums)
    # Built channels-last (N, n, n, C): the nets run channels-last, where CPU max pooling is ~6x faster.
    return sums.view(n_boxes, size, size, channels).permute(0, 3, 1, 2) / count


def _pixel_boxes(boxes: Tensor) -> Tensor:
    """Float boxes -> integer (x0, y0, width, height) crops, as the original release cut them.

    It truncated the corners (MATLAB fix) and read 1-based inclusive ranges [x1, x2], i.e. 0-based pixels x1-1 .. x2-1.
    """
    corners = boxes.trunc().to(torch.int64)
    return torch.stack(
        [
            corners[:, 0] - 1,
            corners[:, 1] - 1,
            corners[:, 2] - corners[:, 0] + 1,
            corners[:, 3] - corners[:, 1] + 1,
        ],
        dim=1,
    )


def _nms_min(boxes: Tensor, scores: Tensor, image_idx: Tensor, threshold: float) -> Tensor:
    """Greedy NMS where overlap is intersection over the *smaller* box (the original's 'Min' mode, last stage).

    It drops a small box nested in a bigger one, which IoU would keep. Called on the few O-Net survivors, so the
    sequential greedy pass runs on a precomputed overlap matrix.
    """
    order = scores.argsort(descending=True)
    b = boxes[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt + 1).clamp(min=0).prod(dim=2)
    overlap = inter / torch.minimum(area[:, None], area[None, :])
    same_image = image_idx[order][:, None] == image_idx[order][None, :]
    suppresses = ((overlap > threshold) & same_image).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not removed[i]:
            keep.append(i)
            removed |= suppresses[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


# ----------------------------------------------------------------------------------------------------------------
# The detector.
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Detection:
    """One face. box: (x1, y1, x2, y2); score: O-Net probability; landmarks: (5, 2) float32 (x, y), in the order
    image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


def _as_rgb_array(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or an HxWx3 uint8 numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array (0-255 RGB), got dtype {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"expected an HxWx3 (or HxW, HxWx4) array, got shape {image.shape}")


class Mtcnn:
    """MTCNN face detector. Build once (it loads the weights), then call on images.

    >>> detector = Mtcnn()                       # doctest: +SKIP
    >>> faces = detector(pil_image)              # doctest: +SKIP
    >>> faces[0].box, faces[0].score, faces[0].landmarks.shape   # doctest: +SKIP

    Args:
        device: where the nets run ("cpu", "cuda", ...).
        min_face_size: face size in px at the first pyramid level. Not a hard filter: faces down to about half of
            it can still be found (their hair and chin give P-Net a larger window). Run time grows roughly with
            (1 / min_face_size)**2: raise it for large frames when faces are known to be large.
        thresholds: score thresholds of P-Net, R-Net and O-Net.
        factor: scale step between pyramid levels.
        weights_dir: a folder with pnet.pt, rnet.pt, onet.pt; default: the installed facenet-pytorch's data/.
        crop_rows: source rows gathered per R-/O-Net batch; bounds memory on images with many candidates.
    """

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        weights_dir: str | Path | None = None,
        crop_rows: int = 1 << 14,
    ) -> None:
        if min_face_size <= 0:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs one value per stage (3), got {thresholds}")
        self.device = torch.device(device)
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.crop_rows = int(crop_rows)  # source rows gathered per R-/O-Net batch: bounds memory on busy images
        folder = Path(weights_dir) if weights_dir is not None else find_weights_dir()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, name in zip((self.pnet, self.rnet, self.onet), WEIGHT_FILES):
            path = folder / name
            if not path.is_file():
                raise MtcnnWeightsMissing(f"{path} does not exist. Install the weights with `{INSTALL_HINT}`.")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
            # Channels-last: on CPU, oneDNN's convolutions are ~40% faster on P-Net's large pyramid levels, and max
            # pooling is ~6x faster on R-Net's and O-Net's small maps, than in the default NCHW layout.
            net.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self._row_pools: dict[tuple[int, int, int], Tensor] = {}

    def __call__(self, image: ImageLike) -> list[Detection]:
        """Faces in one image, highest score first."""
        return self.detect_batch([image])[0]

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[ImageLike], batch_size: int = 8) -> list[list[Detection]]:
        """Faces in each image, highest score first.

        Images of the same size go through the nets together, batch_size at a time. That pays on a GPU; on a CPU
        it is no faster than one by one, and memory grows with batch_size (about 50 MB per 1080p frame).
        """
        arrays = [_as_rgb_array(image) for image in images]
        results: list[list[Detection]] = [[] for _ in arrays]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape[:2], []).append(i)
        for same_size in groups.values():
            for start in range(0, len(same_size), batch_size):
                indices = same_size[start : start + batch_size]
                batch = torch.from_numpy(np.stack([arrays[i] for i in indices])).to(self.device)
                # One copy does the uint8 -> float conversion and the HWC -> CHW transposition.
                image = batch.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
                for i, faces in zip(indices, self._detect(image)):
                    results[i] = faces
        return results

    def _detect(self, image: Tensor) -> list[list[Detection]]:
        """(B, 3, H, W) float32 pixels (0-255) on the device -> detections per image."""
        results: list[list[Detection]] = [[] for _ in range(image.shape[0])]
        prefix = _row_prefix(image)
        boxes, image_idx = self._propose(prefix)
        if len(boxes):
            boxes, image_idx = self._refine(prefix, boxes, image_idx)
        if not len(boxes):
            return results
        boxes, scores, landmarks, image_idx = self._output(prefix, boxes, image_idx)
        order = scores.argsort(descending=True)
        boxes, scores = boxes[order].cpu().numpy(), scores[order].cpu().numpy()
        landmarks, image_idx = landmarks[order].cpu().numpy(), image_idx[order].cpu().numpy()
        for box, score, points, i in zip(boxes, scores, landmarks, image_idx):
            points = np.ascontiguousarray(points, dtype=np.float32)
            points.setflags(write=False)  # the dataclass is frozen; keep its array frozen too
            results[int(i)].append(Detection(tuple(float(v) for v in box), float(score), points))
        return results

    def _propose(self, prefix: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1: P-Net over the image pyramid -> square candidate boxes and their image index."""
        height, width = prefix.shape[2], prefix.shape[3] - 1
        threshold = self.thresholds[0]
        all_boxes, all_scores, all_offsets, all_idx = [], [], [], []
        for scale in pyramid_scales(height, width, self.min_face_size, self.factor):
            out_h, out_w = int(height * scale + 1), int(width * scale + 1)
            level = _area_resize(prefix, out_h, out_w, self._row_pool(height, out_h, prefix.shape[0] * 3))
            prob, offsets = self.pnet(_normalise(level))
            n, row, col = (prob >= threshold).nonzero(as_tuple=True)
            # Each output cell is a 12x12 window at stride 2 in the scaled image; map it back (1-based, floored).
            cells = torch.stack([col, row], dim=1).to(prob.dtype)
            top_left = ((2 * cells + 1) / scale).floor()
            bottom_right = ((2 * cells + 12) / scale).floor()
            boxes = torch.cat([top_left, bottom_right], dim=1)
            scores = prob[n, row, col]
            keep = batched_nms(boxes, scores, n, 0.5)  # within this scale first: cheap, and as the original did
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_offsets.append(offsets[n, :, row, col][keep])
            all_idx.append(n[keep])
        if not all_boxes:  # image smaller than one 12 px window at min_face_size
            return prefix.new_zeros(0, 4), torch.zeros(0, dtype=torch.int64, device=prefix.device)
        boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
        offsets, image_idx = torch.cat(all_offsets), torch.cat(all_idx)
        keep = batched_nms(boxes, scores, image_idx, 0.7)  # then across scales
        boxes = _apply_offsets(boxes[keep], offsets[keep], inclusive=False)
        return _square(boxes), image_idx[keep]

    def _row_pool(self, length: int, bins: int, copies: int) -> Tensor | None:
        """Cached sparse row-pooling matrix for a pyramid level on CPU; None elsewhere (adaptive pooling is fast)."""
        if self.device.type != "cpu":
            return None
        key = (length, bins, copies)
        if key not in self._row_pools:
            if len(self._row_pools) > 256:  # a stream of ever-new frame sizes must not grow memory forever
                self._row_pools.clear()
            self._row_pools[key] = _row_pool_matrix(length, bins, copies, self.device)
        return self._row_pools[key]

    def _run_on_crops(self, net: nn.Module, prefix: Tensor, boxes: Tensor, image_idx: Tensor, size: int) -> tuple:
        """Run a net on size x size crops of the boxes. Returns its outputs and the mask of boxes it saw.

        Boxes whose crop is empty (degenerate regressions) are dropped. Crops are built in chunks of about
        crop_rows gathered source rows, so a few huge boxes or thousands of small ones both stay within memory.
        """
        px = _pixel_boxes(boxes)
        valid = (px[:, 2] > 0) & (px[:, 3] > 0)
        px, image_idx = px[valid], image_idx[valid]
        rows = px[:, 3].clamp(max=prefix.shape[2]) + size
        chunk_of_box = (torch.cumsum(rows, 0) - 1) // self.crop_rows
        outputs, start = [], 0
        for count in torch.unique_consecutive(chunk_of_box, return_counts=True)[1].tolist():
            part = slice(start, start + count)
            outputs.append(net(_normalise(_area_crops(prefix, image_idx[part], px[part], size))))
            start += count
        if not outputs:
            return (), valid
        return tuple(torch.cat(parts) for parts in zip(*outputs)), valid

    def _refine(self, prefix: Tensor, boxes: Tensor, image_idx: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 2: R-Net rescoring of 24x24 crops, IoU NMS, box correction."""
        outputs, valid = self._run_on_crops(self.rnet, prefix, boxes, image_idx, 24)
        if not outputs:
            return boxes[:0], image_idx[:0]
        prob, offsets = outputs
        boxes, image_idx = boxes[valid], image_idx[valid]
        passed = prob > self.thresholds[1]
        boxes, scores, offsets, image_idx = boxes[passed], prob[passed], offsets[passed], image_idx[passed]
        keep = batched_nms(boxes, scores, image_idx, 0.7)
        boxes = _apply_offsets(boxes[keep], offsets[keep], inclusive=True)
        return _square(boxes), image_idx[keep]

    def _output(self, prefix: Tensor, boxes: Tensor, image_idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stage 3: O-Net on 48x48 crops -> final boxes, scores, landmarks (N, 5, 2), 'Min' NMS."""
        outputs, valid = self._run_on_crops(self.onet, prefix, boxes, image_idx, 48)
        if not outputs:
            return boxes[:0], boxes.new_zeros(0), boxes.new_zeros(0, 5, 2), image_idx[:0]
        prob, offsets, marks = outputs
        boxes, image_idx = boxes[valid], image_idx[valid]
        passed = prob > self.thresholds[2]
        boxes, scores, offsets, marks = boxes[passed], prob[passed], offsets[passed], marks[passed]
        image_idx = image_idx[passed]
        # Landmarks are fractions of the crop box the O-Net saw (before its correction); -1 turns the 1-based
        # box into pixel-index coordinates.
        size = (boxes[:, 2:] - boxes[:, :2] + 1)[:, None, :]
        landmarks = torch.stack([marks[:, :5], marks[:, 5:]], dim=2) * size + boxes[:, None, :2] - 1
        boxes = _apply_offsets(boxes, offsets, inclusive=True)
        keep = _nms_min(boxes, scores, image_idx, 0.7)
        return boxes[keep], scores[keep], landmarks[keep], image_idx[keep]
