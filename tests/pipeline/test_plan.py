"""plan.json: fixed once, refused when the settings change, and cleared whole (or loudly not) on --overwrite."""

from __future__ import annotations

import shutil

import pytest

from demo.synthetic import generate
from pipeline import plan as plan_module
from pipeline.dataset import DatasetDir, atomic_write_json
from pipeline.plan import PlanMismatch, load_or_create_plan


def _plan(ds: DatasetDir, root, shard_size: int, overwrite: bool = False) -> dict:
    fingerprint = {"source": "folder", "input": str(root), "shard_size": shard_size}
    return load_or_create_plan(ds, fingerprint, {"dataset": "faces"}, shard_size, "faces", rank=0, overwrite=overwrite)


@pytest.fixture
def planned(tmp_path):
    root = tmp_path / "input"
    generate(root, "vggface2-hq", identities=2, per_identity=3, seed=0, size=32)
    ds = DatasetDir(tmp_path / "ds")
    plan = _plan(ds, root, 2)
    for i in range(plan["num_shards"]):  # what a finished caption run leaves
        ds.shard_path("faces", i).parent.mkdir(parents=True, exist_ok=True)
        ds.shard_path("faces", i).write_bytes(b"tar")
        atomic_write_json(ds.stats_path(i), {"ok": 2})
    return ds, root, plan


def test_a_rerun_reuses_the_plan_and_other_settings_are_refused(planned):
    ds, root, plan = planned
    assert plan["num_shards"] == 3 and plan["num_samples"] == 6
    assert _plan(ds, root, 2) == plan
    with pytest.raises(PlanMismatch, match="shard_size"):
        _plan(ds, root, 4)


def test_overwrite_clears_the_old_dataset(planned):
    ds, root, _ = planned
    new = _plan(ds, root, 4, overwrite=True)
    assert new["num_shards"] == 2
    assert not any(ds.is_done(i) for i in range(3)) and not list(ds.shards_dir.glob("*.tar"))


def test_a_failed_delete_is_an_error_and_leaves_no_shard_marked_done(planned, monkeypatch):
    ds, root, _ = planned
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if path == ds.shards_dir:
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(plan_module.shutil, "rmtree", rmtree)
    with pytest.raises(PlanMismatch, match="--overwrite could not delete the old dataset .*Permission denied"):
        _plan(ds, root, 4, overwrite=True)
    assert not any(ds.is_done(i) for i in range(3))  # stats went first: a rerun redoes every shard
    assert DatasetDir(ds.root).load_plan()["fingerprint"]["shard_size"] == 2  # the old plan still describes it
