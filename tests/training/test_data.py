"""Training data: pair kinds and their rates, flips, the SwapBatch, and the resumable BatchStream."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from pipeline.reader import FaceReader
from training.config import TrainConfig
from training.data import (
    BatchStream,
    Pairing,
    Position,
    choose_sources,
    draw_pairing,
    make_swap_batch,
    reader_config,
    step_rng,
)

# ---------------------------------------------------------------------------------------------
# Pairs and flips


def test_pairs_follow_their_kind_and_repeat_exactly_per_step():
    ids = ["a", "a", "b", "b", "c", ""]
    self_src, kinds = choose_sources(ids, {"self": 1.0}, random.Random(0))
    assert self_src == list(range(6)) and set(kinds) == {"self"}
    rnd, kinds = choose_sources(ids * 20, {"random": 1.0}, random.Random(0))
    assert all(j != i for i, j in enumerate(rnd)) and set(kinds) == {"random"}
    assert len(set(rnd)) > 60  # spread over the batch, not a fixed shift
    same, kinds = choose_sources(ids, {"same_identity": 1.0}, random.Random(0))
    assert same[:4] == [1, 0, 3, 2]  # the only mate of each
    assert kinds[4:] == ["fallback", "fallback"] and same[4] != 4 and same[5] != 5  # no mate -> random
    assert choose_sources(["x"], {"random": 1.0}, random.Random(0)) == ([0], ["fallback"])  # batch of one
    # the draw is a function of (seed, rank, step, micro-step) only
    a = choose_sources(ids * 4, {"random": 0.5, "self": 0.5}, step_rng(7, 1, 123, 0))
    assert a == choose_sources(ids * 4, {"random": 0.5, "self": 0.5}, step_rng(7, 1, 123, 0))
    assert a != choose_sources(ids * 4, {"random": 0.5, "self": 0.5}, step_rng(7, 1, 124, 0))


def test_step_rng_depends_on_each_of_its_four_numbers():
    draws = {args: step_rng(*args).random() for args in [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0),
                                                         (0, 0, 0, 1), (0, 0, 1, 1)]}  # fmt: skip
    assert len(set(draws.values())) == len(draws)
    random.seed(123)  # the global generator plays no part
    assert step_rng(0, 0, 0, 0).random() == draws[(0, 0, 0, 0)]


def test_kinds_are_drawn_at_their_rates_and_a_zero_rate_never():
    ids = [f"id{i // 4}" for i in range(4000)]  # four images per identity: same_identity always has a mate
    sources, kinds = choose_sources(ids, {"random": 0.2, "same_identity": 0.3, "self": 0.5}, random.Random(1))
    share = {k: n / len(ids) for k, n in Counter(kinds).items()}
    assert set(share) == {"random", "same_identity", "self"}
    assert share["random"] == pytest.approx(0.2, abs=0.03) and share["same_identity"] == pytest.approx(0.3, abs=0.03)
    assert share["self"] == pytest.approx(0.5, abs=0.03)
    for i, (j, kind) in enumerate(zip(sources, kinds, strict=True)):
        assert (j == i) == (kind == "self"), (i, j, kind)
        if kind == "same_identity":
            assert ids[j] == ids[i]
    _, kinds = choose_sources(ids[:400], {"random": 1.0, "same_identity": 0.0, "self": 0.0}, random.Random(2))
    assert set(kinds) == {"random"}


def _batch(n: int, identities: list[str] | None = None, captions: list[str] | None = None, size: int = 4) -> dict:
    """A reader batch in the reader's own form (uint8 images in channels-last memory, float32 embeddings)."""
    g = torch.Generator().manual_seed(n)
    image = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.5).to(torch.uint8)
    return {
        "key": [f"k{i}" for i in range(n)],
        "identity": identities if identities is not None else [f"id{i % 2}" for i in range(n)],
        "caption": captions if captions is not None else ["a face"] * n,
        "image": image.contiguous(memory_format=torch.channels_last),
        "mask": mask,
        "has_mask": torch.zeros(n, dtype=torch.bool),
        "mask_labels": torch.zeros(n, dtype=torch.bool),  # binary regions, not label maps
        "text_emb": torch.randn(n, 8, generator=g),
        "image_emb": torch.randn(n, 8, generator=g),
        "text_image_sim": torch.rand(n, generator=g),
    }


