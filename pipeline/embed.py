"""The embed stage: cached CLIP text and image embeddings beside the shards (docs/design.md §3, §7).

    shard (tar reader) -> texts (dedup, tokenize) -> images (decode threads) -> CLIP -> parquet -> stats

    python -m pipeline.embed --dataset DATASET --clip-model ViT-B-32 --pretrained openai

Writes `DATASET/embeddings/<clip-tag>/NNNNNN.parquet`, one row per sample of shard NNNNNN, and
`embeddings/<clip-tag>/stats/NNNNNN.json` (written last) with the counts for the data card. Process
`rank` of `world_size` does the shards with `index % world_size == rank`. A shard is done when its
stats file exists and its Parquet reads back whole, with this model's tag and the caption stage's
row count; a rerun skips done shards and redoes the rest, so a killed run resumes to the same bytes.
Shards the caption stage has not finished yet are skipped, so embed can trail a running caption job.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.cli import parse_config, stage_main
from pipeline.clip_tower import Clip, ClipWeightsUnavailable, ImagePrep, encode_texts, load_clip
from pipeline.dataset import DatasetDir, atomic_write_json, clip_tag, remove_temporaries_of
from pipeline.distributed import my_shards, resolve_device, resolve_rank
from pipeline.embeddings import (
    FORMAT_VERSION,
    EmbeddingsInvalid,
    attribute_column,
    attribute_names,
    embeddings_schema,
    file_metadata,
    read_embeddings,
    vectors,
    write_clip_record,
    write_embeddings,
)
from pipeline.shards import iter_members

PRECISIONS = ("fp32", "fp16", "bf16")
ImageDecode = Literal["auto", "draft", "full", "device"]
IMAGE_DECODES: tuple[str, ...] = get_args(ImageDecode)


@dataclass(frozen=True)
class EmbedConfig:
    # --- input / output
    dataset: Path  # a dataset directory written by pipeline.caption
    clip_model: str = "ViT-B-32"  # open_clip model name, or a path to an open_clip model-config JSON
    pretrained: str = "openai"  # open_clip pretrained tag, a local checkpoint path, or "none" (random weights)
    attributes: bool = False  # also embed each structured attribute (attr_<name>_emb columns)
    # --- compute
    batch_size: int = 256  # texts or images per forward pass
    device: str | None = None  # cpu | cuda (this process's LOCAL_RANK GPU) | auto
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})  # open_clip's mixed precision
    workers: int | None = None  # image-decoding threads; default: the cores this process may use (see default_workers)
    image_decode: str = field(default="auto", metadata={"choices": IMAGE_DECODES})  # auto | draft | full | device
    # auto: as this CLIP's finished shards were (a dataset never mixes two), else draft. draft: JPEGs decoded at
    # the smallest DCT scale still >= the model's input (1 - cos to full 2e-5, bench/README.md); full; device:
    # torchvision's decode_jpeg on --device (nvJPEG on CUDA), resized there
    # --- work split
    rank: int | None = None  # default: RANK / SLURM_PROCID
    world_size: int | None = None  # default: WORLD_SIZE / SLURM_NTASKS
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if self.image_decode not in IMAGE_DECODES:
            raise ValueError(f"--image-decode must be one of {IMAGE_DECODES}")
        if not self.clip_model or not self.pretrained:
            raise ValueError("--clip-model and --pretrained must not be empty (use --pretrained none for random)")
        if self.clip_model.endswith(".json") and not Path(self.clip_model).is_file():
            raise ValueError(f"--clip-model {self.clip_model}: no such model-config file")

    @property
    def tag(self) -> str:
        return clip_tag(self.clip_model, self.pretrained)


# ---------------------------------------------------------------- reading a shard


@dataclass(frozen=True)
class TextRecord:
    """What embed needs of a sample's `.json` member."""

    key: str
    caption: str
    attributes: dict[str, str] | None


