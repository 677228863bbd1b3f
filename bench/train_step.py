"""The train stage's costs: the reader against plain JPEG decoding, and train-step times. One JSON line.

    python bench/train_step.py [--identities 8 --per-identity 64 --size 512] [--repeats 5] [--skip-fast]

1. Data. Synthetic VGGFace2-HQ-layout faces (512 px) are captioned (a fixed-answer engine: no model)
   and embedded (the tiny CLIP, and ViT-B-32 with random weights for the real presets) into shards
   of the default size (1000). A second set holds photo-like JPEGs of the same size: the cartoon
   faces are flat colours that decode about 3x faster than real photos, which inflates the reader's
   fixed per-sample costs relative to decoding.
2. Reader, on each set. One DataLoader worker's rate, in process with one torch thread (as in a
   worker): shard read, Parquet join, shuffle, decode to 256 (uint8), batch, then drawing the pairs
   (training.data), against plain Pillow decoding (draft, load, and convert or resize only where
   needed, to 256) of the same JPEG bytes held in memory, in the same run and interleaved, best of
   --repeats each (these machines are shared and noisy). Target >= 0.8x. The device-side part (float
   conversion and layout, flips, source gather: make_swap_batch) is timed apart.
3. CPU train steps at batch 4 (pairs; 8 swaps with both directions), float32: demo.yaml, and the
   alphaface-fast preset at full size with random frozen networks (r50, VGG16 at 224, ViT-B-32).
   Seconds per step exclude each run's first step (allocation, oneDNN kernel selection).
4. With CUDA: both real presets at batch 16 in bf16: seconds per step and samples (pairs) per second.
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
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.caption_host import make_jpeg  # noqa: E402
from demo import synthetic  # noqa: E402
from demo.tiny_models import write_clip_tiny  # noqa: E402
from pipeline import embed  # noqa: E402
from pipeline.caption import CaptionConfig  # noqa: E402
from pipeline.caption import run as caption_run  # noqa: E402
from pipeline.engines.base import EngineInfo, Generation  # noqa: E402
from pipeline.reader import FaceReader  # noqa: E402
from pipeline.shards import iter_shard  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import draw_pairing, make_swap_batch, reader_config, step_rng  # noqa: E402
from training.train import run  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
OUT_SIZE = 256
QUIET = ["progress=false", "trackers=[]", "log_every=100000", "sample_every=100000", "checkpoint_every=100000"]


class FixedEngine:
    """A fixed caption per image: the bench measures training, not captioning."""

    info = EngineInfo("fixed", "0", "fixed-captions", 448, 1, 96, "greedy")

    def generate(self, images: list, prompt: Any) -> list[Generation]:
        text = "The head is turned slightly to the left, soft light from the right, a plain gray background."
        return [Generation(text, "stop") for _ in images]


def write_photos(raw: Path, identities: int, per_identity: int, size: int) -> None:
    """Photo-like JPEGs in a folder tree (the identity is the folder), decoding about as slowly as real crops."""
    for i in range(identities):
        (raw / f"id{i:03d}").mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            (raw / f"id{i:03d}" / f"{j:04d}.jpg").write_bytes(make_jpeg(size, seed=i * per_identity + j))


def build_data(
    root: Path, identities: int, per_identity: int, size: int, clip_models: list[str], photo: bool = False
) -> Path:
    """A captioned, embedded dataset in default-size shards: synthetic cartoon faces (flat colours,
    fast to decode) in the VGGFace2-HQ layout, or photo-like JPEGs (`photo`) in a folder tree."""
    raw, dataset = root / "raw", root / "dataset"
    if photo:
        write_photos(raw, identities, per_identity, size)
    else:
        synthetic.generate(raw, "vggface2-hq", identities=identities, per_identity=per_identity, seed=0, size=size)
    cfg = CaptionConfig(
        source="folder" if photo else "vggface2-hq", input=raw, output=dataset, engine="transformers",
        model="fixed-captions", batch_size=32, progress=False, workers=2,
    )  # fmt: skip
    caption_run(cfg, engine=FixedEngine())
    for model in clip_models:
        embed.main(["--dataset", str(dataset), "--clip-model", model, "--pretrained", "none", "--device", "cpu",
                    "--no-progress", "--batch-size", "64"])  # fmt: skip
    return dataset


# ---------------------------------------------------------------------------------------------
# Reader vs plain decoding


def decode_rate(jpegs: list[bytes]) -> float:
    start = time.perf_counter()
    for data in jpegs:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (OUT_SIZE, OUT_SIZE))
        img = img.convert("RGB") if img.mode != "RGB" else img
        img.load()
        if img.size != (OUT_SIZE, OUT_SIZE):
            img = img.resize((OUT_SIZE, OUT_SIZE), Image.BICUBIC)
    return len(jpegs) / (time.perf_counter() - start)


def reader_rate(dataset: Path, clip_json: str) -> float:
    """Samples per second of one worker: the reader's whole pipeline plus the trainer's pairing."""
    cfg = load_config(None, data=(str(dataset),), clip_model=clip_json, clip_pretrained="none", batch_size=16,
                      num_workers=0, shuffle_buffer=512, allow_random_weights=True)  # fmt: skip
    reader = FaceReader(reader_config(cfg, 0, 1))
    n, start = 0, time.perf_counter()
    for i, batch in enumerate(reader):
        # The worker-side work: read, join, decode, collate (uint8), and drawing the pairs. The float
        # conversion, flips and source gather (make_swap_batch) run on the training device: see bench_swap_batch.
        pairing = draw_pairing(batch, cfg, step_rng(0, 0, i, 0))
        n += len(pairing.sources)
    return n / (time.perf_counter() - start)


def swap_batch_rate(dataset: Path, clip_json: str) -> float:
    """Samples per second of make_swap_batch on this CPU (on a GPU run it happens on the device)."""
    cfg = load_config(None, data=(str(dataset),), clip_model=clip_json, clip_pretrained="none", batch_size=16,
                      num_workers=0, shuffle_buffer=512, allow_random_weights=True)  # fmt: skip
    batches = list(FaceReader(reader_config(cfg, 0, 1)))
    pairings = [draw_pairing(b, cfg, step_rng(0, 0, i, 0)) for i, b in enumerate(batches)]
    n, start = 0, time.perf_counter()
    for batch, pairing in zip(batches, pairings, strict=True):
        n += make_swap_batch(batch, cfg, pairing).target.shape[0]
    return n / (time.perf_counter() - start)


def bench_reader(dataset: Path, clip_json: str, repeats: int) -> dict[str, Any]:
    jpegs = [s.members["jpg"] for tar in sorted((dataset / "shards").glob("*.tar")) for s in iter_shard(tar)]
    reader, decode, swap = [], [], []
    threads = torch.get_num_threads()
    for _ in range(repeats):  # interleaved, so a noisy neighbour hits both alike
        torch.set_num_threads(1)  # what a DataLoader worker runs with
        decode.append(decode_rate(jpegs))
        reader.append(reader_rate(dataset, clip_json))
        torch.set_num_threads(threads)
        swap.append(swap_batch_rate(dataset, clip_json))
    return {
        "make_swap_batch_samples_per_s_cpu": round(max(swap), 1),
        "samples": len(jpegs),
        "jpeg_kib": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
        "reader_samples_per_s_per_worker": round(max(reader), 1),
        "decode_samples_per_s": round(max(decode), 1),
        "ratio": round(max(reader) / max(decode), 3),
        "target_ratio": 0.8,
    }


# ---------------------------------------------------------------------------------------------
# Train steps


def bench_train(preset: Path, dataset: Path, out: Path, steps: int, sets: list[str]) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (the bench owns its work folder)
    cfg = load_config(preset, [*QUIET, *sets], data=(str(dataset),), output=str(out), max_steps=steps)
    summary = run(cfg)
    return {
        "batch_pairs": cfg.batch_size,
        "timed_steps": steps - 1,
        "seconds_per_step": summary["seconds_per_step"],
        "samples_per_s": summary["samples_per_s"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--per-identity", type=int, default=64)
    p.add_argument("--size", type=int, default=512, help="stored image side (VGGFace2-HQ: 512)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-fast", action="store_true", help="skip the full-size fast preset on CPU (minutes)")
    p.add_argument("--work", type=Path, default=None, help="keep the data and runs here (default: a temp dir)")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    clip_json = str(write_clip_tiny(work / "clip-tiny.json"))
    clips = [clip_json] + ([] if a.skip_fast and not torch.cuda.is_available() else ["ViT-B-32"])
    dataset = build_data(work, a.identities, a.per_identity, a.size, clips)
    photos = build_data(work / "photo", a.identities, a.per_identity, a.size, [clip_json], photo=True)

    result: dict[str, Any] = {
        "bench": "train_step",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "images": {"count": a.identities * a.per_identity, "stored_px": a.size, "decoded_px": OUT_SIZE},
    }
    result["reader"] = {
        "synthetic_faces": bench_reader(dataset, clip_json, a.repeats),
        "photo_like": bench_reader(photos, clip_json, a.repeats),
    }

    cpu = ["device=cpu", "mixed_precision=no", "batch_size=4", "num_workers=1"]
    result["cpu_batch4"] = {
        "demo": bench_train(
            CONFIGS / "demo.yaml", dataset, work / "demo", 4, [*cpu, f"clip_model={clip_json}", "clip_pretrained=none"]
        )
    }
    real_random = ["allow_random_weights=true", "clip_model=ViT-B-32", "clip_pretrained=none"]
    if not a.skip_fast:
        result["cpu_batch4"]["alphaface-fast"] = bench_train(
            CONFIGS / "alphaface-fast.yaml", dataset, work / "fast_cpu", 2, [*cpu, *real_random]
        )
    if torch.cuda.is_available():
        gpu = ["mixed_precision=bf16", "batch_size=16", "num_workers=4"]
        result["cuda_bf16_batch16"] = {
            name: bench_train(CONFIGS / f"{name}.yaml", dataset, work / f"{name}_gpu", 8, [*gpu, *real_random])
            for name in ("alphaface", "alphaface-fast")
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
