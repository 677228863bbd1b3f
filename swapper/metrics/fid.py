"""FID between the swaps and the target crops: Inception-v3 pool features and the Frechet distance.

    inception:PATH  torchvision's Inception-v3 (`inception_v3_google-*.pth`, with or without the
                    `AuxLogits` head), loaded strictly
    tiny            a seeded random small conv net with 32-d features (tests)
    none            no FID

Input: the crop resized to 299, ImageNet-normalised, with torchvision's `transform_input` (what its
Inception weights expect). Features: the 2048-d global average pool. Note: torchvision's weights
are not the TF-Inception graph of pytorch-fid / the original FID, so the figure is comparable
between runs of this harness, not to FIDs computed with those tools.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models import inception_v3

from swapper.metrics.common import MetricModel, calibrate_bn, imagenet, load_strict, load_weights, parse_spec, resize

INPUT_SIZE = 299


class InceptionPool(MetricModel):
    def __init__(self, aux_logits: bool = True) -> None:
        super().__init__()
        self.net = inception_v3(weights=None, aux_logits=aux_logits, transform_input=True, init_weights=False)
        self.net.fc = nn.Identity()  # the pool features, not the logits (fc keys are dropped on load)

    def forward(self, crops: Tensor) -> Tensor:
        x = imagenet(resize(crops, INPUT_SIZE))
        net = self.net
        x = net._transform_input(x)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):  # fmt: skip
            x = getattr(net, name)(x)
        return x.flatten(1).float()  # (B, 2048)


class TinyFeatures(MetricModel):
    """Tests only: conv-BN-ReLU x3 and a global pool, 32-d features, at 64 px."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 8), (8, 16), (16, 32)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))

    def forward(self, crops: Tensor) -> Tensor:
        return self.net(imagenet(resize(crops, 64))).flatten(1).float()  # (B, 32)


def load_fid(spec: str) -> MetricModel | None:
    kind, path = parse_spec(spec, "inception", "--fid-model", extra=("none",))
    if kind == "none":
        return None
    if kind == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            model = TinyFeatures()
            calibrate_bn(model.net, 64, seed=3)
        return model.finish(spec, "tiny random conv features (tests only)")
    state = {k: v for k, v in load_weights(path).items() if not k.startswith("fc.")}
    model = InceptionPool(aux_logits=any(k.startswith("AuxLogits.") for k in state))
    load_strict(model.net, state, f"--fid-model {spec}")
    return model.finish(spec, f"torchvision Inception-v3 pool ({path.name})")


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """FID of two feature sets `(N, D)`: |mu_x - mu_y|^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)).

    Tr((S_x S_y)^(1/2)) is computed as the sum of sqrt(eigenvalues) of S_x^(1/2) S_y S_x^(1/2),
    which is symmetric PSD, so no complex square root is needed (and no scipy)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("FID needs at least 2 samples on each side")
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = _sqrt_psd(s_x)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s_y @ root), 0, None)).sum()
    fid = float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * cross)
    return max(fid, 0.0)  # >= 0 mathematically; rounding can leave a tiny negative
