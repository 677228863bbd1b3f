"""Head pose for the pose error: HopeNet (Ruiz et al., `deep-head-pose`).

    hopenet:PATH  `hopenet_robust_alpha1.pkl` (a plain state dict; weights_only=True), loaded strictly
    tiny          a seeded random HopeNet with one block per stage, at 64 px (tests)

The network is a torchvision ResNet-50 with three 66-bin heads `fc_yaw`, `fc_pitch`, `fc_roll`
(2048 -> 66) and the unused `fc_finetune` (2048 + 3 -> 3) that the released files hold. Angles are
the softmax expectation over the bins, `sum(p_i * i) * 3 - 99` degrees, as in the authors' test
script. Input: the crop resized to 224 and ImageNet-normalised (the script's Scale(224),
CenterCrop(224), Normalize). Output: `(B, 3)` yaw, pitch, roll in degrees.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from swapper.metrics import world
from swapper.metrics.common import MetricModel, calibrate_bn, imagenet, load_strict, load_weights, parse_spec, resize
from swapper.metrics.resnet import PLANES, RESNET50, TINY_LAYERS, TINY_PLANES, Trunk

BINS = 66  # 3-degree bins over [-99, 99)
INPUT_SIZE = 224


class HopeNet(MetricModel):
    def __init__(
        self, layers: tuple[int, ...] = RESNET50, planes: tuple[int, ...] = PLANES, input_size: int = INPUT_SIZE
    ) -> None:
        super().__init__()
        self.trunk = Trunk(layers, planes)
        self.input_size = input_size
        width = self.trunk.features
        self.fc_yaw = nn.Linear(width, BINS)
        self.fc_pitch = nn.Linear(width, BINS)
        self.fc_roll = nn.Linear(width, BINS)
        self.fc_finetune = nn.Linear(width + 3, 3)  # in the released weights; not used at test time
        self.register_buffer("bins", torch.arange(BINS, dtype=torch.float32), persistent=False)

    def forward(self, crops: Tensor) -> Tensor:
        x = imagenet(resize(crops, self.input_size))
        f = self.trunk(x)  # (B, 2048)
        heads = (self.fc_yaw, self.fc_pitch, self.fc_roll)
        angles = [(torch.softmax(h(f).float(), dim=1) * self.bins).sum(1) * 3 - 99 for h in heads]
        return torch.stack(angles, dim=1)  # (B, 3) yaw, pitch, roll in degrees


def to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The released layout (trunk keys at the top level) -> this module's (`trunk.` prefix)."""
    heads = ("fc_yaw.", "fc_pitch.", "fc_roll.", "fc_finetune.")
    return {(k if k.startswith(heads) else f"trunk.{k}"): v for k, v in state.items()}


def load_pose(spec: str) -> MetricModel:
    kind, path = parse_spec(spec, ("hopenet", world.KIND), "--pose-model")
    if kind == world.KIND:
        return world.load("pose", path, "--pose-model")
    if kind == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model = HopeNet(TINY_LAYERS, TINY_PLANES, input_size=64)
            calibrate_bn(model.trunk, 64, seed=1)
        return model.finish(spec, "tiny random HopeNet (tests only)")
    model = HopeNet()
    load_strict(model, to_ours(load_weights(path)), f"--pose-model {spec}")
    return model.finish(spec, f"HopeNet ResNet-50 ({path.name})")
