"""Builders for the card and publish tests: real datasets made by the real caption and embed stages.

Images come from demo.synthetic; captions from `CannedEngine`, our own implementation of the
CaptionEngine interface (pipeline/engines/base.py) that answers from a fixed list, so the tests know
which flags, failures and attributes to expect. Embeddings come from pipeline.embed with a tiny
open_clip config (random weights, CLIP's own 77-token tokenizer), so truncation is real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from demo.synthetic import generate
from pipeline.caption import CaptionConfig
from pipeline.caption import run as caption_run
from pipeline.dataset import DatasetDir
from pipeline.engines.base import EngineInfo, Generation, Prompt
from pipeline.prompts import ATTRIBUTES
from pipeline.shards import read_metadata
from pipeline.sources import SYNTHETIC_MARKER

MODEL = "OpenGVLab/InternVL3-2B-hf"

# About 100 words: longer than CLIP's 77 tokens, so pipeline.embed flags it truncated.
LONG = " ".join(["The person turns slightly to the left under soft window light, with a blurred shelf behind."] * 6)
HOLISTIC_ANSWERS: list[tuple[str, str]] = [
    ("The person is turned left and looking down. Soft light from the left; blurred blue background.", "stop"),
    ("The person faces the camera with a slight smile. Even light, plain gray background, glasses.", "stop"),
    ("The man looks up to the right with an open mouth under bright light and", "length"),  # two flags
    (LONG, "stop"),
]

POSES = ["turned left", "frontal", "turned right, looking down"]
STRUCTURED_ANSWERS: list[tuple[str, str]] = [
    (
        json.dumps({a: (POSES[i % 3] if a == "head_pose" else f"{a.replace('_', ' ')} {i % 2}") for a in ATTRIBUTES}),
        "stop",
    )
    for i in range(6)
]

# Small ViT and text transformer; context 77 and vocabulary 49408 so open_clip's SimpleTokenizer applies.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_NAME = "publishclip"  # the config file's stem is the open_clip model name
CLIP_TAG = f"{CLIP_NAME}__none"


class CannedEngine:
    """A CaptionEngine answering from a fixed list, in order, cycling."""

    def __init__(self, answers: list[tuple[str, str]]) -> None:
        self.answers = answers
        self.calls = 0
        self.info = EngineInfo("canned", "1.2.3", MODEL, 448, 1, 96, "greedy")

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        out = []
        for _ in images:
            text, finish = self.answers[self.calls % len(self.answers)]
            self.calls += 1
            out.append(Generation(text, finish))
        return out


def make_dataset(
    root: Path,
    source: str = "vggface2-hq",
    layout: str | None = None,
    prompt: str = "holistic",
    identities: int = 2,
    per_identity: int = 4,
    shard_size: int = 3,
    broken: int = 1,
    synthetic: bool = False,
) -> Path:
    """Caption synthetic faces (drawn in `layout`, default `source`) into `root/ds` with the real caption stage.

    Unless `synthetic`, the drawn faces arrive as the real dataset would, without their ground-truth file,
    so the card describes the source dataset; with it, the card is the synthetic one."""
    inp = root / "input"
    generate(inp, layout or source, identities=identities, per_identity=per_identity, seed=0, size=48)
    if not synthetic:
        (inp / SYNTHETIC_MARKER).unlink()
    # inputs that are not images, listed last: counted `not_an_image` failures
    folder = inp / "CelebA-HQ-img" if source == "celeba-hq" else min(p for p in inp.iterdir() if p.is_dir())
    for n in range(broken):
        (folder / f"zz_broken{n}.jpg").write_bytes(b"this is not a jpeg")
    answers = STRUCTURED_ANSWERS if prompt == "structured" else HOLISTIC_ANSWERS
    cfg = CaptionConfig(
        source=source,
        input=inp,
        output=root / "ds",
        engine="transformers",  # not built: the canned engine is passed in
        model=MODEL,
        prompt=prompt,
        shard_size=shard_size,
        batch_size=4,
        workers=1,
        progress=False,
    )
    caption_run(cfg, engine=CannedEngine(answers))
    return root / "ds"


def write_tiny_clip(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    return path


def embed(dataset: Path, clip_config: Path, attributes: bool = False) -> dict[str, Any]:
    from pipeline.embed import main

    args = ["--dataset", str(dataset), "--clip-model", str(clip_config), "--pretrained", "none"]
    args += ["--device", "cpu", "--workers", "1", "--batch-size", "8", "--no-progress"]
    return main(args + (["--attributes"] if attributes else []))


def copy_dataset(src: Path, dst: Path) -> Path:
    """A private copy a test may damage (shards are immutable, so the copy shares nothing mutable)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("hub", "README.md", "assets"))
    return dst


def shard_metadata(dataset: Path) -> list[dict[str, Any]]:
    """Every sample's `.json` member, read straight from the tars."""
    ds = DatasetDir(dataset)
    plan = ds.load_plan()
    return [m for i in range(plan["num_shards"]) for m in read_metadata(ds.shard_path(plan["name"], i))]


def stats_files(dataset: Path) -> list[dict[str, Any]]:
    ds = DatasetDir(dataset)
    return [ds.load_stats(i) for i in range(ds.load_plan()["num_shards"])]
