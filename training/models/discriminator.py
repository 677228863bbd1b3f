"""StarGAN-v2 ResBlk discriminators: the official AlphaFace one, and our shallower patch variant.

Both stack pre-activation residual blocks (StarGAN v2's, without normalisation) and end in one
logit per patch instead of StarGAN v2's global logit.

- ``official`` (``Swapper_Units_AdIN.Discriminator``, built with image size 256 and at most 512
  channels): ``log2(256) - 1 = 7`` ResBlks that downsample only at odd indices (3 halvings), so
  the logits are 32x32. Head: LeakyReLU, 1x1 conv, LeakyReLU, 1x1 conv, LeakyReLU (a final
  activation on the logits). Reads images in [0, 1] as they are. 21.64M parameters.
- ``patch`` (ours): ``num_down`` ResBlks, every one downsampling (16x16 logits at 256), a 3x3
  conv in the head, no final activation, images centred to [-1, 1]. 9.58M parameters.

Reads bottom-up: config, the residual block, then :class:`Discriminator`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

DiscriminatorKind = Literal["official", "patch"]
DISCRIMINATOR_KINDS: tuple[str, ...] = get_args(DiscriminatorKind)


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class DiscriminatorConfig:
    kind: DiscriminatorKind = "official"  # "official" (AlphaFace's StarGAN-v2 D) or "patch" (ours)
    # Input
    image_size: int = 256  # the size it is built for (any multiple of the total stride runs)
    # Width: StarGAN v2 starts at 2**14 // image_size channels (64 at 256) and doubles per block to a cap.
    base_channels: int = 64  # channels of the first conv
    max_channels: int = 512  # cap on the doubling (official: 512)
    # Depth (patch only; official is always log2(image_size) - 1 blocks, halving at odd indices)
    num_down: int = 4  # ResBlk downsamplings: 256 -> 16x16 patch logits

    def __post_init__(self) -> None:
        if self.kind not in DISCRIMINATOR_KINDS:
            raise ValueError(f"discriminator kind must be one of {DISCRIMINATOR_KINDS}, got {self.kind!r}")
        if self.base_channels < 1 or self.max_channels < self.base_channels:
            raise ValueError("need 1 <= base_channels <= max_channels")
        if self.kind == "official" and (self.image_size < 8 or self.image_size & (self.image_size - 1)):
            raise ValueError(f"the official discriminator needs a power-of-two image_size >= 8, got {self.image_size}")
        if self.num_down < 1 or self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the stride {self.stride}")

    @property
    def downsample(self) -> tuple[bool, ...]:
        """Whether each ResBlk halves the resolution."""
        if self.kind == "official":
            return tuple(i % 2 == 1 for i in range(int(math.log2(self.image_size)) - 1))
        return (True,) * self.num_down

    @property
    def stride(self) -> int:
        return 2 ** sum(self.downsample)


# ---------------------------------------------------------------------------------------------
# Blocks


class ResBlk(nn.Module):
    """Pre-activation residual block (no normalisation, as in StarGAN v2's discriminator)."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_ch, in_ch, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False) if in_ch != out_ch else None

    def extra_repr(self) -> str:
        return f"downsample={self.downsample}"

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        res = self.conv1(F.leaky_relu(x, 0.2))
        if self.downsample:
            skip = F.avg_pool2d(skip, 2)
            res = F.avg_pool2d(res, 2)
        res = self.conv2(F.leaky_relu(res, 0.2))
        return (skip + res) / math.sqrt(2)  # unit-variance residual sum


# ---------------------------------------------------------------------------------------------
# Discriminator


class Discriminator(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> patch logits ``(B, 1, H / stride, W / stride)``."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.base_channels
        layers: list[nn.Module] = [nn.Conv2d(3, ch, kernel_size=3, padding=1)]
        for down in config.downsample:
            out_ch = min(ch * 2, config.max_channels)
            layers.append(ResBlk(ch, out_ch, downsample=down))
            ch = out_ch
        if config.kind == "official":
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, kernel_size=1), nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(ch, 1, kernel_size=1), nn.LeakyReLU(0.2)]  # the official final activation
        else:
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, kernel_size=3, padding=1), nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(ch, 1, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"kind={self.config.kind}, blocks={len(self.config.downsample)}, stride={self.config.stride}"

    def forward(self, images: Tensor) -> Tensor:
        # The official D reads [0, 1] images as they are; ours centres them.
        return self.net(images if self.config.kind == "official" else images * 2.0 - 1.0)


def build_discriminator(**overrides: object) -> Discriminator:
    """A discriminator with any :class:`DiscriminatorConfig` field overridden."""
    return Discriminator(dataclasses.replace(DiscriminatorConfig(), **overrides))
