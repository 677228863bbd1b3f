"""The torchvision ResNet trunk that HopeNet and Deep3DFaceRecon are built on (their key names)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

RESNET50 = (3, 4, 6, 3)
PLANES = (64, 128, 256, 512)
TINY_LAYERS = (1, 1, 1, 1)  # tests: one Bottleneck per stage
TINY_PLANES = (4, 8, 8, 16)  # tests: narrow stages (64-d features)


class Trunk(nn.Module):
    """torchvision's ResNet up to the global pool, under its own names: `conv1 bn1 layer1..4`.
    `(B, 3, H, W)` -> `(B, planes[-1] * 4)` (2048 for ResNet-50)."""

    def __init__(self, layers: Sequence[int] = RESNET50, planes: Sequence[int] = PLANES) -> None:
        super().__init__()
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (blocks, width) in enumerate(zip(layers, planes, strict=True)):
            setattr(self, f"layer{i + 1}", self._layer(width, blocks, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.features = planes[-1] * Bottleneck.expansion

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)  # (B, 2048)
