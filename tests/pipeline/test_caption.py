"""The caption stage end to end, with the tiny random InternVL3 through the transformers engine.

Outputs are read back with the real `webdataset` and `datasets` loaders. Faults are real: a
subprocess killed with SIGKILL, two ranks started at the same moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.synthetic import MASK_CLASSES, generate, mask_relpath
from pipeline.caption import CaptionConfig, main, run
from pipeline.dataset import DatasetDir
from pipeline.engines.base import EngineInfo, Generation
from pipeline.plan import PlanMismatch
from pipeline.prompts import ATTRIBUTES
from tests.pipeline.badinputs import bad_and_odd_files, write_files

REPO = Path(__file__).resolve().parents[2]
TIMING = ("seconds", "images_per_second")


@pytest.fixture(scope="module")
def vgg_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vgg")
    generate(root, "vggface2-hq", identities=3, per_identity=3, seed=0, size=96)
    return root


@pytest.fixture(scope="module")
def model_path(tiny_models_dir) -> str:
    return str(tiny_models_dir / "internvl3-tiny")


def _args(inp: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [
        "--source", "vggface2-hq", "--input", str(inp), "--output", str(out), "--engine", "transformers",
        "--model", model, "--shard-size", "4", "--batch-size", "3", "--max-new-tokens", "6", "--workers", "2",
        "--no-progress", *extra,
    ]  # fmt: skip


def _snapshot(root: Path) -> dict[str, object]:
    """Every output file's bytes, with stats timing fields dropped (they measure this run)."""
    snap: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel.startswith("stats/"):
            stats = json.loads(p.read_text())
            snap[rel] = {k: v for k, v in stats.items() if k not in TIMING}
        else:
            snap[rel] = p.read_bytes()
    return snap


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vgg_input, model_path) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ds"
    main(_args(vgg_input, out, model_path))
    return out


def test_end_to_end_read_back_with_webdataset_and_datasets(reference, vgg_input):
    import datasets
    import webdataset as wds

    ds = DatasetDir(reference)
    plan = ds.load_plan()
    assert plan["num_samples"] == 9 and plan["num_shards"] == 3
    assert all(ds.is_done(i) for i in range(3))
    urls = sorted(str(p) for p in ds.shards_dir.glob("*.tar"))
    assert [Path(u).name for u in urls] == [f"vggface2-hq-{i:06d}.tar" for i in range(3)]

    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == 9
    for s in samples:
        meta = s["json"]
        assert s["__key__"] == meta["key"]
        assert meta["caption"] == s["txt"]
        assert meta["prompt_id"] == "holistic-v1" and "attributes" not in meta
        assert (vgg_input / meta["source_path"]).is_file()
        assert s["jpg"].size == (meta["width"], meta["height"]) == (96, 96)
        assert meta["finish_reason"] in ("stop", "length")
        assert meta["flags"]["truncated"] == (meta["finish_reason"] == "length")
        # plain RGB JPEG inputs keep their original bytes
        assert meta["transcoded_from"] == ""
    raw = {s.key: s for s in __import__("pipeline.shards", fromlist=["iter_shard"]).iter_shard(Path(urls[0]))}
    first = next(iter(raw.values()))
    meta = json.loads(first.members["json"])
    assert first.members["jpg"] == (vgg_input / meta["source_path"]).read_bytes()

    hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    assert hf.num_rows == 9
    assert {"jpg", "json", "txt"} <= set(hf.column_names)
    assert sorted(r["key"] for r in hf["json"]) == sorted(s["__key__"] for s in samples)

    stats = [ds.load_stats(i) for i in range(3)]
    assert sum(s["ok"] for s in stats) == 9 and all(s["failed"] == {} for s in stats)
    assert stats[0]["engine"]["max_dynamic_patch"] == 1 and stats[0]["engine"]["image_size"] == 448
    assert sum(s["flags"].get("truncated", 0) for s in stats) == sum(s["json"]["flags"]["truncated"] for s in samples)


