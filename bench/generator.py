"""Generator cost: parameters, GMACs and latency of the `alphaface` and `alphaface-fast` presets.

Prints one JSON line. MACs are counted with torch.utils.flop_counter on the meta device
(MACs = FLOPs / 2, convolutions and matmuls only). CPU latency is fp32 inference at 256x256,
batch 1 and 8, random weights; the two presets are timed alternately so both see the same machine
load, and the ratio comes from the same run.

With CUDA (or --device), the sweep: each preset in bf16 and fp16 channels-last, bf16 and fp32 NCHW, at
--batches (default 1, 8, 32, 64), in ms per call and per image, the fraction of the physical limit at
790 TFLOP/s dense bf16 (the H200 figure of issue 22; the paper's RTX 4090 latency is 24.1 ms), and each
dtype's largest difference from fp32 at batch 1. Channels-last batches above the network's
32-bit-indexing limit (63 images for the official network: see channels_last_batch_limit) run in
equal chunks, and the row says how many. Then, with --compile MODE:BATCHES (repeatable), eager against
training.models.generator.compiled_for_inference(MODE) at those batches in bf16 channels-last, with each
warm-up's seconds (compile and capture): cuda-graph captures in about a second; inductor modes compile
for tens of seconds per shape, and reuse TORCHINDUCTOR_CACHE_DIR across runs. Last, the swapper's own
batch layout (a channels-last view of NHWC crops, autocast bf16) at 64 faces, to show whether a product
path can reach the 32-bit limit.

    python bench/generator.py [--quick] [--device cuda] [--batches 1,8,32,64] [--no-cpu]
        [--compile cuda-graph:1,8,32 --compile reduce-overhead:1] [--dry-run]

--dry-run runs the same code at toy size on the CPU (the `tiny` preset at 64 px, fp32 and bf16, batches 1
and 2, compile through the aot_eager backend): a test that the GPU path works, in seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from training.models import GENERATOR_PRESETS, build_generator  # noqa: E402
from training.models.generator import (  # noqa: E402
    INFERENCE_MODES,
    channels_last_batch_limit,
    compiled_for_inference,
)

PRESETS = ("alphaface", "alphaface-fast")
SIZE = 256
TARGET_GMAC, TARGET_PARAMS = 717.0, 138.6e6
PAPER_MS = 24.1
PEAK_BF16_FLOPS = 790e12  # H200 dense bf16, as issue 22 measured it (a 8192^3 bf16 matmul reaches 769-798 TFLOP/s)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (dtype, layout) of the device sweep: tensor-core dtypes in both layouts, fp32 as the reference
SWEEP = (("bfloat16", "channels_last"), ("float16", "channels_last"), ("bfloat16", "nchw"), ("float32", "nchw"))


def log(msg: str) -> None:
    print(f"[bench/generator] {msg}", file=sys.stderr, flush=True)


def count(preset: str, size: int = SIZE) -> tuple[int, float]:
    """(parameters, GMAC per image at size x size), on the meta device: no memory, no kernels."""
    with torch.device("meta"):
        g = build_generator(preset)
        flops = FlopCounterMode(display=False)
        with flops:
            g(torch.empty(1, 3, size, size), torch.empty(1, 512))
    return sum(p.numel() for p in g.parameters()), flops.get_total_flops() / 2e9


def inputs(batch: int, device: str, dtype: torch.dtype, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(batch)
    target = torch.rand(batch, 3, size, size, generator=g).to(device, dtype)
    z = F.normalize(torch.randn(batch, 512, generator=g), dim=1).to(device, dtype)
    return target, z


def chunk_sizes(batch: int, limit: int) -> list[int]:
    """`batch` split into the fewest near-equal chunks of at most `limit` (64 at limit 63: 32 + 32)."""
    n = math.ceil(batch / limit)
    return [batch // n + (i < batch % n) for i in range(n)]


def chunked(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], limit: int) -> Callable:
    """`fn` over batches of at most `limit` rows (the channels-last 32-bit limit), concatenated."""

    def run(target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if len(target) <= limit:
            return fn(target, z)
        sizes = chunk_sizes(len(target), limit)
        return torch.cat([fn(t, zz) for t, zz in zip(target.split(sizes), z.split(sizes), strict=True)])

    return run


def time_alternating(runs: dict[str, Callable[[], Any]], warmup: int, iters: int, sync: Callable[[], None]) -> dict:
    """Median seconds per call of each function, timing them in turn within each iteration."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(iters):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_latency(models: dict[str, torch.nn.Module], quick: bool) -> dict:
    out: dict = {}
    # batch -> (warm-up, timed) iterations; one official batch-8 pass is ~30 s on 2 cores
    plan = {1: (1, 2) if quick else (2, 5), 8: (0, 1) if quick else (1, 2)}
    for batch, (warmup, iters) in plan.items():
        target, z = inputs(batch, "cpu", torch.float32)
        runs = {name: (lambda m=m, t=target, z=z: m(t, z)) for name, m in models.items()}
        log(f"cpu batch {batch}: {warmup} warm-up + {iters} timed per preset")
        with torch.inference_mode():
            med = time_alternating(runs, warmup, iters, lambda: None)
        out[f"b{batch}"] = {name: {"ms": s * 1e3, "ms_per_image": s * 1e3 / batch} for name, s in med.items()}
        out[f"b{batch}"]["fast_over_official"] = med["alphaface-fast"] / med["alphaface"]
    return out


