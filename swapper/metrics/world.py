"""Metric networks trained inside the synthetic world (`make world`), so that `swapper.evaluate` judges the
world's swaps as it judges FF++.

    world:PATH  a `.safetensors` file written by demo.world, its architecture in the metadata:
                --id-model: an IResNet recogniser (the judge); --pose-model and --expr-model: the attribute net

The world's faces are head-framed already, so these networks take the whole crop (resized to their input)
and ignore `--crop`. The attribute net regresses yaw and pitch in degrees and classifies the expression
into the world's 4 classes: as `--pose-model` it gives `(B, 3)` yaw, pitch and a zero roll, as
`--expr-model` the `(B, 4)` class probabilities (`classes` is set, so evaluate also reports accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swapper.metrics.common import MetricModel
from training.models.iresnet import IResNet

KIND = "world"
EXPRESSIONS = 4  # the world's expression classes


class AttrNet(nn.Module):
    """Yaw and pitch in degrees, and the expression's logits (4 classes), from a [0, 1] image."""

    def __init__(self, layers: tuple[int, ...], widths: tuple[int, ...], input_size: int) -> None:
        super().__init__()
        self.backbone = IResNet(layers=layers, widths=widths, input_size=input_size)
        self.head = nn.Linear(512, 2 + EXPRESSIONS)
        self.input_size = input_size

    def forward(self, x01: Tensor) -> tuple[Tensor, Tensor]:
        if x01.shape[-1] != self.input_size:
            x01 = F.interpolate(x01, size=self.input_size, mode="bilinear", align_corners=False)
        h = self.head(F.relu(self.backbone(x01 * 2 - 1)))
        return h[:, :2] * 30.0, h[:, 2:]


# ---------------------------------------------------------------------------------------------
# Files: safetensors, the shape in the metadata


def save(net: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save

    from pipeline.dataset import atomic_write_bytes

    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def read(path: Path, what: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{what}: not a world network file ({' '.join(str(e).split())[:200]})") from None
    if not {"layers", "widths", "input_size"} <= set(meta):
        raise ValueError(f"{what}: not a world network file (no layers, widths and input_size in its metadata)")
    return state, meta


def _build(cls: type[nn.Module], path: Path, what: str) -> nn.Module:
    state, meta = read(path, what)
    net = cls(layers=tuple(meta["layers"]), widths=tuple(meta["widths"]), input_size=int(meta["input_size"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what}: the weights are not this architecture: {' '.join(str(e).split())[:300]}") from None
    return net.eval()


def load_iresnet(path: Path, what: str = "recogniser") -> IResNet:
    return _build(IResNet, path, what)


def load_attr(path: Path, what: str = "attribute net") -> AttrNet:
    return _build(AttrNet, path, what)


# ---------------------------------------------------------------------------------------------
# As metric models


class WorldRecogniser(MetricModel):
    def __init__(self, net: IResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: Tensor) -> Tensor:
        x = F.interpolate(crops, size=self.net.input_size, mode="bilinear", align_corners=False)
        return F.normalize(self.net(x * 2 - 1).float(), dim=1)


class WorldPose(MetricModel):
    def __init__(self, net: AttrNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: Tensor) -> Tensor:
        pose = self.net(crops)[0].float()
        return torch.cat([pose, torch.zeros_like(pose[:, :1])], dim=1)  # (B, 3): yaw, pitch, no roll


class WorldExpression(MetricModel):
    classes = EXPRESSIONS

    def __init__(self, net: AttrNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: Tensor) -> Tensor:
        return torch.softmax(self.net(crops)[1].float(), dim=1)  # (B, 4) class probabilities


def load(role: str, path: Path, flag: str) -> MetricModel:
    """`role` id | pose | expression: the world network at `path` as that metric model."""
    what = f"{flag} {KIND}:{path}"
    if role == "id":
        net = load_iresnet(path, what)
        return WorldRecogniser(net).finish(f"{KIND}:{path}", f"world IResNet ({path.name})")
    attr = load_attr(path, what)
    model = WorldPose(attr) if role == "pose" else WorldExpression(attr)
    return model.finish(f"{KIND}:{path}", f"world attribute net ({path.name})")
