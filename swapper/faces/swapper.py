"""The batched face swapper: images (photos or video frames) in, the same images out, swapped.

    item -> detect -> track + smooth (video) -> select (--min-face, --reference, --faces)
         -> align each face (crop, M)  ─┐ until a batch is full
    crops (B, 3, S, S) -> swap_fn (the generator) -> swaps -> colour match -> paste back -> items, in order

Crops and paste-backs run on the host (`HostWarp`: the canvas's own numpy/Pillow warps) or, with
`warp="device"` (the default on CUDA via `auto`), on the generator's device (`device_warp.DeviceWarp`:
each frame uploaded once, crops and swaps never leave the device, only pasted boxes come back).

Items are held until every face in them is swapped, so the output order is the input order. Faces
from many small frames share one generator batch, and a frame with many faces can span batches.
A frame with no face passes through unchanged and is counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from swapper.faces.align import ARCFACE_SIZE, CROPS, estimate, single_thread
from swapper.faces.blend import BLENDS, crop_mask, ellipse_mask
from swapper.faces.canvas import Canvas
from swapper.faces.colour import COLOURS, match_colour
from swapper.faces.detect import Detector, Face, check_faces, pick_faces
from swapper.faces.device_warp import DeviceWarp, resolve_warp
from swapper.faces.track import FaceTracker, is_cut

SwapFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) crops in [0, 1] -> swaps, same shape


@dataclass
class Item:
    key: str  # the landmarks key: "photo.jpg", "sub/clip.mp4#17"
    image: Canvas  # an RGB photo or a YUV video frame; the paste-back writes into it
    tag: Any = None  # the caller's own (an output path, a frame index)
    faces: list[Face] = field(default_factory=list)  # the faces swapped into it


@dataclass(frozen=True)
class FaceOptions:
    # --- crops
    size: int  # the generator's input side
    crop: str = "ffhq"  # template framing the generator was trained on: ffhq | arcface
    # --- which faces
    faces: str = "all"  # all | largest | N (the N largest) | left:N (the N-th from the left)
    min_face: float = 40.0  # faces whose box is shorter than this (pixels) are left alone
    # --- paste-back
    blend: str = "feather"  # feather (whole crop, soft edge) | mask (inner-face ellipse)
    colour: str = "none"  # none | lab: the swap's colour matched to the target's inside the face
    # --- compute
    batch_size: int = 16  # faces per generator call

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {sorted(CROPS)}, got {self.crop!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        check_faces(self.faces)
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {COLOURS}, got {self.colour!r}")
        if self.min_face < 0 or self.batch_size < 1 or self.size < 1:
            raise ValueError("min_face must be >= 0, batch_size and size >= 1")


def to_tensor(crops: list[np.ndarray] | list[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """(B, S, S, 3) uint8 crops -> (B, 3, S, S) float in [0, 1] on `device` (bytes cross, not floats;
    crops the device warp made are there already)."""
    with single_thread():  # host-side glue: see align.single_thread
        if isinstance(crops[0], torch.Tensor):
            batch = torch.stack(crops).to(device)  # (B, S, S, 3)
        else:
            batch = torch.from_numpy(np.stack(crops)).to(device)  # (B, S, S, 3)
        return batch.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S)


def to_images(swaps: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [0, 1] -> (B, S, S, 3) uint8 on the host."""
    with single_thread():
        images = swaps.detach().float().clamp(0, 1).mul_(255).round_().to(torch.uint8)  # (B, 3, S, S)
        return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, S, S, 3)


def _host(image: np.ndarray | torch.Tensor) -> np.ndarray:
    return image.cpu().numpy() if isinstance(image, torch.Tensor) else image


class HostWarp:
    """Crops and pastes by the canvas itself, on the CPU (numpy, Pillow, one-thread grid_sample)."""

    def crop(self, canvas: Canvas, m: np.ndarray, size: int) -> np.ndarray:
        return canvas.crop(m, size)

    def swaps(self, swaps: torch.Tensor) -> np.ndarray:
        return to_images(swaps)

    def paste(self, canvas: Canvas, swap: np.ndarray, m: np.ndarray, mask: Image.Image) -> None:
        canvas.paste(swap, m, mask)

    def release(self, canvas: Canvas) -> None:
        pass

    def clear(self) -> None:
        pass


class Reference:
    """Keeps only the faces whose identity is within `max_distance` (1 - cosine) of a reference face's:
    FaceFusion's reference selector, for group photos and videos with several people. `embed` maps
    (B, 3, 112, 112) ArcFace crops in [0, 1] to (B, D) normalised embeddings (the run's identity encoder)."""

    def __init__(self, embedding: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor], max_distance: float):
        self.embedding, self.embed, self.max_distance = embedding, embed, max_distance

    def distances(self, image: Canvas, faces: list[Face], device: str) -> np.ndarray:
        crops = [image.crop(estimate(f.kps, ARCFACE_SIZE, "arcface"), ARCFACE_SIZE) for f in faces]
        with torch.no_grad():
            emb = self.embed(to_tensor(crops, device))  # (n, D)
            cos = (emb * self.embedding.to(emb.device)).sum(dim=1)
        return (1.0 - cos).float().cpu().numpy()

    def keep(self, image: Canvas, faces: list[Face], device: str) -> list[Face]:
        if not faces:
            return faces
        return [f for f, d in zip(faces, self.distances(image, faces, device), strict=True) if d <= self.max_distance]


