"""The face recogniser for ID retrieval and ID similarity: an IResNet in insightface's
`arcface_torch` layout (CosFace and ArcFace r50/r100 share it), never the training identity encoder.

    cosface:PATH  an arcface_torch `backbone.pth` (r50 or r100, told from its keys), loaded strictly
    tiny          a seeded random tiny IResNet (tests)

Input: the generator-framed crop re-warped onto the 112x112 ArcFace template (what the
recogniser was trained on), scaled to [-1, 1]. Output: the L2-normalised 512-d embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from swapper.faces.align import ARCFACE_112, ARCFACE_SIZE
from swapper.metrics import world
from swapper.metrics.common import MetricModel, calibrate_bn, load_strict, load_weights, parse_spec, reframe
from training.models.identity import TINY_ID
from training.models.iresnet import IRESNET_LAYERS, IResNet, build_iresnet


def arch_of(state: dict[str, Tensor]) -> str:
    """r50 or r100, from the number of blocks in layer2 (4 and 13)."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("layer2.")}
    for arch, layers in IRESNET_LAYERS.items():
        if len(blocks) == layers[1]:
            return arch
    raise ValueError(f"not an arcface_torch IResNet r50/r100: layer2 has {len(blocks)} blocks")


class Recogniser(MetricModel):
    def __init__(self, backbone: IResNet, crop: str) -> None:
        super().__init__()
        self.backbone, self.crop = backbone, crop

    def forward(self, crops: Tensor) -> Tensor:
        x = reframe(crops, self.crop, ARCFACE_112, ARCFACE_SIZE) * 2.0 - 1.0  # (B, 3, 112, 112) in [-1, 1]
        return F.normalize(self.backbone(x).float(), dim=1)  # (B, 512)


def load_recogniser(spec: str, crop: str = "ffhq") -> MetricModel:
    kind, path = parse_spec(spec, ("cosface", world.KIND), "--id-model")
    if kind == world.KIND:
        return world.load("id", path, "--id-model")
    if kind == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            backbone = IResNet(**TINY_ID)
            calibrate_bn(backbone, ARCFACE_SIZE, seed=0)
        return Recogniser(backbone, crop).finish(spec, "tiny random IResNet (tests only)")
    state = load_weights(path)
    arch = arch_of(state)
    backbone = build_iresnet(arch)
    load_strict(backbone, state, f"--id-model {spec}")
    return Recogniser(backbone, crop).finish(spec, f"CosFace/ArcFace IResNet-{arch[1:]} ({path.name})")
