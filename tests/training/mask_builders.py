"""A dataset as the caption stage wrote it before masks were stored losslessly: CelebAMask-HQ masks
merged into one binary face+hair PNG (0/255), and stats without `mask_format`. Built with
tests/pipeline/shard_builders.py (the shard writer's own members) and embedded by the real embed stage."""

from __future__ import annotations

from pathlib import Path

from tests.pipeline.shard_builders import make_dataset

CAPTIONS = (
    "The head is turned to the left, soft even lighting, a plain blue background.",
    "Looking straight ahead at the camera with a smile; bright light; striped background.",
    "The face is tilted up, light coming from the right, wearing glasses.",
)


def build_binary_mask_dataset(root: Path, clip_json: Path) -> Path:
    """Two shards of four (older-format) samples, each with a binary mask, embedded with `clip_json`."""
    from pipeline import embed

    captions = [[CAPTIONS[(4 * s + j) % len(CAPTIONS)] for j in range(4)] for s in range(2)]
    ds = make_dataset(root / "binary", captions, name="celeba-hq", masks=True, image_size=64, mask_size=32)
    embed.main(
        ["--dataset", str(ds.root), "--clip-model", str(clip_json), "--pretrained", "none",
         "--device", "cpu", "--workers", "1", "--batch-size", "16", "--no-progress"]
    )  # fmt: skip
    return ds.root