def _members(path: Path, exts: frozenset[str]) -> Iterator[tuple[str, str, bytes]]:
    """(key, ext, bytes) of the wanted members; every member name is checked, wanted or not."""
    for name, data in iter_members(path, exts):
        key, ext = name.split(".", 1)
        yield key, ext, data


def read_texts(path: Path) -> list[TextRecord]:
    """First pass over a shard: the captions (the image bytes are skipped, not read)."""
    out = []
    for key, _, data in _members(path, frozenset({"json"})):
        meta = json.loads(data)
        if meta.get("key") != key:
            raise ValueError(f"{path.name}: member {key}.json holds key {meta.get('key')!r}")
        out.append(TextRecord(key, meta.get("caption") or "", meta.get("attributes")))
    return out


def read_images(path: Path, image_ext: str, keys: list[str]) -> Iterator[bytes]:
    """Second pass: the image bytes, streamed in the order of `keys` (so memory stays bounded)."""
    expected = iter(keys)
    for key, _, data in _members(path, frozenset({image_ext})):
        want = next(expected, None)
        if key != want:
            raise ValueError(f"{path.name}: image member {key}.{image_ext} where {want}.{image_ext} was expected")
        yield data
    missing = next(expected, None)
    if missing is not None:
        raise ValueError(f"{path.name}: sample {missing} has no .{image_ext} member")


