"""Masks from the shards to the loss, on real captioned and embedded datasets.

CelebAMask-HQ label maps (what the caption stage stores now) reach `SwapBatch.mask` as integer class
indices, resized nearest, never made float, so the loss's `mask_region` picks the region; the
official preset's is the inner face. Older datasets' binary face+hair masks keep working as regions.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.dataset import DatasetDir
from pipeline.reader import FaceReader
from pipeline.shards import iter_shard
from pipeline.sources import CELEBA_LABELS as PIPELINE_LABELS
from tests.training.run_builders import REPO, demo_args
from training.batch import CELEBA_LABELS, MASK_REGIONS, region_mask
from training.config import TrainConfig, load_config
from training.data import draw_pairing, make_swap_batch, reader_config, step_rng
from training.train import main

SIZE = 32
# The official inner face, by CelebAMask-HQ index: skin 1, nose 2, l_eye 4, r_eye 5, l_brow 6, r_brow 7,
# mouth 10, u_lip 11, l_lip 12. Not glasses (3), ears (8, 9), hair (13), hat, neck or cloth.
INNER_FACE_IDS = torch.tensor([1, 2, 4, 5, 6, 7, 10, 11, 12])
HAIR = 13


def _cfg(train_clip: Path, *data: Path, **kw) -> TrainConfig:
    return TrainConfig(data=tuple(str(d) for d in data), clip_model=str(train_clip), clip_pretrained="none",
                       image_size=SIZE, num_workers=0, allow_random_weights=True, **kw)  # fmt: skip


def _stored(dataset: Path) -> dict[str, torch.Tensor]:
    """Each sample's `.mask.png` member as stored, nearest-resized to the training size: (H, W) uint8."""
    ds = DatasetDir(dataset)
    plan = ds.load_plan()
    out = {}
    for i in range(plan["num_shards"]):
        for s in iter_shard(ds.shard_path(plan["name"], i)):
            mask = Image.open(io.BytesIO(s.members["mask.png"])).convert("L").resize((SIZE, SIZE), Image.NEAREST)
            out[s.key] = torch.from_numpy(np.asarray(mask).copy())
    return out


def _batch(cfg: TrainConfig):
    batch = next(iter(FaceReader(reader_config(cfg, 0, 1))))
    pairing = draw_pairing(batch, cfg, step_rng(0, 0, 0, 0))
    flipped = torch.tensor(pairing.flipped)
    assert flipped.any() and (~flipped).any()
    return batch, pairing, flipped


def test_pipeline_and_loss_agree_on_the_label_order():
    assert PIPELINE_LABELS == CELEBA_LABELS
    assert sorted(CELEBA_LABELS.index(c) for c in MASK_REGIONS["inner_face"]) == INNER_FACE_IDS.tolist()
    assert load_config(REPO / "training" / "configs" / "alphaface.yaml").loss.mask_region == "inner_face"


def test_label_maps_reach_the_loss_as_integer_maps_and_select_the_inner_face(mask_data, train_clip):
    cfg = _cfg(train_clip, mask_data, batch_size=8, flip=0.5)
    assert cfg.loss.mask_region == "inner_face"
    batch, pairing, flipped = _batch(cfg)
    assert batch["mask_labels"].all()
    swap = make_swap_batch(batch, cfg, pairing)
    assert swap.mask is not None and swap.mask.dtype == torch.uint8  # class indices, not a float region
    stored = _stored(mask_data)
    for b, key in enumerate(batch["key"]):
        want = stored[key].flip(-1) if flipped[b] else stored[key]  # the label map follows its image
        assert torch.equal(swap.mask[b, 0], want)
    assert int(swap.mask.max()) > 1 and bool((swap.mask == HAIR).any())
    region = region_mask(swap.mask, cfg.loss.mask_region)  # what the loss repaints
    assert region.is_floating_point()
    assert torch.equal(region.bool(), torch.isin(swap.mask.long(), INNER_FACE_IDS))
    hair = swap.mask == HAIR
    assert not region[hair].any()  # officially, hair must match the target
    assert region_mask(swap.mask, "face_hair")[hair].all()  # the other region lets it be repainted
    both = swap.both_directions()
    assert both.mask is not None and both.mask.dtype == torch.uint8
    assert torch.equal(both.mask[len(batch["key"]) :], swap.mask[torch.tensor(pairing.sources)])


def test_older_binary_masks_are_regions_alone_and_mixed_with_label_maps(binary_mask_data, mask_data, train_clip):
    stored = {**_stored(binary_mask_data), **_stored(mask_data)}
    alone = _cfg(train_clip, binary_mask_data, batch_size=8, flip=0.5)
    batch, pairing, flipped = _batch(alone)
    assert batch["has_mask"].all() and not batch["mask_labels"].any()
    swap = make_swap_batch(batch, alone, pairing)
    assert swap.mask is not None and swap.mask.dtype == torch.float32
    for b, key in enumerate(batch["key"]):
        want = (stored[key] > 127).float()
        assert torch.equal(swap.mask[b, 0], want.flip(-1) if flipped[b] else want)

    # one batch of both kinds: label rows become the configured region, binary rows stay theirs
    mixed = _cfg(train_clip, binary_mask_data, mask_data, batch_size=16, flip=0.5)
    batch, pairing, flipped = _batch(mixed)
    labels = batch["mask_labels"]
    assert labels.any() and (~labels).any()
    swap = make_swap_batch(batch, mixed, pairing)
    assert swap.mask is not None and swap.mask.dtype == torch.float32
    for b, key in enumerate(batch["key"]):
        raw = stored[key].flip(-1) if flipped[b] else stored[key]
        want = torch.isin(raw.long(), INNER_FACE_IDS) if labels[b] else raw > 127
        assert torch.equal(swap.mask[b, 0], want.float()), key


def _mask_terms(run: Path) -> list[bool]:
    return ["Loss/G/mask" in json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_demo_preset_trains_on_label_map_and_older_binary_datasets(tmp_path, mask_data, binary_mask_data, train_clip):
    for name, data in (("labels", mask_data), ("binary", binary_mask_data)):
        run = tmp_path / name
        summary = main(demo_args([data], run, train_clip, "batch_size=2", "num_workers=0", max_steps=2))
        assert summary["steps"] == 2
        assert _mask_terms(run) == [True, True], name  # the masked reconstruction ran at every step
