"""Training data: the reader's batches -> flips -> (source, target) pairs -> a SwapBatch.

    FaceReader (decode, join embeddings) -> BatchStream (epochs, position) -> flip -> pair -> SwapBatch

The reader (pipeline/reader.py) gives batches of decoded images with their cached CLIP embeddings,
in an order fixed by (seed, epoch, rank, world size, workers, batch size). `BatchStream` runs over
epochs and knows its position (epoch, batches taken this epoch), which a checkpoint stores so that
a resumed run reads exactly the batches the straight run would have read. Flips and pairs are drawn
from a generator seeded by (seed, rank, step, micro-step) only, so they repeat exactly on resume.

Each image of a batch is the target of one row; its source is drawn by kind:
- random: another image of the batch, uniformly (the official recipe draws unpaired images);
- same_identity: another image of the same identity in the batch, where identities are known
  (falls back to random when the batch holds none; counted in `fallback`);
- self: the image itself (source = target).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.reader import FaceReader, ReaderConfig
from training.batch import SwapBatch, region_mask
from training.config import PAIR_KINDS, TrainConfig

# A flipped image no longer matches a caption that says left or right (head turned left, light from
# the right): such rows get an all-zero caption embedding, which the gated CLIP text loss skips.
_SIDED = re.compile(r"\b(left|right|leftward|rightward)\b", re.IGNORECASE)


def reader_config(cfg: TrainConfig, rank: int, world_size: int) -> ReaderConfig:
    return ReaderConfig(
        datasets=tuple(cfg.data),
        clip_model=cfg.clip_model,
        pretrained=cfg.clip_pretrained,
        attributes=cfg.loss.clip_text_factorised,
        image_size=cfg.image_size,
        image_type="tensor",
        image_dtype="uint8",  # converted to float on the training device (make_swap_batch)
        seed=cfg.seed,
        shuffle=True,
        shuffle_buffer=cfg.shuffle_buffer,
        batch_size=cfg.batch_size,
        partial_batches=False,  # every step sees full batches (and pairs always have a partner)
        rank=rank,
        world_size=world_size,
    )


# ---------------------------------------------------------------------------------------------
# The stream of reader batches, over epochs, with a resumable position


@dataclass(frozen=True)
class Position:
    epoch: int  # the epoch being read
    batches: int  # batches this rank already took from it


class BatchStream:
    """Reader batches forever, epoch after epoch; `position` is where the next batch comes from."""

    def __init__(self, reader: FaceReader, num_workers: int, position: Position = Position(0, 0)) -> None:
        self.reader = reader
        self.num_workers = num_workers
        self.position = position
        self._it: Iterator[dict[str, Any]] | None = None

    def _loader(self) -> Iterator[dict[str, Any]]:
        self.reader.set_epoch(self.position.epoch, skip=self.position.batches)
        loader = DataLoader(
            self.reader,
            batch_size=None,  # the reader batches
            num_workers=self.num_workers,
            persistent_workers=False,  # each epoch's iter() must see the new set_epoch
            # a private generator: creating the iterator draws a base seed, which must not move the
            # global torch RNG (a resumed run creates its iterator at a different point)
            generator=torch.Generator().manual_seed(self.position.epoch),
        )
        return iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        for _ in range(2):  # at most one epoch change per batch; an empty fresh epoch is an error
            if self._it is None:
                self._it = self._loader()
            try:
                batch = next(self._it)
            except StopIteration:
                fresh = self.position.batches == 0
                self._it = None
                if fresh:
                    break
                self.position = Position(self.position.epoch + 1, 0)
                continue
            self.position = Position(self.position.epoch, self.position.batches + 1)
            return batch
        raise ValueError(
            f"epoch {self.position.epoch} gives this rank no full batch: the dataset is too small for "
            f"batch_size={self.reader.config.batch_size} x {self.reader.world_size} process(es) x "
            f"{max(self.num_workers, 1)} worker(s) (each worker drops its last partial batch); "
            "lower batch_size or num_workers, or add data"
        )

    def close(self) -> None:
        self._it = None  # drops the DataLoader iterator, which shuts its workers down


# ---------------------------------------------------------------------------------------------
# Flips and pairs


def step_rng(seed: int, rank: int, step: int, micro: int) -> random.Random:
    """The generator of one micro-step's flips and pairs: a function of these four numbers only."""
    return random.Random(f"pairs/{seed}/{rank}/{step}/{micro}")


def choose_sources(identities: list[str], rates: dict[str, float], rng: random.Random) -> tuple[list[int], list[str]]:
    """For each target row i, the row of its source and the kind actually drawn.

    `rates` maps PAIR_KINDS to probabilities. A same_identity draw with no other image of that
    identity in the batch, or a random draw in a batch of one, falls back (to random, then self);
    the returned kind says what was used, with `fallback` marking those rows.
    """
    n = len(identities)
    kinds, weights = list(PAIR_KINDS), [rates.get(k, 0.0) for k in PAIR_KINDS]
    sources, used = [], []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        if kind == "same_identity":
            mates = [j for j in range(n) if j != i and identities[j] and identities[j] == identities[i]]
            if mates:
                sources.append(rng.choice(mates))
                used.append(kind)
                continue
            kind = "fallback"
        if kind in ("random", "fallback") and n > 1:
            sources.append((i + 1 + rng.randrange(n - 1)) % n)  # uniform over the other rows
            used.append(kind)
            continue
        sources.append(i)
        used.append("self" if kind == "self" else "fallback")
    return sources, used


