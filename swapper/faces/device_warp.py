"""The aligned crop and the paste-back on the generator's device (torch), for GPU hosts.

    frame (host canvas) --upload once--> planes on the device
        -> crop (grid_sample, the host warp's sampling points) -> generator -> swap (stays there)
        -> paste (warp the swap and its mask back, blend) into the device planes
        -> each touched box downloaded into the host canvas when the frame is released

The host path (`Canvas.crop` / `Canvas.paste`: numpy, Pillow and one-thread grid_sample) costs about
17 CPU-ms per 1080p face, which caps a GPU swap far below the generator's rate. Here the same
arithmetic runs where the generator runs: the same (2, 3) maps and footprints (`align.footprint`),
the same YUV planes and colour matrices (`canvas.py`), the same "alpha 0 keeps the frame's bytes"
rule. Only the frame (once), the maps and the touched boxes cross the bus. The one difference from
the host RGB paste: the mask is warped in float, not with Pillow's truncating 8-bit warp (at most
one level of alpha; 0 still stays 0). On a CPU device it is the same code on torch's CPU kernels,
which is how the tests check it against the host path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from swapper.faces.align import footprint, invert, single_thread
from swapper.faces.blend import paste_box
from swapper.faces.canvas import Canvas, RgbCanvas, Yuv420Canvas, _plane_map

WARPS = ("auto", "host", "device")


def resolve_warp(warp: str, device: str | torch.device) -> str:
    """`auto`: the device path where the generator is on CUDA, the host path elsewhere."""
    if warp not in WARPS:
        raise ValueError(f"warp must be one of {WARPS}, got {warp!r}")
    if warp == "auto":
        return "device" if torch.device(device).type == "cuda" else "host"
    return warp


def warp(image: torch.Tensor, m: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """`align.warp_float` on the device: (C, H, W) of any dtype by `m` (image -> output) -> float32 (C, h, w).

    Bilinear, 0 outside the image; only the region under the output is read (and converted to float).
    """
    w, h = size
    channels = image.shape[0]
    found = footprint(m, (w, h), tuple(image.shape[-2:]))
    if found is None:
        return torch.zeros(channels, h, w, device=image.device)
    (x0, y0, x1, y1), theta = found
    region = image[:, y0:y1, x0:x1].float().contiguous()[None]  # (1, C, rh, rw)
    return F.grid_sample(region, _grid(theta, w, h, image.device), mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]  # fmt: skip


def _grid(theta: np.ndarray, w: int, h: int, device: torch.device) -> torch.Tensor:
    """`F.affine_grid(theta, align_corners=False)` as products with the 6 numbers: (1, h, w, 2).

    Not affine_grid itself: that is a batched matmul, which runs in TF32 on a GPU wherever a process
    allows it (training does), enough to move a sample half a pixel across a 1080p frame; and the
    map needs no upload this way.
    """
    xs = torch.arange(w, device=device, dtype=torch.float32).mul_(2 / w).add_(1 / w - 1)[None]  # pixel centres
    ys = torch.arange(h, device=device, dtype=torch.float32).mul_(2 / h).add_(1 / h - 1)[:, None]
    (a, b, c), (d, e, f) = theta.tolist()
    return torch.stack([xs * a + ys * b + c, xs * d + ys * e + f], dim=-1)[None]


def _mix(pixels: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3) @ matrix.T as products and sums: a colour matrix, exact in float32 (no TF32 matmul)."""
    return (pixels[..., None, :] * matrix).sum(-1)


def _blend(plane: torch.Tensor, value: torch.Tensor, alpha: torch.Tensor) -> None:
    """In place, as the host YUV paste: round(value a + plane (1 - a)), and the plane's bytes where alpha is 0."""
    a = alpha / 255
    blended = torch.round(value * a + plane.float() * (1 - a)).to(torch.uint8)  # convex: stays in 0..255
    plane.copy_(torch.where(alpha > 0, blended, plane))


@dataclass
class _Frame:
    """One canvas's pixels on the device, channel-first views of one upload, and the boxes pasted into."""

    canvas: Canvas
    planes: tuple[torch.Tensor, ...]  # RGB: ((3, H, W),); YUV: ((1, H, W) luma, (2, H/2, W/2) chroma)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


