"""The embed stage: cached CLIP text and image embeddings beside the shards (DESIGN §3, §7).

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

import argparse
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from pipeline.dataset import DatasetDir, atomic_open, atomic_write_json, clip_tag, remove_temporaries_of, sanitize
from pipeline.distributed import my_shards, resolve_device, resolve_rank
from pipeline.prompts import PROMPTS
from pipeline.shards import iter_members

FORMAT_VERSION = "1"
PRECISIONS = ("fp32", "fp16", "bf16")


class ClipWeightsUnavailable(RuntimeError):
    """A pretrained tag whose weights are neither cached nor downloadable here."""


class EmbeddingsInvalid(ValueError):
    """An embeddings Parquet that is unreadable, partial, or made for another model or shard."""


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
    precision: str = "fp32"  # fp32 | fp16 | bf16 (open_clip's mixed precision)
    workers: int = 4  # image-decoding threads, running while the model encodes
    # --- work split
    rank: int | None = None  # default: RANK / SLURM_PROCID
    world_size: int | None = None  # default: WORLD_SIZE / SLURM_NTASKS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if not self.clip_model or not self.pretrained:
            raise ValueError("--clip-model and --pretrained must not be empty (use --pretrained none for random)")
        if self.clip_model.endswith(".json") and not Path(self.clip_model).is_file():
            raise ValueError(f"--clip-model {self.clip_model}: no such model-config file")

    @property
    def tag(self) -> str:
        return clip_tag(self.clip_model, self.pretrained)


# ---------------------------------------------------------------- the CLIP model


@dataclass
class Clip:
    """An open_clip model with its own tokenizer and eval preprocessing, ready to encode."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]  # PIL -> (3, S, S) normalised
    name: str  # registered open_clip model name (a config JSON's file stem)
    pretrained: str  # as given: tag, checkpoint path, or "none"
    precision: str
    device: torch.device
    input_dtype: torch.dtype
    context_length: int
    embed_dim: int
    quick_gelu: bool

    def token_count(self, text: str) -> int:
        """Tokens the caption needs, start and end included; above `context_length` it is truncated."""
        from open_clip.tokenizer import SimpleTokenizer

        if isinstance(self.tokenizer, SimpleTokenizer):
            return len(self.tokenizer.encode(text)) + 2  # + <start_of_text>, <end_of_text>
        hf = getattr(self.tokenizer, "tokenizer", None)  # HFTokenizer / SigLipTokenizer wrap a HF tokenizer
        if hf is None:
            raise TypeError(f"cannot count tokens with {type(self.tokenizer).__name__}")
        clean = getattr(self.tokenizer, "clean_fn", lambda t: t)
        return len(hf(clean(text))["input_ids"])

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N,) texts -> (N, D) float32, L2-normalised, on the CPU.

        Where no position can see the padding (see `_trimmable`), the batch runs at its longest
        text's token length instead of the full padded context: the cost scales with it, and short
        texts (attribute phrases) cost a fraction. In float32 the result equals the full context's
        up to float rounding; in fp16/bf16, within that precision's rounding.
        """
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)  # (N, context_length)
            if not _trimmable(self.model, self.tokenizer):
                return _normalise(self.model.encode_text(tokens))
            return _normalise(_encode_trimmed(self.model, trim_padding(tokens)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed -> (N, D) float32, L2-normalised, on the CPU."""
        with torch.inference_mode():
            return _normalise(self.model.encode_image(pixels.to(self.device, self.input_dtype)))


