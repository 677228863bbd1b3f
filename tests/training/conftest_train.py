"""Fixtures for the trainer tests: real captioned + embedded datasets, built once per session.

    pipeline.synthetic faces -> pipeline.caption (our fixed-answer engine) -> pipeline.embed (tiny CLIP, random)

Import the fixtures explicitly (`from tests.training.conftest_train import train_data, ...`). A
fixture imported into two test modules is two fixture definitions to pytest, so each would run once
per module; `_once` keeps one result per session instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.caption import CaptionConfig
from pipeline.caption import run as caption_run
from pipeline.engines.base import EngineInfo, Generation, Prompt
from pipeline.tiny_models import CLIP_TINY_CONFIG

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "training" / "configs" / "demo.yaml"
CLIP_NAME = "train-test-clip"  # its own name in open_clip's global registry
IMAGE_SIZE = 64  # small test images; the tiny generator's stride is 8
CAPTIONS = (
    "The head is turned to the left, soft even lighting, a plain blue background.",
    "Looking straight ahead at the camera with a smile; bright light; striped background.",
    "The face is tilted up, light coming from the right, wearing glasses.",
    "A neutral expression, dim lighting and a gray gradient background.",
)


_SESSION: dict[str, Any] = {}


def _once(name: str, build: Callable[[], Any]) -> Any:
    if name not in _SESSION:
        _SESSION[name] = build()
    return _SESSION[name]


class FixedEngine:
    """Our own CaptionEngine: a fixed caption per image, in turn; no model runs."""

    def __init__(self) -> None:
        self.info = EngineInfo("fixed", "0", "fixed-captions", 448, 1, 96, "greedy")
        self.n = 0

    def generate(self, images: list, prompt: Prompt) -> list[Generation]:
        out = [Generation(CAPTIONS[(self.n + i) % len(CAPTIONS)], "stop") for i in range(len(images))]
        self.n += len(images)
        return out


def build_dataset(root: Path, layout: str, clip_json: Path, identities: int, per_identity: int) -> Path:
    from pipeline import embed, synthetic

    raw, out = root / f"{layout}-raw", root / layout
    synthetic.generate(raw, layout, identities=identities, per_identity=per_identity, seed=0, size=96)
    cfg = CaptionConfig(
        source=layout, input=raw, output=out, engine="transformers", model="fixed-captions",
        shard_size=8, batch_size=8, progress=False, workers=1,
    )  # fmt: skip
    caption_run(cfg, engine=FixedEngine())
    embed.main(
        ["--dataset", str(out), "--clip-model", str(clip_json), "--pretrained", "none",
         "--device", "cpu", "--workers", "1", "--batch-size", "16", "--no-progress"]
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def train_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny open_clip config (pipeline.tiny_models') under this suite's own name."""

    def build() -> Path:
        path = tmp_path_factory.mktemp("train_clip") / f"{CLIP_NAME}.json"
        path.write_text(json.dumps(CLIP_TINY_CONFIG))
        return path

    return _once("train_clip", build)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """VGGFace2-HQ layout: 4 identities x 4 images, 2 shards, captioned and embedded."""
    return _once(
        "train_data", lambda: build_dataset(tmp_path_factory.mktemp("train_data"), "vggface2-hq", train_clip, 4, 4)
    )


@pytest.fixture(scope="session")
def mask_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """CelebA-HQ layout with CelebAMask-HQ masks: 2 identities x 4 images, 1 shard."""
    return _once(
        "mask_data", lambda: build_dataset(tmp_path_factory.mktemp("mask_data"), "celeba-hq", train_clip, 2, 4)
    )


def demo_args(data: list[Path], out: Path, clip_json: Path, *extra: str, max_steps: int = 4) -> list[str]:
    """`python -m training.train` arguments for the demo preset on the test data (CPU, seconds)."""
    args = ["--config", str(DEMO_YAML), "--output", str(out), "--max-steps", str(max_steps)]
    for d in data:
        args += ["--data", str(d)]
    sets = [f"image_size={IMAGE_SIZE}", "vgg_input_size=32", "progress=false",
            "trackers=[]", "num_workers=0"]  # fmt: skip
    return [*args, "--set", *sets, *extra]


# The schedule the exact-resume test splits at step 3: two workers, one shard each, two batches of
# three per worker, so epoch 0 is steps 1-4 and step 5 starts epoch 1; the adversarial term is on
# from step 3 (demo.yaml), EMA on, a sample grid every 2 steps and a checkpoint every 3.
RUN_SETS = ("batch_size=3", "num_workers=2", "checkpoint_every=3", "sample_every=2", "num_samples=2", "log_every=1")
RUN_STEPS = 5
SPLIT_AT = 3


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, train_data: Path, train_clip: Path) -> Path:
    """A straight 5-step demo run on the test data (the reference of the resume test; swap and export use it)."""
    from training.train import main

    def build() -> Path:
        out = tmp_path_factory.mktemp("demo_run") / "run"
        main(demo_args([train_data], out, train_clip, *RUN_SETS, max_steps=RUN_STEPS))
        return out

    return _once("demo_run", build)
