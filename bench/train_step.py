"""The train stage's costs: the reader against plain JPEG decoding, and train-step times. One JSON line.

    python bench/train_step.py [--identities 8 --per-identity 64 --size 512] [--repeats 5] [--skip-fast]
        [--cases base,fast,memory,fits24] [--compile] [--steps 8 --warmup 3] [--peak-tflops 790] [--dry-run]

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
4. With CUDA, the cases of --cases (real presets, random frozen networks): seconds per step and pairs/s in
   the steady state (after --warmup steps: compilation, cuDNN's algorithm trials and the reader's start
   are left out); the peak memory of those steps (torch.cuda.max_memory_allocated, reset after warm-up),
   with cuDNN's benchmark mode on (as the trainer sets it) and, for the memory cases, off; and MFU: the
   FLOPs of one step (forward and backward of every network, the frozen ones included; counted once on the
   meta device with torch.utils.flop_counter, which counts matmuls and convolutions; checkpointing's
   recomputation not counted, as MFU is defined) over the step time and --peak-tflops (790: issue 22's
   H200 dense bf16 figure, which a plain 8192^3 bf16 matmul reaches there; use 989 for NVIDIA's datasheet).
   The `fits24` cases run under torch.cuda.set_per_process_memory_fraction(24 GiB): does the official recipe
   (fp32, batch 2) fit a 24 GB card with grad_checkpointing? The `compile` case (--compile) adds
   torch.compile of G and D, its warm-up in the first step's seconds.

--dry-run runs 3 and 4 at toy size on the CPU (the demo preset on a small synthetic set; no reader bench):
the GPU path's code in seconds (memory figures are null there).
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
from unittest import mock

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.caption_host import make_jpeg  # noqa: E402
from demo import synthetic  # noqa: E402
from demo.tiny_models import write_clip_tiny  # noqa: E402
from pipeline import embed  # noqa: E402
from pipeline.caption import CaptionConfig  # noqa: E402
from pipeline.caption import run as caption_run  # noqa: E402
from pipeline.engines.base import EngineInfo, Generation  # noqa: E402
from pipeline.reader import FaceReader  # noqa: E402
from pipeline.shards import iter_shard  # noqa: E402
from training import losses, train  # noqa: E402
from training.batch import SwapBatch  # noqa: E402
from training.config import TrainConfig, load_config  # noqa: E402
from training.data import draw_pairing, make_swap_batch, reader_config, step_rng  # noqa: E402
from training.frozen import build_frozen  # noqa: E402
from training.losses import AlphaFaceLoss  # noqa: E402
from training.models import build_discriminator, build_generator  # noqa: E402
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


# ---------------------------------------------------------------------------------------------
# Steady-state steps: time, peak memory, MFU


def step_flops(cfg: TrainConfig, step: int) -> tuple[float, bool]:
    """(FLOPs, whether D trains) of optimiser step `step`: every network's forward and backward, counted on
    the meta device (no memory, no kernels) with torch.utils.flop_counter."""
    G = build_generator(cfg.generator, **cfg.generator_overrides)
    D = build_discriminator(**{"image_size": cfg.image_size, **cfg.discriminator})
    identity, clip, vgg = build_frozen(cfg)
    meta = torch.device("meta")
    for net in (G, D, identity, clip, vgg):
        if net is not None:
            net.to(meta)
    rows, size = cfg.batch_size, cfg.image_size

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=meta)

    dim = clip.visual.output_dim if clip is not None else 512
    batch = SwapBatch(
        source=empty(rows, 3, size, size), target=empty(rows, 3, size, size), text_emb=empty(rows, dim),
        target_image_emb=empty(rows, dim), source_image_emb=empty(rows, dim), text_image_sim=empty(rows),
        source_text_emb=empty(rows, dim), source_text_image_sim=empty(rows),
        is_self=torch.zeros(rows, dtype=torch.bool, device=meta),
    )  # fmt: skip
    batch = batch.both_directions() if cfg.both_directions else batch
    loss = AlphaFaceLoss(cfg.loss, G, identity, D, clip, vgg)
    counter = FlopCounterMode(display=False)
    # reduce_rows picks the valid rows with .any() and boolean masks, which meta tensors cannot answer; a
    # plain mean stands in (the counter counts matmuls and convolutions only, so the count is the same)
    with mock.patch.object(losses, "reduce_rows", lambda rows, *a, **k: rows.mean()), counter:
        D.requires_grad_(False)
        out = loss("G", batch, step)
        out.total.backward()
        if loss.d_active(step):
            D.requires_grad_(True)
            loss("D", batch, step, fake=out.swap).total.backward()
    return counter.get_total_flops(), loss.d_active(step)


class StepProbe:
    """Stands in for training.train._micro_step: sets cuDNN's benchmark mode before the first convolution,
    and times the steps from `warmup` on, with the peak memory of those steps (two syncs in the whole run)."""

    def __init__(self, micro_step: Any, warmup: int, steps: int, cudnn_benchmark: bool) -> None:
        self.micro_step, self.warmup, self.steps, self.cudnn_benchmark = micro_step, warmup, steps, cudnn_benchmark
        self.calls: dict[int, int] = {}
        self.start = self.end = 0.0
        self.cuda = torch.cuda.is_available()

    def __call__(self, cfg: TrainConfig, accelerator: Any, built: Any, batch: Any, step: int, *rest: Any) -> None:
        first = step not in self.calls
        self.calls[step] = self.calls.get(step, 0) + 1
        if first and step == 0:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark  # the trainer turned it on
        if first and step == self.warmup:
            self._sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()
        self.micro_step(cfg, accelerator, built, batch, step, *rest)
        if step == self.steps - 1 and self.calls[step] == cfg.grad_accum_steps:
            self._sync()
            self.end = time.perf_counter()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def step_case(
    preset: str, dataset: Path, out: Path, sets: list[str], steps: int, warmup: int, peak_tflops: float,
    flops: dict[str, tuple[float, bool]], cudnn_benchmark: bool = True, cap_gib: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One training run of `steps` steps; the figures of its steps after `warmup`."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(CONFIGS / f"{preset}.yaml", [*QUIET, *sets], data=(str(dataset),), output=str(out),
                      max_steps=steps)  # fmt: skip
    key = json.dumps([preset, *sets])
    if key not in flops:  # the steady steps' count: the step after warm-up (D on or off as there)
        flops[key] = step_flops(cfg, warmup)
    step_flop, d_active = flops[key]
    row: dict[str, Any] = {
        "preset": preset, "batch_pairs": cfg.batch_size, "precision": cfg.mixed_precision, "sets": sets,
        "cudnn_benchmark": cudnn_benchmark, "steps": steps, "warmup": warmup,
        "tflop_per_step": round(step_flop / 1e12, 3), "d_phase": d_active,
    }  # fmt: skip
    probe = StepProbe(train._micro_step, warmup, steps, cudnn_benchmark)
    cuda = torch.cuda.is_available()
    if cap_gib is not None and cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total))
        row["memory_cap_gib"] = cap_gib
    t0 = time.perf_counter()
    try:
        with mock.patch.object(train, "_micro_step", probe):
            train.run(cfg)
        row["fits"] = True
    except torch.OutOfMemoryError as e:
        row.update(fits=False, error=str(e).splitlines()[0][:200])
        return row
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = True
    seconds = (probe.end - probe.start) / (steps - warmup)
    row.update(
        run_s=round(time.perf_counter() - t0, 2),
        seconds_per_step=round(seconds, 4),
        pairs_per_s=round(cfg.batch_size * cfg.grad_accum_steps / seconds, 3),
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        achieved_tflops=round(step_flop / seconds / 1e12, 2),
        mfu=round(step_flop / seconds / (peak_tflops * 1e12), 4),
    )
    return row


# name -> (preset, sets, cudnn.benchmark, memory cap in GiB); RANDOM (random frozen nets) is added to each
BEFORE = ["adam=foreach", "finite_check_every=1"]  # the step before issue 22: foreach AdamW, a check every step
FAST = ["channels_last=true", "adam=fused"]  # fused AdamW, checks every 50 steps (the defaults) + channels-last
BF16 = ["mixed_precision=bf16", "batch_size=16"]
CASES: dict[str, list[tuple[str, list[str], bool, float | None]]] = {
    "base": [("alphaface", [*BF16, *BEFORE], True, None), ("alphaface", [*BF16, *FAST], True, None)],
    "d_active": [("alphaface", [*BF16, *FAST, "loss.adv_start_step=0"], True, None)],
    "fast": [("alphaface-fast", [*BF16, *BEFORE], True, None), ("alphaface-fast", [*BF16, *FAST], True, None)],
    "memory": [
        ("alphaface", ["mixed_precision=no", "batch_size=2"], True, None),
        ("alphaface", ["mixed_precision=no", "batch_size=2"], False, None),
        ("alphaface", ["mixed_precision=no", "batch_size=2", "grad_checkpointing=true"], False, None),
        ("alphaface", [*BF16, *FAST], False, None),
        ("alphaface", [*BF16, *FAST, "grad_checkpointing=true"], False, None),
    ],
    "fits24": [
        ("alphaface", ["mixed_precision=no", "batch_size=2", "grad_checkpointing=true"], False, 24.0),
        ("alphaface", ["mixed_precision=no", "batch_size=2"], False, 24.0),
    ],
    "compile": [("alphaface", [*BF16, *FAST, "compile=default"], True, None)],
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--per-identity", type=int, default=64)
    p.add_argument("--size", type=int, default=512, help="stored image side (VGGFace2-HQ: 512)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-fast", action="store_true", help="skip the full-size fast preset on CPU (minutes)")
    p.add_argument("--work", type=Path, default=None, help="keep the data and runs here (default: a temp dir)")
    p.add_argument("--cases", default="base,fast,memory,fits24", help=f"CUDA cases, of {', '.join(CASES)}")
    p.add_argument("--compile", action="store_true", help="add the torch.compile case (minutes of warm-up)")
    p.add_argument("--steps", type=int, default=8, help="steps per CUDA case")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of each CUDA case's figures")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the MFU's peak: issue 22's H200 bf16 figure")
    p.add_argument("--dry-run", action="store_true", help="the CUDA cases' code at toy size on the CPU")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    clip_json = str(write_clip_tiny(work / "clip-tiny.json"))
    result: dict[str, Any] = {
        "bench": "train_step",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "peak_tflops": a.peak_tflops,
        "dry_run": a.dry_run,
    }
    if a.dry_run:  # the steady-state path on the demo preset: a small set, CPU, a few steps
        dataset = build_data(work, 2, 8, 128, [clip_json])
        sets = ["device=cpu", "batch_size=2", "num_workers=0", "image_size=64", "vgg_input_size=32",
                f"clip_model={clip_json}", "clip_pretrained=none", *FAST, "grad_checkpointing=true"]  # fmt: skip
        result["steady"] = [step_case("demo", dataset, work / "dry", sets, 3, 1, a.peak_tflops, {})]
        print(json.dumps(result))
        return result

    clips = [clip_json] + ([] if a.skip_fast and not torch.cuda.is_available() else ["ViT-B-32"])
    dataset = build_data(work, a.identities, a.per_identity, a.size, clips)
    photos = build_data(work / "photo", a.identities, a.per_identity, a.size, [clip_json], photo=True)
    result["images"] = {"count": a.identities * a.per_identity, "stored_px": a.size, "decoded_px": OUT_SIZE}
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
        names = [c for c in a.cases.split(",") if c] + (["compile"] if a.compile else [])
        flops: dict[str, tuple[float, bool]] = {}
        result["steady"] = []
        for name in names:
            for preset, sets, benchmark, cap in CASES[name]:
                print(f"# train_step case {name}: {preset} {sets} cudnn.benchmark={benchmark}", file=sys.stderr)
                row = step_case(preset, dataset, work / "steady", [*sets, *real_random, "num_workers=6"], a.steps,
                                a.warmup, a.peak_tflops, flops, benchmark, cap)  # fmt: skip
                result["steady"].append({"case": name, **row})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
