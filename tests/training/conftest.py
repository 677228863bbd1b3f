"""Tiny real models for the training tests: built from configs with random weights, no downloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from demo.tiny_models import CLIP_TINY_CONFIG  # noqa: E402
from tests.training.run_builders import CLIP_NAME, RUN_SETS, RUN_STEPS, build_dataset, demo_args
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


# ---- finished datasets and a demo run, built once per session


@pytest.fixture(scope="session")
def train_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny open_clip config (demo.tiny_models') under this suite's own name."""
    path = tmp_path_factory.mktemp("train_clip") / f"{CLIP_NAME}.json"
    path.write_text(json.dumps(CLIP_TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """VGGFace2-HQ layout: 4 identities x 4 images, 2 shards, captioned and embedded."""
    return build_dataset(tmp_path_factory.mktemp("train_data"), "vggface2-hq", train_clip, 4, 4)


@pytest.fixture(scope="session")
def mask_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """CelebA-HQ layout with CelebAMask-HQ masks: 2 identities x 4 images, 1 shard."""
    return build_dataset(tmp_path_factory.mktemp("mask_data"), "celeba-hq", train_clip, 2, 4)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, train_data: Path, train_clip: Path) -> Path:
    """A straight 5-step demo run on the test data (the reference of the resume test; swap and export use it)."""
    from training.train import main

    out = tmp_path_factory.mktemp("demo_run") / "run"
    main(demo_args([train_data], out, train_clip, *RUN_SETS, max_steps=RUN_STEPS))
    return out


@pytest.fixture(scope="session")
def binary_mask_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """An older dataset: binary face+hair masks and no `mask_format` in its stats; 2 shards of 4."""
    from tests.training.mask_builders import build_binary_mask_dataset

    return build_binary_mask_dataset(tmp_path_factory.mktemp("binary_mask_data"), train_clip)