def test_bad_inputs_each_accounted_once(tmp_path, model_path):
    inp = tmp_path / "in"
    files = bad_and_odd_files(64)
    write_files(inp / "p1", files)
    out = tmp_path / "ds"
    summary = run(
        CaptionConfig(
            source="folder",
            input=inp,
            output=out,
            engine="transformers",
            model=model_path,
            shard_size=4,
            batch_size=4,
            max_new_tokens=4,
            progress=False,
        )
    )
    ds = DatasetDir(out)
    plan = ds.load_plan()
    errors = [
        json.loads(line) for i in range(plan["num_shards"]) for line in ds.errors_path(i).read_text().splitlines()
    ]
    expected_bad = {f"p1/{n}": r for n, (_, r) in files.items() if r is not None}
    assert {e["path"]: e["reason"] for e in errors} == expected_bad
    assert all(e["stage"] == "load" and e["key"].startswith("folder_p1_") for e in errors)

    from pipeline.shards import read_metadata

    metas = [m for i in range(plan["num_shards"]) for m in read_metadata(ds.shard_path(plan["name"], i))]
    kept = {m["source_path"]: m for m in metas}
    assert set(kept) == {f"p1/{n}" for n, (_, r) in files.items() if r is None}
    assert set(kept) | set(expected_bad) == {f"p1/{n}" for n in files}  # every input exactly once
    assert all(m["transcoded_from"] for m in metas)
    assert kept["p1/rotated.jpg"]["height"] == 64 and kept["p1/rotated.jpg"]["width"] == 32
    stats = [ds.load_stats(i) for i in range(plan["num_shards"])]
    failed: dict[str, int] = {}
    for s in stats:
        for k, v in s["failed"].items():
            failed[k] = failed.get(k, 0) + v
    assert failed == {r: list(expected_bad.values()).count(r) for r in set(expected_bad.values())}
    assert summary["ok"] == len(kept) and summary["failed"] == len(expected_bad)
    assert sum(s["transcoded"] for s in stats) == len(kept)  # none of the kept odd inputs was plain RGB JPEG


def test_celeba_masks_become_a_member_of_every_sample(tmp_path, model_path):
    import datasets

    inp = tmp_path / "celeba"
    generate(inp, "celeba-hq", identities=2, per_identity=2, seed=1, size=64)
    out = tmp_path / "ds"
    args = ["--source", "celeba-hq", "--input", str(inp), "--output", str(out), "--engine", "transformers"]
    main([*args, "--model", model_path, "--max-new-tokens", "4", "--no-progress"])
    ds = DatasetDir(out)
    urls = [str(p) for p in sorted(ds.shards_dir.glob("*.tar"))]
    hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    assert hf.num_rows == 4 and "mask.png" in hf.column_names
    # the mask is CelebAMask-HQ's label map, every class kept: built here from the part files, painted
    # in class order (later wins, as CelebAMask-HQ's g_mask.py does)
    for row in hf:
        idx = int(Path(row["json"]["source_path"]).stem)
        want = np.zeros((512, 512), np.uint8)
        for label, name in enumerate(MASK_CLASSES, start=1):
            part = inp / mask_relpath(idx, name)
            if part.is_file():
                want[np.asarray(Image.open(part).convert("L")) > 127] = label
        got = np.asarray(row["mask.png"])
        assert got.shape == (512, 512) and np.array_equal(got, want)
        assert {1, 13} <= set(np.unique(got).tolist())  # skin and hair, not a merged 0/255
    stats = [ds.load_stats(i) for i in range(ds.load_plan()["num_shards"])]
    assert sum(s["with_mask"] for s in stats) == 4 and {s["mask_format"] for s in stats} == {"celeba-labels"}
    assert all(r["identity"] for r in hf["json"])


