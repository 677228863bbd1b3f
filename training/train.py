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
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object, set_seed
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from pipeline.cli import OneLineParser, fail
from pipeline.clip_tower import load_clip
from pipeline.dataset import atomic_open, atomic_write_bytes
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
from training.clip_image import ClipImageTower
from training.config import MissingWeights, TrainConfig, load_config
from training.data import BatchStream, Position, draw_pairing, make_swap_batch, reader_config, step_rng
from training.ema import EMA
from training.losses import AlphaFaceLoss, LossOutput
from training.models import IdentityEncoder, build_discriminator, build_generator
from training.models.identity import TINY_ID, build_identity  # noqa: F401  (TINY_ID: re-exported)
from training.perceptual import VGGPerceptual


class NonFiniteLoss(RuntimeError):
    """A NaN or Inf loss or gradient norm: training stops, the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# Frozen networks


def build_frozen(cfg: TrainConfig) -> tuple[IdentityEncoder, ClipImageTower | None, VGGPerceptual | None]:
    identity = build_identity(
        cfg.id_arch, cfg.id_weights, cfg.emap, cfg.use_emap, cfg.allow_random_weights, seed=cfg.seed
    )
    clip = None
    if cfg.loss.clip_id_weight or cfg.loss.clip_text_weight:
        # the same model (and, for "none", the same seeded random weights) that embedded the captions
        clip = ClipImageTower(load_clip(cfg.clip_model, cfg.clip_pretrained).model)
    vgg = None
    if cfg.loss.perceptual_weight:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            vgg = VGGPerceptual(cfg.vgg_weights, allow_random=cfg.allow_random_weights, input_size=cfg.vgg_input_size)
    return identity, clip, vgg


# ---------------------------------------------------------------------------------------------
# Logging helpers (main process)


class Meter:
    """Running sums of named scalars between two log lines; values stay on the device until read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + (v.detach().float() if isinstance(v, torch.Tensor) else float(v))
            self.counts[k] += 1

    def pop(self) -> dict[str, tuple[float, int]]:
        out = {k: (float(v), self.counts[k]) for k, v in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return out


def merge_meters(gathered: list[dict[str, tuple[float, int]]]) -> dict[str, float]:
    """Mean of each metric over every rank's values (ranks may report different terms, e.g. mask)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for part in gathered:
        for k, (s, n) in part.items():
            sums[k] += s
            counts[k] += n
    return {k: sums[k] / counts[k] for k in sorted(sums)}


def sample_grid(source: torch.Tensor, target: torch.Tensor, swap: torch.Tensor) -> Image.Image:
    """Rows of (source | target | swap), each (N, 3, H, W) in [0, 1]."""
    rows = torch.cat([source, target, swap], dim=3)  # (N, 3, H, 3W)
    grid = torch.cat(list(rows), dim=1)  # (3, N*H, 3W)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (N*H, 3W, 3)
    return Image.fromarray(array, "RGB")


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def _truncate_stats(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that stopped after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step]
    with atomic_open(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))


def _hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The config flattened to TensorBoard hparam values (scalars and strings)."""
    out: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in items:
            name = f"{key}.{sub}" if sub else key
            out[name] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
    return out


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
        _write_config(cfg, run_dir, start_ckpt)
    accelerator.wait_for_everyone()

    # --- data first: a dataset without embeddings fails here, before any model is built
    reader = FaceReader(reader_config(cfg, rank, world))
    _check_enough_data(reader, cfg, world)

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
        _truncate_stats(stats_path, step)
    accelerator.init_trackers("tensorboard", config=_hparams(cfg))

    stream = BatchStream(reader, cfg.num_workers, position)
    fixed = _fixed_pairs(run_dir) if main else None
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
                    fixed = _save_fixed_pairs(run_dir, batch.source, batch.target, cfg.num_samples)
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
                        _check_finite(accelerator, out, step, last_ckpt)
                        accelerator.backward(out.total)
                        if accelerator.sync_gradients and cfg.grad_clip:
                            norm = accelerator.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                            _check_grad(norm, phase, step, cfg, last_ckpt)
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
                    _append_jsonl(stats_path, {"step": step, "time": round(time.time(), 3), **metrics})
                    bar.set_postfix(
                        samples_s=f"{metrics['Speed/samples_per_s']:.1f}", G=f"{metrics['Loss/G/total']:.3f}"
                    )
            if main and fixed is not None and (step % cfg.sample_every == 0 or step == cfg.max_steps):
                _write_samples(accelerator, run_dir, step, fixed, G_raw, ema, identity)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                positions = gather_object([{"epoch": stream.position.epoch, "batches": stream.position.batches}])
                state = {
                    "step": step,
                    "positions": positions,  # per rank: the epoch it reads and the batches it took
                    "replicas": _check_replicas(G_raw, D_raw, step),  # per rank: weight checksums, all equal
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


def _check_finite(accelerator: Accelerator, out: LossOutput, step: int, last_ckpt: Path | None) -> None:
    """Stop every rank together on a NaN/Inf loss, naming the step and the terms, before backward."""
    bad = (~torch.isfinite(out.total.detach().float())).float().reshape(1)
    if accelerator.reduce(bad, reduction="sum").item() == 0:
        return
    terms = [f"{k}={v.item():g}" for k, v in out.terms.items() if not torch.isfinite(v).all()]
    reports = gather_object([(accelerator.process_index, terms)])
    where = "; ".join(f"rank {r}: {', '.join(t) or 'total only'}" for r, t in reports if t)
    raise NonFiniteLoss(
        f"non-finite loss at step {step + 1}: {where}. Training stopped, nothing of this step was saved; "
        f"the last good checkpoint is {last_ckpt or 'none (no checkpoint was written yet)'} "
        "(continue from it with --resume once the cause is fixed: data, learning rate, mixed precision)"
    )


def _check_grad(norm: torch.Tensor | None, net: str, step: int, cfg: TrainConfig, last_ckpt: Path | None) -> None:
    # fp16 overflows are expected and skipped by the loss scaler; elsewhere a NaN/Inf gradient is fatal
    if norm is None or cfg.mixed_precision == "fp16" or math.isfinite(float(norm)):
        return
    raise NonFiniteLoss(
        f"non-finite gradient norm of {net} at step {step + 1} ({float(norm)}). Training stopped before "
        f"{net}'s update; the last good checkpoint is {last_ckpt or 'none (no checkpoint was written yet)'}"
    )


def _check_enough_data(reader: FaceReader, cfg: TrainConfig, world: int) -> None:
    """Every rank must get a full batch in every epoch it reaches before max_steps, or the others would wait
    for it forever. Exact: the epoch orders depend on (seed, epoch) only, so each process walks every rank's
    epochs itself, and all of them reach the same verdict without a collective."""
    for rank in range(world):
        steps, epoch = 0, 0
        while steps < cfg.max_steps:
            batches = sum(reader.worker_items(epoch, cfg.num_workers, rank))
            if batches == 0:
                samples = sum(r.num_samples for r in reader.rank_shards(epoch, rank))
                raise ValueError(
                    f"the data is too small: process {rank} gets no full batch of {cfg.batch_size} in epoch {epoch} "
                    f"({samples} samples, {world} process(es) x {max(cfg.num_workers, 1)} worker(s), each worker "
                    "dropping its last partial batch); lower batch_size or num_workers, or add data"
                )
            steps, epoch = steps + batches, epoch + 1
            if not reader.config.shuffle:  # every epoch is the same
                break


def _check_replicas(G: torch.nn.Module, D: torch.nn.Module, step: int) -> list[dict[str, float]]:
    """Every rank must hold the same weights (DDP averages the gradients); a cheap float64 checksum per
    rank catches a network updated outside DDP's synchronisation."""
    sums = {
        name: float(sum(p.detach().double().sum() for p in net.parameters()).item())
        for name, net in (("G", G), ("D", D))
    }
    gathered = gather_object([sums])
    if any(g != gathered[0] for g in gathered):
        raise RuntimeError(f"ranks hold different weights at step {step}: {gathered}")
    return gathered


def _init_generator(G: torch.nn.Module, path: str) -> None:
    """Load a generator folder's weights (training.swap's --checkpoint forms) into G, strictly; its
    GeneratorConfig must equal this run's, or the first differing field is named."""
    from training.swap import load_generator

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


def _write_config(cfg: TrainConfig, run_dir: Path, start_ckpt: Path | None) -> None:
    """The resolved config into RUN_DIR/config.yaml; a resume that changes it keeps the old one beside it."""
    path = run_dir / "config.yaml"
    text = cfg.dump_yaml()
    if path.is_file() and start_ckpt is not None and path.read_text(encoding="utf-8") != text:
        old = load_config(path).to_dict()
        changed = sorted(k for k, v in cfg.to_dict().items() if old.get(k) != v)
        kept = run_dir / f"config.before-{start_ckpt.name}.yaml"
        os.replace(path, kept)
        print(f"resume with a changed config ({', '.join(changed)}); the previous one is kept as {kept}")
    atomic_write_bytes(path, text.encode("utf-8"))


def _fixed_pairs(run_dir: Path) -> dict[str, torch.Tensor] | None:
    path = run_dir / "samples" / "pairs.safetensors"
    return load_file(str(path)) if path.is_file() else None


def _save_fixed_pairs(run_dir: Path, source: torch.Tensor, target: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """The pairs every sample grid of this run shows (the first batch's, stored so resume shows the same)."""
    pairs = {
        "source": (source[:n].float().cpu().clamp(0, 1) * 255).round().byte().contiguous(),  # (N, 3, H, W) uint8
        "target": (target[:n].float().cpu().clamp(0, 1) * 255).round().byte().contiguous(),
    }
    path = run_dir / "samples" / "pairs.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(pairs, str(tmp))
    os.replace(tmp, path)
    return pairs


@torch.no_grad()
def _write_samples(
    accelerator: Accelerator,
    run_dir: Path,
    step: int,
    fixed: dict[str, torch.Tensor],
    G: torch.nn.Module,
    ema: EMA | None,
    identity: IdentityEncoder,
) -> Path:
    device = accelerator.device
    source = fixed["source"].to(device).float() / 255
    target = fixed["target"].to(device).float() / 255
    was_training = G.training
    G.eval()
    z = identity(source)
    # the EMA weights (what the run exports) without a second copy of the generator
    swap = torch.func.functional_call(G, ema.shadow, (target, z)) if ema is not None else G(target, z)
    G.train(was_training)
    grid = sample_grid(source, target, swap.float())
    path = run_dir / "samples" / f"step_{step:07d}.png"
    with atomic_open(path, "wb") as f:
        grid.save(f, format="PNG")
    if "tensorboard" in [t.name for t in accelerator.trackers]:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_image("Samples/source_target_swap", np.asarray(grid), step, dataformats="HWC")
    return path


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    p = OneLineParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=None, help="a preset in training/configs/ or a run's config.yaml")
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