class FaceSwapper:
    """Callable over an iterable of `Item`s; yields them back swapped, in order.

    `counts` gathers frames, faces_swapped, no_face and faces_too_small; `seconds` the time in
    detect, align, generator (transfer included) and paste; with `record`, `detections` keeps every
    face found, by key (the landmarks cache that `save_landmarks` writes). `warp`: host | device |
    auto (device when `device` is CUDA), where the crops and paste-backs run; `self.warp` is the
    resolved name.
    """

    def __init__(
        self,
        swap_fn: SwapFn,
        detector: Detector,
        options: FaceOptions,
        device: str = "cpu",
        record: bool = False,
        reference: Reference | None = None,
        tracker: FaceTracker | None = None,
        warp: str = "host",
    ) -> None:
        self.swap_fn, self.detector, self.options, self.device, self.record = swap_fn, detector, options, device, record
        self.warp = resolve_warp(warp, device)
        self.warper: HostWarp | DeviceWarp = DeviceWarp(device) if self.warp == "device" else HostWarp()
        self.reference, self.tracker = reference, tracker  # tracker: one clip's, in frame order
        self.mask = crop_mask(options.blend, options.size, options.crop)
        self.face_weights = ellipse_mask(options.size, options.crop)  # the region colour matching looks at
        self._thumbnail: np.ndarray | None = None
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.detections: dict[str, list[Face]] = {}

    def start_clip(self, fps: float | None) -> None:
        """The items that follow are one clip's frames, in order (`fps`: track and smooth its faces), or
        (None) independent photos."""
        self.tracker = FaceTracker(fps) if fps else None
        self._thumbnail = None
        self.warper.clear()  # uploads a stopped run left behind

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        pending: list[Item] = []
        jobs: list[tuple[Item, np.ndarray, np.ndarray | torch.Tensor]] = []  # (item, M frame -> crop, crop)
        for item in items:
            jobs.extend(self._prepare(item))
            pending.append(item)
            if len(jobs) >= self.options.batch_size:
                self._swap(jobs)
                yield from self._release(pending)
                pending, jobs = [], []
        if jobs:
            self._swap(jobs)
        yield from self._release(pending)

    def _release(self, items: list[Item]) -> list[Item]:
        """Every face of these items is pasted: the device warp writes its boxes back to the canvases."""
        start = time.perf_counter()
        for item in items:
            self.warper.release(item.image)
        self.seconds["paste"] += time.perf_counter() - start
        return items

    def _prepare(self, item: Item) -> list[tuple[Item, np.ndarray, np.ndarray | torch.Tensor]]:
        o = self.options
        start = time.perf_counter()
        found = self.detector(item.image, item.key)
        if self.record:
            self.detections[item.key] = found  # as detected: replaying the cache smooths the same way
        if self.tracker is not None:
            thumbnail = item.image.thumbnail()
            found = self.tracker(found, cut=is_cut(self._thumbnail, thumbnail))
            self._thumbnail = thumbnail
        big = [f for f in found if f.size >= o.min_face]
        too_small = len(found) - len(big)
        if self.reference is not None:
            near = self.reference.keep(item.image, big, self.device)
            self.counts["faces_not_the_reference"] += len(big) - len(near)
            big = near
        faces = pick_faces(big, o.faces)
        mid = time.perf_counter()
        self.seconds["detect"] += mid - start
        self.counts["frames"] += 1
        self.counts["faces_too_small"] += too_small
        if not faces:
            self.counts["no_face"] += 1
        item.faces = faces
        jobs = []
        for face in faces:
            m = estimate(face.kps, o.size, o.crop)
            jobs.append((item, m, self.warper.crop(item.image, m, o.size)))
        self.seconds["align"] += time.perf_counter() - mid
        return jobs

    def _swap(self, jobs: list[tuple[Item, np.ndarray, np.ndarray | torch.Tensor]]) -> None:
        size = self.options.batch_size
        for i in range(0, len(jobs), size):
            chunk = jobs[i : i + size]
            start = time.perf_counter()
            swaps = self.warper.swaps(self.swap_fn(to_tensor([crop for _, _, crop in chunk], self.device)))
            mid = time.perf_counter()
            for (item, m, crop), swap in zip(chunk, swaps, strict=True):
                if self.options.colour == "lab":  # numpy on the host, whichever warp
                    swap = match_colour(_host(swap), _host(crop), self.face_weights)
                self.warper.paste(item.image, swap, m, self.mask)
            self.seconds["generator"] += mid - start
            self.seconds["paste"] += time.perf_counter() - mid
            self.counts["faces_swapped"] += len(chunk)
