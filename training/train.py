"""The train stage: AlphaFace GAN training with Hugging Face Accelerate.

    python -m training.train --config training/configs/alphaface.yaml --data DATASET [--data DATASET2 ...] \
        --output RUN_DIR [--max-steps N] [--resume] [--set key=value ...]
    accelerate launch -m training.train ...          # many GPUs or nodes
    torchrun --nproc_per_node N -m training.train ...

    reader (shards + cached CLIP embeddings) -> pairs -> G phase -> D phase -> EMA -> logs, samples, checkpoints

One loop (`run`), two phases per micro-step: G (every generator term of AlphaFaceLoss, both swap
directions) then D (LSGAN on real targets and the G phase's detached swaps; officially only from
`loss.adv_start_step` on, before which D and its schedule are left untouched). Accelerate does mixed
precision, gradient accumulation and DDP; the reader splits the data by rank itself. Everything a
run writes goes under RUN_DIR (see README, "Training"):

    config.yaml  stats.jsonl  tensorboard/  samples/step_NNNNNNN.png  checkpoints/step_NNNNNNN/  final/
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from torch import nn
from tqdm import tqdm

from pipeline.cli import OneLineParser, fail
from pipeline.embeddings import EmbeddingsInvalid
from pipeline.reader import FaceReader, MissingEmbeddings
from training.artifact import generator_spec, load_generator, save_generator
from training.checkpoint import Checkpointer, load_checkpoint, newest_checkpoint, remove_temporaries
from training.config import TrainConfig, load_config
from training.data import BatchStream, Position, draw_pairing, make_swap_batch, reader_config, step_rng
from training.ema import EMA
from training.frozen import build_frozen
from training.guards import FiniteGuard, NonFiniteLoss, check_enough_data
from training.losses import AlphaFaceLoss
from training.models import build_discriminator, build_generator
from training.models.generator import channels_last_batch_limit
from training.models.weights import MissingWeights
from training.run_log import MetricLog, SampleWriter, hparams, truncate_stats, write_config


def _release_accelerate_state() -> None:
    """Forget the process-wide Accelerate singletons, so another run in this process (tests, bench)
    can pick other settings. Not in a distributed launch: the process group stays as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@dataclass
class Phase:
    """One phase of a micro-step (stylegan3's records): its view of the loss, the network it trains, the
    optimiser and schedule, and whether it runs at a step (officially D only from loss.adv_start_step)."""

    name: str  # "G" | "D", as the loss calls its phases
    loss: AlphaFaceLoss
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    runs_at: Callable[[int], bool]


@dataclass
class Built:
    """What the loop trains and uses, after accelerator.prepare."""

    G: nn.Module  # wrapped (DDP) where there are several processes
    G_raw: nn.Module
    D_raw: nn.Module
    ema: EMA | None
    identity: nn.Module
    phases: list[Phase]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]


# ---------------------------------------------------------------------------------------------
# The run


