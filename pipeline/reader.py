"""The reader training uses: captioned shards joined with their cached CLIP embeddings.

    shards (seed, epoch) -> split by rank -> split by worker -> tar + Parquet join -> shuffle -> skip -> batch -> decode

One WebDataset pipeline over one or several dataset directories. Each shard's embeddings Parquet is
read once, when the shard opens, and its rows are joined to the tar's samples by key. The order is
a function of (seed, epoch, rank, world size, DataLoader workers, batch size) only, and
`set_epoch(epoch, skip)` restarts an epoch after the first `skip` items this rank's DataLoader
yielded, so a resumed run (with the same settings) sees exactly the data it would have seen. The
DataLoader must keep its default in-order delivery and must not use persistent workers (each
`iter(loader)` must see the new epoch). Example:

    from torch.utils.data import DataLoader
    from pipeline.reader import FaceReader, ReaderConfig

    reader = FaceReader(ReaderConfig(datasets=("data/vggface2",), clip_model="ViT-B-32", pretrained="openai",
                                     image_size=256, batch_size=16, seed=0))
    loader = DataLoader(reader, batch_size=None, num_workers=4)   # the reader batches; workers not persistent
    for epoch in range(start_epoch, epochs):
        reader.set_epoch(epoch, skip=batches_done if epoch == start_epoch else 0)
        for batch in loader:   # batch["image"]: (16, 3, 256, 256) in [0, 1]; batch["text_emb"]: (16, 512)
            ...
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.dataset import DatasetDir, clip_tag
from pipeline.distributed import resolve_rank
from pipeline.embeddings import EmbeddingsInvalid, attribute_column, check_tag, read_embeddings
from pipeline.shards import iter_shard
from pipeline.sources import MASK_CELEBA_LABELS, MASK_REGION

IMAGE_TYPES = ("tensor", "pil")
IMAGE_DTYPES = ("float32", "uint8")


class MissingEmbeddings(FileNotFoundError):
    """A captioned shard without embeddings for the requested CLIP model."""


@dataclass(frozen=True)
class ReaderConfig:
    # --- data
    datasets: tuple[Path, ...]  # dataset directories written by pipeline.caption + pipeline.embed
    clip_model: str = "ViT-B-32"  # as given to pipeline.embed --clip-model
    pretrained: str = "openai"  # as given to pipeline.embed --pretrained
    attributes: bool = False  # require and yield attr_<name>_emb (datasets embedded with --attributes)
    allow_partial: bool = False  # use only the shards captioning has finished, instead of refusing
    # --- decoding
    image_size: int | None = 256  # square side the image (and mask) are resized to; None keeps stored size
    image_type: str = "tensor"  # tensor: (3, H, W) torch tensor | pil: RGB PIL image
    image_dtype: str = (
        "float32"  # tensors: float32 in [0, 1], or uint8 (0-255 images, 0/1 masks) to convert on the device
    )
    # --- order
    seed: int = 0  # with the epoch, fixes the shard order and the sample shuffle
    shuffle: bool = True  # shuffle the shard order per epoch and samples within a buffer
    shuffle_buffer: int = 512  # samples held per worker for the sample shuffle
    batch_size: int | None = None  # batch in the reader (use DataLoader(batch_size=None)); None yields samples
    partial_batches: bool = True  # keep each worker's last, smaller batch
    # --- work split
    rank: int | None = None  # default: RANK / SLURM_PROCID
    world_size: int | None = None  # default: WORLD_SIZE / SLURM_NTASKS

    def __post_init__(self) -> None:
        datasets = (self.datasets,) if isinstance(self.datasets, str | Path) else self.datasets
        object.__setattr__(self, "datasets", tuple(Path(d) for d in datasets))
        if not self.datasets:
            raise ValueError("ReaderConfig needs at least one dataset directory")
        if self.image_type not in IMAGE_TYPES:
            raise ValueError(f"image_type must be one of {IMAGE_TYPES}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError("image_size must be >= 1 or None")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        if self.shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be >= 1")

    @property
    def tag(self) -> str:
        return clip_tag(self.clip_model, self.pretrained)


@dataclass(frozen=True)
class ShardRef:
    """One captioned shard and its embeddings file."""

    dataset: Path
    index: int
    tar: Path
    parquet: Path
    num_samples: int
    mask_format: str = MASK_REGION  # what its `.mask.png` members hold (stats; older shards: binary regions)


@dataclass
class JoinedSample:
    """A shard sample with its embedding row, before decoding (what the shuffle buffer holds)."""

    key: str
    members: dict[str, bytes]  # extension -> bytes
    row: dict[str, Any]  # embedding columns of this key
    mask_format: str = MASK_REGION  # its shard's (ShardRef.mask_format)


# ---------------------------------------------------------------- shards and their embeddings


def _embed_fix(root: Path, cfg: ReaderConfig) -> str:
    return f"make embed DATASET={root} CLIP={cfg.clip_model} PRETRAINED={cfg.pretrained}"


def find_shards(cfg: ReaderConfig) -> list[ShardRef]:
    """Every captioned shard of every dataset, in order; refuses any without embeddings."""
    refs: list[ShardRef] = []
    for root in cfg.datasets:
        ds = DatasetDir(root)
        plan = ds.load_plan()
        pending = [i for i in range(plan["num_shards"]) if not ds.is_done(i)]
        if pending and not cfg.allow_partial:
            raise FileNotFoundError(
                f"{root}: {len(pending)} shard(s) are not captioned yet (first: {plan['name']}-{pending[0]:06d}.tar); "
                "finish `make caption`, or pass allow_partial=True to read only the finished ones"
            )
        done = [i for i in range(plan["num_shards"]) if ds.is_done(i)]
        emb_dir = ds.embeddings_dir(cfg.tag)
        if done and not emb_dir.is_dir():
            found = sorted(p.name for p in ds.embeddings_root.iterdir()) if ds.embeddings_root.is_dir() else []
            raise MissingEmbeddings(
                f"{root} has no embeddings for CLIP {cfg.tag} (found: {', '.join(found) or 'none'}); "
                f"run `{_embed_fix(root, cfg)}`"
            )
        for i in done:
            stats = ds.load_stats(i)
            ref = ShardRef(
                root,
                i,
                ds.shard_path(plan["name"], i),
                ds.embeddings_path(cfg.tag, i),
                stats["ok"],
                stats.get("mask_format") or MASK_REGION,
            )
            if not ref.parquet.is_file():
                raise MissingEmbeddings(
                    f"shard {ref.tar} has no embeddings ({ref.parquet} is missing); run `{_embed_fix(root, cfg)}`"
                )
            refs.append(ref)
        if done:  # the footer alone: refuse another model's embeddings before any worker starts
            check_tag(refs[-1].parquet, cfg.tag)
    return refs


class _ShardRows:
    """One shard's embeddings, read once: key -> row position, and the columns as arrays."""

    def __init__(self, ref: ShardRef, tag: str, attributes: list[str]):
        try:
            table = read_embeddings(ref.parquet, tag, rows=ref.num_samples, attributes=attributes)
        except FileNotFoundError:
            raise MissingEmbeddings(f"shard {ref.tar} has no embeddings ({ref.parquet} is missing)") from None
        except EmbeddingsInvalid as e:
            raise EmbeddingsInvalid(f"shard {ref.tar}: {e}; rerun make embed") from None
        self.position = {k: i for i, k in enumerate(table.column("key").to_pylist())}
        n = table.num_rows
        self.vectors = {
            name: _matrix(table, name, n) for name in ["text_emb", "image_emb", *map(attribute_column, attributes)]
        }  # name -> (N, D) float16
        self.sim = table.column("text_image_sim").to_numpy()  # (N,)
        self.truncated = table.column("text_truncated").to_numpy(zero_copy_only=False)  # (N,)
        self.empty = (
            table.column("text_empty").to_numpy(zero_copy_only=False)
            if "text_empty" in table.column_names
            else np.zeros(n, dtype=bool)
        )

    def row(self, key: str, ref: ShardRef) -> dict[str, Any]:
        i = self.position.get(key)
        if i is None:
            raise EmbeddingsInvalid(
                f"sample {key} of {ref.tar} has no row in {ref.parquet}: the embeddings are stale; "
                "delete that file and rerun make embed"
            )
        out: dict[str, Any] = {name: v[i] for name, v in self.vectors.items()}
        out["text_image_sim"] = float(self.sim[i])
        out["text_truncated"] = bool(self.truncated[i])
        out["text_empty"] = bool(self.empty[i])
        return out