def default_workers(env: Mapping[str, str] | None = None) -> int:
    """Decode threads: the cores this process may run on (its affinity mask, which a Slurm or cgroup allotment
    narrows, not the machine's count), shared among the processes torchrun started on the node."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(env.get("LOCAL_WORLD_SIZE") or 1)))


def host_pixels(data: bytes, prep: ImagePrep, draft: bool) -> torch.Tensor:
    """One image through the host part of the CLIP's preprocessing (a decode thread's work)."""
    with Image.open(io.BytesIO(data)) as img:
        if draft and img.format == "JPEG":
            # DCT-scaled decoding: libjpeg decodes at 1/2, 1/4 or 1/8 of the size, never below the box, so
            # the resize after it still only shrinks (512 px inputs decode at 256 for a 224 model)
            img.draft("RGB", (prep.input_size, prep.input_size))
        return prep.host(img)


def device_pixels(data: list[torch.Tensor], prep: ImagePrep, device: torch.device) -> torch.Tensor:
    """JPEG bytes decoded by torchvision on `device` (nvJPEG on CUDA) and resized there: (B, S, S, 3) uint8."""
    from torchvision.io import ImageReadMode, decode_jpeg

    assert prep.geometry is not None, "run() refuses device decoding for such a CLIP"
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # [(3, H, W) uint8]
    return torch.stack([prep.geometry(img) for img in images]).permute(0, 2, 3, 1)  # (B, S, S, 3)


def _jpeg_bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a writable copy, as decode_jpeg wants


def _stack(items: list[torch.Tensor], pin: bool) -> torch.Tensor:
    """One batch; page-locked when it goes to a GPU, so its copy runs asynchronously beside the compute."""
    out = torch.empty((len(items), *items[0].shape), dtype=items[0].dtype, pin_memory=pin)
    return torch.stack(items, out=out)


def prefetched_batches(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], batch_size: int, depth: int = 2
) -> Iterator[list[Any]]:
    """Map `fn` over `items` on `pool`, `depth` batches ahead. Work starts before the first `next()`."""
    source = iter(items)
    queue: deque[list[Future[Any]]] = deque()

    def submit_next() -> None:
        batch = list(islice(source, batch_size))
        if batch:
            queue.append([pool.submit(fn, x) for x in batch])

    for _ in range(depth):
        submit_next()

    def results() -> Iterator[list[Any]]:
        while queue:
            futures = queue.popleft()
            submit_next()
            yield [f.result() for f in futures]

    return results()


# ---------------------------------------------------------------- the stage


def _ranked(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {k: round(float(v), 4) for k, v in (("mean", a.mean()), ("min", a.min()), ("max", a.max()))}


def process_shard(
    index: int,
    ds: DatasetDir,
    plan: dict[str, Any],
    cfg: EmbedConfig,
    clip: Clip,
    pool: ThreadPoolExecutor,
    decode: str,
    bar: tqdm | None = None,
) -> dict[str, Any]:
    """Embed shard `index`; `decode` is the resolved --image-decode (never auto)."""
    start = time.perf_counter()
    shard = ds.shard_path(plan["name"], index)
    image_ext = plan.get("fingerprint", {}).get("image_format", "jpg")
    caption_stats = ds.load_stats(index)
    records = read_texts(shard)
    if len(records) != caption_stats["ok"]:
        raise ValueError(
            f"{shard.name} holds {len(records)} samples but stats/{index:06d}.json says {caption_stats['ok']}"
        )
    attrs = attribute_names(caption_stats.get("prompt_id")) if cfg.attributes else []
    for r in records if attrs else []:
        if r.attributes is None or sorted(r.attributes) != attrs:
            raise ValueError(f"{shard.name}: sample {r.key} has attributes {r.attributes!r}, expected fields {attrs}")

    # Start decoding images on the threads now, so they are ready when the texts are encoded.
    prep = clip.image_prep()
    host: Callable[[bytes], torch.Tensor] = (
        _jpeg_bytes if decode == "device" else (lambda data: host_pixels(data, prep, decode == "draft"))
    )
    pixels = prefetched_batches(pool, host, read_images(shard, image_ext, [r.key for r in records]), cfg.batch_size)

    # Every distinct text (captions, and attribute values with --attributes) is encoded once.
    texts = encode_texts(
        clip, (t for r in records for t in [r.caption, *((r.attributes or {})[a] for a in attrs)]), cfg.batch_size
    )

    # Batches stay in flight: each one's copy and forward are queued without waiting for the last (no host
    # sync until the whole shard's embeddings come back together).
    pin = clip.device.type == "cuda"
    outs = []
    for batch in pixels:
        x = device_pixels(batch, prep, clip.device) if decode == "device" else _stack(batch, pin)  # (B, S, S, 3)
        outs.append(clip.encode_pixels(x, prep))  # (B, D) on the device
        if bar is not None:
            bar.update(len(batch))
    image_emb = torch.cat(outs).cpu().numpy() if outs else np.zeros((0, clip.embed_dim), np.float32)  # (N, D)

    t = texts.lookup([r.caption for r in records])  # (N, D)
    # Cosine of the stored (float16) vectors, so it matches what a reader recomputes from them.
    t16, i16 = t.astype(np.float16).astype(np.float32), image_emb.astype(np.float16).astype(np.float32)
    sim = (t16 * i16).sum(-1) / np.maximum(np.linalg.norm(t16, axis=-1) * np.linalg.norm(i16, axis=-1), 1e-12)
    truncated = [texts.truncated(r.caption) for r in records]
    empty = [not r.caption.strip() for r in records]
    columns: dict[str, Any] = {
        "key": [r.key for r in records],
        "text_emb": vectors(t),
        "image_emb": vectors(image_emb),
        "text_image_sim": sim.astype(np.float32),
        "text_truncated": truncated,
        "text_empty": empty,
    }
    attr_stats = {}
    for a in attrs:
        values = [r.attributes[a] for r in records]  # type: ignore[index]
        columns[attribute_column(a)] = vectors(texts.lookup(values))
        attr_stats[a] = {"unique": len(set(values)), "truncated": sum(map(texts.truncated, values))}
    metadata = {
        "format_version": FORMAT_VERSION,
        "clip_tag": cfg.tag,
        "clip_model": clip.name,
        "clip_pretrained": clip.pretrained,
        "quick_gelu": json.dumps(clip.quick_gelu),
        "precision": clip.precision,
        "embed_dim": str(clip.embed_dim),
        "context_length": str(clip.context_length),
        "attributes": json.dumps(attrs),
        "shard_file": shard.name,
        "image_decode": decode,  # draft, full and device decoding give slightly different pixels
    }
    out = ds.embeddings_path(cfg.tag, index)
    write_embeddings(out, embeddings_schema(clip.embed_dim, attrs, metadata), columns)

    caption_tokens = [texts.tokens[texts.row[r.caption]] for r in records]
    seconds = time.perf_counter() - start
    stats = {
        "shard": index,
        "shard_file": shard.name,
        "parquet": out.name,
        "rows": len(records),
        "unique_captions": len({r.caption for r in records}),
        "texts_encoded": len(texts.row),
        "truncated": sum(truncated),
        "empty_captions": sum(empty),
        "caption_tokens": {"max": max(caption_tokens, default=0), "mean": round(float(np.mean(caption_tokens)), 3)}
        if caption_tokens
        else {},
        "text_image_sim": _ranked(sim.tolist()),
        "attributes": attr_stats,
        **{k: metadata[k] for k in ("clip_tag", "clip_model", "clip_pretrained", "precision", "image_decode")},
        "embed_dim": clip.embed_dim,
        "context_length": clip.context_length,
        "seconds": round(seconds, 3),
        "samples_per_second": round(len(records) / seconds, 3) if seconds > 0 else None,
    }
    atomic_write_json(embed_stats_path(ds, cfg.tag, index), stats)  # last: marks the shard done
    return stats


def embed_stats_path(ds: DatasetDir, tag: str, index: int) -> Path:
    return ds.embeddings_dir(tag) / "stats" / f"{index:06d}.json"


def done_reason(ds: DatasetDir, cfg: EmbedConfig, index: int, attrs: list[str]) -> str | None:
    """None if shard `index` is embedded and verifies; else why it must be (re)done."""
    path = ds.embeddings_path(cfg.tag, index)
    if not path.is_file():
        return "missing"
    if not embed_stats_path(ds, cfg.tag, index).is_file():
        return "no stats file (killed before it was written)"
    try:
        read_embeddings(path, cfg.tag, rows=ds.load_stats(index)["ok"], attributes=attrs)
    except EmbeddingsInvalid as e:
        return str(e)
    return None


def recorded_decodes(ds: DatasetDir, tag: str) -> dict[str, str]:
    """{parquet name: its image_decode} of this CLIP's finished shards (files from before the field: full)."""
    found = {}
    for stats in sorted((ds.embeddings_dir(tag) / "stats").glob("[0-9]*.json")):
        path = ds.embeddings_dir(tag) / f"{stats.stem}.parquet"
        try:
            found[path.name] = file_metadata(path).get("image_decode", "full")
        except (FileNotFoundError, EmbeddingsInvalid):
            continue  # damaged or gone: redone anyway
    return found


