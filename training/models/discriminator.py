"""StarGAN-v2-style ResBlk patch discriminator.

StarGAN v2 stacks pre-activation residual blocks with average-pool downsampling down to 4x4 and
ends in a global logit. Here the stack stops after ``num_down`` blocks and a 1x1 conv gives one
logit per patch (``256 / 2**num_down`` per side), the patch-GAN form used for face swapping.
Reads bottom-up: config, the residual block, then :class:`Discriminator`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class DiscriminatorConfig:
    # Input
    image_size: int = 256  # the size it is designed for (any multiple of 2**num_down runs)
    # Width: StarGAN v2 starts at 2**14 // image_size channels and doubles per block up to a cap.
    base_channels: int = 64  # channels of the first conv
    max_channels: int = 512  # cap on the doubling
    # Depth
    num_down: int = 4  # ResBlk downsamplings: 256 -> 16x16 patch logits

    def __post_init__(self) -> None:
        if self.base_channels < 1 or self.max_channels < self.base_channels:
            raise ValueError("need 1 <= base_channels <= max_channels")
        if self.num_down < 1 or self.image_size % 2**self.num_down:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**num_down ({self.num_down})")


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
    """``(B, 3, H, W)`` in [0, 1] -> patch logits ``(B, 1, H / 2**num_down, W / 2**num_down)``."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.base_channels
        layers: list[nn.Module] = [nn.Conv2d(3, ch, kernel_size=3, padding=1)]
        for _ in range(config.num_down):
            out_ch = min(ch * 2, config.max_channels)
            layers.append(ResBlk(ch, out_ch, downsample=True))
            ch = out_ch
        layers += [nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, kernel_size=3, padding=1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ch, 1, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images * 2.0 - 1.0)


def build_discriminator(**overrides: object) -> Discriminator:
    """A discriminator with any :class:`DiscriminatorConfig` field overridden."""
    return Discriminator(dataclasses.replace(DiscriminatorConfig(), **overrides))
