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
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object, set_seed
from tqdm import tqdm

from pipeline.cli import OneLineParser, fail
from pipeline.embeddings import EmbeddingsInvalid
from pipeline.reader import FaceReader, MissingEmbeddings
from training.checkpoint import (
    generator_spec,
    load_checkpoint,
    newest_checkpoint,
    remove_temporaries,
    save_checkpoint,
    save_generator,
)
from training.config import MissingWeights, TrainConfig, load_config
from training.data import BatchStream, Position, draw_pairing, make_swap_batch, reader_config, step_rng
from training.ema import EMA
from training.frozen import build_frozen
from training.guards import NonFiniteLoss, check_enough_data, check_finite, check_grad, check_replicas
from training.losses import AlphaFaceLoss
from training.models import build_discriminator, build_generator
from training.run_log import (
    Meter,
    append_jsonl,
    fixed_pairs,
    hparams,
    merge_meters,
    save_fixed_pairs,
    truncate_stats,
    write_config,
    write_samples,
)


def _release_accelerate_state() -> None:
    """Forget the process-wide Accelerate singletons, so another run in this process (tests, bench)
    can pick other settings. Not in a distributed launch: the process group stays as it is."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


# ---------------------------------------------------------------------------------------------
# The loop


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
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- the run directory: refuse to clobber, or find where to resume
    start_ckpt = newest_checkpoint(run_dir) if resume else None
    if not resume and newest_checkpoint(run_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume to continue it, or a new --output")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_temporaries(run_dir)
        if stale:
            accelerator.print(f"removed {len(stale)} unfinished checkpoint folder(s): {[p.name for p in stale]}")
        write_config(cfg, run_dir, start_ckpt)
    accelerator.wait_for_everyone()

    # --- data first: a dataset without embeddings fails here, before any model is built
    reader = FaceReader(reader_config(cfg, rank, world))
    check_enough_data(reader, cfg, world)

    # --- models, optimisers, schedules (same seed on every rank)
    set_seed(cfg.seed)
    G = build_generator(cfg.generator, **cfg.generator_overrides)
    if cfg.image_size % G.config.stride:
        raise ValueError(f"image_size {cfg.image_size} is not a multiple of the generator's stride {G.config.stride}")
    if cfg.init_from and start_ckpt is None:  # fine-tune from a generator folder (resume restores its own)
        _init_generator(G, cfg.init_from)
    D = build_discriminator(**{"image_size": cfg.image_size, **cfg.discriminator})
    identity, clip, vgg = build_frozen(cfg)
    opt_g = torch.optim.AdamW(G.parameters(), lr=cfg.lr_g, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(D.parameters(), lr=cfg.lr_d, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    G, D, opt_g, opt_d, sched_g, sched_d = accelerator.prepare(G, D, opt_g, opt_d, sched_g, sched_d)
    G_raw, D_raw = accelerator.unwrap_model(G), accelerator.unwrap_model(D)
    ema = EMA(G_raw, cfg.ema_decay).to(device) if cfg.ema_decay > 0 else None
    # Two views of one loss: the G phase calls the bare D (no DDP hooks; its parameters are frozen
    # for that phase), the D phase the DDP-wrapped one, whose gradients are averaged over ranks.
    loss_g = AlphaFaceLoss(cfg.loss, G, identity, D_raw, clip, vgg).to(device)
    loss_d = AlphaFaceLoss(cfg.loss, G, identity, D, clip, vgg)
    # The phases, in order, with their own network and optimiser (stylegan3's loop over phases);
    # D runs (and its StepLR counts) only on steps where loss_g.d_active: officially from
    # loss.adv_start_step on, so the adversarial phase starts against a fresh D at its initial lr.
    phases = [("G", loss_g, G, opt_g)] + ([("D", loss_d, D, opt_d)] if cfg.loss.adv_weight else [])

    # --- resume: models, optimisers, schedulers, RNG (accelerate), EMA and data position (ours)
    step, position = 0, Position(0, 0)
    if start_ckpt is not None:
        state = load_checkpoint(accelerator, start_ckpt, ema)
        step, position = state["step"], _resume_position(state, cfg, rank, world, accelerator)
        accelerator.print(f"resumed from {start_ckpt} (step {step})")
    elif resume:
        accelerator.print(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
    last_ckpt: Path | None = start_ckpt
    stats_path = run_dir / "stats.jsonl"
    if main:
        truncate_stats(stats_path, step)
    accelerator.init_trackers("tensorboard", config=hparams(cfg))

    stream = BatchStream(reader, cfg.num_workers, position)
    fixed = fixed_pairs(run_dir) if main else None
    meter = Meter()
    samples_per_step = cfg.batch_size * cfg.grad_accum_steps * world
    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", disable=not (main and cfg.progress), dynamic_ncols=True)
    step_times: list[float] = []
    log_start, log_steps = time.perf_counter(), 0
    G.train()
    D.train()
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            for micro in range(cfg.grad_accum_steps):
                raw = next(stream)
                pairing = draw_pairing(raw, cfg, step_rng(cfg.seed, rank, step, micro))
                batch = make_swap_batch(raw, cfg, pairing, device)
                if main and fixed is None and cfg.num_samples:
                    fixed = save_fixed_pairs(run_dir, batch.source, batch.target, cfg.num_samples)
                if cfg.both_directions:
                    batch = batch.both_directions()
                meter.add(
                    {
                        "Data/same_identity": pairing.same_identity,
                        "Data/pair_fallback": pairing.kinds.count("fallback") / len(pairing.kinds),
                    }
                )
                with accelerator.accumulate(G, D):  # DDP syncs and the optimisers step on the last micro-step
                    fake = None
                    for phase, loss, net, opt in phases:
                        if phase == "D" and not loss_g.d_active(step):
                            continue  # D untouched before the adversarial phase (official)
                        D_raw.requires_grad_(phase == "D")  # the G phase's adversarial term must not train D
                        with accelerator.autocast():
                            out = loss(phase, batch, step, fake=fake)
                        check_finite(accelerator, out, step, last_ckpt)
                        accelerator.backward(out.total)
                        if accelerator.sync_gradients and cfg.grad_clip:
                            norm = accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                            check_grad(norm, phase, step, cfg, last_ckpt)
                            meter.add({f"Grad/{phase}_norm": norm})
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        meter.add(out.terms)
                        fake = out.swap  # the D phase judges the G phase's (detached) swaps
            sched_g.step()
            if loss_g.d_active(step):
                sched_d.step()
            step += 1
            if ema is not None:
                ema.update(G_raw, step)
            step_times.append(time.perf_counter() - t0)
            log_steps += 1
            bar.update(1)

            # --- side effects: logs, samples, checkpoints (collectives on every rank, writes on main)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - log_start
                meter.add({"LR/G": sched_g.get_last_lr()[0], "LR/D": sched_d.get_last_lr()[0]})
                metrics = merge_meters(gather_object([meter.pop()]))
                metrics["Speed/samples_per_s"] = samples_per_step * log_steps / elapsed
                metrics["Speed/step_s"] = elapsed / log_steps
                metrics["Data/epoch"] = stream.position.epoch
                log_start, log_steps = time.perf_counter(), 0
                if main:
                    accelerator.log(metrics, step=step)
                    append_jsonl(stats_path, {"step": step, "time": round(time.time(), 3), **metrics})
                    bar.set_postfix(
                        samples_s=f"{metrics['Speed/samples_per_s']:.1f}", G=f"{metrics['Loss/G/total']:.3f}"
                    )
            if main and fixed is not None and (step % cfg.sample_every == 0 or step == cfg.max_steps):
                write_samples(accelerator, run_dir, step, fixed, G_raw, ema, identity)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                positions = gather_object([{"epoch": stream.position.epoch, "batches": stream.position.batches}])
                state = {
                    "step": step,
                    "positions": positions,  # per rank: the epoch it reads and the batches it took
                    "replicas": check_replicas(G_raw, D_raw, step),  # per rank: weight checksums, all equal
                    "world_size": world,
                    "num_workers": cfg.num_workers,
                    "batch_size": cfg.batch_size,
                    "seed": cfg.seed,
                }
                last_ckpt = save_checkpoint(accelerator, run_dir, step, state, ema, cfg.keep_checkpoints)
    finally:
        bar.close()
        stream.close()

    # --- the generator to use: EMA weights when EMA is on
    final = None
    if main:
        weights = ema.state_dict() if ema is not None else G_raw.state_dict()
        spec = generator_spec(cfg, G_raw.config, step, ema is not None)
        final = save_generator(run_dir / "final", weights, spec)
    accelerator.wait_for_everyone()
    timed = step_times[1:] or step_times  # the first step of a process warms up (allocations, workers)
    summary = {
        "run_dir": str(run_dir),
        "steps": step,
        "resumed_from": str(start_ckpt) if start_ckpt else None,
        "world_size": world,
        "final": str(final) if final else None,
        "last_checkpoint": str(last_ckpt) if last_ckpt else None,
        "seconds_per_step": round(sum(timed) / len(timed), 4) if timed else None,
        "samples_per_s": round(samples_per_step * len(timed) / sum(timed), 3) if timed else None,
    }
    return summary


# ---------------------------------------------------------------------------------------------
# Loop helpers


def _init_generator(G: torch.nn.Module, path: str) -> None:
    """Load a generator folder's weights (training.swap's --checkpoint forms) into G, strictly; its
    GeneratorConfig must equal this run's, or the first differing field is named."""
    from training.inference import load_generator

    source, spec = load_generator(path)
    ours, theirs = G.config, source.config
    for name in (f.name for f in dataclasses.fields(ours)):
        if getattr(ours, name) != getattr(theirs, name):
            raise ValueError(
                f"init_from {path}: its generator has {name}={getattr(theirs, name)!r}, this run's "
                f"{getattr(ours, name)!r} (set generator / generator_overrides to match it)"
            )
    G.load_state_dict(source.state_dict(), strict=True)


def _resume_position(
    state: dict[str, Any], cfg: TrainConfig, rank: int, world: int, accelerator: Accelerator
) -> Position:
    same = (state["world_size"], state["num_workers"], state["batch_size"], state["seed"]) == (
        world,
        cfg.num_workers,
        cfg.batch_size,
        cfg.seed,
    )
    if same:
        p = state["positions"][rank]
        return Position(p["epoch"], p["batches"])
    # The read order depends on these settings, so the exact position cannot carry over.
    epoch = max(p["epoch"] for p in state["positions"]) + 1
    accelerator.print(
        f"warning: world size, workers, batch size or seed differ from the checkpoint's; the data restarts at "
        f"epoch {epoch} (models and optimisers resume exactly, the data order does not)"
    )
    return Position(epoch, 0)


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
