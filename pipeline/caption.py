"""Stage one: caption the target faces into resumable WebDataset shards.

    plan (sources) -> load (images, a shard ahead) -> caption (engine + prompts) -> write (shards) -> stats

    python -m pipeline.caption --source vggface2-hq --input DIR --output DATASET \
        --engine vllm --model OpenGVLab/InternVL3-14B-hf
    python -m pipeline.caption --source alphaface --input 256_small --output DATASET --engine existing

`--engine existing` runs no model: each caption is the source's own (txt/), validated and flagged
as an engine's answer would be.

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
    stable_detail,
)
from pipeline.distributed import my_shards, resolve_device, resolve_rank
from pipeline.engines.base import CaptionEngine, EngineInfo, Generation, Prompt
from pipeline.engines.existing import ExistingEngine
from pipeline.images import DEFAULT_MAX_PIXELS, BadInput, LoadedImage, build_celeba_labels, check_mask, load_image
from pipeline.metadata import sample_meta
from pipeline.plan import PlanMismatch, load_or_create_plan, shard_records
from pipeline.prompts import (
    PROMPTS,
    SOURCE_PROMPT,
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
from pipeline.sources import (
    CAPTIONED_SOURCES,
    CELEBA_LABELS,
    MASK_CELEBA_LABELS,
    MASK_FORMATS,
    SOURCES,
    SourceRecord,
)

ENGINES = ("vllm", "transformers", "existing")


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
    engine: str = field(
        default="vllm", metadata={"choices": list(ENGINES)}
    )  # vllm (GPU) | transformers | existing (the source's own captions, no model)
    model: str = "OpenGVLab/InternVL3-14B-hf"  # hub name or local path
    prompt: str = field(
        default="holistic", metadata={"choices": sorted(PROMPTS)}
    )  # holistic | structured | paper (the paper's, verbatim); --engine existing runs none
    batch_size: int | None = None  # images per engine call; default: a whole shard for vllm, 8 for transformers
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
            object.__setattr__(self, "batch_size", self.shard_size if self.engine == "vllm" else 8)
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {sorted(SOURCES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}")
        if self.engine == "existing" and self.source not in CAPTIONED_SOURCES:
            raise ValueError(
                f"--engine existing takes each caption from the source, and {self.source} has none: "
                f"use --source {' or '.join(CAPTIONED_SOURCES)}"
            )
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

    @property
    def caption_prompt(self) -> Prompt:
        """The prompt the captions come from: none runs with `--engine existing`."""
        return SOURCE_PROMPT if self.engine == "existing" else get_prompt(self.prompt)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that decide the dataset's content. A rerun must match them exactly."""
        fp = {
            "source": self.source,
            "input": str(Path(self.input).resolve()),
            "dataset_name": self.name,
            "split": self.split,
            "limit": self.limit,
            "shard_size": self.shard_size,
            "image_format": self.image_format,
            "engine": self.engine,
            "model": self.model,
            "prompt_id": self.caption_prompt.prompt_id,
            "max_new_tokens": self.max_new_tokens,
            "image_size": self.image_size,
            "max_dynamic_patch": self.max_dynamic_patch,
        }
        if self.engine == "existing":  # no model runs: its settings decide nothing
            for name in ("model", "max_new_tokens", "image_size", "max_dynamic_patch"):
                del fp[name]
        return fp


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


def _load_mask(root: Path, record: SourceRecord, source: str, max_pixels: int) -> bytes:
    """The mask member, without losing information: CelebAMask-HQ parts as one label map; a mask
    file (the official layout's) as given."""
    if record.mask_path is None:
        raise BadInput("mask_missing", "no mask for this image")
    if MASK_FORMATS[source] == MASK_CELEBA_LABELS:
        return build_celeba_labels(root, record.mask_path, CELEBA_LABELS)
    return check_mask((root / record.mask_path).read_bytes(), max_pixels)


def _load_one(record: SourceRecord, cfg: CaptionConfig, want_mask: bool) -> Sample:
    sample = Sample(record)
    root = Path(cfg.input)
    try:
        data = (root / record.source_path).read_bytes()
        sample.image = load_image(data, cfg.image_format, cfg.image_size, cfg.max_pixels)
        if want_mask:
            sample.mask = _load_mask(root, record, cfg.source, cfg.max_pixels)
    except BadInput as e:
        sample.error, sample.detail = ("load", e.reason), e.detail
    except FileNotFoundError as e:  # a caption without its image (alphaface), or a file that vanished
        missing = "mask_missing" if sample.image is not None else "image_missing"
        sample.error, sample.detail = ("read", missing), str(e)
    except OSError as e:  # unreadable file, permission
        sample.error, sample.detail = ("read", "unreadable_file"), str(e)
    return sample


