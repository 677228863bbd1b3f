"""Frozen VGG16 feature extractor for the perceptual loss.

torchvision's ``vgg16().features`` architecture, tapped after ReLU layers 3, 8, 15 and 22
(relu1_2, relu2_2, relu3_3, relu4_3) on 224x224 ImageNet-normalised inputs. Weights come from a
local file (the torchvision checkpoint ``vgg16-397923af.pth`` or a ``.safetensors`` copy); random
weights only when the caller asks for them explicitly (tests, the CPU demo).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from training.models.weights import MissingWeights, load_state_dict_file

VGG_LAYERS: tuple[int, ...] = (3, 8, 15, 22)  # indices into vgg16().features: relu1_2 ... relu4_3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _features_state_dict(state: dict[str, Tensor], last: int) -> dict[str, Tensor]:
    """Keep ``features.<i>.*`` for ``i <= last`` (prefix stripped). The rest of a full vgg16
    checkpoint (deeper features, classifier) is dropped; any other key is an error."""
    kept: dict[str, Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if match is None:
            if key.startswith("classifier."):
                continue
            raise ValueError(f"unexpected key {key!r} in a VGG16 checkpoint")
        if int(match.group(1)) <= last:
            kept[f"{match.group(1)}.{match.group(2)}"] = value
    return kept


class VGGPerceptual(nn.Module):
    """``(B, 3, H, W)`` in [0, 1] -> VGG16 feature maps; :meth:`distance` is the perceptual L1."""

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        allow_random: bool = False,
        layers: Sequence[int] = VGG_LAYERS,
        input_size: int = 224,
    ) -> None:
        super().__init__()
        if weights is None and not allow_random:
            raise MissingWeights("VGGPerceptual needs a weights file; pass allow_random=True only for tests/demos")
        self.layers = tuple(sorted(layers))
        self.input_size = input_size
        with torch.device("meta"):  # skip initialising the 120M-parameter classifier we drop
            features = torchvision.models.vgg16(weights=None).features[: self.layers[-1] + 1]
        self.features = features.to_empty(device="cpu")
        if weights is not None:
            state = _features_state_dict(load_state_dict_file(weights), self.layers[-1])
            self.features.load_state_dict(state, strict=True)
        else:  # torchvision's own VGG initialisation
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGPerceptual:
        return super().train(False)  # frozen

    def extra_repr(self) -> str:
        return f"layers={self.layers}, input_size={self.input_size}"

    def forward(self, images: Tensor) -> list[Tensor]:
        size = (self.input_size, self.input_size)
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                taps.append(x)
        return taps

    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        """Sum over the tapped layers of the mean L1 feature difference; ``reference`` is data, so
        its features are computed without gradients."""
        with torch.no_grad():
            ref = self(reference)
        return sum((F.l1_loss(a, b) for a, b in zip(self(images), ref, strict=True)), images.new_zeros(()))
