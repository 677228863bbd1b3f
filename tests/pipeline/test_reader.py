"""The training reader on real shards embedded by the real embed stage, through a real DataLoader.

Joins are checked against the Parquet files read with pyarrow and the images decoded with PIL;
order and resume are checked against full runs with two worker processes.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.dataset import DatasetDir, clip_tag
from pipeline.embed import main as embed
from pipeline.embeddings import EmbeddingsInvalid
from pipeline.prompts import ATTRIBUTES
from pipeline.reader import FaceReader, MissingEmbeddings, ReaderConfig, resume_point
from pipeline.shards import UnsafeTarMember, iter_shard
from tests.pipeline.shard_builders import make_dataset

TAG = clip_tag("embed-test-clip.json", "embed-test-clip.pt")
SIZES = (5, 3, 4, 2, 1)  # unequal shards, so two workers run out at different times


def _embed(ds: DatasetDir, clip: tuple[Path, Path], *extra: str) -> None:
    embed(
        ["--dataset", str(ds.root), "--clip-model", str(clip[0]), "--pretrained", str(clip[1]), "--no-progress", *extra]
    )


def _captions(prefix: str, sizes=SIZES) -> list[list[str]]:
    return [[f"{prefix} caption {s}-{j}" for j in range(n)] for s, n in enumerate(sizes)]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, embed_clip) -> DatasetDir:
    ds = make_dataset(tmp_path_factory.mktemp("reader") / "ds", _captions("a"), masks=True)
    _embed(ds, embed_clip)
    return ds


def _config(embed_clip, *datasets: Path, **kw) -> ReaderConfig:
    kw = {"image_size": 32, "shuffle_buffer": 4, "rank": 0, "world_size": 1, **kw}
    return ReaderConfig(datasets=datasets, clip_model=str(embed_clip[0]), pretrained=str(embed_clip[1]), **kw)


def _keys(reader: FaceReader, workers: int) -> list:
    """What the DataLoader yields, as keys: a flat list of samples, or a list of batches."""
    out = []
    for item in DataLoader(reader, batch_size=None, num_workers=workers):
        out.append(tuple(item["key"]) if reader.config.batch_size else item["key"])
    return out


def test_join_with_two_workers(embedded, embed_clip):
    reader = FaceReader(_config(embed_clip, embedded.root, batch_size=3))
    rows = {}
    for i in range(len(SIZES)):
        t = pq.read_table(embedded.embeddings_path(TAG, i))
        n = t.num_rows
        text = t.column("text_emb").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
        image = t.column("image_emb").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
        for j, key in enumerate(t.column("key").to_pylist()):
            rows[key] = (text[j], image[j], t.column("text_image_sim")[j].as_py())
    members = {s.key: s.members for i in range(len(SIZES)) for s in iter_shard(embedded.shard_path("vggface2-hq", i))}
    seen = []
    for batch in DataLoader(reader, batch_size=None, num_workers=2):
        assert batch["image"].shape[1:] == (3, 32, 32) and batch["mask"].shape[1:] == (1, 32, 32)
        assert batch["text_emb"].dtype == torch.float32 and batch["has_mask"].all()
        for b, key in enumerate(batch["key"]):
            text, image, sim = rows[key]
            assert torch.equal(batch["text_emb"][b], torch.from_numpy(text.astype(np.float32)))
            assert torch.equal(batch["image_emb"][b], torch.from_numpy(image.astype(np.float32)))
            assert batch["text_image_sim"][b].item() == pytest.approx(sim)
            meta = json.loads(members[key]["json"])
            assert batch["caption"][b] == meta["caption"] and batch["identity"][b] == meta["identity"]
            # The image is the shard's JPEG at 32 px; the mask is the shard's mask, nearest-resized, in {0, 1}.
            ref = Image.open(io.BytesIO(members[key]["jpg"])).convert("RGB").resize((32, 32), Image.BICUBIC)
            got = (batch["image"][b].permute(1, 2, 0) * 255).round().numpy()
            assert np.abs(got - np.asarray(ref, np.float32)).mean() < 8  # draft decoding differs slightly
            mask = Image.open(io.BytesIO(members[key]["mask.png"])).resize((32, 32), Image.NEAREST)
            assert torch.equal(batch["mask"][b, 0], torch.from_numpy(np.asarray(mask) / 255.0).float())
            seen.append(key)
    assert sorted(seen) == sorted(rows)  # every sample exactly once across both workers


def test_uint8_images_equal_float_images_times_255(embedded, embed_clip):
    as_float = list(FaceReader(_config(embed_clip, embedded.root, batch_size=3, shuffle=False)))
    as_uint8 = list(FaceReader(_config(embed_clip, embedded.root, batch_size=3, shuffle=False, image_dtype="uint8")))
    assert [b["key"] for b in as_float] == [b["key"] for b in as_uint8]
    for f, u in zip(as_float, as_uint8, strict=True):
        assert u["image"].dtype == torch.uint8 and u["mask"].dtype == torch.uint8
        assert torch.equal(u["image"].float() / 255, f["image"])
        assert torch.equal(u["mask"].float(), f["mask"])  # masks come as 0/1
        assert torch.equal(u["text_emb"], f["text_emb"])


def test_single_samples_equal_batch_rows_and_mixed_masks_batch(embedded, embed_clip, tmp_path):
    # a dataset with masks and one without, read together: batches mix them, and a row without a mask gets zeros
    other = make_dataset(tmp_path / "other", _captions("b", (3,)), name="celeba-hq")
    _embed(other, embed_clip)
    roots = (embedded.root, other.root)
    samples = list(FaceReader(_config(embed_clip, *roots, shuffle=False, image_dtype="uint8")))
    batches = list(FaceReader(_config(embed_clip, *roots, shuffle=False, image_dtype="uint8", batch_size=4)))
    rows = [(b, i) for b in batches for i in range(len(b["key"]))]
    assert [s["key"] for s in samples] == [b["key"][i] for b, i in rows]
    assert any(b["has_mask"].any() and not b["has_mask"].all() for b in batches)
    for s, (b, i) in zip(samples, rows, strict=True):
        assert s["image"].shape == (3, 32, 32) and torch.equal(s["image"], b["image"][i])
        assert torch.equal(s["mask"], b["mask"][i]) and s["has_mask"] is bool(b["has_mask"][i])
        assert torch.equal(s["text_emb"], b["text_emb"][i]) and s["text_truncated"] is bool(b["text_truncated"][i])
        if not s["has_mask"]:
            assert not s["mask"].any()
    # channels-last memory: a (B, H, W, C) buffer viewed as (B, C, H, W); .contiguous() gives the same values
    image = batches[0]["image"]
    assert image.permute(0, 2, 3, 1).is_contiguous() and torch.equal(image.contiguous(), image)


def test_masks_smaller_than_their_images_follow_the_image_size(tmp_path, embed_clip):
    # CelebAMask-HQ stores 512 px masks for 1024 px images: at the stored size (image_size=None) the
    # mask is resized (nearest) to its image, so images and masks still batch
    ds = make_dataset(tmp_path / "ds", _captions("m", (3,)), masks=True, image_size=64, mask_size=32)
    _embed(ds, embed_clip)
    members = {s.key: s.members for s in iter_shard(ds.shard_path("vggface2-hq", 0))}
    for dtype in ("uint8", "float32"):
        (batch,) = list(FaceReader(_config(embed_clip, ds.root, image_size=None, batch_size=3, image_dtype=dtype)))
        assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 1, 64, 64)
        for b, key in enumerate(batch["key"]):
            stored = Image.open(io.BytesIO(members[key]["mask.png"]))
            want = torch.from_numpy(np.asarray(stored.resize((64, 64), Image.NEAREST)) > 127)
            assert torch.equal(batch["mask"][b, 0] > 0.5, want)


def test_order_is_a_function_of_seed_and_epoch(embedded, embed_clip):
    reader = FaceReader(_config(embed_clip, embedded.root))
    first = _keys(reader, 2)
    assert _keys(reader, 2) == first
    reader.set_epoch(1)
    assert _keys(reader, 2) != first
    assert sorted(_keys(reader, 2)) == sorted(first)
    other = FaceReader(_config(embed_clip, embedded.root, seed=7))
    assert _keys(other, 2) != first


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_resume_skips_exactly_what_was_consumed(embedded, embed_clip, batch_size, workers):
    reader = FaceReader(_config(embed_clip, embedded.root, batch_size=batch_size))
    # An epoch whose two worker streams differ in length, so one worker runs out first.
    epoch = next(e for e in range(100) if len(set(reader.worker_items(e, 2))) > 1)
    reader.set_epoch(epoch)
    full = _keys(reader, workers)
    for skip in range(1, len(full) + 1):
        reader.set_epoch(epoch, skip=skip)
        assert _keys(reader, workers) == full[skip:], skip


def test_resume_point_follows_the_dataloader_turns():
    # counts [3, 1, 2]: the DataLoader yields from workers 0 1 2 0 2 0
    assert resume_point([3, 1, 2], 0) == ([0, 0, 0], [0, 1, 2])
    assert resume_point([3, 1, 2], 1) == ([1, 0, 0], [1, 2, 0])
    assert resume_point([3, 1, 2], 4) == ([2, 1, 1], [2, 0])
    assert resume_point([3, 1, 2], 5) == ([2, 1, 2], [0])
    assert resume_point([3, 1, 2], 6) == ([3, 1, 2], [])
    assert resume_point([0, 2], 1) == ([0, 1], [1])
    assert resume_point([4, 4], 6) == ([3, 3], [0, 1])  # whole rounds keep the turn at worker 0


def test_ranks_split_the_shards(embedded, embed_clip):
    everything = sorted(_keys(FaceReader(_config(embed_clip, embedded.root)), 0))
    parts = [_keys(FaceReader(_config(embed_clip, embedded.root, rank=r, world_size=2)), 2) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == everything
    counts = FaceReader(_config(embed_clip, embedded.root, rank=1, world_size=2)).samples_per_rank(0)
    assert counts == [len(parts[0]), len(parts[1])]


def test_several_datasets_and_pil_images(embedded, embed_clip, tmp_path):
    other = make_dataset(tmp_path / "other", _captions("b", (2, 2)), name="celeba-hq")
    _embed(other, embed_clip)
    reader = FaceReader(_config(embed_clip, embedded.root, other.root, image_type="pil", image_size=None))
    samples = list(reader)
    assert len(samples) == sum(SIZES) + 4
    assert {s["dataset"] for s in samples} == {"vggface2-hq", "celeba-hq"}
    img = samples[0]["image"]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (80, 80)
    no_mask = [s for s in samples if s["dataset"] == "celeba-hq"]
    assert all(s["mask"] is None and not s["has_mask"] for s in no_mask)


def test_attribute_embeddings(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", [[None] * 3], structured=True)
    _embed(ds, embed_clip)
    with pytest.raises(EmbeddingsInvalid, match="--attributes"):
        FaceReader(_config(embed_clip, ds.root, attributes=True))
    shutil.rmtree(ds.embeddings_root)
    _embed(ds, embed_clip, "--attributes")
    sample = next(iter(FaceReader(_config(embed_clip, ds.root, attributes=True))))
    assert all(sample[f"attr_{a}_emb"].shape == (32,) for a in ATTRIBUTES)


def test_missing_embeddings_names_the_shard_and_the_fix(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", _captions("c", (2, 2)))
    with pytest.raises(MissingEmbeddings, match="make embed DATASET="):
        FaceReader(_config(embed_clip, ds.root))
    _embed(ds, embed_clip)
    ds.embeddings_path(TAG, 1).unlink()
    with pytest.raises(MissingEmbeddings, match=r"vggface2-hq-000001\.tar has no embeddings.*make embed"):
        FaceReader(_config(embed_clip, ds.root))


def test_other_models_embeddings_are_refused(tmp_path, embedded, embed_clip):
    with pytest.raises(MissingEmbeddings, match=f"no embeddings for CLIP ViT-B-32__openai.*found: {TAG}"):
        FaceReader(ReaderConfig(datasets=(embedded.root,), clip_model="ViT-B-32", pretrained="openai"))
    # Files of one model copied under another model's folder are caught by their metadata.
    ds = DatasetDir(tmp_path / "ds")
    shutil.copytree(embedded.root, ds.root)
    shutil.copytree(ds.embeddings_dir(TAG), ds.embeddings_dir("ViT-B-32__openai"))
    with pytest.raises(EmbeddingsInvalid, match="refused"):
        FaceReader(ReaderConfig(datasets=(ds.root,), clip_model="ViT-B-32", pretrained="openai"))


def test_damaged_parquet_is_refused(tmp_path, embedded, embed_clip):
    ds = DatasetDir(tmp_path / "ds")
    shutil.copytree(embedded.root, ds.root)
    path = ds.embeddings_path(TAG, 0)
    path.write_bytes(path.read_bytes()[:200])
    reader = FaceReader(_config(embed_clip, ds.root, shuffle=False))  # the footer of the last shard is fine
    with pytest.raises(EmbeddingsInvalid, match="unreadable"):
        list(reader)


def test_unsafe_tar_member_is_refused(tmp_path, embedded, embed_clip):
    ds = DatasetDir(tmp_path / "ds")
    shutil.copytree(embedded.root, ds.root)
    with tarfile.open(ds.shard_path("vggface2-hq", 2), "a") as tar:
        info = tarfile.TarInfo("../escape.jpg")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(UnsafeTarMember, match="escape"):
        list(FaceReader(_config(embed_clip, ds.root)))


def test_unfinished_caption_is_refused_unless_allowed(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", _captions("d", (2, 2)), uncaptioned=(1,))
    _embed(ds, embed_clip)
    with pytest.raises(FileNotFoundError, match="not captioned yet"):
        FaceReader(_config(embed_clip, ds.root))
    assert len(list(FaceReader(_config(embed_clip, ds.root, allow_partial=True)))) == 2


def test_label_map_masks_read_back_exactly_and_older_binary_masks_as_regions(tmp_path, embed_clip, embedded):
    from tests.pipeline.caption_builders import make_dataset as caption_dataset

    labelled = DatasetDir(caption_dataset(tmp_path / "celeba", source="celeba-hq"))  # the caption stage's own masks
    _embed(labelled, embed_clip)
    assert {labelled.load_stats(i)["mask_format"] for i in range(3)} == {"celeba-labels"}
    members = {s.key: s.members for i in range(3) for s in iter_shard(labelled.shard_path("celeba-hq", i))}
    for dtype in ("uint8", "float32"):
        reader = FaceReader(_config(embed_clip, labelled.root, embedded.root, batch_size=4, image_dtype=dtype))
        rows = 0
        for batch in DataLoader(reader, batch_size=None, num_workers=2):
            assert batch["mask"].dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
            for b, key in enumerate(batch["key"]):
                assert bool(batch["mask_labels"][b]) == (key in members) and batch["has_mask"][b]
                if key in members:  # the stored class indices, nearest-resized, never thresholded
                    stored = Image.open(io.BytesIO(members[key]["mask.png"])).resize((32, 32), Image.NEAREST)
                    want = torch.from_numpy(np.asarray(stored).copy())
                    assert torch.equal(batch["mask"][b, 0].to(torch.uint8), want) and want.max() > 1
                    assert torch.equal(batch["mask"][b, 0], want.to(batch["mask"].dtype))
                else:  # an older dataset's 0/255 mask: a region, 0/1
                    assert set(batch["mask"][b].unique().tolist()) <= {0, 1}
                rows += 1
        assert rows == len(members) + sum(SIZES)
