"""Builders for the trainer tests (their fixtures are in tests/training/conftest.py): real captioned and
embedded datasets, and the demo preset's arguments.

    demo.synthetic faces -> pipeline.caption (our fixed-answer engine) -> pipeline.embed (tiny CLIP, random)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.caption import CaptionConfig
from pipeline.caption import run as caption_run
from pipeline.engines.base import EngineInfo, Generation, Prompt

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
    from demo import synthetic
    from pipeline import embed

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
