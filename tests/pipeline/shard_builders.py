"""Builders for the embed and reader tests: real shards, a tiny real open_clip config (the `embed_clip`
fixture, in tests/conftest.py, builds it).

A dataset here is what pipeline.caption leaves behind: plan.json, shards written with
pipeline.shards.write_shard (the `.jpg`/`.json`/`.txt` members of caption.to_shard_sample, plus
`.mask.png` when asked), errors/ and stats/ files, the stats written last.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.dataset import DatasetDir, atomic_write_json, atomic_write_jsonl, dumps_json, make_key
from pipeline.metadata import sample_meta
from pipeline.prompts import ATTRIBUTES, compose_caption
from pipeline.shards import ShardSample, write_shard

# ViT with 16-px patches on 64-px images and a 2-layer text transformer; context 77 and vocab 49408,
# so open_clip's own SimpleTokenizer applies unchanged.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

LONG_CAPTION = " ".join(
    ["The person is looking slightly downward with soft frontal light and a blurred background."] * 6
)


def write_tiny_clip_config(path: Path) -> Path:
    path.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    return path


def jpeg(seed: int, size: int = 80) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: a real, varied image, not a constant.
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 3 + seed * 7, yy * 3 + seed * 13, (xx + yy) * 2 + seed], axis=-1) % 256
    pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def mask_png(seed: int, size: int = 80) -> bytes:
    m = np.zeros((size, size), np.uint8)
    m[seed % 10 : size // 2 + seed % 10, 10:50] = 255
    buf = io.BytesIO()
    Image.fromarray(m, "L").save(buf, format="PNG")
    return buf.getvalue()


def structured_attributes(i: int) -> dict[str, str]:
    poses = ["turned left", "frontal", "turned right, looking down"]
    return {a: (poses[i % 3] if a == "head_pose" else f"{a.replace('_', ' ')} value {i % 2}") for a in ATTRIBUTES}


def make_dataset(
    root: Path,
    captions: list[list[str | None]],
    name: str = "vggface2-hq",
    structured: bool = False,
    masks: bool = False,
    uncaptioned: tuple[int, ...] = (),
    image_size: int = 80,
    mask_size: int | None = None,
) -> DatasetDir:
    """One shard per inner list of captions. Shards in `uncaptioned` are planned but not written.
    Masks are `mask_size` px (default: the image's; CelebAMask-HQ's are half their images' size)."""
    ds = DatasetDir(root)
    root.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    shard_samples: list[list[ShardSample]] = []
    for shard_caps in captions:
        shard_rows, samples = [], []
        for caption in shard_caps:
            identity = f"n{n % 3:06d}"
            key = make_key(name, identity, f"{n:04d}")
            attributes = structured_attributes(n) if structured else None
            text = compose_caption(attributes) if structured and caption is None else caption
            meta = sample_meta(
                key=key,
                dataset=name,
                identity=identity,
                source_path=f"{identity}/{n:04d}.jpg",
                width=image_size,
                height=image_size,
                caption=text,
                attributes=attributes,
                caption_model="tiny",
                prompt_id="structured-v1" if structured else "holistic-v1",
                finish_reason="stop",
                flags=[],
                transcoded_from=None,
            )
            members = {"jpg": jpeg(n, image_size), "json": dumps_json(meta).encode(), "txt": text.encode()}
            if masks:
                members["mask.png"] = mask_png(n, mask_size or image_size)
            samples.append(ShardSample(key, members))
            shard_rows.append([key, identity, meta["source_path"], None])
            n += 1
        rows.append(shard_rows)
        shard_samples.append(samples)
    plan = {
        "version": 1,
        "name": name,
        "dataset": name,
        "fingerprint": {"source": name, "image_format": "jpg", "shard_size": max(map(len, captions), default=1)},
        "has_masks": masks,
        "num_samples": n,
        "num_shards": len(captions),
        "shards": rows,
    }
    atomic_write_json(ds.plan_path, plan)
    for s, samples in enumerate(shard_samples):
        if s in uncaptioned:
            continue
        write_shard(ds.shard_path(name, s), samples)
        atomic_write_jsonl(ds.errors_path(s), [])
        stats = {
            "shard": s,
            "ok": len(samples),
            "prompt_id": "structured-v1" if structured else "holistic-v1",
            "failed": {},
        }
        atomic_write_json(ds.stats_path(s), stats)
    return ds