def _matrix(table: Any, name: str, n: int) -> np.ndarray:
    col = table.column(name).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)  # (N * D,) float16
    return flat.reshape(n, col.type.list_size)  # (N, D)


def join_embeddings(shards: Iterable[ShardRef], tag: str, attributes: list[str]) -> Iterator[JoinedSample]:
    """Read each shard's tar (member names checked) and its Parquet, once per shard; join by key."""
    for ref in shards:
        rows = _ShardRows(ref, tag, attributes)
        seen = 0
        for sample in iter_shard(ref.tar):  # raises UnsafeTarMember on a path, link or odd name
            yield JoinedSample(sample.key, sample.members, rows.row(sample.key, ref), ref.mask_format)
            seen += 1
        if seen != ref.num_samples:
            raise EmbeddingsInvalid(f"{ref.tar} holds {seen} samples where its stats say {ref.num_samples}")


# ---------------------------------------------------------------- decoding and batching


def _image(data: bytes, size: int | None) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if size is not None and img.format == "JPEG":
        img.draft("RGB", (size, size))  # DCT-domain downscale: 2-4x faster decode, never below `size`
    img.load()
    if img.mode != "RGB":  # converting an RGB image would only copy it
        img = img.convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return img


def _mask(data: bytes, size: tuple[int, int]) -> Image.Image:
    """The mask at the image's (W, H): nearest, so it keeps its stored values, 0/255 or class indices (a
    stored mask can be smaller than its image: CelebAMask-HQ's are 512 px for 1024 px images)."""
    img = Image.open(io.BytesIO(data)).convert("L")
    return img if img.size == size else img.resize(size, Image.NEAREST)


