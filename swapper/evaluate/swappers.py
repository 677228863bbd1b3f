"""Swappers under evaluation: (targets, sources) crops -> swaps, all (B, 3, S, S) in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from swapper.evaluate.config import BASELINES, EvalConfig
from swapper.images import official_source
from training.artifact import load_generator, load_identity, resolve_generator


@dataclass
class Batch:
    targets: torch.Tensor  # (B, 3, S, S) in [0, 1], 8-bit values
    sources: torch.Tensor  # (B, 3, S, S) the source faces in the same framing
    source_arcface: torch.Tensor | None  # (B, 3, 112, 112) ArcFace crops of the sources (ffpp), else None
    source_paths: list[Path] | None  # the source files (pairs), for the official eval.py preprocessing


class BaselineSwapper:
    """`baseline:source` returns the source face; `baseline:target` the target unchanged."""

    def __init__(self, which: str, image_size: int) -> None:
        self.name, self.image_size, self.which = f"baseline:{which}", image_size, which
        self.truncate, self.generator = False, None

    def __call__(self, batch: Batch) -> torch.Tensor:
        return batch.sources if self.which == "source" else batch.targets


class GeneratorSwapper:
    """A trained generator with its identity encoder, fed as `swapper.swap` feeds it."""

    def __init__(self, cfg: EvalConfig, device: torch.device) -> None:
        self.generator, self.spec = load_generator(cfg.checkpoint, device)
        overrides = SimpleNamespace(id_weights=cfg.gen_id_weights, emap=cfg.gen_emap, id_arch=None)
        self.identity = load_identity(self.spec, overrides).to(device)
        self.image_size = int(self.spec["image_size"])
        self.official = self.spec.get("preprocess")  # converted official weights: eval.py's handling
        self.truncate = self.official is not None  # eval.py truncates its output to 8 bits
        self.name = f"{self.spec.get('preset')} step {self.spec.get('step')} ({resolve_generator(cfg.checkpoint)[0]})"

    def embed(self, batch: Batch) -> torch.Tensor:
        device = batch.targets.device
        if self.official and batch.source_paths is not None:  # eval.py: PIL bilinear 112, quantised
            x = torch.cat([official_source(p, self.official) for p in batch.source_paths]).to(device)
            return self.identity.encode(x)
        if batch.source_arcface is not None:  # faces in the wild: the 112 ArcFace crop, as swapper.swap
            return self.identity(batch.source_arcface)
        return self.identity(batch.sources)  # aligned crops: resized to 112, as in training

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.generator(batch.targets, self.embed(batch)).float()


def load_swapper(cfg: EvalConfig, device: torch.device) -> BaselineSwapper | GeneratorSwapper:
    if cfg.checkpoint in BASELINES:
        return BaselineSwapper(cfg.checkpoint.partition(":")[2], cfg.image_size or 256)
    swapper = GeneratorSwapper(cfg, device)
    if cfg.image_size is not None and cfg.image_size != swapper.image_size:
        raise ValueError(f"--image-size {cfg.image_size} differs from the generator's {swapper.image_size}")
    return swapper


def quantise(x: torch.Tensor, truncate: bool) -> torch.Tensor:
    """What a saved 8-bit image holds: rounded (or truncated, as the official eval.py writes)."""
    scaled = x.clamp(0, 1) * 255
    return (scaled.floor() if truncate else scaled.round()) / 255