def run(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train until `config.max_steps`; returns a summary. See the module docstring."""
    if not config.data:
        raise ValueError("no training data: pass --data DATASET (or data: in the config)")
    if not config.output:
        raise ValueError("no run directory: pass --output RUN_DIR")
    cfg = config.with_dataset_clip()
    cfg.check_weights()  # before anything heavy: missing real weights are refused here
    run_dir = Path(cfg.output)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        log_with=list(cfg.trackers) or None,
        project_dir=str(run_dir),
        step_scheduler_with_optimizer=False,  # StepLR counts optimiser steps, whatever the process count
        cpu=cfg.device == "cpu" or not torch.cuda.is_available(),  # CPU processes need this to form a gloo group
    )
    try:
        return _train(cfg, accelerator, run_dir, resume)
    finally:
        accelerator.end_training()
        _release_accelerate_state()


def _train(cfg: TrainConfig, accelerator: Accelerator, run_dir: Path, resume: bool) -> dict[str, Any]:
    main = accelerator.is_main_process
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    start_ckpt = _prepare_run_dir(cfg, accelerator, run_dir, resume)
    # data first: a dataset without embeddings fails here, before any model is built
    reader = FaceReader(reader_config(cfg, accelerator.process_index, accelerator.num_processes))
    check_enough_data(reader, cfg, accelerator.num_processes)
    built = _build(cfg, accelerator, start_ckpt)
    checkpointer = Checkpointer(accelerator, cfg, run_dir, built.ema, start_ckpt)
    step, position = _resume(cfg, accelerator, run_dir, resume, start_ckpt, checkpointer)
    if main:
        truncate_stats(run_dir / "stats.jsonl", step)
    accelerator.init_trackers("tensorboard", config=hparams(cfg))

    stream = BatchStream(reader, cfg.num_workers, position)
    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", disable=not (main and cfg.progress), dynamic_ncols=True)
    log = MetricLog(accelerator, cfg, run_dir, bar, built.schedulers)
    samples = SampleWriter(accelerator, cfg, run_dir, built.G_raw, built.ema, built.identity)
    guard = FiniteGuard(accelerator, cfg)
    step_times: list[float] = []
    for phase in built.phases:
        phase.net.train()
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            for micro in range(cfg.grad_accum_steps):
                batch = _next_batch(cfg, accelerator, stream, step, micro, samples, log)
                with accelerator.accumulate(*(phase.net for phase in built.phases)):  # syncs on the last micro-step
                    _micro_step(cfg, accelerator, built, batch, step, guard, log)
            for phase in built.phases:
                if phase.runs_at(step):
                    phase.sched.step()  # D's schedule, like D, only counts its own steps (official)
            step += 1
            if built.ema is not None:
                built.ema.update(built.G_raw, step)
            step_times.append(time.perf_counter() - t0)
            bar.update(1)
            # periodic jobs, each on its own cadence (collectives on every rank, writes on main); the NaN/Inf
            # check first, so that nothing non-finite is saved
            guard.maybe_check(step, checkpointer.last)
            log.maybe_log(step, stream.position.epoch)
            if main:
                samples.maybe_write(step)
            checkpointer.maybe_save(step, stream.position, built.G_raw, built.D_raw)
    finally:
        bar.close()
        stream.close()
    return _finish(cfg, accelerator, run_dir, built, step, start_ckpt, checkpointer.last, step_times)


# ---------------------------------------------------------------------------------------------
# Build, resume, one micro-step, finish


def _prepare_run_dir(cfg: TrainConfig, accelerator: Accelerator, run_dir: Path, resume: bool) -> Path | None:
    """Refuse to clobber a run, clear what a killed writer left, write the config; the checkpoint to resume."""
    newest = newest_checkpoint(run_dir)
    if not resume and newest is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume to continue it, or a new --output")
    start_ckpt = newest if resume else None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_temporaries(run_dir)
        if stale:
            accelerator.print(f"removed {len(stale)} unfinished checkpoint folder(s): {[p.name for p in stale]}")
        write_config(cfg, run_dir, start_ckpt)
    accelerator.wait_for_everyone()
    return start_ckpt


def _build(cfg: TrainConfig, accelerator: Accelerator, start_ckpt: Path | None) -> Built:
    """Models, optimisers and schedules (the same seed on every rank), prepared, and the phases over them."""
    set_seed(cfg.seed)
    G = build_generator(cfg.generator, **cfg.generator_overrides)
    if cfg.image_size % G.config.stride:
        raise ValueError(f"image_size {cfg.image_size} is not a multiple of the generator's stride {G.config.stride}")
    if cfg.init_from and start_ckpt is None:  # fine-tune from a generator folder (resume restores its own)
        _init_generator(G, cfg.init_from)
    D = build_discriminator(**{"image_size": cfg.image_size, **cfg.discriminator})
    identity, clip, vgg = build_frozen(cfg)
    G.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.channels_last:
        _check_channels_last(cfg, G)
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = _adamw(G, cfg.lr_g, cfg, accelerator.device)
    opt_d = _adamw(D, cfg.lr_d, cfg, accelerator.device)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    G, D, opt_g, opt_d, sched_g, sched_d = accelerator.prepare(G, D, opt_g, opt_d, sched_g, sched_d)
    G_raw, D_raw = accelerator.unwrap_model(G), accelerator.unwrap_model(D)
    if cfg.compile != "none":  # in place (nn.Module.compile): the DDP wrapper, state dicts and EMA are unchanged
        G_raw.compile(mode=cfg.compile)
        D_raw.compile(mode=cfg.compile)
    ema = EMA(G_raw, cfg.ema_decay).to(accelerator.device) if cfg.ema_decay > 0 else None
    # Two views of one loss: the G phase calls the bare D (no DDP hooks; its parameters are frozen
    # for that phase), the D phase the DDP-wrapped one, whose gradients are averaged over ranks.
    loss_g = AlphaFaceLoss(cfg.loss, G, identity, D_raw, clip, vgg).to(accelerator.device)
    loss_d = AlphaFaceLoss(cfg.loss, G, identity, D, clip, vgg)
    phases = [Phase("G", loss_g, G, opt_g, sched_g, lambda step: True)]
    if cfg.loss.adv_weight:  # D runs (and its StepLR counts) only where the loss says D is active
        phases.append(Phase("D", loss_d, D, opt_d, sched_d, loss_g.d_active))
    return Built(G, G_raw, D_raw, ema, identity, phases, {"G": sched_g, "D": sched_d})


def _adamw(net: nn.Module, lr: float, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with `cfg.adam`'s kernels. auto: fused (one kernel for all parameters) on CUDA; elsewhere
    PyTorch's own default, so CPU runs keep their exact arithmetic (and resume bit for bit)."""
    impl = "fused" if cfg.adam == "auto" and device.type == "cuda" else cfg.adam
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}.get(impl, {})
    return torch.optim.AdamW(net.parameters(), lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **kernels)


