"""IResNet face recogniser with the exact state-dict layout of insightface's ``arcface_torch``.

Checkpoints trained with ``arcface_torch`` (``backbone.pth``) load into :func:`build_iresnet`
strictly, so the embedding equals the original's. The module reads bottom-up: helpers, the
residual block, the network, then the builders and loaders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training.models.weights import load_state_dict_file

# Blocks per stage of the named architectures (insightface's iresnet50 / iresnet100).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}
BN_EPS = 1e-5  # insightface uses 1e-5 everywhere; the default would also be 1e-5, but be explicit


# ---------------------------------------------------------------------------------------------
# Helpers


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


# ---------------------------------------------------------------------------------------------
# Blocks


class IBasicBlock(nn.Module):
    """Pre-activation-style block: BN, conv, BN, PReLU, conv (strided), BN, plus the shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)  # insightface strides the second conv
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=BN_EPS),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


# ---------------------------------------------------------------------------------------------
# Network


class IResNet(nn.Module):
    """ArcFace IResNet: ``(B, 3, 112, 112)`` in [-1, 1] -> ``(B, num_features)`` (not normalised).

    ``widths`` other than (64, 128, 256, 512) exist only so tests can build tiny encoders; the
    named architectures use the insightface widths.
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_features: int = 512,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages, got layers={layers} widths={widths}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.layers_cfg = tuple(layers)
        self.input_size = input_size
        stem = widths[0]
        self.conv1 = _conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem, eps=BN_EPS)
        self.prelu = nn.PReLU(stem)
        in_ch = stem
        for i, (num_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = [IBasicBlock(in_ch, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(num_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = width
        side = input_size // 16  # four stride-2 stages: 112 -> 7
        self.bn2 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.dropout = nn.Dropout(p=0.0)  # parameter-free; kept so module names match insightface
        self.fc = nn.Linear(in_ch * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)

    def extra_repr(self) -> str:
        return f"layers={self.layers_cfg}, input_size={self.input_size}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)  # (B, C, 7, 7) -> (B, C * 49), channel-major like insightface
        x = self.fc(self.dropout(x))
        return self.features(x)


# ---------------------------------------------------------------------------------------------
# Builders


# Small IResNets trained inside the synthetic world (demo.world): one block per stage, a 32 px input
IRESNET_SMALL: dict[str, dict[str, Any]] = {
    "world": {"layers": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "input_size": 32},
}


def build_iresnet(arch: str = "r50") -> IResNet:
    """An insightface-compatible IResNet (``"r50"`` or ``"r100"``, or a small one of ``IRESNET_SMALL``) with
    random weights."""
    if arch in IRESNET_SMALL:
        return IResNet(**IRESNET_SMALL[arch])
    if arch not in IRESNET_LAYERS:
        raise ValueError(f"unknown IResNet arch {arch!r}; choose from {sorted(IRESNET_LAYERS | IRESNET_SMALL)}")
    return IResNet(IRESNET_LAYERS[arch])


def load_iresnet(arch: str, path: str | Path) -> IResNet:
    """Build ``arch`` and load an ``arcface_torch`` checkpoint strictly (every key, every shape)."""
    model = build_iresnet(arch)
    model.load_state_dict(load_state_dict_file(path), strict=True)
    return model.eval()