def _place(model: torch.nn.Module, device: str, dtype: str, layout: str) -> torch.nn.Module:
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return copy.deepcopy(model).to(device, DTYPES[dtype]).to(memory_format=fmt).eval()


def _input(batch: int, device: str, dtype: str, layout: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    target, z = inputs(batch, device, DTYPES[dtype], size)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return target.contiguous(memory_format=fmt), z


def device_sweep(
    presets: tuple[str, ...], device: str, size: int, batches: list[int], sweep: tuple, plan: tuple[int, int]
) -> list[dict]:
    """ms per call of each preset, dtype and layout at each batch, alternating the presets."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    base = {name: build_generator(name).eval() for name in presets}
    gmac = {name: count(name, size)[1] for name in presets}
    limits = {name: channels_last_batch_limit(m.config, size) for name, m in base.items()}
    rows: list[dict] = []
    with torch.inference_mode():
        reference = {name: m.to(device)(*inputs(1, device, torch.float32, size)).float() for name, m in base.items()}
        for dtype, layout in sweep:
            models = {name: _place(m, device, dtype, layout) for name, m in base.items()}
            diff = {n: float((m(*_input(1, device, dtype, layout, size)).float() - reference[n]).abs().max())
                    for n, m in models.items()}  # fmt: skip
            for batch in batches:
                runs, chunks = {}, {}
                for name, m in models.items():
                    limit = limits[name] if layout == "channels_last" else batch
                    target, z = _input(batch, device, dtype, layout, size)
                    fn = chunked(m, limit)
                    runs[name] = lambda fn=fn, t=target, z=z: fn(t, z)
                    chunks[name] = len(chunk_sizes(batch, limit))
                log(f"{device} {dtype} {layout} batch {batch}")
                med = time_alternating(runs, *plan, sync)
                for name, s in med.items():
                    limit_ms = 2 * gmac[name] * 1e9 * batch / PEAK_BF16_FLOPS * 1e3
                    rows.append({
                        "preset": name, "dtype": dtype, "layout": layout, "batch": batch, "chunks": chunks[name],
                        "ms": round(s * 1e3, 4), "ms_per_image": round(s * 1e3 / batch, 4),
                        "images_per_s": round(batch / s, 2), "fraction_of_peak": round(limit_ms / (s * 1e3), 4),
                        "max_abs_diff_vs_fp32": diff[name],
                    })  # fmt: skip
            del models
    return rows


def compile_runs(
    presets: tuple[str, ...], device: str, size: int, specs: list[tuple[str, list[int]]], dtype: str, backend: str
) -> list[dict]:
    """Eager against compiled_for_inference(mode) at each batch: warm-up seconds, ms per call, largest
    difference. Inputs in channels-last (the fast layout), chunked like the sweep."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    layout = "channels_last"
    rows = []
    for name in presets:
        model = _place(build_generator(name), device, dtype, layout)
        limit = channels_last_batch_limit(model.config, size)
        for mode, batches in specs:
            fn = compiled_for_inference(model, mode, backend)  # type: ignore[arg-type]
            for batch in batches:
                target, z = _input(batch, device, dtype, layout, size)
                with torch.inference_mode():
                    eager = chunked(model, limit)(target, z)
                    sync()
                    start = time.perf_counter()
                    out = chunked(fn, limit)(target, z)  # the first call with this shape: compile, capture
                    sync()
                    warmup_s = time.perf_counter() - start
                    runs = {"eager": chunked(model, limit), "compiled": chunked(fn, limit)}
                    med = time_alternating({k: (lambda f=f, t=target, z=z: f(t, z)) for k, f in runs.items()},
                                           3, 10 if batch <= 8 else 5, sync)  # fmt: skip
                log(f"{name} {mode} batch {batch}: warm-up {warmup_s:.1f} s")
                rows.append({
                    "preset": name, "mode": mode, "backend": backend, "dtype": dtype, "layout": layout,
                    "batch": batch, "warmup_s": round(warmup_s, 2), "eager_ms": round(med["eager"] * 1e3, 4),
                    "compiled_ms": round(med["compiled"] * 1e3, 4),
                    "compiled_ms_per_image": round(med["compiled"] * 1e3 / batch, 4),
                    "speedup": round(med["eager"] / med["compiled"], 3),
                    "max_abs_diff_vs_eager": float((out.float() - eager.float()).abs().max()),
                })  # fmt: skip
        del model
    return rows


def swapper_layout(preset: str, device: str, size: int, batch: int) -> dict:
    """The generator fed as swapper.faces.swapper feeds it (to_tensor: a channels-last view of NHWC uint8 crops,
    float; swap_fn: autocast bf16, weights as loaded) at `batch` faces: does it run, or hit the 32-bit limit?"""
    G = build_generator(preset).to(device).eval()
    crops = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    x = crops.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S), channels-last strides
    z = F.normalize(torch.randn(batch, 512, device=device), dim=1)
    out: dict[str, Any] = {"preset": preset, "batch": batch, "input_channels_last": x.is_contiguous(
        memory_format=torch.channels_last)}  # fmt: skip
    try:
        with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            G(x, z)
        out["ok"] = True
    except RuntimeError as e:
        out["ok"], out["error"] = False, str(e).splitlines()[0][:300]
    return out