def load_shard(
    pool: ThreadPoolExecutor, records: list[SourceRecord], cfg: CaptionConfig, want_mask: bool
) -> list[Future[Sample]]:
    """Start decoding a whole shard on the worker threads; the futures come back in listing order."""
    return [pool.submit(_load_one, r, cfg, want_mask) for r in records]


def batches_of(loaded: list[Future[Sample]], size: int) -> Iterator[list[Sample]]:
    """The loaded samples in engine batches, each waiting only for its own images."""
    for i in range(0, len(loaded), size):
        yield [f.result() for f in loaded[i : i + size]]


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


def source_caption_step(batches: Iterable[list[Sample]], engine: ExistingEngine, prompt: Prompt) -> Iterator[Sample]:
    """`--engine existing`: each loaded sample's caption is its source's own, validated and flagged
    as an engine's answer is; a caption that cannot be used fails the sample (counted, recorded)."""
    for batch in batches:
        for sample in batch:
            if sample.error is None:
                try:
                    _apply(sample, engine.read(sample.record), prompt)
                except BadInput as e:
                    sample.error, sample.detail = ("caption", e.reason), e.detail
            yield sample


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


@dataclass
class CaptionedShard:
    """One shard's results, ready to write: encoded samples (decoded images already released)."""

    index: int
    records: list[SourceRecord]
    samples: list[ShardSample]
    written: list[Sample]
    failed: list[Sample]
    start: float


def caption_shard(
    index: int,
    records: list[SourceRecord],
    loaded: list[Future[Sample]],
    cfg: CaptionConfig,
    engine: CaptionEngine,
    bar: tqdm | None = None,
) -> CaptionedShard:
    """Caption one shard's loaded samples, in engine calls of `cfg.batch_size` (a whole shard for vLLM)."""
    start = time.perf_counter()
    prompt = cfg.caption_prompt
    out = CaptionedShard(index, records, [], [], [], start)
    batches = batches_of(loaded, cfg.batch_size)
    captioned = (
        source_caption_step(batches, engine, prompt)
        if isinstance(engine, ExistingEngine)
        else caption_step(batches, engine, prompt)
    )
    for s in captioned:
        if bar is not None:
            bar.update(1)
        if s.error is not None:
            out.failed.append(s)
            continue
        out.samples.append(to_shard_sample(s, engine.info.model, prompt, cfg.image_format))
        # Keep only what the stats need: a shard's decoded images would otherwise stay in memory.
        s.transcoded, s.has_mask, s.image, s.mask = bool(s.image.transcoded_from), s.mask is not None, None, None
        out.written.append(s)
    return out


def write_outputs(
    shard: CaptionedShard, ds: DatasetDir, plan: dict[str, Any], cfg: CaptionConfig, info: EngineInfo
) -> dict[str, Any]:
    """The shard's tar, errors and stats; the stats last and atomically, marking the shard done."""
    index, records, written, failed = shard.index, shard.records, shard.written, shard.failed
    prompt = cfg.caption_prompt
    shard_path = ds.shard_path(plan["name"], index)
    write_shard(shard_path, shard.samples)

    errors = [
        {
            "key": s.record.key,
            "path": s.record.source_path,
            "stage": s.error[0],
            "reason": s.error[1],
            "detail": stable_detail(s.detail),
        }
        for s in failed
    ]
    atomic_write_jsonl(ds.errors_path(index), errors)

    flags = Counter(f for s in written for f in s.flags)
    attrs: dict[str, Counter[str]] = {}
    for s in written:
        for name, value in (s.attributes or {}).items():
            attrs.setdefault(name, Counter())[value.lower()] += 1
    seconds = time.perf_counter() - shard.start
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
        "mask_format": MASK_FORMATS[cfg.source] if plan["has_masks"] else None,  # what `.mask.png` holds
        "caption_words": word_stats([len(s.caption.split()) for s in written]),
        "caption_word_counts": [len(s.caption.split()) for s in written],
        "attributes": {k: dict(v.most_common(50)) for k, v in sorted(attrs.items())},
        "prompt_id": prompt.prompt_id,
        "prompt_text": prompt.text,
        "image_format": cfg.image_format,
        "engine": asdict(info),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 3) if seconds > 0 else None,
    }
    # Last, and atomically: its existence is what marks the shard done.
    atomic_write_json(ds.stats_path(index), stats)
    return stats


