"""The dataset directory contract: keys, atomic writes, leftover temporaries, CLIP tags and the layout."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from pipeline.dataset import (
    DatasetDir,
    atomic_open,
    atomic_write_json,
    atomic_write_jsonl,
    clip_tag,
    dumps_json,
    make_key,
    remove_temporaries_of,
    sanitize,
    unique_keys,
)
from pipeline.shards import ShardSample, write_shard
from tests.pipeline.shard_builders import make_dataset

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Keys


def test_sanitize_keeps_only_the_key_alphabet():
    assert sanitize("Az09_-") == "Az09_-"
    assert sanitize("a b.c/d\\e:f") == "a-b-c-d-e-f"
    assert sanitize("é.jpg") == "--jpg"  # one '-' per character, non-ASCII included
    assert sanitize("") == ""


def test_sanitised_keys_survive_webdataset_key_splitting(tmp_path):
    """WebDataset cuts a member name at its first dot: a key with a dot would lose its tail."""
    keys = [make_key("folder", "Jo.Doe", "img.v2 final"), make_key("folder", None, "x.y.z")]
    assert keys == ["folder_Jo-Doe_img-v2-final", "folder_unknown_x-y-z"]
    path = tmp_path / "s.tar"
    write_shard(path, [ShardSample(k, {"txt": k.encode()}) for k in keys])
    read = [(s["__key__"], s["txt"].decode()) for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert read == [(k, k) for k in keys]


def test_make_key_names_an_unknown_identity_and_keeps_the_separator_unambiguous():
    assert make_key("celeba-hq", None, "12") == "celeba-hq_unknown_12"
    assert make_key("celeba-hq", "", "12") == "celeba-hq__12"  # empty is not unknown
    # names that sanitise alike give one key: unique_keys is what tells them apart
    assert make_key("d", "a b", "x.jpg") == make_key("d", "a-b", "x-jpg")


def test_unique_keys_suffixes_collisions_in_listing_order():
    # `a b.jpg` and `a-b.png` in one folder: one key after sanitising, the second gets -2
    keys = [make_key("folder", "id", "a b"), make_key("folder", "id", "a-b")]
    assert unique_keys(keys) == ["folder_id_a-b", "folder_id_a-b-2"]
    # a suffix skips every name already taken, listed before or after it
    assert unique_keys(["k", "k", "k-2", "k"]) == ["k", "k-3", "k-2", "k-4"]
    assert unique_keys(["k", "k", "k", "k-2", "k-2"]) == ["k", "k-3", "k-4", "k-2", "k-2-2"]
    assert unique_keys([]) == []


def test_unique_keys_on_random_collision_heavy_listings():
    rng = random.Random(0)
    alphabet = ["a", "b", "a-2", "a-3", "b-2", "a-2-2"]
    for _ in range(300):
        keys = [rng.choice(alphabet) for _ in range(rng.randrange(1, 12))]
        out = unique_keys(keys)
        assert len(out) == len(keys) and len(set(out)) == len(out), keys
        for i, (key, new) in enumerate(zip(keys, out, strict=True)):
            first = keys.index(key) == i
            assert (new == key) if first else new.startswith(f"{key}-"), (keys, out)
        assert unique_keys(keys) == out  # deterministic


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _temporaries(folder, name):
    return sorted(p.name for p in folder.glob(f".{name}.*.tmp"))


def test_atomic_open_writes_beside_the_target_and_replaces_it_only_at_the_end(tmp_path):
    target = tmp_path / "deep" / "000001.json"  # missing parents are made
    with atomic_open(target, "w") as f:
        f.write("first")
        f.flush()
        (name,) = _temporaries(tmp_path / "deep", "000001.json")
        tmp = tmp_path / "deep" / name
        assert not target.exists() and tmp.read_text() == "first"  # hidden, in the same folder
    assert target.read_text() == "first" and _temporaries(target.parent, target.name) == []
    with atomic_open(target, "w") as f:
        f.write("second")
        assert target.read_text() == "first"  # readers see the old file until the replace
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["000001.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
@pytest.mark.parametrize("existed", [True, False])
def test_atomic_open_leaves_the_target_untouched_and_no_temporary_when_the_writer_raises(tmp_path, error, existed):
    target = tmp_path / "shard-000000.tar"
    if existed:
        target.write_bytes(b"old complete file")
    with pytest.raises(type(error)), atomic_open(target, "wb") as f:
        f.write(b"half a new fi")
        f.flush()
        assert len(_temporaries(tmp_path, target.name)) == 1
        raise error
    assert sorted(p.name for p in tmp_path.iterdir()) == (["shard-000000.tar"] if existed else [])
    if existed:
        assert target.read_bytes() == b"old complete file"


def test_json_writers_are_canonical(tmp_path):
    obj = {"b": [1, {"z": 0, "y": "ü"}], "a": None}
    atomic_write_json(tmp_path / "x.json", obj)
    atomic_write_json(tmp_path / "y.json", dict(reversed(obj.items())))
    text = (tmp_path / "x.json").read_text(encoding="utf-8")
    assert text == (tmp_path / "y.json").read_text(encoding="utf-8") == dumps_json(obj) + "\n"
    assert text.index('"a"') < text.index('"b"') and "ü" in text  # sorted keys, UTF-8 kept
    assert json.loads(text) == obj
    rows = [{"key": "k1", "error": "bad"}, {"error": "worse", "key": "k2"}]
    atomic_write_jsonl(tmp_path / "e.jsonl", rows)
    lines = (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows and lines[1] == '{"error": "worse", "key": "k2"}'
    atomic_write_jsonl(tmp_path / "empty.jsonl", [])
    assert (tmp_path / "empty.jsonl").read_bytes() == b""


# ---------------------------------------------------------------------------------------------
# Leftover temporaries


_KILLED_WRITERS = """
import contextlib, os, sys
from pipeline.dataset import atomic_open
with contextlib.ExitStack() as stack:
    for target in sys.argv[1:]:
        stack.enter_context(atomic_open(target, "wb")).write(b"partial")
    os._exit(1)  # killed mid-write: no replace, no cleanup