def _compile_spec(text: str) -> tuple[str, list[int]]:
    mode, _, batches = text.partition(":")
    if mode not in INFERENCE_MODES:
        raise argparse.ArgumentTypeError(f"--compile {text}: mode must be one of {INFERENCE_MODES}")
    return mode, [int(b) for b in (batches or "1,8,32").split(",")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None, help="the sweep's device")
    parser.add_argument("--batches", default="1,8,32,64", help="the sweep's batches, comma-separated ('' skips it)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the fp32 CPU latency of the full-size presets")
    parser.add_argument(
        "--compile", action="append", type=_compile_spec, default=[], metavar="MODE[:B1,B2]",
        help=f"compiled_for_inference mode ({', '.join(INFERENCE_MODES)}) and its batches (default 1,8,32)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="toy size on the CPU: the device path in seconds")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",") if b]

    result: dict = {
        "bench": "generator",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "size": SIZE,
        "quick": args.quick,
        "dry_run": args.dry_run,
    }
    params, gmac = {}, {}
    for name in PRESETS:
        params[name], gmac[name] = count(name)
    log(f"counted: {json.dumps({k: round(v, 1) for k, v in gmac.items()})} GMAC")
    result["presets"] = {
        name: {"params_M": params[name] / 1e6, "gmac": gmac[name], "mac_ratio": gmac[name] / gmac["alphaface"]}
        for name in PRESETS
    }
    mac_ratio = gmac["alphaface-fast"] / gmac["alphaface"]
    result["checks"] = {
        "official_gmac_within_3pct": abs(gmac["alphaface"] / TARGET_GMAC - 1) <= 0.03,
        "official_params_within_2pct": abs(params["alphaface"] / TARGET_PARAMS - 1) <= 0.02,
        "fast_mac_ratio_le_0.25": mac_ratio <= 0.25,
    }
    if not (args.no_cpu or args.dry_run):
        models = {name: build_generator(name).eval() for name in PRESETS}
        cpu = result["cpu_fp32"] = cpu_latency(models, args.quick)
        del models
        result["checks"]["fast_cpu_latency_ratio_le_0.35"] = max(cpu[b]["fast_over_official"] for b in cpu) <= 0.35

    if args.dry_run:  # the device path at toy size: tiny preset, 64 px, CPU, aot_eager instead of inductor
        presets, device, size, backend = ("tiny",), "cpu", 64, "aot_eager"
        sweep, plan = (("float32", "nchw"), ("bfloat16", "channels_last")), (1, 2)
        batches, dtype = [b for b in batches if b <= 2] or [1, 2], "float32"
        specs = [(m, [b for b in bs if b <= 2] or [1]) for m, bs in args.compile if m != "cuda-graph"]
    elif args.device:
        presets, device, size, backend, sweep, dtype = PRESETS, args.device, SIZE, "inductor", SWEEP, "bfloat16"
        plan, specs = ((3, 5) if args.quick else (5, 20)), args.compile
        torch.backends.cudnn.benchmark = True
    else:
        print(json.dumps(result), flush=True)
        return result
    dev: dict[str, Any] = {"device": device, "size": size, "paper_ms": PAPER_MS, "peak_tflops": PEAK_BF16_FLOPS / 1e12}
    dev["channels_last_batch_limit"] = {n: channels_last_batch_limit(GENERATOR_PRESETS[n], size) for n in presets}
    dev["sweep"] = device_sweep(presets, device, size, batches, sweep, plan) if batches else []
    if specs:
        dev["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "(default: /tmp/torchinductor_$USER)")
        dev["compile"] = compile_runs(presets, device, size, specs, dtype, backend)
    dev["swapper_layout"] = swapper_layout(presets[0], device, size, 64)
    result["gpu" if device.startswith("cuda") else "device_dry_run"] = dev
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
