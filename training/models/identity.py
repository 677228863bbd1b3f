"""Frozen identity encoder: ArcFace IResNet, optional InSwapper "emap", L2 normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.iresnet import IResNet, load_iresnet


class IdentityEncoder(nn.Module):
    """``(B, 3, H, W)`` in [0, 1], any size -> ``(B, 512)`` L2-normalised identity embedding.

    Steps, as in the official code: bilinear resize to 112, scale to [-1, 1], IResNet, then
    (optionally) the InSwapper ``emap`` projection. As in InSwapper, the ArcFace embedding is
    normalised before ``emb @ emap`` and the result is normalised again.

    The encoder is frozen: its parameters never require gradients and it stays in eval mode even
    when a parent module calls ``.train()`` (BatchNorm statistics must not drift). Gradients still
    flow to its *input*, which the identity loss needs.
    """

    emap: Tensor | None

    def __init__(self, backbone: IResNet, emap: Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_size = backbone.input_size
        if emap is not None:
            emap = torch.as_tensor(np.asarray(emap), dtype=torch.float32)
            dim = backbone.features.num_features
            if emap.shape != (dim, dim):
                raise ValueError(f"emap must be ({dim}, {dim}), got {tuple(emap.shape)}")
        self.register_buffer("emap", emap, persistent=False)
        self.requires_grad_(False)
        super().train(False)

    @classmethod
    def from_files(cls, arch: str, weights: str | Path, emap: str | Path | None = None) -> IdentityEncoder:
        """Load an ``arcface_torch`` checkpoint (``.pth``/``.safetensors``) and an ``emap.npy``."""
        matrix = None if emap is None else np.load(emap, allow_pickle=False)
        return cls(load_iresnet(arch, weights), matrix)

    def train(self, mode: bool = True) -> IdentityEncoder:
        return super().train(False)  # frozen: always eval, whatever the parent asks

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, emap={self.emap is not None}"

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        emb = F.normalize(self.backbone(x * 2.0 - 1.0), dim=1)  # (B, 512)
        if self.emap is not None:
            emb = F.normalize(emb @ self.emap, dim=1)
        return emb