"""


def _killed_writers(*targets) -> None:
    """What writers killed mid-write leave: each target's real `atomic_open` temporary, never replaced."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITERS, *map(str, targets)], cwd=REPO, check=False)
    assert proc.returncode == 1


def test_remove_temporaries_of_removes_only_its_own_targets_temporaries(tmp_path):
    ds = DatasetDir(tmp_path)
    mine = [ds.shard_path("vgg", 1), ds.errors_path(1), ds.stats_path(1)]
    others = [ds.shard_path("vgg", 2), ds.shard_path("vgg", 10), ds.errors_path(11), ds.stats_path(2)]
    _killed_writers(*mine, *others)
    _killed_writers(*mine, *others)  # two killed attempts each
    ds.stats_path(1).write_text("{}")  # the target itself and ordinary files are never touched
    (ds.shards_dir / "vgg-000001.tar.txt").write_text("not a temporary")
    (ds.shards_dir / ".vgg-000001.tar.notes").write_text("hidden, not a temporary")
    before = {p for p in tmp_path.rglob("*") if p.is_file()}

    remove_temporaries_of(*mine)

    after = {p for p in tmp_path.rglob("*") if p.is_file()}
    removed = before - after
    assert len(removed) == 6 and all(p.name.endswith(".tmp") for p in removed)
    for target in mine:
        assert _temporaries(target.parent, target.name) == []
    for target in others:  # another rank's writers keep theirs
        assert len(_temporaries(target.parent, target.name)) == 2
    assert ds.stats_path(1).read_text() == "{}"
    remove_temporaries_of(*mine, tmp_path / "never-written" / "x.json")  # nothing left, no folder: no error


def test_remove_temporaries_of_treats_the_name_literally(tmp_path):
    mine, other = tmp_path / "a[1].json", tmp_path / "a1.json"
    _killed_writers(mine, other)
    remove_temporaries_of(mine)
    assert _temporaries_literal(tmp_path, mine.name) == [] and len(_temporaries_literal(tmp_path, other.name)) == 1


def _temporaries_literal(folder, name):
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# CLIP tags and the layout


@pytest.mark.parametrize(
    ("model", "pretrained", "tag"),
    [
        ("ViT-B-32", "openai", "ViT-B-32__openai"),
        ("ViT-B-16-quickgelu", "laion400m_e32", "ViT-B-16-quickgelu__laion400m_e32"),
        ("/configs/my.clip.json", "none", "my-clip__none"),  # a model config file: its stem, sanitised
        ("ViT-L-14", "/ckpts/run.3/epoch_32.pt", "ViT-L-14__epoch_32"),  # a checkpoint path: its stem
        ("ViT-L-14", "weights.bin", "ViT-L-14__weights"),
        ("hf-hub:org/model", "none", "hf-hub-org-model__none"),
    ],
)
def test_clip_tag(model, pretrained, tag):
    assert clip_tag(model, pretrained) == tag
    assert "." not in tag and "/" not in tag


def test_clip_tag_is_the_embeddings_folder_of_a_config_file_anywhere(tmp_path):
    # the same model config copied elsewhere (as embed records it) names the same folder
    assert clip_tag(str(tmp_path / "a" / "tiny.json"), "none") == clip_tag("tiny.json", "none") == "tiny__none"
    assert clip_tag("ViT-B-32", "openai") != clip_tag("ViT-B-32", "laion2b_s34b_b79k")


def test_dataset_dir_paths(tmp_path):
    ds = DatasetDir(tmp_path)
    assert ds.plan_path == tmp_path / "plan.json"
    assert ds.shard_path("vggface2-hq", 7) == tmp_path / "shards" / "vggface2-hq-000007.tar"
    assert ds.shard_path("x", 1234567).name == "x-1234567.tar"  # past six digits, still unique
    assert ds.stats_path(7) == tmp_path / "stats" / "000007.json"
    assert ds.errors_path(7) == tmp_path / "errors" / "000007.jsonl"
    assert ds.embeddings_path("ViT-B-32__openai", 7) == tmp_path / "embeddings" / "ViT-B-32__openai" / "000007.parquet"
    assert ds.embeddings_dir("t").parent == ds.embeddings_root
    assert DatasetDir(tmp_path) == ds  # a value: hashable and comparable
    assert len({ds, DatasetDir(tmp_path)}) == 1


def test_is_done_is_the_stats_file_of_a_real_dataset(tmp_path):
    ds = make_dataset(tmp_path / "ds", [["a", "b"], ["c"], ["d"]], uncaptioned=(1,))
    assert [ds.is_done(i) for i in range(3)] == [True, False, True]
    assert ds.shard_path("vggface2-hq", 0).is_file() and not ds.shard_path("vggface2-hq", 1).exists()
    assert ds.load_plan()["num_shards"] == 3 and ds.load_stats(2)["ok"] == 1
    # a half-written stats file (only its temporary) or a folder in its place is not done
    _killed_writers(ds.stats_path(1))
    assert not ds.is_done(1)
    ds.stats_path(3).mkdir()
    assert not ds.is_done(3)
    atomic_write_json(ds.stats_path(1), {"shard": 1, "ok": 1, "failed": {}})
    assert ds.is_done(1)


def test_load_plan_of_a_folder_that_is_no_dataset_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no plan.json: is it a dataset made by pipeline.caption"):
        DatasetDir(tmp_path).load_plan()