def _pixels(img: Image.Image) -> np.ndarray:
    """PIL RGB or L -> read-only uint8 (H, W, C) over `tobytes` (3x faster than np.array(img))."""
    w, h = img.size
    return np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(h, w, len(img.getbands()))


def _open(sample: JoinedSample, size: int | None) -> tuple[dict[str, Any], Image.Image, Image.Image | None]:
    """A sample's text fields, its decoded image and its mask (None where it has none)."""
    meta = json.loads(sample.members["json"])
    ext = "jpg" if "jpg" in sample.members else "png"  # a dataset has one image member name (docs/design.md §3)
    if ext not in sample.members:
        raise ValueError(f"sample {sample.key} has no .jpg or .png member")
    mask_bytes = sample.members.get("mask.png")
    fields = {
        "key": sample.key,
        "dataset": meta.get("dataset") or "",
        "identity": meta.get("identity") or "",  # "" where the source has no identities
        "caption": meta.get("caption") or "",
    }
    img = _image(sample.members[ext], size)
    return fields, img, _mask(mask_bytes, img.size) if mask_bytes is not None else None


class _PixelBatch:
    """A batch's uint8 images and raw mask values (zeros where a sample has none), copied in as each
    sample is decoded, so only one decoded image is alive at a time (its memory is reused, warm).

    The buffers are (B, H, W, C): channels-last memory, so the CPU worker never transposes bytes
    (the consumer's device does that far faster); `image` and `mask` are (B, C, H, W) views.
    """

    def __init__(self, n: int):
        self.n = n
        self.image = self.mask = torch.empty(0)

    def put(self, i: int, img: Image.Image, mask: Image.Image | None) -> None:
        w, h = img.size
        if i == 0:
            self.image = torch.empty(self.n, h, w, 3, dtype=torch.uint8)
            self.mask = torch.zeros(self.n, h, w, 1, dtype=torch.uint8)
        elif self.image.shape[1:3] != (h, w):
            raise ValueError(f"images of sizes {tuple(self.image.shape[1:3])} and {(h, w)} cannot be batched; "
                             "set image_size")  # fmt: skip
        self.image.numpy()[i] = _pixels(img)
        if mask is not None:
            self.mask.numpy()[i] = _pixels(mask)


