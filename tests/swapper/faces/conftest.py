"""Fixtures for the faces-in-the-wild tests: a tiny generator (the builders are in builders.py).

A "face" here is a smooth random texture framed as an aligned crop: its 5 landmarks are, by
construction, the crop template's points. Placing it into a larger canvas under a known
similarity moves the points with it, so every scene comes with exact landmarks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.swapper.faces.builders import GEN_SIZE
from training.artifact import generator_spec, save_generator
from training.config import load_config
from training.models import build_generator

REPO = Path(__file__).resolve().parents[3]
DEMO_YAML = REPO / "training" / "configs" / "demo.yaml"


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `generator.safetensors` + `generator.json` of the demo preset's tiny generator (random
    weights) at 64 px, with its seeded random identity encoder: what `swapper.swap` loads."""
    cfg = load_config(DEMO_YAML, image_size=GEN_SIZE)
    torch.manual_seed(0)
    g = build_generator(cfg.generator, **cfg.generator_overrides)
    folder = tmp_path_factory.mktemp("tiny_generator") / "final"
    return save_generator(folder, g.state_dict(), generator_spec(cfg, g.config, 0, False))
