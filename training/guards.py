"""Checks that stop a run loudly instead of letting it hang or train on garbage: non-finite losses and
gradients, a rank without a full batch in some epoch, replicas that drifted apart."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor

from pipeline.reader import FaceReader
from training.config import TrainConfig
from training.losses import LossOutput
from training.run_log import Every


class NonFiniteLoss(RuntimeError):
    """A NaN or Inf loss or gradient norm: training stops, the last good checkpoint is kept."""


class FiniteGuard:
    """Stops every rank together on a NaN/Inf loss or gradient norm, without a host sync in every step.

    Reading a loss on the host (`.item()`) waits for the GPU to finish the step so far, and the CPU can then
    queue nothing ahead of it. Instead each phase records on the device, per named value, the first step
    where it was not finite (a few scalar kernels queued with the step's own), and `maybe_check` reads them
    all in one collective every `finite_check_every` steps, before every checkpoint and at the last step.

    The trade-off: a bad step is found up to `finite_check_every - 1` steps late, and those steps' updates
    (NaN weights and optimiser state) are wasted compute; but nothing non-finite is ever saved, since every
    checkpoint (and the final export) checks first, and the message still names the first bad step and its
    terms. `finite_check_every: 1` checks after every step (one sync per step, not one per phase as before).
    Gradient norms are not checked under fp16, where the loss scaler skips the overflowing steps itself.
    """

    def __init__(self, accelerator: Accelerator, cfg: TrainConfig) -> None:
        self.accelerator = accelerator
        self.every = Every(cfg.finite_check_every, cfg.max_steps)
        self.saves = Every(cfg.checkpoint_every, cfg.max_steps)  # never save what was not checked
        self.grads = cfg.mixed_precision != "fp16"
        self.first: dict[tuple[str, ...], Tensor] = {}  # names -> (N,) first non-finite step (1-based), inf if none
        self.value: dict[tuple[str, ...], Tensor] = {}  # names -> (N,) the value at that step

    def add_loss(self, out: LossOutput, step: int) -> None:
        """The phase's terms ("Loss/<phase>/total" among them) at 0-based `step`, recorded on the device."""
        self._add(out.terms, step)

    def add_grad_norm(self, norm: Tensor | None, net: str, step: int) -> None:
        if norm is not None and self.grads:
            self._add({f"Grad/{net}_norm": norm}, step)

    def _add(self, named: dict[str, Tensor], step: int) -> None:
        names = tuple(named)
        values = torch.stack([v.detach().float().reshape(()) for v in named.values()])  # (N,)
        first = self.first.get(names)
        if first is None:
            first, self.value[names] = torch.full_like(values, math.inf), torch.zeros_like(values)
        new = ~torch.isfinite(values) & torch.isinf(first)  # not finite now, and for the first time
        self.first[names] = torch.where(new, float(step + 1), first)
        self.value[names] = torch.where(new, values, self.value[names])

    def maybe_check(self, step: int, last_ckpt: Path | None) -> None:
        """After optimiser step `step` (1-based), on every rank: raise NonFiniteLoss if any rank saw one."""
        if not (self.every.due(step) or self.saves.due(step)):
            return
        firsts = [f.min() for f in self.first.values()]
        local = torch.stack(firsts).min() if firsts else torch.tensor(math.inf, device=self.accelerator.device)
        if math.isinf(float(self.accelerator.gather(local.reshape(1)).min())):  # the one host sync
            return
        mine = [
            (int(s), name, v)
            for names, first in self.first.items()
            for name, s, v in zip(names, first.tolist(), self.value[names].tolist(), strict=True)
            if math.isfinite(s)
        ]
        reports = gather_object([(self.accelerator.process_index, mine)])
        bad = min(s for _, found in reports for s, _, _ in found)
        at = [(rank, name, v) for rank, found in reports for s, name, v in found if s == bad]
        late = f"found after step {step} (checks run every {self.every.period} steps and before each checkpoint); "
        tail = (
            f"{late if bad != step else ''}nothing after step {bad - 1} was saved; the last good checkpoint is "
            f"{last_ckpt or 'none (no checkpoint was written yet)'}"
        )
        losses = [(rank, name, v) for rank, name, v in at if not name.startswith("Grad/")]
        if losses:
            terms = {r: [f"{n}={v:g}" for rr, n, v in losses if rr == r] for r, _, _ in losses}
            where = "; ".join(f"rank {r}: {', '.join(t)}" for r, t in sorted(terms.items()))
            raise NonFiniteLoss(
                f"non-finite loss at step {bad}: {where}. Training stopped: {tail} (continue from it with --resume "
                "once the cause is fixed: data, learning rate, mixed precision)"
            )
        rank, name, v = at[0]
        raise NonFiniteLoss(
            f"non-finite gradient norm of {name.removeprefix('Grad/').removesuffix('_norm')} at step {bad} ({v}, "
            f"rank {rank}). Training stopped: {tail}"
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