def test_draw_pairing_uses_the_normalised_rates_and_the_flip_probability():
    batch = _batch(3000, identities=[f"id{i // 3}" for i in range(3000)])
    cfg = TrainConfig(pairs={"random": 3.0, "self": 1.0}, flip=0.3)  # rates normalise to 0.75 / 0.25
    pairing = draw_pairing(batch, cfg, step_rng(0, 0, 5, 0))
    kinds = Counter(pairing.kinds)
    assert kinds["random"] / 3000 == pytest.approx(0.75, abs=0.03) and set(kinds) == {"random", "self"}
    assert sum(pairing.flipped) / 3000 == pytest.approx(0.3, abs=0.03)
    # same_identity: the share of rows whose source is another image of the target's identity
    same = sum(i != j and i // 3 == j // 3 for i, j in enumerate(pairing.sources)) / 3000
    assert pairing.same_identity == same and 0 < same < 0.05  # a random partner rarely shares it
    assert draw_pairing(batch, cfg, step_rng(0, 0, 5, 0)) == pairing  # repeats exactly
    assert draw_pairing(batch, cfg, step_rng(0, 0, 5, 1)) != pairing  # the next micro-step draws anew
    never = draw_pairing(batch, dataclasses.replace(cfg, flip=0.0), step_rng(0, 0, 5, 0))
    always = draw_pairing(batch, dataclasses.replace(cfg, flip=1.0), step_rng(0, 0, 5, 0))
    assert not any(never.flipped) and all(always.flipped)


def test_same_identity_share_counts_only_known_identities():
    batch = _batch(4, identities=["", "", "x", "x"])
    cfg = TrainConfig(pairs={"same_identity": 1.0})
    pairing = draw_pairing(batch, cfg, random.Random(0))
    assert pairing.sources[2:] == [3, 2] and pairing.kinds[2:] == ["same_identity", "same_identity"]
    assert pairing.kinds[:2] == ["fallback", "fallback"]  # unknown identities are nobody's mates
    assert pairing.same_identity == 0.5
    selfs = draw_pairing(batch, TrainConfig(pairs={"self": 1.0}), random.Random(0))
    assert selfs.same_identity == 0.0  # the image itself is no other image of its identity
    no_ids = {k: v for k, v in batch.items() if k != "identity"}  # a batch without identities: random only
    assert set(draw_pairing(no_ids, cfg, random.Random(0)).kinds) == {"fallback"}


# ---------------------------------------------------------------------------------------------
# The SwapBatch


def test_swap_batch_gathers_sources_and_blanks_only_flipped_sided_captions():
    captions = ["Head turned LEFT", "light from the right.", "bright light", "a leftward gaze", "lefty grin", ""]
    batch = _batch(6, captions=captions)
    batch["attr_head_pose_emb"] = torch.randn(6, 8)
    original = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    flipped = [True, False, True, True, True, True]
    pairing = Pairing(sources=[1, 0, 3, 3, 5, 4], kinds=["random"] * 6, flipped=flipped, same_identity=0.0)
    swap = make_swap_batch(batch, TrainConfig(), pairing, device="cpu")
    src = torch.tensor(pairing.sources)
    images = original["image"].float() / 255
    rows = torch.tensor(flipped)
    expected = torch.where(rows[:, None, None, None], images.flip(-1), images)
    assert swap.target.dtype == torch.float32 and swap.target.is_contiguous()
    assert torch.equal(swap.target, expected) and torch.equal(swap.source, expected[src])
    # row 0 mirrored and says left: blanked; row 1 says right but is not mirrored; "bright", "lefty": no side
    blank = torch.tensor([True, False, False, True, False, False])
    assert torch.equal(swap.text_emb.abs().sum(1) == 0, blank)
    assert torch.equal(swap.text_emb[~blank], original["text_emb"][~blank])
    assert torch.equal(swap.attr_embs["head_pose"].abs().sum(1) == 0, blank)
    assert torch.equal(batch["text_emb"], original["text_emb"])  # the reader's cached embeddings are kept
    assert torch.equal(swap.source_text_emb, swap.text_emb[src])
    assert torch.equal(swap.source_attr_embs["head_pose"], swap.attr_embs["head_pose"][src])
    assert torch.equal(swap.target_image_emb, original["image_emb"])  # image embeddings are never blanked
    assert torch.equal(swap.source_image_emb, original["image_emb"][src])
    assert torch.equal(swap.source_text_image_sim, original["text_image_sim"][src])
    assert torch.equal(swap.is_self, torch.tensor([False, False, False, True, False, False]))
    assert swap.mask is None and swap.source_mask is None  # has_mask all false


def test_float_images_pass_through_and_masks_need_has_mask():
    batch = _batch(3)
    batch["image"] = batch["image"].float() / 255
    batch["has_mask"] = torch.tensor([False, True, False])
    pairing = draw_pairing(batch, TrainConfig(flip=0.0), random.Random(0))
    swap = make_swap_batch(batch, TrainConfig(flip=0.0), pairing)
    assert torch.equal(swap.target, batch["image"])  # already in [0, 1]: not divided again
    assert swap.mask.dtype == torch.float32 and torch.equal(swap.mask, batch["mask"].float())
    assert torch.equal(swap.mask_valid, batch["has_mask"])
    assert torch.equal(swap.source_mask_valid, batch["has_mask"][torch.tensor(pairing.sources)])
    del batch["has_mask"]
    assert make_swap_batch(batch, TrainConfig(), pairing).mask is None  # a batch that says nothing of masks


def test_swap_batch_from_reader_batch_flips_masks_and_captions(train_data, train_clip):
    cfg = TrainConfig(data=(str(train_data),), clip_model=str(train_clip), clip_pretrained="none", image_size=32,
                      batch_size=8, flip=1.0, num_workers=0, allow_random_weights=True)  # fmt: skip
    reader = FaceReader(reader_config(cfg, 0, 1))
    batch = next(iter(reader))
    pairing = draw_pairing(batch, cfg, step_rng(0, 0, 0, 0))
    images = batch["image"].float() / 255  # the reader yields uint8; the swap batch holds [0, 1] floats
    swap = make_swap_batch(batch, cfg, pairing)
    src = torch.tensor(pairing.sources)
    assert torch.equal(swap.target, images.flip(-1))  # flip=1: every image mirrored
    assert torch.equal(swap.source, swap.target[src])
    assert torch.equal(swap.source_image_emb, batch["image_emb"][src])
    words = [set(c.lower().replace(",", " ").replace(";", " ").split()) for c in batch["caption"]]
    sided = torch.tensor([bool(w & {"left", "right"}) for w in words])  # "bright" is not a side
    assert sided.any() and (~sided).any()
    # a mirrored image no longer matches "turned to the left": its caption embedding is blanked
    assert torch.equal(swap.text_emb.abs().sum(1) == 0, sided)
    assert torch.equal(swap.text_emb[~sided], batch["text_emb"][~sided])
    assert swap.mask is None  # VGGFace2-HQ has no masks
    both = swap.both_directions()
    assert both.source.shape[0] == 16 and torch.equal(both.source[8:], swap.target)


def test_masks_are_used_where_the_dataset_has_them(train_data, mask_data, train_clip):
    cfg = TrainConfig(data=(str(train_data), str(mask_data)), clip_model=str(train_clip), clip_pretrained="none",
                      image_size=32, batch_size=24, flip=0.5, num_workers=0, allow_random_weights=True)  # fmt: skip
    batch = next(iter(FaceReader(reader_config(cfg, 0, 1))))  # all 24 samples: 16 without masks, 8 with
    assert int(batch["has_mask"].sum()) == 8
    pairing = draw_pairing(batch, cfg, step_rng(0, 0, 0, 0))
    masks, images = batch["mask"].float(), batch["image"].float() / 255  # uint8 from the reader
    swap = make_swap_batch(batch, cfg, pairing)
    assert torch.equal(swap.mask_valid, batch["has_mask"])
    flipped = torch.tensor(pairing.flipped)
    assert flipped.any() and (~flipped).any()
    assert torch.equal(swap.mask[flipped], masks[flipped].flip(-1))  # the mask follows its image
    assert torch.equal(swap.target[flipped], images[flipped].flip(-1))
    assert torch.equal(swap.mask[~flipped], masks[~flipped])
    assert torch.equal(swap.source_mask_valid, batch["has_mask"][torch.tensor(pairing.sources)])
    both = swap.both_directions()  # the reverse rows take the sources' masks
    assert torch.equal(both.mask_valid, torch.cat([swap.mask_valid, swap.source_mask_valid]))
    without = make_swap_batch(batch, dataclasses.replace(cfg, use_masks=False), pairing)
    assert without.mask is None


# ---------------------------------------------------------------------------------------------
# BatchStream: epochs, positions, resume


def _stream(train_data, num_workers: int = 0, position: Position | None = None, **fields) -> BatchStream:
    """A stream over train_data (16 samples in 2 shards of 8) in batches of 3, from `position` (default: the start)."""
    fields = {"image_size": 16, "batch_size": 3, "allow_random_weights": True, **fields}
    cfg = TrainConfig(data=(str(train_data),), num_workers=num_workers, **fields).with_dataset_clip()
    reader = FaceReader(reader_config(cfg, 0, 1))
    return BatchStream(reader, num_workers) if position is None else BatchStream(reader, num_workers, position)


def _take(stream: BatchStream, n: int) -> tuple[list[tuple[str, ...]], list[Position]]:
    keys, positions = [], []
    for _ in range(n):
        keys.append(tuple(next(stream)["key"]))
        positions.append(stream.position)
    stream.close()
    return keys, positions


def test_stream_runs_over_epochs_in_full_batches_and_counts_its_position(train_data):
    # 16 samples, batch 3, one reader stream: 5 full batches an epoch (the partial one is dropped)
    keys, positions = _take(_stream(train_data), 12)
    assert positions == [Position(0, b) for b in range(1, 6)] + [Position(1, b) for b in range(1, 6)] + [
        Position(2, 1), Position(2, 2),
    ]  # fmt: skip
    assert all(len(k) == 3 for k in keys)
    epoch0, epoch1 = [k for batch in keys[:5] for k in batch], [k for batch in keys[5:10] for k in batch]
    assert len(set(epoch0)) == 15 and len(set(epoch1)) == 15  # no sample twice in an epoch
    assert epoch0 != epoch1  # each epoch its own order
    assert _take(_stream(train_data), 12)[0] == keys  # the order is a function of the seed
    assert _take(_stream(train_data, seed=1), 5)[0] != keys[:5]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_resumed_at_a_position_reads_what_the_straight_one_read(train_data, num_workers):
    # with two workers, one shard each: 8 // 3 = 2 batches per worker, 4 an epoch (the trainer tests' schedule)
    per_epoch = 5 if num_workers == 0 else 4
    straight, positions = _take(_stream(train_data, num_workers), per_epoch + 2)
    for at in (1, per_epoch - 1, per_epoch):  # mid-epoch, the last batch of the epoch, an epoch boundary
        saved = positions[at - 1]
        resumed, resumed_positions = _take(_stream(train_data, num_workers, saved), per_epoch + 2 - at)
        assert resumed == straight[at:], (num_workers, saved)
        assert resumed_positions == positions[at:]
    # a checkpoint at the end of an epoch stores (epoch, all its batches): the next batch opens the next epoch
    assert positions[per_epoch - 1] == Position(0, per_epoch)


def test_creating_the_loader_leaves_the_global_torch_rng_alone(train_data):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    stream = _stream(train_data)
    next(stream)
    assert torch.equal(torch.get_rng_state(), state)
    stream.close()


def test_a_dataset_too_small_for_one_batch_is_an_error_not_a_hang(train_data):
    stream = _stream(train_data, batch_size=17)
    with pytest.raises(ValueError, match=r"epoch 0 gives this rank no full batch: .*batch_size=17 x 1 process"):
        next(stream)
    assert stream.position == Position(0, 0)
    stream = _stream(train_data, num_workers=2, batch_size=9)  # 16 samples, but 8 per worker
    with pytest.raises(ValueError, match=r"batch_size=9 x 1 process\(es\) x 2 worker\(s\)"):
        next(stream)
    stream.close()


def test_reader_config_reads_full_uint8_batches_of_this_rank():
    cfg = TrainConfig(data=("/d/a", "/d/b"), clip_model="ViT-B-32", clip_pretrained="openai", seed=4, batch_size=5,
                      shuffle_buffer=7, image_size=64)  # fmt: skip
    rc = reader_config(cfg, rank=1, world_size=2)
    assert (rc.datasets, rc.clip_model, rc.pretrained) == ((Path("/d/a"), Path("/d/b")), "ViT-B-32", "openai")
    assert (rc.seed, rc.batch_size, rc.shuffle_buffer, rc.image_size) == (4, 5, 7, 64)
    assert (rc.rank, rc.world_size) == (1, 2)
    assert rc.partial_batches is False and rc.shuffle is True  # every row has a partner
    assert (rc.image_type, rc.image_dtype) == ("tensor", "uint8")
    assert rc.attributes is False
    factorised = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, clip_text_factorised=True))
    assert reader_config(factorised, 0, 1).attributes is True
