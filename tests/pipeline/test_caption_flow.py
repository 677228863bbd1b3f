"""The caption stage's flow: a shard decodes ahead while the engine works, and is written behind it.

A failed write (a full disk) stops the run without costing a finished shard or leaving a partial file,
and the rerun finishes the job to the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from demo.synthetic import generate
from pipeline import caption
from pipeline.caption import CaptionConfig
from pipeline.dataset import DatasetDir
from pipeline.engines.base import EngineInfo, Generation, Prompt
from tests.pipeline.test_caption import _snapshot


class CountingEngine:
    """Our own CaptionEngine: fixed answers; records how many images each call got."""

    def __init__(self) -> None:
        self.info = EngineInfo("counting", "0", "counting", 448, 1, 96, "greedy")
        self.calls: list[int] = []

    def generate(self, images: list, prompt: Prompt) -> list[Generation]:
        self.calls.append(len(images))
        # a function of the image alone (greedy decoding is), so reruns caption identically
        return [Generation(f"The person faces the camera; mean colour {img.resize((1, 1)).getpixel((0, 0))}.", "stop")
                for img in images]  # fmt: skip


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    generate(root, "vggface2-hq", identities=3, per_identity=4, seed=1, size=48)
    return root


def _config(faces: Path, out: Path, **kw) -> CaptionConfig:
    return CaptionConfig(source="vggface2-hq", input=faces, output=out, engine="transformers", model="counting",
                         shard_size=4, workers=2, progress=False, **kw)  # fmt: skip


def test_vllm_gets_a_whole_shard_per_call_by_default():
    assert CaptionConfig(source="folder", input=Path("."), output=Path("x"), shard_size=1000).batch_size == 1000
    cfg = CaptionConfig(source="folder", input=Path("."), output=Path("x"), engine="transformers")
    assert cfg.batch_size == 8


def test_engine_calls_follow_batch_size_across_the_shards(faces, tmp_path):
    engine = CountingEngine()
    caption.run(_config(faces, tmp_path / "ds", batch_size=4), engine=engine)
    assert engine.calls == [4, 4, 4]  # one call per shard: 12 images, shards of 4
    engine = CountingEngine()
    caption.run(_config(faces, tmp_path / "ds3", batch_size=3), engine=engine)
    assert engine.calls == [3, 1, 3, 1, 3, 1]  # calls never span two shards


def test_a_full_disk_costs_no_finished_shard_and_the_rerun_finishes(faces, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    caption.run(_config(faces, reference, batch_size=4), engine=CountingEngine())

    out = tmp_path / "ds"
    real_write = caption.write_shard
    writes = []

    def write_until_full(path, samples):
        writes.append(path.name)
        if len(writes) == 2:  # the second shard hits a full disk midway through its tar
            with open(path.with_name(f".{path.name}.partial.tmp"), "wb") as f:
                f.write(b"half a tar")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, samples)

    monkeypatch.setattr(caption, "write_shard", write_until_full)
    with pytest.raises(OSError, match="No space left"):
        caption.run(_config(faces, out, batch_size=4), engine=CountingEngine())
    ds = DatasetDir(out)
    assert [ds.is_done(i) for i in range(3)] == [True, False, False]
    assert not ds.shard_path("vggface2-hq", 1).exists()  # no half-written shard under a real name

    monkeypatch.setattr(caption, "write_shard", real_write)
    summary = caption.run(_config(faces, out, batch_size=4), engine=CountingEngine())
    assert summary["skipped_done"] == 1 and summary["done_now"] == 2
    assert not list(ds.shards_dir.glob(".*.tmp"))  # the owner removed the leftover temporary
    assert _snapshot(out) == _snapshot(reference)