def decode_batch(
    samples: list[JoinedSample], image_size: int | None, image_type: str = "tensor", image_dtype: str = "float32"
) -> dict[str, Any]:
    """Decode joined samples into one batch: tensors stacked (B, ...), bools as bool tensors, text as lists.

    image: uint8 (B, 3, H, W) 0-255 or float in [0, 1] (channels-last memory: call .contiguous()
    where the layout matters), or a list of PIL images; mask: (B, 1, H, W) 0/1 (uint8) or in [0, 1]
    (float; zeros where a sample has none: weight losses by has_mask), or a list of PIL images / None.
    Rows with `mask_labels` hold a CelebAMask-HQ label map instead: class indices, never thresholded.
    """
    fields, images, masks = [], [], []
    pixels = None if image_type == "pil" else _PixelBatch(len(samples))
    for i, sample in enumerate(samples):
        f, img, mask = _open(sample, image_size)
        fields.append(f)
        masks.append(mask)
        if pixels is None:
            images.append(img)
        else:
            pixels.put(i, img, mask)
    out: dict[str, Any] = {name: [f[name] for f in fields] for name in fields[0]}
    out["has_mask"] = torch.tensor([m is not None for m in masks], dtype=torch.bool)
    labels = [m is not None and s.mask_format == MASK_CELEBA_LABELS for m, s in zip(masks, samples, strict=True)]
    out["mask_labels"] = torch.tensor(labels, dtype=torch.bool)  # (B,) rows whose mask is a label map
    if pixels is None:
        out["image"], out["mask"] = images, masks
    else:
        image, mask = pixels.image.permute(0, 3, 1, 2), pixels.mask.permute(0, 3, 1, 2)
        is_label = out["mask_labels"][:, None, None, None]  # (B, 1, 1, 1)
        if image_dtype == "uint8":  # float conversion is left to the consumer's device, like the transpose
            region = (mask > 127).to(torch.uint8) if out["has_mask"].any() else mask
            out["image"], out["mask"] = image, torch.where(is_label, mask, region) if any(labels) else region
        else:
            region = mask.float().div_(255)
            out["image"], out["mask"] = image.float().div_(255), torch.where(is_label, mask.float(), region)
    rows = [s.row for s in samples]
    for name, value in rows[0].items():
        values = [r[name] for r in rows]
        if isinstance(value, np.ndarray):
            out[name] = torch.from_numpy(np.stack(values).astype(np.float32))  # (B, D)
        elif name == "text_image_sim":
            out[name] = torch.tensor(values, dtype=torch.float32)  # (B,)
        else:
            out[name] = torch.tensor(values, dtype=torch.bool)  # (B,)
    return out


def decode(
    sample: JoinedSample, image_size: int | None, image_type: str = "tensor", image_dtype: str = "float32"
) -> dict[str, Any]:
    """One sample, decoded as `decode_batch` does: tensors without the batch dimension, bools as bool."""
    batch = decode_batch([sample], image_size, image_type, image_dtype)
    out: dict[str, Any] = {}
    for name, value in batch.items():
        item = value[0]
        out[name] = item.item() if isinstance(item, torch.Tensor) and item.dtype == torch.bool else item
    return out


# ---------------------------------------------------------------- order, splitting and resume


