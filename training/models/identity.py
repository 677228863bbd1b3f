"""Frozen identity encoder: ArcFace IResNet, optional InSwapper "emap", L2 normalisation.

:class:`IdentityEncoder` is the module; :func:`build_identity` makes it from real weights or, for
the demo and tests only, a seeded random IResNet (``TINY_ID`` widths for ``id_arch: tiny``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.iresnet import IResNet, build_iresnet, load_iresnet
from training.models.weights import MissingWeights, load_state_dict_file

TINY_ID = {"layers": (1, 1, 1, 1), "widths": (8, 16, 16, 32)}  # id_arch "tiny": demo and tests only


class IdentityEncoder(nn.Module):
    """``(B, 3, H, W)`` in [0, 1], any size -> ``(B, 512)`` L2-normalised identity embedding.

    Steps, as in the official code: bilinear resize to 112, scale to [-1, 1], IResNet, then
    (optionally) the InSwapper ``emap`` projection. As in InSwapper, the ArcFace embedding is
    normalised before ``emb @ emap`` and the result is normalised again (the official code skips
    the first normalisation; a positive scale before a linear map changes nothing once the result
    is normalised). :meth:`encode` takes an input already at 112 and in [-1, 1] (the official
    ``eval.py`` quantises it first, see ``swapper.convert``).

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
        """Load an ``arcface_torch`` checkpoint (``.pth``/``.safetensors``) and an ``emap.npy``, strictly.
        ``arch`` ``tiny`` (``TINY_ID`` widths) is for tests: e.g. converted tiny official weights."""
        matrix = None if emap is None else np.load(emap, allow_pickle=False)
        if arch != "tiny":
            return cls(load_iresnet(arch, weights), matrix)
        backbone = IResNet(**TINY_ID)
        backbone.load_state_dict(load_state_dict_file(weights), strict=True)
        return cls(backbone.eval(), matrix)

    def train(self, mode: bool = True) -> IdentityEncoder:
        return super().train(False)  # frozen: always eval, whatever the parent asks

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, emap={self.emap is not None}"

    def encode(self, x: Tensor) -> Tensor:
        """``(B, 3, 112, 112)`` already in [-1, 1] -> ``(B, 512)`` L2-normalised."""
        emb = F.normalize(self.backbone(x), dim=1)  # (B, 512)
        if self.emap is not None:
            emb = F.normalize(emb @ self.emap, dim=1)
        return emb

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.encode(x * 2.0 - 1.0)


def build_identity(
    arch: str,
    weights: str | None,
    emap: str | None,
    use_emap: bool = True,
    allow_random: bool = False,
    seed: int = 0,
) -> IdentityEncoder:
    """The frozen identity encoder: real ArcFace weights, or (allow_random) a seeded random IResNet.

    A random IResNet has its BatchNorm statistics calibrated on random images (one pass, momentum
    1), so different faces get different embeddings; the same seed always gives the same network,
    which lets swap rebuild the encoder a demo run trained with.
    """
    matrix_path = emap if use_emap else None
    if weights:
        return IdentityEncoder.from_files(arch, weights, matrix_path)
    if not allow_random:
        raise MissingWeights("the identity encoder needs id_weights (an arcface_torch IResNet checkpoint)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = IResNet(**TINY_ID) if arch == "tiny" else build_iresnet(arch)
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.momentum = 1.0
        coarse = torch.rand(16, 3, 8, 8)
        with torch.no_grad():
            backbone.train()(F.interpolate(coarse, size=backbone.input_size, mode="bilinear") * 2 - 1)
    matrix = np.load(matrix_path, allow_pickle=False) if matrix_path else None
    return IdentityEncoder(backbone.eval(), matrix)