def _trimmable(model: torch.nn.Module, tokenizer: Any) -> bool:
    """Whether padding positions can be dropped without changing any embedding: open_clip's CLIP text
    tower with a causal mask (no position sees a later one, so none sees the padding) that pools
    at the end-of-text or first token (never at the last, padded position), and open_clip's own
    tokenizer, whose end-of-text id is the largest (so argmax finds it)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    return (
        type(model) is CLIP  # subclasses may pool or mask differently
        and isinstance(tokenizer, SimpleTokenizer)
        and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
        and isinstance(getattr(model, "positional_embedding", None), torch.Tensor)
        and getattr(model, "text_pool_type", None) in ("argmax", "eos", "first")
    )


def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """(N, context) open_clip tokens -> (N, L): through the batch's last end-of-text token (the largest
    id: where open_clip pools). Not a count of non-zero ids, as 0 is also a real token ("!")."""
    return tokens[:, : int(tokens.argmax(dim=1).max()) + 1]


class _TextForward(torch.nn.Module):
    """`clip.encode_text` as a module's forward, so that functional_call can run it (unnormalised: the
    caller normalises in float32, as for untrimmed batches)."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def _encode_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own `encode_text` on (N, L) tokens, L <= context: the model's positional embedding
    and causal mask are given for the first L positions only (a functional call: the model itself is
    not changed). Returns (N, D) unnormalised, in the model's dtype."""
    n = tokens.shape[1]
    state = {"clip.positional_embedding": model.positional_embedding[:n]}
    if model.attn_mask is not None:
        state["clip.attn_mask"] = model.attn_mask[:n, :n]
    return torch.func.functional_call(_TextForward(model), state, (tokens,), strict=False)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


def register_model_config(path: str | os.PathLike) -> str:
    """Register an open_clip model-config JSON; returns its model name (the file stem)."""
    import open_clip

    path = Path(path)
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def load_clip(model: str, pretrained: str, device: str = "cpu", precision: str = "fp32") -> Clip:
    """Build the model exactly as open_clip does, with its tokenizer and eval preprocessing.

    `pretrained="none"` gives random weights, seeded, so reruns embed identically. A tag whose
    weights open_clip marks as QuickGELU-trained (such as `openai`) gets QuickGELU, as the weights need.
    """
    import open_clip

    name = register_model_config(model) if model.endswith(".json") else model
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; pass a name from open_clip.list_models() or a config JSON")
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained != "none" else {}
    if pretrained != "none" and not tag_cfg and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"--pretrained {pretrained!r} is neither an open_clip tag for {name} ({', '.join(tags) or 'none'}), "
            "a checkpoint file, nor 'none'"
        )
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-weight models are reproducible across reruns and ranks
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=None if pretrained == "none" else pretrained,
                precision=precision,
                device=device,
                force_quick_gelu=quick_gelu,
                pretrained_text=pretrained != "none",  # "none" means no weights at all, HF text towers too
                weights_only=True,
            )
    except RuntimeError as e:
        if not tag_cfg or "Failed to download" not in str(e):
            raise
        hub = tag_cfg.get("hf_hub") or tag_cfg.get("url", "")
        raise ClipWeightsUnavailable(
            f"the weights for --clip-model {name} --pretrained {pretrained} ({hub}) are not in the local cache "
            "and cannot be downloaded here (HF_HUB_OFFLINE=1 or no network). Fetch them once on a machine with "
            f"network access: HF_HUB_OFFLINE=0 python -c \"import open_clip; open_clip.create_model('{name}', "
            f"pretrained='{pretrained}')\" and copy ~/.cache/huggingface/hub here (or set HF_HOME), or download "
            f"the checkpoint file and pass its path as --pretrained. Cause: {e}"
        ) from e
    clip_model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return Clip(
        model=clip_model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        name=name,
        pretrained=pretrained,
        precision=precision,
        device=torch.device(device),
        input_dtype=open_clip.get_input_dtype(precision) or torch.float32,
        context_length=int(getattr(tokenizer, "context_length", None) or clip_model.context_length),
        embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
        quick_gelu=quick_gelu,
    )


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


