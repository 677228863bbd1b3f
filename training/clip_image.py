"""Frozen open_clip image tower for ``CLIP_img(swap)``, the only CLIP pass at training time.

Preprocessing follows the model's own open_clip config (size, resize mode, interpolation, mean,
std), applied to [0, 1] tensors so gradients reach the swap. Unlike the official code, images are
not multiplied by 255 before normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class ClipImageTower(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` L2-normalised CLIP image embedding.

    Takes an open_clip model (from ``open_clip.create_model``) and keeps only its ``visual`` tower;
    the text tower is not needed because text embeddings are cached by the embed stage.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(clip_model)
        if not cfg or "mean" not in cfg or "std" not in cfg:
            raise ValueError("the CLIP model carries no preprocess config (create it with open_clip.create_model)")
        self.visual = clip_model.visual
        self.size = _pair(cfg.get("size", 224))
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.fill = float(cfg.get("fill_color", 0))
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"unsupported open_clip resize_mode {self.resize_mode!r}")
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1), False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ClipImageTower:
        return super().train(False)  # frozen

    def extra_repr(self) -> str:
        return f"size={self.size}, resize_mode={self.resize_mode}, interpolation={self.interpolation}"

    def preprocess(self, images: Tensor) -> Tensor:
        """open_clip's eval transform on a [0, 1] batch: resize, crop or pad, normalise."""
        h, w = images.shape[-2:]
        th, tw = self.size
        if self.resize_mode == "squash":
            new = (th, tw)
        else:  # "shortest" scales the short side to fit and crops; "longest" scales the long side and pads
            pick = max if self.resize_mode == "shortest" else min
            scale = pick(th / h, tw / w)
            new = (max(1, round(h * scale)), max(1, round(w * scale)))
        antialias = self.interpolation in ("bilinear", "bicubic")
        x = F.interpolate(images, size=new, mode=self.interpolation, antialias=antialias)
        x = x.clamp(0.0, 1.0)  # PIL clamps bicubic overshoot when it writes uint8
        top, left = (new[0] - th) // 2, (new[1] - tw) // 2
        if top > 0 or left > 0:  # centre crop
            x = x[..., max(top, 0) : max(top, 0) + th, max(left, 0) : max(left, 0) + tw]
        if x.shape[-2:] != (th, tw):  # centre pad ("longest")
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.fill / 255.0)
        return (x - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        out = self.visual(self.preprocess(images))
        if isinstance(out, tuple):  # towers that also return tokens (e.g. CoCa)
            out = out[0]
        return F.normalize(out.float(), dim=-1)