def resolve_decode(cfg: EmbedConfig, ds: DatasetDir) -> str:
    """The decoding this run uses: one per dataset and CLIP, so that a resumed run never mixes two."""
    found = recorded_decodes(ds, cfg.tag)
    modes = sorted(set(found.values()))
    wanted = cfg.image_decode
    if wanted == "auto" and len(modes) <= 1:
        return modes[0] if modes else "draft"
    if wanted != "auto" and modes in ([], [wanted]):
        return wanted
    folder = ds.embeddings_dir(cfg.tag)
    shown = ", ".join(f"{name}: {mode}" for name, mode in list(found.items())[:4]) + (" ..." if len(found) > 4 else "")
    follow = f"rerun with --image-decode {modes[0]} (or auto, which follows them), or " if len(modes) == 1 else ""
    raise ValueError(
        f"{folder} holds shards embedded with --image-decode {' and '.join(modes)} ({shown}); this run asks for "
        f"{wanted}. Their pixels differ slightly, so one dataset never mixes them: {follow}delete {folder} to "
        "embed everything again"
    )


def run(cfg: EmbedConfig, clip: Clip | None = None) -> dict[str, Any]:
    """Embed this rank's captioned shards. Returns a summary of what this process did."""
    rank, world_size = resolve_rank(cfg.rank, cfg.world_size)
    ds = DatasetDir(Path(cfg.dataset))
    plan = ds.load_plan()
    mine = my_shards(plan["num_shards"], rank, world_size)
    not_captioned = [i for i in mine if not ds.is_done(i)]
    todo: list[int] = []
    regenerate = 0
    for i in mine:
        if i in not_captioned:
            continue
        attrs = attribute_names(ds.load_stats(i).get("prompt_id")) if cfg.attributes else []
        reason = done_reason(ds, cfg, i, attrs)
        if reason is None:
            continue
        if reason != "missing":
            print(f"pipeline.embed: shard {i:06d} is redone: {reason}", file=sys.stderr)
            regenerate += 1
        todo.append(i)
    if not_captioned:
        shown = ", ".join(f"{i:06d}" for i in not_captioned[:8]) + (" ..." if len(not_captioned) > 8 else "")
        print(
            f"pipeline.embed: {len(not_captioned)} shard(s) not captioned yet (no stats/ file), skipped: {shown}; "
            "rerun embed once caption has finished them",
            file=sys.stderr,
        )
    summary: dict[str, Any] = {
        "rank": rank,
        "world_size": world_size,
        "clip_tag": cfg.tag,
        "num_shards": plan["num_shards"],
        "my_shards": len(mine),
        "skipped_done": len(mine) - len(not_captioned) - len(todo),
        "skipped_not_captioned": len(not_captioned),
        "regenerated": regenerate,
        "done_now": 0,
        "rows": 0,
        "truncated": 0,
        "seconds": 0.0,
    }
    write_clip_record(ds, cfg.tag, cfg.clip_model, cfg.pretrained)  # even when every shard is done: old runs
    decode = resolve_decode(cfg, ds)  # before the model loads: a conflict is refused at once
    summary["image_decode"] = decode
    if not todo:
        return summary
    if decode == "device" and plan.get("fingerprint", {}).get("image_format", "jpg") != "jpg":
        raise ValueError("--image-decode device decodes JPEG datasets only; use draft or full")
    if clip is None:
        clip = load_clip(cfg.clip_model, cfg.pretrained, resolve_device(cfg.device), cfg.precision)
    elif clip_tag(clip.name, clip.pretrained) != cfg.tag:
        raise ValueError(f"the model given is {clip_tag(clip.name, clip.pretrained)}, the config asks for {cfg.tag}")
    if decode == "device" and clip.image_prep().geometry is None:
        raise ValueError("--image-decode device needs a CLIP whose transform ends in ToTensor + Normalize")
    start = time.perf_counter()
    total = sum(ds.load_stats(i)["ok"] for i in todo)
    bar = tqdm(
        total=total,
        unit="sample",
        desc=f"embed rank {rank}",
        position=rank,
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    try:
        with ThreadPoolExecutor(cfg.workers or default_workers(), thread_name_prefix="decode") as pool:
            for index in todo:
                remove_temporaries_of(ds.embeddings_path(cfg.tag, index), embed_stats_path(ds, cfg.tag, index))
                stats = process_shard(index, ds, plan, cfg, clip, pool, decode, bar)
                summary["done_now"] += 1
                summary["rows"] += stats["rows"]
                summary["truncated"] += stats["truncated"]
    finally:
        bar.close()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["samples_per_second"] = round(summary["rows"] / summary["seconds"], 3) if summary["seconds"] else None
    return summary


def parse_args(argv: list[str] | None = None) -> EmbedConfig:
    return parse_config("python -m pipeline.embed", __doc__, EmbedConfig, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    known = (FileNotFoundError, ValueError, ClipWeightsUnavailable)
    return stage_main("pipeline.embed", lambda: parse_args(argv), run, known, "embed")


if __name__ == "__main__":
    main()
