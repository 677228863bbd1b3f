"""The embed stage against a naive loop and against a pure batched forward, in one run.

Real-size ViT-B-32 (random weights), on the CPU (or --device cuda), 40-60-word captions, 512x512
JPEGs. The dataset is written by the real caption stage (with an engine that returns the chosen
captions), then:

- captions/s of the stage's text path (dedup, token count, batches grouped by length and cut to
  their longest caption, encode) against a naive loop that tokenizes and encodes one caption at a
  time with open_clip (target: >= 5x); the same for the attribute texts of --attributes (one phrase
  per field: short and often repeated);
- what batching alone gives the model here: one prepared caption at a time against batches, both
  at the full padded context. On a CPU a 77-token caption is already a fair matrix product, so this
  bounds what any batching can give there; on a GPU batch-1 calls are launch-bound;
- the whole stage (tar read, JPEG decode on threads, tokenize, encode, Parquet, stats) against a
  pure forward of the same model work on the same, already-prepared inputs (target: <= 10%);
- the largest difference between the stage's text embeddings and open_clip's encode_text at the
  full context;
- the host's image work per core (one thread's CPU time): before (full JPEG decode, open_clip's whole
  transform on the host, float32 out) and after (DCT-scaled draft decode, resize and crop on the host,
  uint8 out; ToTensor + Normalize batched on the device), and what draft decoding does to the image
  embeddings (1 - cosine to the full decode's, next to the same figure between two different images).

Prints one JSON line.

    python bench/embed.py [--quick] [--n 64] [--batch-size 32] [--naive 8] [--repeats 3] [--workers N]
        [--image-decode auto|draft|full|device] [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.caption_host import make_jpeg  # noqa: E402
from pipeline.caption import CaptionConfig  # noqa: E402
from pipeline.caption import run as caption  # noqa: E402
from pipeline.clip_tower import Clip, _encode_trimmed, encode_texts, load_clip, trim_padding  # noqa: E402
from pipeline.embed import IMAGE_DECODES, EmbedConfig, default_workers, host_pixels, read_texts  # noqa: E402
from pipeline.embed import run as embed  # noqa: E402
from pipeline.engines.base import EngineInfo, Generation, Prompt  # noqa: E402
from pipeline.shards import iter_shard  # noqa: E402

SIDE = 512
# --dry-run's model: open_clip's layout at toy width and depth (64 px input)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PHRASES = {
    "pose": [
        "The person is looking slightly downward and to the left.",
        "The person faces the camera with a level head.",
        "The head is turned sharply right, near profile.",
        "The head tilts upward, turned slightly left.",
    ],
    "gaze": [
        "The eyes look toward the lower frame edge.",
        "The gaze meets the camera.",
        "The eyes look away from the lens.",
        "The eyes are half closed.",
    ],
    "expression": [
        "The expression is neutral.",
        "They smile broadly, showing teeth.",
        "The mouth is slightly open with raised eyebrows.",
        "The brow is furrowed and serious.",
    ],
    "lighting": [
        "Soft, even light falls from the front.",
        "Strong light from the left shadows the right cheek.",
        "Warm indoor light gives a yellow tint.",
        "Harsh overhead sunlight brightens the forehead.",
    ],
    "background": [
        "The background is blurred with indistinct blue tones.",
        "Behind them is a plain grey wall.",
        "The background shows a blurred street with trees.",
        "A dark studio backdrop fills the background.",
    ],
    "accessories": [
        "They are wearing thin metal glasses.",
        "They wear a cap and small earrings.",
        "No accessories are visible.",
        "Sunglasses rest on top of the head.",
    ],
    "hair": [
        "They have a short beard and mustache.",
        "The face is clean shaven, with long wavy hair.",
        "There is light stubble and the hair is tied back.",
        "The hair is cropped close.",
    ],
    "occlusions": [
        "There are no significant occlusions on the face.",
        "A hand partly covers the chin.",
        "A strand of hair falls across one eye.",
        "A microphone hides part of the mouth.",
    ],
}


def make_caption(rng: np.random.Generator) -> str:
    """A 40-60-word caption in the style of AlphaFace's own."""
    while True:
        text = " ".join(str(rng.choice(v)) for v in PHRASES.values())
        if 40 <= len(text.split()) <= 60:
            return text