def _check_channels_last(cfg: TrainConfig, G: nn.Module) -> None:
    """Channels-last CUDA kernels index some outputs with 32-bit integers (the bilinear upsample): refuse a
    batch whose largest generator activation would reach 2**31 elements (the official network: 64 rows)."""
    rows = cfg.batch_size * (2 if cfg.both_directions else 1)  # the rows of one generator call
    limit = channels_last_batch_limit(G.config, cfg.image_size)
    if rows > limit:
        raise ValueError(
            f"channels_last: a generator call of {rows} rows (batch_size {cfg.batch_size}"
            f"{' x 2 directions' if cfg.both_directions else ''}) exceeds the {limit} rows whose activations "
            "fit 32-bit indexing in channels-last CUDA kernels; lower batch_size (use grad_accum_steps) or "
            "set channels_last: false"
        )


def _resume(
    cfg: TrainConfig,
    accelerator: Accelerator,
    run_dir: Path,
    resume: bool,
    start_ckpt: Path | None,
    checkpointer: Checkpointer,
) -> tuple[int, Position]:
    """Models, optimisers, schedulers, RNG (accelerate), EMA and the data position (ours)."""
    if start_ckpt is None:
        if resume:
            accelerator.print(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
        return 0, Position(0, 0)
    state = load_checkpoint(accelerator, start_ckpt, checkpointer.ema)
    accelerator.print(f"resumed from {start_ckpt} (step {state['step']})")
    return state["step"], checkpointer.resume_position(state)


def _next_batch(
    cfg: TrainConfig,
    accelerator: Accelerator,
    stream: BatchStream,
    step: int,
    micro: int,
    samples: SampleWriter,
    log: MetricLog,
) -> Any:
    """The next batch of pairs (both directions unless turned off), on the device."""
    raw = next(stream)
    pairing = draw_pairing(raw, cfg, step_rng(cfg.seed, accelerator.process_index, step, micro))
    batch = make_swap_batch(raw, cfg, pairing, accelerator.device)
    samples.keep_pairs(batch.source, batch.target)
    log.add(
        {
            "Data/same_identity": pairing.same_identity,
            "Data/pair_fallback": pairing.kinds.count("fallback") / len(pairing.kinds),
        }
    )
    return batch.both_directions() if cfg.both_directions else batch


def _micro_step(
    cfg: TrainConfig,
    accelerator: Accelerator,
    built: Built,
    batch: Any,
    step: int,
    guard: FiniteGuard,
    log: MetricLog,
) -> None:
    """Each phase that runs at `step`, in order: loss, backward, clip, optimiser step. The D phase judges
    the G phase's (detached) swaps. Nothing here waits for the device (`guard` records, it checks later)."""
    fake = None
    for phase in built.phases:
        if not phase.runs_at(step):
            continue  # D untouched before the adversarial phase (official)
        built.D_raw.requires_grad_(phase.name == "D")  # the G phase's adversarial term must not train D
        with accelerator.autocast():
            out = phase.loss(phase.name, batch, step, fake=fake)
        guard.add_loss(out, step)
        accelerator.backward(out.total)
        if accelerator.sync_gradients and cfg.grad_clip:
            norm = accelerator.clip_grad_norm_(phase.net.parameters(), cfg.grad_clip)
            guard.add_grad_norm(norm, phase.name, step)
            log.add({f"Grad/{phase.name}_norm": norm})
        phase.opt.step()
        phase.opt.zero_grad(set_to_none=True)
        log.add(out.terms)
        fake = out.swap


def _finish(
    cfg: TrainConfig,
    accelerator: Accelerator,
    run_dir: Path,
    built: Built,
    step: int,
    start_ckpt: Path | None,
    last_ckpt: Path | None,
    step_times: list[float],
) -> dict[str, Any]:
    """The generator to use (EMA weights when EMA is on) into RUN_DIR/final, and the summary."""
    final = None
    if accelerator.is_main_process:
        weights = built.ema.state_dict() if built.ema is not None else built.G_raw.state_dict()
        spec = generator_spec(cfg, built.G_raw.config, step, built.ema is not None)
        final = save_generator(run_dir / "final", weights, spec)
    accelerator.wait_for_everyone()
    timed = step_times[1:] or step_times  # the first step of a process warms up (allocations, workers)
    samples_per_step = cfg.batch_size * cfg.grad_accum_steps * accelerator.num_processes
    return {
        "run_dir": str(run_dir),
        "steps": step,
        "resumed_from": str(start_ckpt) if start_ckpt else None,
        "world_size": accelerator.num_processes,
        "final": str(final) if final else None,
        "last_checkpoint": str(last_ckpt) if last_ckpt else None,
        "seconds_per_step": round(sum(timed) / len(timed), 4) if timed else None,
        "samples_per_s": round(samples_per_step * len(timed) / sum(timed), 3) if timed else None,
    }


def _init_generator(G: torch.nn.Module, path: str) -> None:
    """Load a generator folder's weights (swapper.swap's --checkpoint forms) into G, strictly; its
    GeneratorConfig must equal this run's, or the first differing field is named."""
    source, spec = load_generator(path)
    ours, theirs = G.config, source.config
    for name in (f.name for f in dataclasses.fields(ours)):
        if getattr(ours, name) != getattr(theirs, name):
            raise ValueError(
                f"init_from {path}: its generator has {name}={getattr(theirs, name)!r}, this run's "
                f"{getattr(ours, name)!r} (set generator / generator_overrides to match it)"
            )
    G.load_state_dict(source.state_dict(), strict=True)


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    p = OneLineParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a config file (a run's config.yaml), or a preset of training/configs/ by name: alphaface, "
        "alphaface-improved, alphaface-fast, demo",
    )
    p.add_argument("--data", action="append", default=None, help="dataset directory (repeat for several)")
    p.add_argument("--output", default=None, help="RUN_DIR")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in RUN_DIR")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields (YAML values; a.b=v reaches into mapping fields); repeatable",
    )
    a = p.parse_args(argv)
    overrides = [item for group in a.overrides for item in group]
    cfg = load_config(
        a.config,
        overrides,
        data=tuple(a.data) if a.data else None,
        output=a.output,
        max_steps=a.max_steps,
    )
    return cfg, a.resume


def main(argv: list[str] | None = None) -> dict[str, Any]:
    try:
        cfg, resume = parse_args(argv)
    except (ValueError, FileNotFoundError) as e:  # a bad --set, config value or config path
        fail("training.train", str(e))
    known = (MissingWeights, MissingEmbeddings, EmbeddingsInvalid, NonFiniteLoss, FileExistsError, FileNotFoundError)
    try:
        summary = run(cfg, resume=resume)
    except (*known, ValueError) as e:
        fail("training.train", str(e))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"train": summary}), file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
