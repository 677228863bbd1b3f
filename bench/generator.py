"""Generator cost: parameters, GMACs and latency of the `alphaface` and `alphaface-fast` presets.

Prints one JSON line. MACs are counted with torch.utils.flop_counter on the meta device
(MACs = FLOPs / 2, convolutions and matmuls only). CPU latency is fp32 inference at 256x256,
batch 1 and 8, random weights; the two presets are timed alternately so both see the same machine
load, and the ratio comes from the same run. With CUDA, bf16 latency and images/s at batch 1 and
64 are added, next to the paper's 24.1 ms and the physical limit at 790 dense bf16 TFLOP/s (H200).

    python bench/generator.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from training.models import build_generator  # noqa: E402

PRESETS = ("alphaface", "alphaface-fast")
SIZE = 256
TARGET_GMAC, TARGET_PARAMS = 717.0, 138.6e6
PAPER_MS = 24.1
PEAK_BF16_FLOPS = 790e12  # H200 dense bf16


def log(msg: str) -> None:
    print(f"[bench/generator] {msg}", file=sys.stderr, flush=True)


def count(preset: str) -> tuple[int, float]:
    """(parameters, GMAC per image at 256x256), on the meta device: no memory, no kernels."""
    with torch.device("meta"):
        g = build_generator(preset)
        flops = FlopCounterMode(display=False)
        with flops:
            g(torch.empty(1, 3, SIZE, SIZE), torch.empty(1, 512))
    return sum(p.numel() for p in g.parameters()), flops.get_total_flops() / 2e9


def inputs(batch: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.rand(batch, 3, SIZE, SIZE, device=device, dtype=dtype)
    z = F.normalize(torch.randn(batch, 512, device=device), dim=1).to(dtype)
    return target, z


def time_alternating(runs: dict[str, Callable[[], None]], warmup: int, iters: int, sync: Callable[[], None]) -> dict:
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


def gpu_latency(gmac: dict[str, float], quick: bool, device: str = "cuda") -> dict:
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    device_name = torch.cuda.get_device_name() if device == "cuda" else device
    out: dict = {"device": device_name, "dtype": "bfloat16", "paper_ms": PAPER_MS}
    models = {
        name: build_generator(name).to(device, torch.bfloat16).to(memory_format=torch.channels_last).eval()
        for name in PRESETS
    }
    plan = {1: (10, 20) if quick else (20, 100), 64: (3, 5) if quick else (5, 20)}
    for batch, (warmup, iters) in plan.items():
        target, z = inputs(batch, device, torch.bfloat16)
        target = target.contiguous(memory_format=torch.channels_last)
        runs = {name: (lambda m=m, t=target, z=z: m(t, z)) for name, m in models.items()}
        log(f"gpu batch {batch}: {warmup} warm-up + {iters} timed per preset")
        with torch.inference_mode():
            med = time_alternating(runs, warmup, iters, sync)
        row: dict = {}
        for name, s in med.items():
            limit_ms = 2 * gmac[name] * 1e9 * batch / PEAK_BF16_FLOPS * 1e3
            row[name] = {
                "ms": s * 1e3,
                "images_per_s": batch / s,
                "physical_limit_ms": limit_ms,
                "fraction_of_peak": limit_ms / (s * 1e3),
            }
        row["fast_over_official"] = med["alphaface-fast"] / med["alphaface"]
        out[f"b{batch}"] = row
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    params, gmac = {}, {}
    for name in PRESETS:
        params[name], gmac[name] = count(name)
    log(f"counted: {json.dumps({k: round(v, 1) for k, v in gmac.items()})} GMAC")

    models = {name: build_generator(name).eval() for name in PRESETS}
    cpu = cpu_latency(models, args.quick)
    del models

    result: dict = {
        "bench": "generator",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "size": SIZE,
        "quick": args.quick,
        "presets": {
            name: {"params_M": params[name] / 1e6, "gmac": gmac[name], "mac_ratio": gmac[name] / gmac["alphaface"]}
            for name in PRESETS
        },
        "cpu_fp32": cpu,
    }
    mac_ratio = gmac["alphaface-fast"] / gmac["alphaface"]
    lat_ratios = [cpu[b]["fast_over_official"] for b in ("b1", "b8")]
    result["checks"] = {
        "official_gmac_within_3pct": abs(gmac["alphaface"] / TARGET_GMAC - 1) <= 0.03,
        "official_params_within_2pct": abs(params["alphaface"] / TARGET_PARAMS - 1) <= 0.02,
        "fast_mac_ratio_le_0.25": mac_ratio <= 0.25,
        "fast_cpu_latency_ratio_le_0.35": max(lat_ratios) <= 0.35,
    }
    if torch.cuda.is_available():
        result["gpu"] = gpu_latency(gmac, args.quick)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