class ChosenCaptions:
    """A CaptionEngine answering with prepared captions, in order."""

    info = EngineInfo("bench", "0", "chosen-captions", 448, 1, 96, "greedy")

    def __init__(self, captions: list[str]):
        self.captions = iter(captions)

    def generate(self, images: list[Image.Image], prompt: Prompt) -> list[Generation]:
        return [Generation(next(self.captions), "stop") for _ in images]


def build_dataset(root: Path, n: int, shard_size: int, side: int = SIDE) -> list[str]:
    rng = np.random.default_rng(0)
    captions = [make_caption(rng) for _ in range(n)]
    inp = root / "input"
    for i in range(n):
        folder = inp / f"id{i % 8:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(make_jpeg(side, i, quality=95))
    cfg = CaptionConfig(
        source="folder", input=inp, output=root / "ds", shard_size=shard_size, engine="transformers", progress=False
    )
    # The folder source lists files sorted by path, which is the order captions were made in.
    order = sorted(range(n), key=lambda i: f"id{i % 8:02d}/{i:05d}.jpg")
    caption(cfg, engine=ChosenCaptions([captions[i] for i in order]))
    return [captions[i] for i in order]


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 samples, batch 8, 4 naive captions, 2 rounds")
    p.add_argument("--n", type=int, default=64, help="samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--naive", type=int, default=8, help="captions the naive loop encodes")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: the stage's, its cores)")
    p.add_argument("--image-decode", default="auto", choices=IMAGE_DECODES, help="the stage's --image-decode")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best of each is kept")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dry-run", action="store_true", help="toy model and sizes: every path in seconds")
    a = p.parse_args(argv)
    n, batch, n_naive, repeats = (16, 8, 4, 2) if a.quick else (a.n, a.batch_size, a.naive, a.repeats)
    model, side = "ViT-B-32", SIDE
    if a.dry_run:  # every path of the bench at toy size: a 2-layer open_clip model, 128 px images
        n, batch, n_naive, repeats, side = 8, 4, 2, 1, 128
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_dataset(root, n, shard_size=max(n // 2, 1), side=side)
        ds = root / "ds"
        if a.dry_run:
            model = str(root / "bench-tiny-clip.json")
            Path(model).write_text(json.dumps(TINY_CLIP), encoding="utf-8")
        clip = load_clip(model, "none", device=a.device)
        shards = sorted((ds / "shards").glob("*.tar"))
        per_shard = [[r.caption for r in read_texts(s)] for s in shards]
        captions = [c for part in per_shard for c in part]
        # Attribute texts (--attributes): each caption's phrases, one per field, as a structured dataset has.
        attributes = [[phrase for c in part for phrase in _phrases(c)] for part in per_shard]
        # Prepared inputs of the pure forward: unique-caption tokens, preprocessed images (not timed).
        tokens = [clip.tokenizer(list(dict.fromkeys(part))).to(dev) for part in per_shard]
        pixels = torch.stack(
            [clip.preprocess(Image.open(io.BytesIO(s.members["jpg"]))) for sh in shards for s in iter_shard(sh)]
        ).to(dev)  # (N, 3, 224, 224)
        cfg = EmbedConfig(
            dataset=ds, clip_model=model, pretrained="none", batch_size=batch, workers=a.workers,
            progress=False, device=a.device, image_decode=a.image_decode,
        )  # fmt: skip
        jpegs = [s.members["jpg"] for sh in shards for s in iter_shard(sh)]
        host = host_rates(jpegs, clip, repeats)
        drift = draft_drift(jpegs[:32], clip)
        with torch.inference_mode():
            clip.model.encode_text(tokens[0][:2])  # warm-up: first-call allocations
            clip.model.encode_image(pixels[:2])
            # Accuracy: the stage's text embeddings against open_clip's own at the full context.
            reference = clip.model.encode_text(tokens[0], normalize=True).float().cpu()
            stage_text = encode_texts(clip, list(dict.fromkeys(per_shard[0])), batch).emb
            max_abs_diff = float((torch.from_numpy(stage_text) - reference).abs().max())

        def naive_encode(texts: list[str]) -> None:  # plain open_clip use: tokenize + encode, one text at a time
            with torch.inference_mode():
                for t in texts:
                    clip.model.encode_text(clip.tokenizer([t]).to(dev), normalize=True).cpu()

        def naive() -> None:
            naive_encode(captions[:n_naive])

        def naive_attributes() -> None:
            naive_encode(attributes[0][: n_naive * 4])

        def text_path() -> None:  # the stage's text step: dedup, token counts, batched encode, per shard
            for part in per_shard:
                encode_texts(clip, part, batch)

        def attribute_path() -> None:  # the same for the attribute texts (--attributes)
            for part in attributes:
                encode_texts(clip, part, batch)

        def model_batch1() -> None:  # the model alone, one prepared caption at a time, full context
            with torch.inference_mode():
                for i in range(n_naive):
                    clip.model.encode_text(tokens[0][i : i + 1])
            sync()

        # The pure forward: the same model work as the stage, on prepared tensors: text batches grouped
        # by length and cut to their longest text, as the stage runs them (see encode_texts).
        trimmed = []
        for part in per_shard:
            unique = sorted(dict.fromkeys(part), key=clip.token_count)
            for i in range(0, len(unique), batch):
                trimmed.append(trim_padding(clip.tokenizer(unique[i : i + batch]).to(dev)))

        def pure_text() -> None:
            with torch.inference_mode():
                for tok in trimmed:
                    _encode_trimmed(clip.model, tok)
            sync()

        def model_batched() -> None:  # the model alone, batched, at the full padded context
            with torch.inference_mode():
                for tok in tokens:
                    for i in range(0, len(tok), batch):
                        clip.model.encode_text(tok[i : i + batch])
            sync()

        def pure_image() -> None:
            with torch.inference_mode():
                for i in range(0, len(pixels), batch):
                    clip.model.encode_image(pixels[i : i + batch])
            sync()

        resolved: dict[str, str] = {}

        def stage() -> None:  # the whole stage, model loaded: tar, decode threads, encode, Parquet, stats
            shutil.rmtree(ds / "embeddings", ignore_errors=True)
            summary = embed(cfg, clip)
            assert summary["rows"] == n
            resolved["image_decode"] = summary["image_decode"]  # auto: draft on a fresh dataset

        # Interleaved rounds, best of each, in wall time and in this process's CPU time (all its
        # threads): other processes share these cores, which inflates wall time far more than CPU time.
        fns = {
            "naive": naive, "text": text_path, "naive_attributes": naive_attributes, "attributes": attribute_path,
            "model_batch1": model_batch1, "model_batched": model_batched, "pure_text": pure_text,
            "pure_image": pure_image, "stage": stage,
        }  # fmt: skip
        wall: dict[str, list[float]] = {k: [] for k in fns}
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                sync()
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    n_unique = sum(len(t) for t in tokens)
    n_attr = sum(len(t) for t in attributes)

    def figures(times: dict[str, list[float]]) -> dict[str, float]:
        best = {k: min(v) for k, v in times.items()}
        naive_cps, stage_cps = n_naive / best["naive"], n / best["text"]
        naive_aps, stage_aps = n_naive * 4 / best["naive_attributes"], n_attr / best["attributes"]
        pure_s = best["pure_text"] + best["pure_image"]
        return {
            "naive_captions_per_s": round(naive_cps, 3),
            "stage_text_captions_per_s": round(stage_cps, 3),
            "text_speedup_vs_naive": round(stage_cps / naive_cps, 2),
            # what batching alone gives the model here, at the full padded context (no trimming, no dedup)
            "model_batch1_captions_per_s": round(n_naive / best["model_batch1"], 3),
            "model_batched_captions_per_s": round(n_unique / best["model_batched"], 3),
            "naive_attribute_texts_per_s": round(naive_aps, 2),
            "stage_attribute_texts_per_s": round(stage_aps, 2),
            "attribute_speedup_vs_naive": round(stage_aps / naive_aps, 2),
            "pure_forward_s": round(pure_s, 2),
            "stage_s": round(best["stage"], 2),
            "stage_samples_per_s": round(n / best["stage"], 3),
            "overhead_vs_pure_forward": round(best["stage"] / pure_s - 1, 4),
        }

    w, c = figures(wall), figures(cpu)
    result = {
        "bench": "embed",
        "model": f"{Path(model).stem} (random weights)",
        "dry_run": a.dry_run,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "samples": n,
        "batch_size": batch,
        "image_side": side,
        "caption_words_mean": round(float(np.mean([len(c.split()) for c in captions])), 1),
        "caption_tokens_mean": round(float(np.mean([clip.token_count(c) for c in captions])), 1),
        "unique_caption_fraction": round(len(set(captions)) / len(captions), 3),
        "attribute_texts": n_attr,
        "unique_attribute_fraction": round(sum(len(set(t)) for t in attributes) / n_attr, 3),
        "text_max_abs_diff_vs_open_clip": round(max_abs_diff, 7),
        "naive_captions": n_naive,
        "unique_captions": n_unique,
        "repeats": repeats,
        "wall": w,
        "cpu": c,
        "rounds_wall_s": {k: [round(x, 2) for x in v] for k, v in wall.items()},
        "image_decode": resolved["image_decode"],
        "workers": cfg.workers or default_workers(),
        "host_images_per_s_per_core": host,
        "host_speedup_per_core": round(host["after"] / host["before"], 2),
        "draft_embedding_drift": drift,
        "targets": {"text_speedup_vs_naive": ">= 5", "overhead_vs_pure_forward": "<= 0.10"},
        "targets_met": {
            f"{name}_{clock}": ok
            for clock, f in (("wall", w), ("cpu", c))
            for name, ok in (
                ("text_speedup", f["text_speedup_vs_naive"] >= 5),
                ("overhead", f["overhead_vs_pure_forward"] <= 0.10),
            )
        },
    }
    print(json.dumps(result))
    return result


def host_rates(jpegs: list[bytes], clip: Clip, repeats: int) -> dict[str, float]:
    """Images/s of one core (this thread's CPU time, best of `repeats`) through the host's image work."""
    prep = clip.image_prep()

    def before(data: bytes) -> torch.Tensor:  # the stage until now: full decode, open_clip's whole transform
        with Image.open(io.BytesIO(data)) as img:
            return clip.preprocess(img)

    ways: dict[str, Callable[[bytes], torch.Tensor]] = {
        "before": before,
        "full_uint8": lambda data: host_pixels(data, prep, draft=False),  # the uint8 split alone
        "after": lambda data: host_pixels(data, prep, draft=True),  # draft decode + the uint8 split
    }
    best = {k: float("inf") for k in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.thread_time()
            for data in jpegs:
                fn(data)
            best[name] = min(best[name], time.thread_time() - t0)
    # the float work the split moves to the device, here on this CPU (on a GPU it is a few microseconds)
    batch = torch.stack([ways["after"](d) for d in jpegs])
    t0 = time.thread_time()
    prep.normalise(batch)
    out = {k: round(len(jpegs) / v, 1) for k, v in best.items()}
    out["normalise_on_cpu_images_per_s"] = round(len(jpegs) / max(time.thread_time() - t0, 1e-9), 1)
    return out


def draft_drift(jpegs: list[bytes], clip: Clip) -> dict[str, float]:
    """1 - cosine between each image's embedding from the draft decode and from the full decode, with the
    same figure between two different images as the scale (random weights: a real-architecture ViT-B-32)."""
    prep = clip.image_prep()
    emb = {
        draft: clip.encode_pixels(torch.stack([host_pixels(d, prep, draft) for d in jpegs]), prep).cpu()
        for draft in (False, True)
    }  # (N, D) each
    drift = 1 - (emb[False] * emb[True]).sum(-1)
    cross = 1 - emb[False] @ emb[False].T
    between = cross[~torch.eye(len(jpegs), dtype=torch.bool)]
    return {
        "draft_vs_full_mean": float(drift.mean()),
        "draft_vs_full_max": float(drift.max()),
        "two_images_median": float(between.median()),
        "two_images_min": float(between.min()),
    }


def _phrases(caption: str) -> list[str]:
    """The caption's sentences: one per attribute field (make_caption joins one phrase per field)."""
    return [s.strip() + "." for s in caption.split(".") if s.strip()]


if __name__ == "__main__":
    main()
