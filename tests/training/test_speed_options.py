"""The trainer's speed and memory options: NaN/Inf checks without a sync per step, AdamW kernels,
activation checkpointing through the loop, and the channels-last batch limit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from tests.training.run_builders import DEMO_YAML, RUN_SETS, RUN_STEPS, demo_args
from tests.training.test_train import _poison_text_embeddings
from training.artifact import load_generator
from training.config import TrainConfig, load_config
from training.data import reader_config
from training.guards import FiniteGuard, NonFiniteLoss
from training.losses import LossOutput
from training.models import build_generator
from training.models.generator import channels_last_batch_limit
from training.train import _adamw, _build, _check_channels_last, _release_accelerate_state, main

# ---------------------------------------------------------------------------------------------
# FiniteGuard


@pytest.fixture
def accelerator():
    acc = Accelerator(cpu=True)
    yield acc
    _release_accelerate_state()


def _out(**terms: float) -> LossOutput:
    named = {f"Loss/G/{k}": torch.tensor(v) for k, v in terms.items()}
    return LossOutput(total=named["Loss/G/total"], terms=named, swap=torch.zeros(1))


def test_the_guard_records_without_reading_the_device_and_checks_on_its_cadence(accelerator, monkeypatch):
    cfg = TrainConfig(finite_check_every=4, checkpoint_every=6, max_steps=20)
    guard = FiniteGuard(accelerator, cfg)
    found = []

    def host_read(*args: object) -> None:  # what a sync would do: read a value on the host
        found.append(args)
        raise AssertionError("a host read inside the step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, name, host_read)
        for step in range(5):  # 0-based steps 0..4 are optimiser steps 1..5
            nan = float("nan") if step == 2 else 1.0
            guard.add_loss(_out(id=1.0, clip_text=nan, total=nan), step)
            guard.add_grad_norm(torch.tensor(nan), "G", step)
            guard.maybe_check(step + 1, None) if step + 1 not in (4, 6) else None  # no check due: no read
    assert not found
    with pytest.raises(NonFiniteLoss) as e:
        guard.maybe_check(4, None)  # due: every 4 steps
    message = str(e.value)
    assert "non-finite loss at step 3: rank 0: Loss/G/clip_text=nan, Loss/G/total=nan" in message
    assert "Loss/G/id" not in message and "found after step 4" in message
    assert "nothing after step 2 was saved" in message


def test_a_checkpoint_step_always_checks_and_gradients_are_named(accelerator, tmp_path):
    cfg = TrainConfig(finite_check_every=50, checkpoint_every=3, max_steps=20)
    guard = FiniteGuard(accelerator, cfg)
    guard.add_loss(_out(id=1.0, total=1.0), 0)
    guard.add_grad_norm(torch.tensor(float("inf")), "D", 1)
    guard.maybe_check(2, None)  # not due: passes, the inf stays recorded
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient norm of D at step 2 \(inf, rank 0\).*found after"):
        guard.maybe_check(3, tmp_path / "step_0000000")  # a checkpoint is due at 3
    fp16 = FiniteGuard(accelerator, TrainConfig(mixed_precision="fp16", finite_check_every=1))
    fp16.add_grad_norm(torch.tensor(float("inf")), "G", 0)  # the loss scaler skips these steps itself
    fp16.maybe_check(1, None)


def test_a_nan_found_late_still_names_its_step_and_nothing_is_saved(tmp_path, train_data, train_clip):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    sets = ["batch_size=4", "shuffle_buffer=1", "flip=0", "num_workers=0", "checkpoint_every=100"]
    cfg = load_config(None, [f"clip_model={train_clip}", "clip_pretrained=none", *sets], data=(str(data),))
    from pipeline.reader import FaceReader

    _poison_text_embeddings(FaceReader(reader_config(cfg, 0, 1)).rank_shards(0)[1].parquet)  # read at step 3
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(demo_args([data], out, train_clip, *sets, max_steps=5))
    message = str(err.value)
    assert "non-finite loss at step 3" in message and "Loss/G/clip_text=nan" in message
    assert "found after step 5" in message  # the last step checks before the final export
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# AdamW kernels, channels-last limit, checkpointing in the loop


def test_adamw_kernels_follow_the_config_and_cpu_keeps_pytorchs_default():
    net = torch.nn.Linear(4, 4)
    cpu = torch.device("cpu")
    default = _adamw(net, 1e-3, TrainConfig(), cpu).defaults
    assert default["fused"] is None and default["foreach"] is None  # auto on the CPU: as before this option
    assert _adamw(net, 1e-3, TrainConfig(adam="foreach"), cpu).defaults["foreach"] is True
    assert _adamw(net, 1e-3, TrainConfig(adam="for-loop"), cpu).defaults["foreach"] is False
    assert _adamw(net, 1e-3, TrainConfig(adam="fused"), cpu).defaults["fused"] is True
    with pytest.raises(ValueError, match="adam must be one of"):
        TrainConfig(adam="lion")
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="reduce-overhead")  # CUDA graphs inside a training step: not offered


def test_channels_last_refuses_a_batch_past_32_bit_indexing():
    official = build_generator("alphaface").config
    assert channels_last_batch_limit(official) == 63  # 512 x 256 x 256 elements per image after the upsample
    assert channels_last_batch_limit(build_generator("alphaface-fast").config) == 255
    with torch.device("meta"):
        G = build_generator("alphaface")
    _check_channels_last(TrainConfig(batch_size=31, channels_last=True), G)  # 62 rows
    with pytest.raises(ValueError, match="64 rows .*exceeds the 63 rows"):
        _check_channels_last(TrainConfig(batch_size=32, channels_last=True), G)
    _check_channels_last(TrainConfig(batch_size=32, both_directions=False, channels_last=True), G)


def test_checkpointing_and_foreach_train_the_same_run(tmp_path, demo_run, train_data, train_clip):
    out = tmp_path / "run"
    sets = [*RUN_SETS, "grad_checkpointing=true", "adam=foreach", "channels_last=true", "finite_check_every=1"]
    main(demo_args([train_data], out, train_clip, *sets, max_steps=RUN_STEPS))
    ours, reference = (
        [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()] for run in (out, demo_run)
    )
    for a, b in zip(ours, reference, strict=True):  # every loss of every step, to float32 rounding
        losses = {k: v for k, v in b.items() if k.startswith("Loss/")}
        assert losses and {k: a[k] for k in losses} == pytest.approx(losses, rel=1e-4, abs=1e-6)
    # the trained generators swap alike (not weight for weight: a conv bias before an instance norm gets only
    # rounding noise as gradient, which Adam's normalisation turns into lr-sized steps that change nothing)
    pairs = load_file(str(demo_run / "samples" / "pairs.safetensors"))
    target = pairs["target"].float() / 255
    z = torch.nn.functional.normalize(torch.randn(len(target), 512, generator=torch.Generator().manual_seed(0)), dim=1)
    with torch.no_grad():
        swaps = [load_generator(run / "final")[0](target, z) for run in (out, demo_run)]
    torch.testing.assert_close(swaps[0], swaps[1], rtol=0, atol=1e-4)


def test_the_options_reach_the_built_networks(accelerator, train_data, train_clip):
    sets = ["grad_checkpointing=true", "adam=foreach", "channels_last=true", f"clip_model={train_clip}",
            "clip_pretrained=none", "image_size=64"]  # fmt: skip
    cfg = load_config(DEMO_YAML, sets, data=(str(train_data),))
    built = _build(cfg, accelerator, None)
    assert built.G_raw.grad_checkpointing
    for net in (built.G_raw, built.D_raw):
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert [p.opt.defaults["foreach"] for p in built.phases] == [True, True]