@dataclass
class Pairing:
    """What one micro-step drew, for the SwapBatch and for the stats."""

    sources: list[int]  # source row of each target row
    kinds: list[str]  # random | same_identity | self | fallback, per row
    flipped: list[bool]  # per image
    same_identity: float  # fraction of rows whose source has the target's (known) identity


def draw_pairing(batch: dict[str, Any], cfg: TrainConfig, rng: random.Random) -> Pairing:
    n = batch["image"].shape[0]
    flipped = [rng.random() < cfg.flip for _ in range(n)]
    identities = [str(x) for x in batch.get("identity", [""] * n)]
    sources, kinds = choose_sources(identities, cfg.pair_rates, rng)
    same = [i != j and identities[i] != "" and identities[i] == identities[j] for i, j in enumerate(sources)]
    return Pairing(sources, kinds, flipped, sum(same) / n)


def _flip_(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mirror `rows` of `x` (B, C, H, W) left-right (W flipped), in place: no copy of the whole batch."""
    if rows.numel():
        x[rows] = x[rows].flip(-1)
    return x


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 reader images (channels-last memory) to contiguous float in [0, 1]; float images pass through."""
    return images.contiguous().float().div_(255) if images.dtype == torch.uint8 else images.contiguous()


def _swap_masks(mask: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, region: str) -> torch.Tensor:
    """The reader's masks (B, 1, H, W) as the loss takes them. Label maps stay integer class indices
    (uint8, resized nearest by the reader, never made float), so the loss's `mask_region` picks the
    region; binary regions (older datasets, the official layout) become float 0/1. A batch mixing
    both turns its label rows into `region` here, since one tensor cannot hold both kinds."""
    labels = labels & valid  # (B,), on the host as the reader gives it: these decisions cost no device sync
    if not bool(labels.any()):
        return mask.float()
    label_maps = mask.round().to(torch.uint8) if mask.is_floating_point() else mask.to(torch.uint8)
    if bool(labels[valid].all()):
        return label_maps
    rows = labels.to(mask.device)[:, None, None, None]  # (B, 1, 1, 1)
    return torch.where(rows, region_mask(label_maps, region), mask.float())


def make_swap_batch(
    batch: dict[str, Any], cfg: TrainConfig, pairing: Pairing, device: torch.device | str | None = None
) -> SwapBatch:
    """The loss's batch, on `device`: B target rows with their drawn sources, both sides' cached
    embeddings and masks. The reader's tensors move once; flips (in place: on the CPU the reader's
    own image and mask tensors are mirrored) and the source gather happen there.

    `SwapBatch.both_directions()` (called by the trainer when `both_directions`) adds the reverse rows.
    """
    dev = torch.device(device) if device is not None else batch["image"].device
    n = batch["image"].shape[0]
    src = torch.tensor(pairing.sources, dtype=torch.long, device=dev)
    flip_rows = torch.tensor([i for i, f in enumerate(pairing.flipped) if f], dtype=torch.long, device=dev)
    images = _to_unit(_flip_(batch["image"].to(dev, non_blocking=True), flip_rows))  # (B, 3, H, W) in [0, 1]
    captions = batch.get("caption") or [""] * n
    # the caption describes the mirror image now: blank it (the gated CLIP text term skips zero rows)
    unusable = torch.tensor(
        [f and bool(_SIDED.search(c or "")) for f, c in zip(pairing.flipped, captions, strict=True)],
        dtype=torch.bool,
        device=dev,
    )
    text = batch["text_emb"].to(dev, non_blocking=True).clone()  # (B, D)
    text[unusable] = 0.0
    attrs = {
        k.removeprefix("attr_").removesuffix("_emb"): v.to(dev, non_blocking=True).masked_fill(unusable[:, None], 0.0)
        for k, v in batch.items()
        if k.startswith("attr_")
    } or None
    mask = mask_valid = None
    has_mask = batch.get("has_mask")
    if cfg.use_masks and has_mask is not None and bool(has_mask.any()):
        mask_valid = has_mask.to(dev).bool()  # (B,)
        raw = _flip_(batch["mask"].to(dev, non_blocking=True), flip_rows)  # (B, 1, H, W), follows its image
        mask = _swap_masks(raw, batch["mask_labels"].bool(), has_mask.bool(), cfg.loss.mask_region)
    sim = batch["text_image_sim"].to(dev).float()  # (B,)
    image_emb = batch["image_emb"].to(dev, non_blocking=True)  # (B, D)
    return SwapBatch(
        source=images[src],
        target=images,
        text_emb=text,
        target_image_emb=image_emb,
        source_image_emb=image_emb[src],
        text_image_sim=sim,
        mask=mask,
        mask_valid=mask_valid,
        attr_embs=attrs,
        is_self=src == torch.arange(n, device=dev),
        source_text_emb=text[src],
        source_text_image_sim=sim[src],
        source_mask=None if mask is None else mask[src],
        source_mask_valid=None if mask_valid is None else mask_valid[src],
        source_attr_embs=None if attrs is None else {k: v[src] for k, v in attrs.items()},
    )
