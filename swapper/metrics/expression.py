"""Expression coefficients for the expression error: Deep3DFaceRecon's ResNet-50 regressor.

    deep3d:PATH  Deep3DFaceRecon_pytorch's `epoch_20.pth` (`{"net_recon": state}`, or the bare state),
                 loaded strictly
    tiny         a seeded random regressor with one block per stage, at 64 px (tests)

`ReconNetWrapper` layout: `backbone.*` (torchvision ResNet-50 without `fc`) and `final_layers.0..6`,
1x1 convs 2048 -> 80, 64, 80, 3, 27, 2, 1, concatenated into the 257-d coefficient vector:
id 80 | exp 64 | tex 80 | angle 3 | gamma 27 | trans 3. The expression is slice 80:144.
Input: the crop resized to 224, RGB in [0, 1] (Deep3DFaceRecon feeds [0, 1], no normalisation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from swapper.metrics import world
from swapper.metrics.common import MetricModel, calibrate_bn, load_strict, load_weights, parse_spec, resize
from swapper.metrics.resnet import PLANES, RESNET50, TINY_LAYERS, TINY_PLANES, Trunk

LAYOUT = {"id": 80, "exp": 64, "tex": 80, "angle": 3, "gamma": 27, "trans": 3}  # 257
HEADS = (80, 64, 80, 3, 27, 2, 1)  # final_layers: trans is split into (tx, ty) and tz
EXP = slice(80, 144)
INPUT_SIZE = 224


class Deep3DRecon(MetricModel):
    def __init__(
        self, layers: tuple[int, ...] = RESNET50, planes: tuple[int, ...] = PLANES, input_size: int = INPUT_SIZE
    ) -> None:
        super().__init__()
        self.backbone = Trunk(layers, planes)
        self.input_size = input_size
        width = self.backbone.features
        self.final_layers = nn.ModuleList(nn.Conv2d(width, n, kernel_size=1, bias=True) for n in HEADS)

    def coefficients(self, crops: Tensor) -> Tensor:
        f = self.backbone(resize(crops, self.input_size))[:, :, None, None]  # (B, 2048, 1, 1)
        return torch.cat([layer(f) for layer in self.final_layers], dim=1).flatten(1).float()  # (B, 257)

    def forward(self, crops: Tensor) -> Tensor:
        return self.coefficients(crops)[:, EXP]  # (B, 64)


def load_expression(spec: str) -> MetricModel:
    kind, path = parse_spec(spec, ("deep3d", world.KIND), "--expr-model")
    if kind == world.KIND:
        return world.load("expression", path, "--expr-model")
    if kind == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            model = Deep3DRecon(TINY_LAYERS, TINY_PLANES, input_size=64)
            calibrate_bn(model.backbone, 64, seed=2)
        return model.finish(spec, "tiny random Deep3DFaceRecon regressor (tests only)")
    model = Deep3DRecon()
    load_strict(model, load_weights(path, unwrap=("net_recon",)), f"--expr-model {spec}")
    return model.finish(spec, f"Deep3DFaceRecon ResNet-50 ({path.name})")
