"""Stage one: caption the target faces into resumable WebDataset shards.

    plan (sources) -> load (images) -> caption (engine + prompts) -> write (shards) -> stats

    python -m pipeline.caption --source vggface2-hq --input DIR --output DATASET \
        --engine vllm --model OpenGVLab/InternVL3-14B-hf

Process `rank` of `world_size` does the shards with `index % world_size == rank`. A shard is done
iff its stats file exists; a rerun of the same command skips done shards and redoes the rest whole,
so a killed run resumes to the same bytes (greedy decoding), whatever world size the rerun uses.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.cli import parse_config, stage_main
from pipeline.dataset import (
    DatasetDir,
    atomic_write_json,
    atomic_write_jsonl,
    dumps_json,
    remove_temporaries_of,
    sanitize,
)
from pipeline.distributed import my_shards, resolve_device, resolve_rank
from pipeline.engines.base import CaptionEngine, Generation, Prompt
from pipeline.images import DEFAULT_MAX_PIXELS, BadInput, LoadedImage, build_celeba_mask, load_image
from pipeline.metadata import sample_meta
from pipeline.plan import PlanMismatch, load_or_create_plan, shard_records
from pipeline.prompts import (
    PROMPTS,
    MalformedAnswer,
    caption_flags,
    clean_caption,
    compose_caption,
    get_prompt,
    identity_words,
    parse_structured,
    word_stats,
)
from pipeline.shards import ShardSample, write_shard
from pipeline.sources import CELEBA_MASK_CLASSES, SOURCES, SourceRecord


@dataclass(frozen=True)
class CaptionConfig:
    # --- input
    source: str = field(metadata={"choices": sorted(SOURCES)})  # which layout the input has
    input: Path  # the source dataset's root
    output: Path  # the dataset directory to write (shards/, stats/, errors/, plan.json)
    dataset_name: str | None = None  # key prefix; defaults to the source name
    split: str | None = field(default=None, metadata={"choices": ["train", "val", "test"]})  # celeba-hq only
    limit: int | None = None  # caption only the first N inputs of the sorted listing
    # --- output
    shard_size: int = 1000  # samples per shard; the unit of work and of resume
    image_format: str = field(
        default="jpg", metadata={"choices": ["jpg", "png"]}
    )  # the one image member of every sample
    overwrite: bool = False  # delete an output directory planned with other settings
    # --- engine
    engine: str = field(default="vllm", metadata={"choices": ["vllm", "transformers"]})  # vllm (GPU) | transformers
    model: str = "OpenGVLab/InternVL3-14B-hf"  # hub name or local path
    prompt: str = field(default="holistic", metadata={"choices": sorted(PROMPTS)})  # holistic | structured
    batch_size: int | None = None  # images per engine call; default 64 for vllm, 8 for transformers
    max_new_tokens: int = 96  # answers cut here are flagged `truncated`
    image_size: int = 448  # images are pre-resized to this square before the engine
    max_dynamic_patch: int = 1  # InternVL tiles per image; 1 = 256 image tokens
    device: str | None = None  # transformers engine: cpu | cuda | auto
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    tensor_parallel_size: int = 1  # vllm: GPUs per engine
    trust_remote_code: bool = False  # only for non -hf checkpoints; off by default
    # --- work split
    rank: int | None = None  # default: RANK / SLURM_PROCID
    world_size: int | None = None  # default: WORLD_SIZE / SLURM_NTASKS
    # --- host side
    workers: int = 4  # image-decoding threads
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger declared sizes are decompression bombs
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 64 if self.engine == "vllm" else 8)
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {sorted(SOURCES)}")
        if self.engine not in ("vllm", "transformers"):
            raise ValueError("--engine must be vllm or transformers")
        if self.image_format not in ("jpg", "png"):
            raise ValueError("--image-format must be jpg or png")
        for name in (
            "shard_size",
            "batch_size",
            "max_new_tokens",
            "image_size",
            "max_dynamic_patch",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0")
        get_prompt(self.prompt)

    @property
    def name(self) -> str:
        return sanitize(self.dataset_name or self.source)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that decide the dataset's content. A rerun must match them exactly."""
        return {
            "source": self.source,
            "input": str(Path(self.input).resolve()),
            "dataset_name": self.name,
            "split": self.split,
            "limit": self.limit,
            "shard_size": self.shard_size,
            "image_format": self.image_format,
            "engine": self.engine,
            "model": self.model,
            "prompt_id": get_prompt(self.prompt).prompt_id,
            "max_new_tokens": self.max_new_tokens,
            "image_size": self.image_size,
            "max_dynamic_patch": self.max_dynamic_patch,
        }


# ---------------------------------------------------------------- records flowing between steps