def _decode(data: bytes, preprocess: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as img:
        return preprocess(img)  # open_clip's own resize, crop, RGB conversion and normalisation


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


@dataclass
class TextTable:
    """The distinct texts of a shard, each tokenized and encoded once."""

    row: dict[str, int]  # text -> row of `emb`, in first-seen order
    emb: np.ndarray  # (U, D) float32, L2-normalised
    tokens: list[int]  # tokens each text needs, start and end included
    context_length: int

    def lookup(self, texts: list[str]) -> np.ndarray:
        return self.emb[np.asarray([self.row[t] for t in texts], dtype=np.int64)]  # (N, D)

    def truncated(self, text: str) -> bool:
        return self.tokens[self.row[text]] > self.context_length


def encode_texts(clip: Clip, texts: Iterable[str], batch_size: int) -> TextTable:
    """Deduplicate, then encode in batches of `batch_size`, grouped by token count so that each
    batch runs at about its own texts' length (Clip.encode_text drops the common padding)."""
    row: dict[str, int] = {}
    for t in texts:
        row.setdefault(t, len(row))
    unique = list(row)
    counts = [clip.token_count(t) for t in unique]
    by_length = sorted(range(len(unique)), key=counts.__getitem__)
    emb = np.zeros((len(unique), clip.embed_dim), dtype=np.float32)  # (U, D)
    for i in range(0, len(unique), batch_size):
        rows = by_length[i : i + batch_size]
        emb[rows] = clip.encode_text([unique[j] for j in rows]).numpy()
    return TextTable(row, emb, counts, clip.context_length)


# ---------------------------------------------------------------- the Parquet file


def attribute_names(prompt_id: str | None) -> list[str]:
    """The attribute fields of a structured prompt, from its JSON schema (sorted)."""
    for prompt in PROMPTS.values():
        if prompt.prompt_id == prompt_id:
            if prompt.json_schema is None:
                break
            return sorted(prompt.json_schema["properties"])
    raise ValueError(
        f"--attributes needs a structured-caption dataset (pipeline.caption --prompt structured); "
        f"this one was captioned with prompt {prompt_id!r}"
    )


def attribute_column(name: str) -> str:
    return f"attr_{sanitize(name)}_emb"


def embeddings_schema(dim: int, attributes: list[str], metadata: dict[str, str]) -> pa.Schema:
    vec = pa.list_(pa.float16(), dim)
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("text_emb", vec, nullable=False),
        pa.field("image_emb", vec, nullable=False),
        pa.field("text_image_sim", pa.float32(), nullable=False),
        pa.field("text_truncated", pa.bool_(), nullable=False),
        pa.field("text_empty", pa.bool_(), nullable=False),
    ]
    fields += [pa.field(attribute_column(a), vec, nullable=False) for a in attributes]
    return pa.schema(fields, metadata=metadata)


