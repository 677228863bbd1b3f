"""Shards load with `datasets` the way real data arrives: odd samples late, flags in a minority, many shards.

The `datasets` WebDataset builder infers its features from the first 5 samples and casts the rest to
them. So the dataset here starts with plain photos and unflagged captions; transcoded images (a PNG,
a grayscale JPEG, a CMYK JPEG) and flagged captions come only later, in later shards. Every row that
`datasets` returns is compared with what `webdataset` reads from the same tars.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import datasets
import pytest
import webdataset as wds
from huggingface_hub import DatasetCard
from PIL import Image

from demo.synthetic import generate
from pipeline.caption import CaptionConfig
from pipeline.caption import run as caption_run
from pipeline.dataset import DatasetDir, dumps_json
from pipeline.metadata import FLAG_NAMES, META_VERSION
from pipeline.publish import main as publish_main
from pipeline.shards import ShardSample, iter_shard, write_shard
from tests.pipeline.caption_builders import MODEL, CannedEngine, copy_dataset, embed, write_tiny_clip

PLAIN = ("The person faces the camera under even light; plain gray background, no occlusion.", "stop")
ANSWERS = [PLAIN] * 6 + [
    ("The woman looks to the left; soft light from a window behind her.", "stop"),  # identity_words
    PLAIN,
    PLAIN,
    ("The person turns right under bright light and looks down at the", "length"),  # truncated
    PLAIN,
]


def _odd_inputs(folder: Path) -> None:
    """Non-plain inputs in a later identity folder, named to sort between its plain photos."""
    face = Image.open(next(folder.glob("*.jpg"))).convert("RGB")
    face.save(folder / "0001_02.png")
    face.convert("L").save(folder / "0002_02.jpg", quality=90)
    face.convert("CMYK").save(folder / "0003_02.jpg", quality=90)


@pytest.fixture(scope="module")
def late_odd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("late_odd")
    inp = root / "input"
    generate(inp, "vggface2-hq", identities=4, per_identity=4, seed=3, size=48)
    _odd_inputs(inp / "n000003")
    cfg = CaptionConfig(
        source="vggface2-hq",
        input=inp,
        output=root / "ds",
        engine="transformers",  # not built: the canned engine is passed in
        model=MODEL,
        shard_size=4,
        batch_size=3,
        workers=1,
        progress=False,
    )
    caption_run(cfg, engine=CannedEngine(ANSWERS))
    embed(root / "ds", write_tiny_clip(root / "clip"))
    return root / "ds"


def _tars(dataset: Path) -> list[str]:
    return sorted(str(p) for p in DatasetDir(dataset).shards_dir.glob("*.tar"))


def _webdataset_rows(dataset: Path) -> dict[str, dict]:
    """What webdataset itself reads: key -> raw image bytes, parsed json, caption text."""
    rows = {}
    for s in wds.WebDataset(_tars(dataset), shardshuffle=False, empty_check=False):
        rows[s["__key__"]] = {"jpg": s["jpg"], "json": json.loads(s["json"]), "txt": s["txt"].decode("utf-8")}
    return rows


def _check_rows(hf_rows, expected: dict[str, dict]) -> None:
    seen = set()
    for row in hf_rows:
        key = row["__key__"]
        want = expected[key]
        assert row["json"] == want["json"], key
        assert row["txt"] == want["txt"], key
        image = row["jpg"]  # decoded by datasets from the same bytes
        assert image.size == Image.open(io.BytesIO(want["jpg"])).size
        seen.add(key)
    assert seen == set(expected)


def test_the_data_is_what_real_data_looks_like(late_odd):
    """Guard: the first 5 samples are plain, and the odd ones come later, in later shards."""
    rows = list(_webdataset_rows(late_odd).values())
    assert len(rows) == 19 and len(_tars(late_odd)) == 5
    metas = [r["json"] for r in rows]
    assert all(not m["transcoded_from"] and not any(m["flags"].values()) for m in metas[:5])
    assert sum(bool(m["transcoded_from"]) for m in metas) == 3
    assert sum(m["flags"]["identity_words"] for m in metas) >= 1 and sum(m["flags"]["truncated"] for m in metas) >= 1
    assert sum(any(m["flags"].values()) for m in metas) < len(metas) / 2


def test_every_field_has_one_type_in_every_sample(late_odd):
    metas = [r["json"] for r in _webdataset_rows(late_odd).values()]
    for name in metas[0]:
        assert len({type(m[name]) for m in metas}) == 1, name
    assert all(set(m) == set(metas[0]) for m in metas)
    assert all(set(m["flags"]) == set(FLAG_NAMES) for m in metas)
    assert all(m["meta_version"] == META_VERSION for m in metas)


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_webdataset_infers_from_the_first_samples_and_still_loads(late_odd, tmp_path, streaming):
    hf = datasets.load_dataset(
        "webdataset", data_files=_tars(late_odd), split="train", cache_dir=str(tmp_path), streaming=streaming
    )
    _check_rows(hf, _webdataset_rows(late_odd))


def _stage(dataset: Path, stage: Path, *extra: str) -> None:
    args = ["--dataset", str(dataset), "--repo-id", "someone/faces", "--stage-dir", str(stage), "--dry-run"]
    publish_main([*args, *extra])


def _card_features(stage: Path) -> datasets.Features:
    info = DatasetCard.load(stage / "README.md").data.to_dict()["dataset_info"]
    return datasets.Features._from_yaml_list(info["features"])


def test_image_release_loads_with_the_declared_features(late_odd, tmp_path):
    stage = tmp_path / "stage"
    _stage(late_odd, stage, "--include-images")
    hf = datasets.load_dataset(str(stage), split="train", cache_dir=str(tmp_path / "cache"))
    assert hf.features == _card_features(stage)  # declared, not inferred
    _check_rows(hf, _webdataset_rows(late_odd))


def test_annotation_release_loads_with_the_declared_features(late_odd, tmp_path):
    stage = tmp_path / "stage"
    _stage(late_odd, stage)
    hf = datasets.load_dataset(str(stage), split="train", cache_dir=str(tmp_path / "cache"))
    assert hf.features == _card_features(stage)
    expected = _webdataset_rows(late_odd)
    assert sorted(hf["key"]) == sorted(expected)
    for row in hf:
        meta = expected[row["key"]]["json"]
        for name, value in meta.items():
            if name != "meta_version":
                assert row[name] == value, name


# ---------------------------------------------------------------- shards written in format 1


def _as_format_1(meta: dict) -> dict:
    """A record as the first release wrote it: flags a list, null for an unknown or untranscoded value."""
    old = {k: v for k, v in meta.items() if k != "meta_version"}
    old["flags"] = [f for f in FLAG_NAMES if meta["flags"][f]]
    old["transcoded_from"] = meta["transcoded_from"] or None
    old["attributes"] = None
    return old


@pytest.fixture(scope="module")
def format_1(late_odd, tmp_path_factory) -> Path:
    ds = copy_dataset(late_odd, tmp_path_factory.mktemp("format_1") / "ds")
    for tar in DatasetDir(ds).shards_dir.glob("*.tar"):
        samples = [
            ShardSample(s.key, {**s.members, "json": dumps_json(_as_format_1(json.loads(s.members["json"]))).encode()})
            for s in iter_shard(tar)
        ]
        write_shard(tar, samples)
    # embed reads format 1 too: embed the old shards afresh
    shutil.rmtree(DatasetDir(ds).embeddings_root)
    embed(ds, write_tiny_clip(ds.parent / "clip"))
    return ds


def test_format_1_shards_publish_upgraded(format_1, late_odd, tmp_path):
    stage = tmp_path / "stage"
    _stage(format_1, stage, "--include-images")
    hf = datasets.load_dataset(str(stage), split="train", cache_dir=str(tmp_path / "cache"))
    _check_rows(hf, _webdataset_rows(late_odd))  # the staged tars hold the format-2 records
    # the dataset itself is left as it was
    assert all("meta_version" not in json.loads(s.members["json"]) for t in _tars(format_1) for s in iter_shard(t))
    _stage(format_1, tmp_path / "annotations")
    annotations = datasets.load_dataset(str(tmp_path / "annotations"), split="train", cache_dir=str(tmp_path / "c2"))
    assert sum(r["flags"]["truncated"] for r in annotations) == sum(
        m["json"]["flags"]["truncated"] for m in _webdataset_rows(late_odd).values()
    )


def test_format_1_shards_still_feed_the_reader(format_1):
    from pipeline.reader import FaceReader, ReaderConfig

    reader = FaceReader(ReaderConfig(datasets=(format_1,), clip_model="publishclip.json", pretrained="none"))
    keys = [s["key"] for s in reader]
    assert sorted(keys) == sorted(_webdataset_rows(format_1))
