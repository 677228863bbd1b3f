"""Checks that stop a run loudly instead of letting it hang or train on garbage: non-finite losses and
gradients, a rank without a full batch in some epoch, replicas that drifted apart."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pipeline.reader import FaceReader
from training.config import TrainConfig
from training.losses import LossOutput


class NonFiniteLoss(RuntimeError):
    """A NaN or Inf loss or gradient norm: training stops, the last good checkpoint is kept."""


def check_finite(accelerator: Accelerator, out: LossOutput, step: int, last_ckpt: Path | None) -> None:
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


def check_grad(norm: torch.Tensor | None, net: str, step: int, cfg: TrainConfig, last_ckpt: Path | None) -> None:
    # fp16 overflows are expected and skipped by the loss scaler; elsewhere a NaN/Inf gradient is fatal
    if norm is None or cfg.mixed_precision == "fp16" or math.isfinite(float(norm)):
        return
    raise NonFiniteLoss(
        f"non-finite gradient norm of {net} at step {step + 1} ({float(norm)}). Training stopped before "
        f"{net}'s update; the last good checkpoint is {last_ckpt or 'none (no checkpoint was written yet)'}"
    )


def check_enough_data(reader: FaceReader, cfg: TrainConfig, world: int) -> None:
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


def check_replicas(G: torch.nn.Module, D: torch.nn.Module, step: int) -> list[dict[str, float]]:
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
