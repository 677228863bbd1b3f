"""Publishing without the network: validate, stage the Hub layout, load it back with `datasets`.

The staged folder is read with the real `datasets.load_dataset`, as the Hub would serve it. Validation
failures are real damage done to a copy of a real dataset. Upload is exercised only as far as the
network boundary: a subprocess with HF_HUB_OFFLINE=1 and a dead HF_ENDPOINT.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from pipeline.dataset import DatasetDir, atomic_write_json
from pipeline.publish import MARKER, main
from pipeline.shards import iter_shard, write_shard
from tests.pipeline.caption_builders import (
    CLIP_TAG,
    copy_dataset,
    make_dataset,
    shard_metadata,
    stats_files,
)

REPO = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_publishTestTokenThatMustNeverBePrinted"


def _publish(dataset: Path, stage: Path, *extra: str) -> dict:
    return main(
        ["--dataset", str(dataset), "--repo-id", "someone/faces", "--stage-dir", str(stage), "--dry-run", *extra]
    )


def _load(path: str, cache: Path, **kwargs) -> datasets.Dataset:
    return datasets.load_dataset(path, split="train", cache_dir=str(cache), **kwargs)


def _embeddings_by_key(dataset: Path, column: str) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(DatasetDir(dataset).embeddings_dir(CLIP_TAG).glob("*.parquet")):
        t = pq.read_table(p)
        out.update(zip(t.column("key").to_pylist(), np.asarray(t.column(column).to_pylist(), np.float16)))
    return out


def _nothing_staged(stage: Path) -> bool:
    leftovers = [p for p in stage.parent.iterdir() if p.name.startswith(f".{stage.name}.")]
    return not stage.exists() and not leftovers


def test_annotation_release_loads_with_datasets(vgg, tmp_path):
    stage = tmp_path / "stage"
    summary = _publish(vgg, stage)
    assert summary["uploaded"] is False and summary["samples"] == 8
    assert sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*.tar")) == []  # no image leaves
    hf = _load(str(stage), tmp_path / "cache")
    metas = shard_metadata(vgg)
    assert hf.num_rows == len(metas) == 8
    assert sorted(hf["key"]) == sorted(m["key"] for m in metas)
    by_key = {r["key"]: r for r in hf}
    for m in metas:
        row = by_key[m["key"]]
        for field in ("dataset", "identity", "source_path", "caption", "flags", "finish_reason", "prompt_id"):
            assert row[field] == m[field], field
        assert (row["width"], row["height"], row["caption_model"]) == (m["width"], m["height"], m["caption_model"])
        assert "attributes" not in row  # holistic captions have no attribute fields
    # the CLIP embeddings travel with their tag, value for value
    text_emb = _embeddings_by_key(vgg, "text_emb")
    for key, row in by_key.items():
        assert np.array_equal(np.asarray(row[f"{CLIP_TAG}__text_emb"], np.float16), text_emb[key])
    assert sum(hf[f"{CLIP_TAG}__text_truncated"]) == 2
    about = json.loads(pq.read_schema(next((stage / "data").glob("*.parquet"))).metadata[b"alphaface"])
    assert about["clip"][CLIP_TAG]["model"] == "publishclip" and about["clip"][CLIP_TAG]["pretrained"] == "none"

    card = DatasetCard.load(stage / "README.md")
    assert card.data.to_dict()["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert "someone/faces" in card.text and "Annotation-only release" in card.text
    assert {p.name for p in (stage / "assets").glob("*.png")} == {
        "caption_words.png",
        "clip_similarity.png",
        "outcomes.png",
    }
    assert [f["path"] for f in summary["files"]] == sorted(
        p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() and p.name != MARKER
    )

    # a rerun replaces the stage whole: switching modes leaves no file of the other mode behind
    _publish(vgg, stage, "--include-images")
    _publish(vgg, stage)
    assert not list(stage.rglob("*.tar")) and not (stage / "annotations").exists()


def test_image_release_loads_and_prints_the_terms(celeba, tmp_path, capsys):
    stage = tmp_path / "stage"
    summary = _publish(celeba, stage, "--include-images")
    printed = capsys.readouterr().out
    assert (
        "includes images from CelebA-HQ" in printed and "forbids further copying, publishing or distributing" in printed
    )
    assert "gated (manual approval)" in printed and summary["gated"] is True
    metas = shard_metadata(celeba)
    hf = _load(str(stage), tmp_path / "cache")
    assert hf.num_rows == len(metas) == 4
    assert {"jpg", "json", "txt", "mask.png"} <= set(hf.column_names)
    assert sorted(hf["__key__"]) == sorted(m["key"] for m in metas)
    assert all(r["json"]["attributes"] is not None for r in hf)
    ds = DatasetDir(celeba)
    for tar in (stage / "data").glob("*.tar"):
        assert tar.read_bytes() == (ds.shards_dir / tar.name).read_bytes()

    # the annotations sit beside the tars, loadable with the parquet builder; attributes are a struct
    notes = _load("parquet", tmp_path / "cache2", data_files=str(stage / "annotations" / "*.parquet"))
    assert notes.num_rows == 4 and notes.features["attributes"]["head_pose"].dtype == "string"
    by_key = {m["key"]: m for m in metas}
    assert all(r["attributes"] == by_key[r["key"]]["attributes"] for r in notes)
    assert f"{CLIP_TAG}__attr_gaze_emb" in notes.column_names

    card = DatasetCard.load(stage / "README.md")
    meta = card.data.to_dict()
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.tar"}]}]
    assert "extra_gated_prompt" in meta and "private or gated" in card.text
    assert (stage / "assets" / "attributes.png").is_file()

    # a private repo needs no gate
    assert _publish(celeba, stage, "--include-images", "--private")["gated"] is False


def test_a_shard_whose_inputs_all_failed_adds_no_file(tmp_path):
    # 3 images, then 3 broken inputs: shard 1 holds no sample (datasets cannot read an empty file)
    ds = make_dataset(tmp_path, identities=1, per_identity=3, broken=3)
    assert [s["ok"] for s in stats_files(ds)] == [3, 0]
    for extra, pattern in (((), "data/*.parquet"), (("--include-images",), "data/*.tar")):
        stage = tmp_path / f"stage{len(extra)}"
        _publish(ds, stage, *extra)
        staged = [p.relative_to(stage).as_posix() for p in stage.glob(pattern)]
        assert staged == [pattern.replace("*", "vggface2-hq-000000")]
        assert _load(str(stage), tmp_path / f"cache{len(extra)}").num_rows == 3


def _refused(dataset: Path, stage: Path, match: str, *extra: str) -> None:
    with pytest.raises(SystemExit, match=match) as e:
        _publish(dataset, stage, *extra)
    assert "nothing was staged or uploaded" in str(e.value)
    assert _nothing_staged(stage)


def test_validation_refuses_a_missing_shard(vgg, tmp_path):
    ds = copy_dataset(vgg, tmp_path / "ds")
    (ds / "shards" / "vggface2-hq-000001.tar").unlink()
    _refused(ds, tmp_path / "stage", r"shard 000001: shards/vggface2-hq-000001\.tar is missing")
    DatasetDir(ds).stats_path(1).unlink()  # now the shard is merely unfinished
    _refused(ds, tmp_path / "stage", r"shard 000001 is not finished")


def test_validation_refuses_a_duplicate_key(vgg, tmp_path):
    ds = copy_dataset(vgg, tmp_path / "ds")
    shard0, shard2 = (ds / "shards" / f"vggface2-hq-{i:06d}.tar" for i in (0, 2))
    first = next(iter_shard(shard0))
    samples = list(iter_shard(shard2))
    write_shard(shard2, [first, *samples[1:]])  # same sample count, so the stats still agree
    _refused(ds, tmp_path / "stage", rf"key {first.key} is duplicated: in shard 000000 and shard 000002")


def test_validation_refuses_missing_embeddings(vgg, tmp_path):
    ds = copy_dataset(vgg, tmp_path / "ds")
    DatasetDir(ds).embeddings_path(CLIP_TAG, 2).unlink()
    _refused(
        ds, tmp_path / "stage", rf"embeddings/{CLIP_TAG}/000002\.parquet is missing: run `python -m pipeline.embed`"
    )
    _refused(
        vgg,
        tmp_path / "stage",
        r"embeddings/ViT-B-32__openai/000000\.parquet is missing",
        "--clip-tag",
        "ViT-B-32__openai",
    )


def test_validation_refuses_counts_that_disagree_with_the_stats(vgg, tmp_path):
    ds = copy_dataset(vgg, tmp_path / "ds")
    d = DatasetDir(ds)
    stats = d.load_stats(0)
    atomic_write_json(d.stats_path(0), {**stats, "ok": stats["ok"] + 1, "inputs": stats["inputs"] + 1})
    _refused(ds, tmp_path / "stage", r"vggface2-hq-000000\.tar holds 3 samples but stats/000000\.json says 4")


def test_stage_dir_must_be_publish_own(vgg, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="was not made by pipeline.publish"):
        _publish(vgg, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit, match="inside the dataset's own shards"):
        _publish(vgg, vgg / "shards" / "x")


def _cli(dataset: Path, stage: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: no request could leave this machine
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HOME": str(stage.parent / "hf_home"),
    }
    args = ["--dataset", str(dataset), "--repo-id", "someone/faces", "--stage-dir", str(stage), *extra]
    return subprocess.run(
        [sys.executable, "-m", "pipeline.publish", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dry_run_prints_the_plan_and_only_a_real_run_reaches_for_the_hub(vgg, tmp_path):
    stage = tmp_path / "stage"
    dry = _cli(vgg, stage, "--dry-run", "--private", "--revision", "v1")
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "DRY RUN, nothing is uploaded" in out and "someone/faces (dataset), private, revision v1" in out
    assert "token:     HF_TOKEN is set" in out
    staged = {p.relative_to(stage).as_posix(): p.stat().st_size for p in stage.rglob("*") if p.is_file()}
    assert MARKER in staged and len(staged) == 8  # card, 3 plots, 3 Parquet files, the marker
    for path in staged.keys() - {MARKER}:
        assert re.search(rf"^    {re.escape(path)} +\d", out, re.M), path
    assert not (stage / ".cache").exists()  # the uploader never ran

    real = _cli(vgg, stage)
    assert real.returncode == 2
    assert "upload: creating the repo someone/faces failed" in real.stderr and "offline" in real.stderr.lower()
    assert len(real.stderr.strip().splitlines()) == 1
    for stream in (dry.stdout, dry.stderr, real.stdout, real.stderr):
        assert FAKE_TOKEN not in stream


def test_a_local_disk_error_names_the_staging_step_not_the_upload(vgg, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the stage's parent folder should be")
    with pytest.raises(SystemExit) as err:
        _publish(vgg, blocker / "stage")
    assert err.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"pipeline.publish: error: staging into {blocker / 'stage'} (local disk) failed: ")
    assert "upload" not in line


def test_make_publish_does_not_force_offline_mode(tmp_path):
    """The Makefile leaves the Hub reachable for publish (and caption, embed, train): only tests and the demo
    run offline. PY is swapped for a probe that prints the mode the module would see."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MAKEFLAGS")}
    probe = f'{sys.executable} -c \'import os; print("mode", os.environ.get("HF_HUB_OFFLINE", "unset"))\''
    out = subprocess.run(
        ["make", "-s", "-o", "install", "publish", "DATASET=x", "REPO=a/b", f"PY={probe}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "mode unset" in out
