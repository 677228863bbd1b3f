"""Rank and world size from the launcher's environment (torchrun, accelerate, Slurm).

The pipeline stages need no process group: shards are independent, so each process only needs to
know which shards are its own (`shard_index % world_size == rank`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def _env_int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def resolve_rank(
    rank: int | None = None, world_size: int | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """Explicit flags win; then RANK/WORLD_SIZE (torchrun, accelerate); then Slurm; else (0, 1)."""
    env = os.environ if env is None else env
    if rank is None:
        rank = _env_int(env, "RANK", "SLURM_PROCID")
    if world_size is None:
        world_size = _env_int(env, "WORLD_SIZE", "SLURM_NTASKS")
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad work split: rank {rank} of world size {world_size}")
    return rank, world_size


def local_rank(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return _env_int(env, "LOCAL_RANK", "SLURM_LOCALID") or 0


def my_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    return [i for i in range(num_shards) if i % world_size == rank]


def resolve_device(device: str | None) -> str:
    """`cuda` means this process's own GPU (LOCAL_RANK), pinned before any CUDA work."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch finds no CUDA GPU on this machine; use --device cpu")
    if device == "cuda":
        idx = local_rank()
        torch.cuda.set_device(idx)
        return f"cuda:{idx}"
    return device