def _vectors(x: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float32 -> fixed-size list<float16>[D]."""
    flat = pa.array(x.astype(np.float16).reshape(-1))  # (N * D,)
    return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])


def write_embeddings(path: Path, schema: pa.Schema, columns: dict[str, Any]) -> None:
    table = pa.Table.from_pydict(columns, schema=schema)
    # Page checksums let a reader tell a damaged file from a good one, beyond a missing footer.
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", write_page_checksum=True, use_dictionary=["key"])


def read_embeddings(path: Path, tag: str, rows: int | None = None, attributes: list[str] | None = None) -> pa.Table:
    """Read a whole embeddings Parquet, verifying it; raises EmbeddingsInvalid with the reason."""
    try:
        # ParquetFile, not read_table: read_table's dataset layer costs more than reading a shard's rows
        with pq.ParquetFile(path, page_checksum_verification=True) as f:
            table = f.read()
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:  # truncated, garbage, or a failed page checksum
        raise EmbeddingsInvalid(f"{path} is unreadable (a partial or damaged file): {e}") from e
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("clip_tag") != tag:
        raise EmbeddingsInvalid(
            f"{path} holds embeddings of {meta.get('clip_tag')!r}, not of the requested CLIP {tag!r}"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise EmbeddingsInvalid(f"{path} has format version {meta.get('format_version')!r}, not {FORMAT_VERSION}")
    if rows is not None and table.num_rows != rows:
        raise EmbeddingsInvalid(f"{path} has {table.num_rows} rows where the shard has {rows} samples")
    wanted = [attribute_column(a) for a in attributes or []]
    missing = [c for c in ["key", "text_emb", "image_emb", "text_image_sim", *wanted] if c not in table.column_names]
    if missing:
        raise EmbeddingsInvalid(f"{path} lacks columns {missing}")
    return table


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
    bar: tqdm | None = None,
) -> dict[str, Any]:
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
    pixels = prefetched_batches(
        pool,
        lambda data: _decode(data, clip.preprocess),
        read_images(shard, image_ext, [r.key for r in records]),
        cfg.batch_size,
    )

    # Every distinct text (captions, and attribute values with --attributes) is encoded once.
    texts = encode_texts(
        clip, (t for r in records for t in [r.caption, *((r.attributes or {})[a] for a in attrs)]), cfg.batch_size
    )

    image_emb = np.zeros((len(records), clip.embed_dim), dtype=np.float32)  # (N, D)
    done = 0
    for batch in pixels:
        image_emb[done : done + len(batch)] = clip.encode_image(torch.stack(batch)).numpy()  # (B, 3, S, S)
        done += len(batch)
        if bar is not None:
            bar.update(len(batch))

    t = texts.lookup([r.caption for r in records])  # (N, D)
    # Cosine of the stored (float16) vectors, so it matches what a reader recomputes from them.
    t16, i16 = t.astype(np.float16).astype(np.float32), image_emb.astype(np.float16).astype(np.float32)
    sim = (t16 * i16).sum(-1) / np.maximum(np.linalg.norm(t16, axis=-1) * np.linalg.norm(i16, axis=-1), 1e-12)
    truncated = [texts.truncated(r.caption) for r in records]
    empty = [not r.caption.strip() for r in records]
    columns: dict[str, Any] = {
        "key": [r.key for r in records],
        "text_emb": _vectors(t),
        "image_emb": _vectors(image_emb),
        "text_image_sim": sim.astype(np.float32),
        "text_truncated": truncated,
        "text_empty": empty,
    }
    attr_stats = {}
    for a in attrs:
        values = [r.attributes[a] for r in records]  # type: ignore[index]
        columns[attribute_column(a)] = _vectors(texts.lookup(values))
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
        **{k: metadata[k] for k in ("clip_tag", "clip_model", "clip_pretrained", "precision")},
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
    if not todo:
        return summary
    if clip is None:
        clip = load_clip(cfg.clip_model, cfg.pretrained, resolve_device(cfg.device), cfg.precision)
    elif clip_tag(clip.name, clip.pretrained) != cfg.tag:
        raise ValueError(f"the model given is {clip_tag(clip.name, clip.pretrained)}, the config asks for {cfg.tag}")
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
        with ThreadPoolExecutor(cfg.workers, thread_name_prefix="decode") as pool:
            for index in todo:
                remove_temporaries_of(ds.embeddings_path(cfg.tag, index), embed_stats_path(ds, cfg.tag, index))
                stats = process_shard(index, ds, plan, cfg, clip, pool, bar)
                summary["done_now"] += 1
                summary["rows"] += stats["rows"]
                summary["truncated"] += stats["truncated"]
    finally:
        bar.close()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["samples_per_second"] = round(summary["rows"] / summary["seconds"], 3) if summary["seconds"] else None
    return summary


def parse_args(argv: list[str] | None = None) -> EmbedConfig:
    p = argparse.ArgumentParser(prog="python -m pipeline.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, type=Path)
    p.add_argument("--clip-model", required=True, help="open_clip model name (ViT-B-32) or a model-config JSON")
    p.add_argument("--pretrained", required=True, help="open_clip tag (openai), a checkpoint path, or none")
    p.add_argument("--attributes", action="store_true", help="structured datasets: embed each attribute too")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image-decoding threads")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return EmbedConfig(
        dataset=a.dataset,
        clip_model=a.clip_model,
        pretrained=a.pretrained,
        attributes=a.attributes,
        batch_size=a.batch_size,
        device=a.device,
        precision=a.precision,
        workers=a.workers,
        rank=a.rank,
        world_size=a.world_size,
        progress=not a.no_progress,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    try:
        cfg = parse_args(argv)
        summary = run(cfg)
    except (FileNotFoundError, ValueError, ClipWeightsUnavailable) as e:
        raise SystemExit(f"pipeline.embed: error: {e}") from e
    print(json.dumps({"embed": summary}), file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