class EngineUnavailable(RuntimeError):
    """The captioning engine could not start: not installed, or its model could not be loaded."""


def build_engine(cfg: CaptionConfig) -> CaptionEngine:
    """The engine, or EngineUnavailable saying why it cannot start (nothing has been written yet)."""
    try:
        return _start_engine(cfg)
    except ImportError as e:  # vLLM not installed here
        raise EngineUnavailable(str(e)) from e
    except OSError as e:  # a hub name while offline, a missing local folder, an incomplete checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineUnavailable(
            f"--model {cfg.model} could not be loaded ({first}); give a local checkpoint folder, or run where "
            "the Hugging Face Hub is reachable"
        ) from e


def _start_engine(cfg: CaptionConfig) -> CaptionEngine:
    if cfg.engine == "existing":
        return ExistingEngine(Path(cfg.input), cfg.source)
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
    # Shard k+1 decodes on the worker threads while the engine captions shard k, and shard k is written
    # by a writer thread while the engine starts on shard k+1: the engine never waits for the host.
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="decode")
    writer = ThreadPoolExecutor(1, thread_name_prefix="write")
    want_mask = bool(plan["has_masks"])
    writing: Future[dict[str, Any]] | None = None
    failed_by_reason: Counter[str] = Counter()

    def finish(done: Future[dict[str, Any]] | None) -> None:
        if done is not None:
            stats = done.result()  # a failed write (full disk) stops the run here; that shard has no stats
            summary["done_now"] += 1
            summary["ok"] += stats["ok"]
            summary["failed"] += sum(stats["failed"].values())
            failed_by_reason.update(stats["failed"])

    try:
        upcoming = load_shard(pool, shard_records(plan, todo[0]), cfg, want_mask)
        for k, index in enumerate(todo):
            records, loaded = shard_records(plan, index), upcoming
            if k + 1 < len(todo):
                upcoming = load_shard(pool, shard_records(plan, todo[k + 1]), cfg, want_mask)
            # only this shard's owner may delete its leftovers: other ranks are writing theirs
            remove_temporaries_of(ds.shard_path(plan["name"], index), ds.errors_path(index), ds.stats_path(index))
            captioned = caption_shard(index, records, loaded, cfg, engine, bar)
            finish(writing)
            writing = writer.submit(write_outputs, captioned, ds, plan, cfg, engine.info)
        finish(writing)
        writing = None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)  # a write in flight completes whole (atomic files) before we leave
        bar.close()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["images_per_second"] = round(total / summary["seconds"], 3) if summary["seconds"] else None
    summary["failed_by_reason"] = dict(sorted(failed_by_reason.items()))
    if summary["failed"] and not summary["ok"]:
        raise NothingCaptioned(nothing_captioned(summary, cfg, ds))
    return summary


class NothingCaptioned(RuntimeError):
    """Every input this process was given failed: the run produced nothing."""


HINTS = {
    "caption_missing": "--engine existing takes each caption from the source's own caption files (txt/)",
    "image_missing": "the plan lists files that are no longer under --input",
}


def nothing_captioned(summary: dict[str, Any], cfg: CaptionConfig, ds: DatasetDir) -> str:
    reasons = summary["failed_by_reason"]
    hints = [HINTS[r] for r in reasons if r in HINTS]
    return (
        f"nothing was captioned: all {summary['failed']} inputs failed "
        f"({', '.join(f'{r}: {n}' for r, n in reasons.items())}; one line each in {ds.errors_dir})"
        + (f"; {'; '.join(hints)}" if hints else "")
        + "; after fixing the inputs, rerun with --overwrite"
    )


def parse_args(argv: list[str] | None = None) -> CaptionConfig:
    return parse_config("python -m pipeline.caption", __doc__, CaptionConfig, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return stage_main(
        "pipeline.caption",
        lambda: parse_args(argv),
        run,
        (FileNotFoundError, PlanMismatch, ValueError, EngineUnavailable, NothingCaptioned),
        "caption",
    )


if __name__ == "__main__":
    main()
