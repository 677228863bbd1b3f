"""Tiny real models for the training tests: built from configs with random weights, no downloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training.clip_image import ClipImageTower  # noqa: E402
from training.models import IdentityEncoder, IResNet  # noqa: E402

TINY_CLIP_NAME = "alphaface-test-tiny-clip"
# A real open_clip CLIP config, shrunk: ViT with 32 px input, one layer each tower.
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Deliberately not OpenAI's statistics, so a test can tell the model's own config is used.
TINY_CLIP_MEAN = (0.25, 0.5, 0.75)
TINY_CLIP_STD = (0.5, 0.25, 0.125)


@pytest.fixture(scope="session")
def tiny_clip_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    import open_clip

    cfg_dir: Path = tmp_path_factory.mktemp("clip_cfg")
    (cfg_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg_dir / f"{TINY_CLIP_NAME}.json")
    torch.manual_seed(0)
    return open_clip.create_model(
        TINY_CLIP_NAME,
        pretrained=None,
        force_preprocess_cfg={"mean": TINY_CLIP_MEAN, "std": TINY_CLIP_STD},
    )


@pytest.fixture()
def tiny_clip(tiny_clip_model: torch.nn.Module) -> ClipImageTower:
    return ClipImageTower(tiny_clip_model)


def smooth_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random images with some spatial structure: an 8x8 grid of colours, bilinearly upsampled."""
    coarse = torch.rand(n, 3, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def make_tiny_identity(seed: int = 0) -> IdentityEncoder:
    """A frozen IResNet with insightface topology but tiny widths and random weights.

    Its BatchNorm statistics are calibrated on random images (one train-mode pass, momentum 1), so
    different images get clearly different embeddings, as with a trained recogniser; an
    uncalibrated random net maps every image to nearly the same direction.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = IResNet(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32))
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.momentum = 1.0
    with torch.no_grad():
        backbone.train()(smooth_images(32, 112, g) * 2 - 1)
    return IdentityEncoder(backbone.eval())


@pytest.fixture()
def tiny_identity() -> IdentityEncoder:
    return make_tiny_identity()