def _launch(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.caption", *args], cwd=REPO, env=env)


def test_kill_9_then_rerun_is_identical(tmp_path, vgg_input, model_path, reference):
    out = tmp_path / "ds"
    args = _args(vgg_input, out, model_path)
    proc = _launch(args)
    stats0 = DatasetDir(out).stats_path(0)
    deadline = time.monotonic() + 120
    while not stats0.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stats0.exists(), "the first shard should have finished before the kill"
    assert not all(DatasetDir(out).is_done(i) for i in range(3)), "killed too late to test resume"
    # nothing half-written is ever visible under a final name
    assert all(p.name.startswith(".") for p in out.rglob("*.tmp"))
    summary = main(args)
    assert summary["skipped_done"] >= 1
    assert not list(out.rglob("*.tmp"))
    assert _snapshot(out) == _snapshot(reference)


def test_two_ranks_at_once_then_other_world_size(tmp_path, vgg_input, model_path, reference):
    out = tmp_path / "ds"
    base = _args(vgg_input, out, model_path)
    procs = [_launch(base, {"RANK": str(r), "WORLD_SIZE": "2"}) for r in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert _snapshot(out) == _snapshot(reference)

    # half a run on world size 2, finished by a run on world size 1: same result
    out2 = tmp_path / "ds2"
    main([*_args(vgg_input, out2, model_path), "--rank", "1", "--world-size", "2"])
    assert [DatasetDir(out2).is_done(i) for i in range(3)] == [False, True, False]
    summary = main(_args(vgg_input, out2, model_path))
    assert summary["skipped_done"] == 1 and summary["done_now"] == 2
    assert _snapshot(out2) == _snapshot(reference)


def test_plan_mismatch_refused_unless_overwrite(tmp_path, vgg_input, model_path):
    out = tmp_path / "ds"
    main(_args(vgg_input, out, model_path, "--limit", "2"))
    with pytest.raises(PlanMismatch, match="shard_size"):
        run(
            CaptionConfig(
                source="vggface2-hq", input=vgg_input, output=out, engine="transformers", model=model_path,
                shard_size=5, limit=2, max_new_tokens=6, progress=False,
            )
        )  # fmt: skip
    with pytest.raises(SystemExit, match="other settings"):
        main(_args(vgg_input, out, model_path, "--limit", "3"))
    main(_args(vgg_input, out, model_path, "--limit", "3", "--overwrite"))
    plan = DatasetDir(out).load_plan()
    assert plan["num_samples"] == 3 and plan["fingerprint"]["limit"] == 3


def test_missing_input_is_a_clear_error(tmp_path, model_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(_args(tmp_path / "missing", tmp_path / "ds", model_path))


class ScriptedEngine:
    """Our own CaptionEngine (not a library stand-in) answering from a script, to drive retries."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.calls: list[int] = []
        self.info = EngineInfo("scripted", "0", "scripted", 448, 1, 96, "greedy")

    def generate(self, images, prompt):
        self.calls.append(len(images))
        batch = self.answers.pop(0)
        assert len(batch) == len(images)
        return [Generation(t, "stop") for t in batch]


def test_structured_retry_once_then_failure(tmp_path, vgg_input):
    good = json.dumps({a: f"{a} ok" for a in ATTRIBUTES})
    engine = ScriptedEngine([["not json", good, "{}"], ["still not json", good]])
    out = tmp_path / "ds"
    cfg = CaptionConfig(
        source="vggface2-hq", input=vgg_input, output=out, engine="transformers", prompt="structured",
        shard_size=3, batch_size=3, limit=3, progress=False,
    )  # fmt: skip
    run(cfg, engine)
    assert engine.calls == [3, 2]  # the two malformed answers were retried together, once
    ds = DatasetDir(out)
    from pipeline.shards import read_metadata

    metas = read_metadata(ds.shard_path("vggface2-hq", 0))
    assert len(metas) == 2
    assert all(
        m["attributes"]["gaze"] == "gaze ok" and m["caption"].startswith("Head pose: head_pose ok.") for m in metas
    )
    errors = [json.loads(x) for x in ds.errors_path(0).read_text().splitlines()]
    assert [(e["stage"], e["reason"]) for e in errors] == [("caption", "malformed_output")]
    stats = ds.load_stats(0)
    assert stats["attributes"]["gaze"] == {"gaze ok": 2}
    assert stats["failed"] == {"malformed_output": 1}


# ---- first contact: shared files, reproducible errors, engines that cannot start


def _fixed_run(inp: Path, out: Path, source: str = "vggface2-hq") -> dict:
    from tests.pipeline.caption_builders import CannedEngine

    cfg = CaptionConfig(
        source=source, input=inp, output=out, engine="transformers", shard_size=4, batch_size=4,
        progress=False, workers=1,
    )  # fmt: skip
    return run(cfg, engine=CannedEngine([("The person looks ahead; plain background.", "stop")]))


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_every_output_file_has_the_mode_the_umask_gives(tmp_path, vgg_input, umask):
    old = os.umask(umask)
    try:
        _fixed_run(vgg_input, tmp_path / "ds")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]
    assert {p.relative_to(tmp_path / "ds").parts[0] for p in files} == {"plan.json", "shards", "stats", "errors"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}  # not mkstemp's 0600


def test_errors_files_are_the_same_bytes_on_every_run(tmp_path):
    inp = tmp_path / "in" / "p1"
    files = bad_and_odd_files(48)
    write_files(inp, files)
    a, b = tmp_path / "a", tmp_path / "b"
    _fixed_run(tmp_path / "in", a, source="folder")
    _fixed_run(tmp_path / "in", b, source="folder")
    errors_a = sorted((a / "errors").glob("*.jsonl"))
    assert [p.read_bytes() for p in errors_a] == [(b / "errors" / p.name).read_bytes() for p in errors_a]
    text = "".join(p.read_text() for p in errors_a)
    assert '"not_an_image"' in text and " at 0x" not in text


def _one_line_exit(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pipeline.caption: error: "), lines
    return lines[0]


def test_an_engine_that_cannot_start_is_one_line_and_its_plan_is_no_obstacle(tmp_path, vgg_input, model_path, capsys):
    out = tmp_path / "ds"
    # a hub name while offline: the model cannot be fetched
    line = _one_line_exit(capsys, _args(vgg_input, out, "OpenGVLab/InternVL3-1B-hf"))
    assert "--model OpenGVLab/InternVL3-1B-hf could not be loaded" in line
    try:
        import vllm  # noqa: F401
    except ImportError:  # the default engine, where vLLM is not installed
        argv = ["--source", "vggface2-hq", "--input", str(vgg_input), "--output", str(out), "--no-progress"]
        assert "pip install -e '.[vllm]'" in _one_line_exit(capsys, argv)
    if not torch_cuda():
        assert "no CUDA GPU" in _one_line_exit(capsys, _args(vgg_input, out, model_path, "--device", "cuda"))
    # the corrected command runs without --overwrite: nothing was captioned under the failed settings
    summary = main(_args(vgg_input, out, model_path))
    assert summary["done_now"] == 3 and summary["ok"] == 9


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