def resume_point(counts: list[int], skip: int) -> tuple[list[int], list[int]]:
    """Where each worker stands after an in-order DataLoader has yielded `skip` items.

    The DataLoader asks its workers in turn (0, 1, ..., W-1, 0, ...), passes over any worker that has
    run out, and yields their items in that order. `counts[w]` is how many items worker w yields in
    the epoch. Returns (taken, order): `taken[w]` items already came from worker w, and `order` lists
    the workers that still have items, in the turn order from the next one. A restarted DataLoader
    asks its workers from 0 again, so worker slot p must play the part of worker `order[p]`.
    """
    n = len(counts)
    taken, pos, remaining = [0] * n, 0, skip
    while remaining > 0:
        active = [w for w in range(n) if taken[w] < counts[w]]
        if not active:
            break
        if pos == 0:  # whole rounds at once: each active worker gives one item per round
            rounds = min(min(counts[w] - taken[w] for w in active), remaining // len(active))
            if rounds > 0:
                for w in active:
                    taken[w] += rounds
                remaining -= rounds * len(active)
                continue
        w = next((w for w in active if w >= pos), None)
        if w is None:  # past the last active worker: a new round
            pos = 0
            continue
        taken[w] += 1
        remaining -= 1
        pos = (w + 1) % n
    order = [(pos + i) % n for i in range(n)]
    return taken, [w for w in order if taken[w] < counts[w]]


def _skip(src: Iterator[Any], n: int) -> Iterator[Any]:
    for i, x in enumerate(src):
        if i >= n:
            yield x


class FaceReader(IterableDataset):
    """Decoded face samples joined with their cached CLIP embeddings; see the module docstring.

    Yields dicts (or, with `batch_size`, batches of them, stacked):
        key, dataset, identity (str, "" if unknown), caption (str),
        image ((3, H, W) float in [0, 1] or uint8 0-255 (`image_dtype`), channels-last memory; or a PIL
        image), mask ((1, H, W) in {0, 1}; zeros where the sample has none; with mask_labels a CelebAMask-HQ
        label map of class indices, resized nearest), has_mask, mask_labels (bool),
        text_emb, image_emb ((D,) float32, L2-normalised), text_image_sim (float32), text_truncated,
        text_empty (bool), and attr_<name>_emb ((D,)) per attribute with `attributes=True`.
    """

    def __init__(self, config: ReaderConfig):
        super().__init__()
        self.config = config
        self.rank, self.world_size = resolve_rank(config.rank, config.world_size)
        self.shards = find_shards(config)
        self.attribute_names: list[str] = self._attribute_names() if config.attributes else []
        self.epoch = 0
        self.skip = 0

    def _attribute_names(self) -> list[str]:
        names: list[str] | None = None
        for ref in self.shards:
            found = json.loads(check_tag(ref.parquet, self.config.tag).get("attributes", "[]"))
            if names is not None and found != names:
                raise EmbeddingsInvalid(f"{ref.parquet} has attributes {found}, other shards {names}")
            names = found
            if not found:
                raise EmbeddingsInvalid(
                    f"{ref.parquet} has no attribute embeddings; run embed with --attributes on a structured dataset"
                )
        return names or []

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Read epoch `epoch`, leaving out the first `skip` items (batches, or samples without batch_size)
        that this rank's DataLoader already yielded. Call before `iter(loader)`; workers must not be persistent."""
        if epoch < 0 or skip < 0:
            raise ValueError("epoch and skip must be >= 0")
        self.epoch, self.skip = epoch, skip

    def epoch_shards(self, epoch: int) -> list[ShardRef]:
        """All shards in the order of `epoch`: one shuffle by (seed, epoch), the same on every rank."""
        order = list(self.shards)
        if self.config.shuffle:
            random.Random(f"{self.config.seed}/{epoch}").shuffle(order)
        return order

    def rank_shards(self, epoch: int, rank: int | None = None) -> list[ShardRef]:
        """A rank's shards for `epoch` (this rank's by default): every world_size-th of the epoch's order."""
        return self.epoch_shards(epoch)[self.rank if rank is None else rank :: self.world_size]

    def num_samples(self, epoch: int | None = None) -> int:
        """Samples this rank reads in `epoch` (ranks can differ by up to a shard)."""
        return sum(r.num_samples for r in self.rank_shards(self.epoch if epoch is None else epoch))

    def samples_per_rank(self, epoch: int | None = None) -> list[int]:
        """Samples every rank reads in `epoch`; DDP training should stop each epoch at the smallest."""
        order = self.epoch_shards(self.epoch if epoch is None else epoch)
        return [sum(r.num_samples for r in order[k :: self.world_size]) for k in range(self.world_size)]

    def worker_items(self, epoch: int, num_workers: int, rank: int | None = None) -> list[int]:
        """Items (batches, or samples) each DataLoader worker of a rank (this one by default) yields in `epoch`."""
        shards = self.rank_shards(epoch, rank)
        out = []
        for w in range(max(num_workers, 1)):
            n = sum(r.num_samples for r in shards[w :: max(num_workers, 1)])
            b = self.config.batch_size
            out.append(n if b is None else (math.ceil(n / b) if self.config.partial_batches else n // b))
        return out

    def pipeline(self, epoch: int, skip: int, worker: int, num_workers: int) -> wds.DataPipeline:
        """The WebDataset pipeline of DataLoader worker `worker`; rank and worker splitting are explicit.

        Worker slot `worker` plays the part of one of the epoch's `num_workers` shard streams, chosen
        so that the DataLoader's turn order continues exactly after `skip` items (see resume_point).
        """
        cfg = self.config
        num_workers = max(num_workers, 1)
        taken, order = resume_point(self.worker_items(epoch, num_workers), skip)
        if worker >= len(order):  # every stream this slot could play has ended
            return wds.DataPipeline(lambda: iter(()))
        stream = order[worker]
        shards = self.rank_shards(epoch)[stream::num_workers]  # shuffled by (seed, epoch), split by rank, then worker
        rng = random.Random(f"{cfg.seed}/{epoch}/{self.rank}/{stream}")
        how = {"image_size": cfg.image_size, "image_type": cfg.image_type, "image_dtype": cfg.image_dtype}
        batch_decoder, sample_decoder = partial(decode_batch, **how), partial(decode, **how)
        return wds.DataPipeline(
            lambda: iter(shards),
            lambda src: join_embeddings(src, cfg.tag, self.attribute_names),
            wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=rng) if cfg.shuffle else None,
            lambda src: _skip(src, taken[stream] * (cfg.batch_size or 1)),  # resume: skip before decoding
            # batches decode straight into one buffer; single samples go the same way, unbatched
            wds.batched(cfg.batch_size, collation_fn=batch_decoder, partial=cfg.partial_batches)
            if cfg.batch_size
            else wds.map(sample_decoder),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return iter(self.pipeline(self.epoch, self.skip, worker, num_workers))