@dataclass
class Sample:
    record: SourceRecord
    image: LoadedImage | None = None
    mask: bytes | None = None
    caption: str = ""
    attributes: dict[str, str] | None = None
    finish_reason: str = ""
    flags: list[str] = field(default_factory=list)
    error: tuple[str, str] | None = None  # (stage, reason) when the sample failed
    detail: str = ""
    transcoded: bool = False  # kept for the stats once the image is written and released
    has_mask: bool = False


def _load_one(record: SourceRecord, cfg: CaptionConfig, want_mask: bool) -> Sample:
    sample = Sample(record)
    root = Path(cfg.input)
    try:
        data = (root / record.source_path).read_bytes()
        sample.image = load_image(data, cfg.image_format, cfg.image_size, cfg.max_pixels)
        if want_mask:
            if record.mask_path is None:
                raise BadInput("mask_missing", "no mask for this image")
            sample.mask = build_celeba_mask(root, record.mask_path, CELEBA_MASK_CLASSES)
    except BadInput as e:
        sample.error, sample.detail = ("load", e.reason), e.detail
    except OSError as e:  # unreadable file, vanished file, permission
        sample.error, sample.detail = ("read", "unreadable_file"), str(e)
    return sample


def load_step(records: list[SourceRecord], cfg: CaptionConfig, want_mask: bool) -> Iterator[list[Sample]]:
    """Decode batch k+1 on worker threads while the engine captions batch k."""
    batches = [records[i : i + cfg.batch_size] for i in range(0, len(records), cfg.batch_size)]
    with ThreadPoolExecutor(cfg.workers) as pool:

        def submit(batch: list[SourceRecord]) -> list[Future[Sample]]:
            return [pool.submit(_load_one, r, cfg, want_mask) for r in batch]

        pending = submit(batches[0]) if batches else []
        for k in range(len(batches)):
            current, pending = pending, submit(batches[k + 1]) if k + 1 < len(batches) else []
            yield [f.result() for f in current]


def _apply(sample: Sample, gen: Generation, prompt: Prompt) -> None:
    sample.finish_reason = gen.finish_reason
    if prompt.json_schema is not None:
        sample.attributes = parse_structured(gen.text)  # raises MalformedAnswer
        sample.caption = compose_caption(sample.attributes)
    else:
        sample.caption = clean_caption(gen.text)
    sample.flags = caption_flags(sample.caption, gen.finish_reason)


def caption_step(batches: Iterable[list[Sample]], engine: CaptionEngine, prompt: Prompt) -> Iterator[Sample]:
    """Caption the loaded samples of each batch. A malformed structured answer is retried once."""
    for batch in batches:
        ok = [s for s in batch if s.error is None]
        retry: list[Sample] = []
        if ok:
            gens = engine.generate([s.image.engine_image for s in ok], prompt)
            for sample, gen in zip(ok, gens, strict=True):
                try:
                    _apply(sample, gen, prompt)
                except MalformedAnswer:
                    retry.append(sample)
        if retry:
            gens = engine.generate([s.image.engine_image for s in retry], prompt)
            for sample, gen in zip(retry, gens, strict=True):
                try:
                    _apply(sample, gen, prompt)
                except MalformedAnswer as e:
                    sample.error, sample.detail = (
                        ("caption", "malformed_output"),
                        f"{e}; answer: {gen.text[:200]!r}",
                    )
        yield from batch


def to_shard_sample(sample: Sample, engine_model: str, prompt: Prompt, image_format: str) -> ShardSample:
    r, img = sample.record, sample.image
    assert img is not None
    meta = sample_meta(
        key=r.key,
        dataset=r.dataset,
        identity=r.identity,
        source_path=r.source_path,
        width=img.width,
        height=img.height,
        caption=sample.caption,
        attributes=sample.attributes,
        caption_model=engine_model,
        prompt_id=prompt.prompt_id,
        finish_reason=sample.finish_reason,
        flags=sample.flags,
        transcoded_from=img.transcoded_from,
    )
    members = {
        image_format: img.data,
        "json": dumps_json(meta).encode("utf-8"),
        "txt": sample.caption.encode("utf-8"),
    }
    if sample.mask is not None:
        members["mask.png"] = sample.mask
    return ShardSample(r.key, members)