class DeviceWarp:
    """Crops and pastes of host canvases, computed on `device` (see the module's note).

    `crop` uploads a canvas on first use; `paste` blends into the uploaded planes; `release` writes the
    pasted boxes back into the canvas and frees the upload. Crops and swaps stay device tensors:
    (S, S, 3) uint8, as the host path's arrays.
    """

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self._frames: dict[int, _Frame] = {}  # id(canvas) -> its upload (the canvas is held, so the id is its own)
        self._consts: dict[bytes, torch.Tensor] = {}  # colour matrices, uploaded once
        self._masks: dict[int, tuple[Image.Image, torch.Tensor]] = {}  # id(mask) -> (mask, (1, S, S) float)
        self.uploads = 0  # frames uploaded: one per frame with a face, however many faces

    def _threads(self) -> contextlib.AbstractContextManager:
        # on a CPU device the torch path follows the host path's rule (see align.single_thread)
        return single_thread() if self.device.type == "cpu" else contextlib.nullcontext()

    def _const(self, array: np.ndarray) -> torch.Tensor:
        key = array.tobytes() + str(array.shape).encode()
        if key not in self._consts:
            self._consts[key] = torch.from_numpy(np.asarray(array, np.float32)).to(self.device)
        return self._consts[key]

    def _mask(self, mask: Image.Image) -> torch.Tensor:
        """(1, S, S) float in 0..255; the swapper's mask is one object (blend.crop_mask's cache), uploaded once."""
        if id(mask) not in self._masks:
            self._masks[id(mask)] = (mask, torch.from_numpy(np.asarray(mask, np.float32)).to(self.device)[None])
        return self._masks[id(mask)][1]

    def _frame(self, canvas: Canvas) -> _Frame:
        frame = self._frames.get(id(canvas))
        if frame is None:
            if isinstance(canvas, Yuv420Canvas):  # the I420 array in one copy; the planes are views of it
                w, h = canvas.size
                t = torch.from_numpy(canvas.array).to(self.device, copy=True)
                planes = (t[:h][None], t[h:].reshape(2, h // 2, w // 2))
            elif isinstance(canvas, RgbCanvas):
                t = torch.from_numpy(np.array(canvas.image)).to(self.device)  # (H, W, 3); np.array: a copy
                planes = (t.permute(2, 0, 1),)
            else:
                raise TypeError(f"no device warp for {type(canvas).__name__}")
            frame = self._frames[id(canvas)] = _Frame(canvas, planes)
            self.uploads += 1
        return frame

    def crop(self, canvas: Canvas, m: np.ndarray, size: int) -> torch.Tensor:
        """The aligned RGB crop, (size, size, 3) uint8 on the device; `canvas.crop`'s numbers."""
        with self._threads(), torch.no_grad():
            frame = self._frame(canvas)
            if isinstance(canvas, Yuv420Canvas):
                luma, chroma = frame.planes
                yuv = torch.cat([warp(luma, _plane_map(m, 1, (0, 0)), (size, size)),
                                 warp(chroma, _plane_map(m, 2, (0, 0)), (size, size))]).round_()  # fmt: skip
                offset, to_rgb = self._const(canvas.offset), self._const(canvas.to_rgb)
                rgb = _mix(yuv.permute(1, 2, 0) - offset, to_rgb)  # (size, size, 3)
                return rgb.add_(0.5).clamp_(0, 255).to(torch.uint8)  # truncation after +0.5, as the host's
            return warp(frame.planes[0], m, (size, size)).round_().to(torch.uint8).permute(1, 2, 0)

    def swaps(self, swaps: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, S, S, 3) uint8, left on the device (the host path's `to_images`)."""
        with self._threads(), torch.no_grad():
            images = swaps.detach().float().clamp(0, 1).mul_(255).round_().to(torch.uint8)
            return images.permute(0, 2, 3, 1)

    def paste(self, canvas: Canvas, swap: torch.Tensor | np.ndarray, m: np.ndarray, mask: Image.Image) -> None:
        """Blend `swap` ((S, S, 3) uint8, a crop under the frame -> crop map `m`) into the uploaded frame."""
        box = paste_box(mask, m, canvas.size)
        yuv = isinstance(canvas, Yuv420Canvas)
        if box is not None and yuv:
            box = canvas._even_box(*box)  # the host paste's own box: both touch the same pixels
        if box is None:
            return
        x0, y0, x1, y1 = box
        with self._threads(), torch.no_grad():
            frame = self._frame(canvas)
            swap = torch.as_tensor(swap).to(self.device).permute(2, 0, 1).float()  # (3, S, S)
            alpha = self._mask(mask)
            if yuv:
                to_yuv, offset = self._const(canvas.to_yuv), self._const(canvas.offset)
                layers = (_mix(swap.permute(1, 2, 0), to_yuv) + offset).add_(0.5).clamp_(0, 255).floor_()
                layers = torch.cat([layers.permute(2, 0, 1), alpha])  # (4, S, S): Y, U, V, mask
                luma_plane, chroma_plane = frame.planes
                luma = warp(layers[[0, 3]], invert(_plane_map(m, 1, (x0, y0))), (x1 - x0, y1 - y0))
                half = (slice(y0 // 2, y1 // 2), slice(x0 // 2, x1 // 2))
                chroma = warp(layers[1:], invert(_plane_map(m, 2, (x0 // 2, y0 // 2))),
                              ((x1 - x0) // 2, (y1 - y0) // 2))  # fmt: skip
                _blend(luma_plane[0, y0:y1, x0:x1], luma[0], luma[1])
                _blend(chroma_plane[0][half], chroma[0], chroma[2])
                _blend(chroma_plane[1][half], chroma[1], chroma[2])
            else:
                to_box = invert(m).copy()  # crop -> box-local pixels
                to_box[:, 2] -= (x0, y0)
                layers = warp(torch.cat([swap, alpha]), to_box, (x1 - x0, y1 - y0))  # (4, h, w)
                region = frame.planes[0][:, y0:y1, x0:x1]
                for c in range(3):
                    _blend(region[c], layers[c], layers[3])
        frame.boxes.append(box)

    def release(self, canvas: Canvas) -> None:
        """Write the pasted boxes back into the canvas (the rest of it was never changed) and drop the upload."""
        frame = self._frames.pop(id(canvas), None)
        if frame is None or not frame.boxes:
            return
        with self._threads():
            for x0, y0, x1, y1 in frame.boxes:  # overlapping faces: each box read after every paste
                if isinstance(canvas, Yuv420Canvas):
                    luma, chroma = frame.planes
                    half = (slice(y0 // 2, y1 // 2), slice(x0 // 2, x1 // 2))
                    canvas.y[y0:y1, x0:x1] = luma[0, y0:y1, x0:x1].cpu().numpy()
                    canvas.u[half] = chroma[0][half].cpu().numpy()
                    canvas.v[half] = chroma[1][half].cpu().numpy()
                else:
                    assert isinstance(canvas, RgbCanvas)
                    canvas.put(frame.planes[0][:, y0:y1, x0:x1].permute(1, 2, 0).cpu().numpy(), (x0, y0))

    def clear(self) -> None:
        """Drop every upload without writing back (a run that stopped half way)."""
        self._frames.clear()
