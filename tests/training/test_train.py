"""The trainer end to end: refusals up front, exact resume, faults, samples, and a 2-process run.

Config presets and overrides are in test_config.py, pairs, flips and the data stream in test_data.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline.reader import FaceReader
from tests.training.run_builders import IMAGE_SIZE, REPO, RUN_SETS, RUN_STEPS, SPLIT_AT, demo_args
from training.config import load_config
from training.data import reader_config
from training.train import main

CONFIGS = REPO / "training" / "configs"


# ---------------------------------------------------------------------------------------------
# Config


def test_missing_real_weights_are_refused_unless_random_is_allowed(tmp_path, train_data, train_clip):
    out = tmp_path / "run"
    args = ["--config", str(CONFIGS / "alphaface-fast.yaml"), "--data", str(train_data), "--output", str(out),
            "--set", f"clip_model={train_clip}", "clip_pretrained=none"]  # fmt: skip
    with pytest.raises(SystemExit) as err:
        main(args)
    message = str(err.value)
    for name in ("id_weights", "emap", "vgg_weights", "clip_pretrained", "allow_random_weights: true"):
        assert name in message
    assert not out.exists()  # refused before anything was written
    with pytest.raises(SystemExit, match="id_weights: .*does not exist"):
        main([*args, "allow_random_weights=false", "id_weights=/nonexistent/w600k_r50.pth", "emap=/x.npy",
              "vgg_weights=/y.pth", "clip_pretrained=openai"])  # fmt: skip


def test_dataset_without_embeddings_names_the_fix(tmp_path, train_data, train_clip):
    bare = tmp_path / "bare"
    shutil.copytree(train_data, bare, ignore=shutil.ignore_patterns("embeddings"))
    explicit = ["--set", f"clip_model={train_clip}", "clip_pretrained=none"]
    with pytest.raises(SystemExit, match=r"has no embeddings for CLIP train-test-clip__none .*make embed"):
        main([*demo_args([bare], tmp_path / "run", train_clip), *explicit[1:]])
    with pytest.raises(SystemExit, match=r"has no embeddings yet: run python -m pipeline\.embed --dataset"):
        main(demo_args([bare], tmp_path / "run", train_clip))
    with pytest.raises(SystemExit, match=r"does not exist or is not a folder"):
        main(demo_args([tmp_path / "nope"], tmp_path / "run", train_clip))


def test_too_little_data_for_the_batch_is_refused_up_front(tmp_path, train_data, train_clip):
    with pytest.raises(SystemExit, match="the data is too small: .*lower batch_size"):
        main(demo_args([train_data], tmp_path / "run", train_clip, "batch_size=9", "num_workers=2"))


# ---------------------------------------------------------------------------------------------
# Training runs


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            flat[prefix] = torch.tensor(float(value)) if isinstance(value, int | float) else flat.get(prefix)

    walk("", state)
    return {k: v for k, v in flat.items() if v is not None}


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys(), a.name
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: {k} differs"


def test_demo_run_writes_config_stats_samples_checkpoints_and_final(demo_run):
    run = demo_run
    cfg = load_config(run / "config.yaml")  # the resolved config reads back as the run's own config
    assert cfg.generator == "tiny" and cfg.max_steps == RUN_STEPS and cfg.batch_size == 3
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, RUN_STEPS + 1))
    names = ["Loss/G/id", "Loss/G/rec", "Loss/G/perceptual", "Loss/G/cycle", "Loss/G/clip_id", "Loss/G/clip_text",
             "Speed/samples_per_s", "Grad/G_norm", "LR/G"]  # fmt: skip
    for name in names:
        assert all(name in r for r in lines), name
    for name in ("Loss/G/adv", "Loss/D/real", "Loss/D/fake"):  # on from adv_start_step 2; D untouched before
        assert [name in r for r in lines] == [False, False, True, True, True], name
    assert [r["Data/epoch"] for r in lines] == [0, 0, 0, 0, 1]
    # sample grids: rows of (source | target | swap), the fixed pairs stored once
    grids = sorted(p.name for p in (run / "samples").glob("step_*.png"))
    assert grids == ["step_0000002.png", "step_0000004.png", "step_0000005.png"]
    fixed = load_file(str(run / "samples" / "pairs.safetensors"))
    grid = np.asarray(Image.open(run / "samples" / "step_0000004.png"))
    assert grid.shape == (2 * IMAGE_SIZE, 3 * IMAGE_SIZE, 3)
    assert np.array_equal(grid[:IMAGE_SIZE, :IMAGE_SIZE], fixed["source"][0].permute(1, 2, 0).numpy())
    assert np.array_equal(grid[:IMAGE_SIZE, IMAGE_SIZE : 2 * IMAGE_SIZE], fixed["target"][0].permute(1, 2, 0).numpy())
    # checkpoints: complete folders only, each with the EMA and the data position
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step_0000003", "step_0000005"]
    state = json.loads((run / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["positions"] == [{"epoch": 1, "batches": 1}]
    final = run / "final" / "generator.safetensors"
    spec = json.loads(final.with_suffix(".json").read_text())
    assert spec["preset"] == "tiny" and spec["ema"] is True and spec["step"] == 5
    _assert_identical(final, run / "checkpoints" / "step_0000005" / "ema.safetensors")  # the EMA weights


def test_resume_is_exact_and_skips_a_half_written_checkpoint(tmp_path, demo_run, train_data, train_clip):
    out = tmp_path / "run"
    first = main(demo_args([train_data], out, train_clip, *RUN_SETS, max_steps=SPLIT_AT))
    assert first["steps"] == SPLIT_AT
    with pytest.raises(SystemExit, match="--resume"):  # an existing run is never clobbered silently
        main(demo_args([train_data], out, train_clip, *RUN_SETS, max_steps=RUN_STEPS))
    # what a process killed while saving step 4 leaves behind: a temporary folder, never renamed
    ckpts = out / "checkpoints"
    partial = ckpts / ".step_0000004.tmp"
    shutil.copytree(ckpts / f"step_{SPLIT_AT:07d}", partial)
    (partial / "trainer_state.json").unlink()
    (partial / "model.safetensors").write_bytes(b"\0" * 100)

    resumed = main([*demo_args([train_data], out, train_clip, *RUN_SETS, max_steps=RUN_STEPS), "--resume"])
    assert resumed["resumed_from"].endswith(f"step_{SPLIT_AT:07d}") and resumed["steps"] == RUN_STEPS
    assert not partial.exists()
    # 3 steps + a resumed 2 == 5 straight steps: models, optimisers, schedulers, EMA, all bit for bit
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors", "optimizer.bin",
                 "optimizer_1.bin", "scheduler.bin", "scheduler_1.bin"):  # fmt: skip
        _assert_identical(out / "checkpoints" / "step_0000005" / name, demo_run / "checkpoints" / "step_0000005" / name)
    _assert_identical(out / "final" / "generator.safetensors", demo_run / "final" / "generator.safetensors")
    a = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (demo_run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):  # the same batches, pairs and losses
        assert {k: v for k, v in ra.items() if k.startswith("Loss/")} == {
            k: v for k, v in rb.items() if k.startswith("Loss/")
        }
    assert (out / "samples" / "step_0000004.png").read_bytes() == (
        demo_run / "samples" / "step_0000004.png"
    ).read_bytes()


def _poison_text_embeddings(path: Path) -> None:
    """Rewrite one embeddings Parquet with NaN caption embeddings (a damaged upstream), metadata kept."""
    table = pq.read_table(path)
    col = table.column("text_emb").combine_chunks()
    nan = np.full(len(col) * col.type.list_size, np.nan, dtype=np.float16)
    poisoned = pa.FixedSizeListArray.from_arrays(pa.array(nan, type=col.type.value_type), col.type.list_size)
    table = table.set_column(table.column_names.index("text_emb"), table.schema.field("text_emb"), poisoned)
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), path)


def test_nan_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(tmp_path, train_data, train_clip):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    sets = ["batch_size=4", "shuffle_buffer=1", "flip=0", "checkpoint_every=2", "num_workers=0"]
    cfg = load_config(None, [f"clip_model={train_clip}", "clip_pretrained=none", *sets], data=(str(data),))
    # shards are read in a seeded order; poison the second one: steps 1-2 read the first (8 samples)
    second = FaceReader(reader_config(cfg, 0, 1)).rank_shards(0)[1]
    _poison_text_embeddings(second.parquet)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(demo_args([data], out, train_clip, *sets, max_steps=6))
    message = str(err.value)
    assert "non-finite loss at step 3" in message and "Loss/G/clip_text=nan" in message
    assert "Loss/G/id=" not in message  # only the poisoned term (and the total) are named
    assert str(out / "checkpoints" / "step_0000002") in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002"]
    assert not (out / "final").exists()
    state = load_file(str(out / "checkpoints" / "step_0000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_torchrun_two_processes_train_and_export(tmp_path, train_data, mask_data, train_clip):
    out = tmp_path / "run"
    # two micro-steps per optimiser step; StepLR halves the rate every optimiser step (not per micro-step,
    # not once per process)
    sets = ["batch_size=2", "grad_accum_steps=2", "lr_step=1", "lr_gamma=0.5", "loss.adv_start_step=0",
            "trackers=[tensorboard]"]  # fmt: skip
    args = demo_args([train_data, mask_data], out, train_clip, *sets, max_steps=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training.train", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "step_0000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["positions"]) == 2
    replicas = state["replicas"]  # each rank's weight checksums: DDP kept the two copies bit-identical
    assert len(replicas) == 2 and replicas[0] == replicas[1]
    assert {p.name for p in (out / "checkpoints" / "step_0000002").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl",
    }  # fmt: skip
    lines = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all("Loss/G/adv" in r for r in lines)
    assert any("Loss/G/mask" in r for r in lines)  # the CelebA-HQ shard's masks reached the loss
    assert [r["LR/G"] for r in lines] == [5e-5, 2.5e-5] and [r["LR/D"] for r in lines] == [5e-5, 2.5e-5]
    spec = json.loads((out / "final" / "generator.json").read_text())
    assert spec["step"] == 2
    weights = load_file(str(out / "final" / "generator.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert state["positions"] == [{"epoch": 0, "batches": 4}, {"epoch": 0, "batches": 4}]  # 2 steps x 2 micro
    # TensorBoard, read back with its own reader: the named metrics, one point per step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (out / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    for tag in ("Loss/G/id", "Loss/G/adv", "Loss/D/real", "Speed/samples_per_s"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag

    # the two-process run's generator exports, and onnxruntime agrees with torch on it
    from swapper import export

    onnx_path = tmp_path / "generator.onnx"
    summary = export.main(["--checkpoint", str(out), "--onnx", str(onnx_path), "--verify"])
    assert onnx_path.is_file() and summary["spec"]["step"] == 2 and summary["max_abs_diff"] <= 1e-4