def process_shard(
    index: int,
    ds: DatasetDir,
    plan: dict[str, Any],
    cfg: CaptionConfig,
    engine: CaptionEngine,
    bar: tqdm | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    prompt = get_prompt(cfg.prompt)
    records = shard_records(plan, index)
    want_mask = bool(plan["has_masks"])
    written: list[Sample] = []
    failed: list[Sample] = []

    def ok_samples() -> Iterator[ShardSample]:
        for s in caption_step(load_step(records, cfg, want_mask), engine, prompt):
            if bar is not None:
                bar.update(1)
            if s.error is not None:
                failed.append(s)
                continue
            shard_sample = to_shard_sample(s, engine.info.model, prompt, cfg.image_format)
            # Keep only what the stats need: a shard's decoded images would otherwise stay in memory.
            s.transcoded, s.has_mask, s.image, s.mask = bool(s.image.transcoded_from), s.mask is not None, None, None
            written.append(s)
            yield shard_sample

    shard_path = ds.shard_path(plan["name"], index)
    write_shard(shard_path, ok_samples())

    errors = [
        {
            "key": s.record.key,
            "path": s.record.source_path,
            "stage": s.error[0],
            "reason": s.error[1],
            "detail": s.detail,
        }
        for s in failed
    ]
    atomic_write_jsonl(ds.errors_path(index), errors)

    flags = Counter(f for s in written for f in s.flags)
    attrs: dict[str, Counter[str]] = {}
    for s in written:
        for name, value in (s.attributes or {}).items():
            attrs.setdefault(name, Counter())[value.lower()] += 1
    seconds = time.perf_counter() - start
    stats = {
        "shard": index,
        "shard_file": shard_path.name,
        "inputs": len(records),
        "ok": len(written),
        "failed": dict(sorted(Counter(e["reason"] for e in errors).items())),
        "flags": dict(sorted(flags.items())),
        "identity_words": dict(sorted(Counter(w for s in written for w in identity_words(s.caption)).items())),
        "transcoded": sum(s.transcoded for s in written),
        "with_mask": sum(s.has_mask for s in written),
        "caption_words": word_stats([len(s.caption.split()) for s in written]),
        "caption_word_counts": [len(s.caption.split()) for s in written],
        "attributes": {k: dict(v.most_common(50)) for k, v in sorted(attrs.items())},
        "prompt_id": prompt.prompt_id,
        "prompt_text": prompt.text,
        "image_format": cfg.image_format,
        "engine": asdict(engine.info),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 3) if seconds > 0 else None,
    }
    # Last, and atomically: its existence is what marks the shard done.
    atomic_write_json(ds.stats_path(index), stats)
    return stats


def build_engine(cfg: CaptionConfig) -> CaptionEngine:
    if cfg.engine == "vllm":
        from pipeline.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            cfg.model,
            max_new_tokens=cfg.max_new_tokens,
            image_size=cfg.image_size,
            max_dynamic_patch=cfg.max_dynamic_patch,
            tensor_parallel_size=cfg.tensor_parallel_size,
            trust_remote_code=cfg.trust_remote_code,
            dtype=cfg.dtype,
        )
    from pipeline.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        cfg.model,
        device=resolve_device(cfg.device),
        max_new_tokens=cfg.max_new_tokens,
        image_size=cfg.image_size,
        max_dynamic_patch=cfg.max_dynamic_patch,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
    )


def run(cfg: CaptionConfig, engine: CaptionEngine | None = None) -> dict[str, Any]:
    """Caption this rank's shards. Returns a summary of what this process did."""
    rank, world_size = resolve_rank(cfg.rank, cfg.world_size)
    if not Path(cfg.input).is_dir():
        raise FileNotFoundError(f"input directory {cfg.input} does not exist or is not a directory")
    ds = DatasetDir(Path(cfg.output))
    list_options: dict[str, Any] = {"dataset": cfg.name}
    if cfg.split is not None:
        list_options["split"] = cfg.split
    plan = load_or_create_plan(
        ds, cfg.fingerprint(), list_options, cfg.shard_size, cfg.name, rank=rank, overwrite=cfg.overwrite
    )
    mine = my_shards(plan["num_shards"], rank, world_size)
    todo = [i for i in mine if not ds.is_done(i)]
    summary: dict[str, Any] = {
        "rank": rank,
        "world_size": world_size,
        "num_shards": plan["num_shards"],
        "my_shards": len(mine),
        "skipped_done": len(mine) - len(todo),
        "done_now": 0,
        "ok": 0,
        "failed": 0,
        "seconds": 0.0,
    }
    if not todo:
        return summary
    engine = engine if engine is not None else build_engine(cfg)
    start = time.perf_counter()
    total = sum(len(plan["shards"][i]) for i in todo)
    bar = tqdm(
        total=total,
        unit="img",
        desc=f"caption rank {rank}",
        position=rank,
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    try:
        for index in todo:
            # only this shard's owner may delete its leftovers: other ranks are writing theirs
            remove_temporaries_of(ds.shard_path(plan["name"], index), ds.errors_path(index), ds.stats_path(index))
            stats = process_shard(index, ds, plan, cfg, engine, bar)
            summary["done_now"] += 1
            summary["ok"] += stats["ok"]
            summary["failed"] += sum(stats["failed"].values())
    finally:
        bar.close()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["images_per_second"] = round(total / summary["seconds"], 3) if summary["seconds"] else None
    return summary


def parse_args(argv: list[str] | None = None) -> CaptionConfig:
    return parse_config("python -m pipeline.caption", __doc__, CaptionConfig, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return stage_main(
        "pipeline.caption",
        lambda: parse_args(argv),
        run,
        (FileNotFoundError, PlanMismatch, ValueError),
        "caption",
    )


if __name__ == "__main__":
    main()
