"""`make demo`: the whole flow on built-in synthetic data with tiny random models, on CPU.

    synthetic faces -> tiny models -> caption -> embed -> data card -> train -> swap

No network is used. The tiny models have random weights, so their captions are noise: the demo
shows that every stage runs and what it writes, not what a trained model produces. A rerun
resumes: finished shards and embeddings are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "demo.yaml"


def _step(name: str) -> None:
    print(f"\n=== demo: {name} ===", file=sys.stderr, flush=True)


def run(out: Path, identities: int = 4, per_identity: int = 4, size: int = 256) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from demo import synthetic, tiny_models
    from pipeline import caption

    start = time.perf_counter()
    data, models, dataset = out / "data" / "vggface2-hq", out / "models", out / "dataset"
    summary: dict[str, Any] = {}

    _step("synthetic faces")
    if not (data / "synthetic_attributes.jsonl").is_file():
        synthetic.generate(data, "vggface2-hq", identities=identities, per_identity=per_identity, seed=0, size=size)
    summary["images"] = sum(1 for _ in data.rglob("*.jpg"))

    _step("tiny models (random weights: their captions are noise)")
    internvl = models / tiny_models.INTERNVL_DIR
    if not (internvl / "config.json").is_file():
        tiny_models.main(["--out", str(models)])

    _step("caption (transformers engine, tiny InternVL3)")
    summary["caption"] = caption.main(
        [
            "--source", "vggface2-hq", "--input", str(data), "--output", str(dataset),
            "--engine", "transformers", "--model", str(internvl), "--device", "cpu",
            "--shard-size", "8", "--batch-size", "4", "--max-new-tokens", "24",
        ]
    )  # fmt: skip
    _step("embed (open_clip, tiny CLIP config, random weights)")
    from pipeline import embed

    summary["embed"] = embed.main(
        [
            "--dataset", str(dataset), "--clip-model", str(models / tiny_models.CLIP_FILE),
            "--pretrained", "none", "--batch-size", "64", "--device", "cpu",
        ]
    )  # fmt: skip
    _step("data card (from the run's stats)")
    from pipeline import card

    card.main(["--dataset", str(dataset)])
    summary["card"] = str(dataset / "README.md")
    # the demo is the one place that drives both stages (pipeline never imports training)
    from swapper import swap
    from training import train

    run_dir = out / "run"
    _step("train (demo.yaml: tiny networks, random frozen weights, a few CPU steps)")
    train_args = ["--config", str(DEMO_CONFIG), "--data", str(dataset), "--output", str(run_dir)]
    # 40 steps at a high learning rate: enough for the tiny generator's swaps to leave flat grey.
    train_args += ["--max-steps", "40", "--set", "lr_g=0.003", "lr_d=0.003", "sample_every=20", "checkpoint_every=20"]
    if (run_dir / "checkpoints").is_dir():
        train_args.append("--resume")
    summary["train"] = train.main(train_args)

    _step("swap (one identity onto a folder of targets)")
    identities_dirs = sorted(p for p in data.iterdir() if p.is_dir())
    source = sorted(identities_dirs[0].glob("*.jpg"))[0]
    summary["swap"] = swap.main(
        [
            "--checkpoint", str(run_dir), "--source", str(source), "--target", str(identities_dirs[-1]),
            "--output", str(out / "swaps"), "--detector", "aligned", "--device", "cpu",
        ]
    )  # fmt: skip
    _step("faces in the wild (two crops placed in a scene, found by landmarks, swapped, pasted back)")
    from demo.faces import pasted_back_demo

    targets = sorted(identities_dirs[-1].glob("*.jpg"))[:2]
    summary["faces_in_the_wild"] = pasted_back_demo(run_dir, source, targets, out / "faces")
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    summary["sample_grid"] = str(grids[-1]) if grids else None
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["dataset"] = str(dataset)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--identities", type=int, default=4)
    p.add_argument("--per-identity", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args(argv)
    summary = run(a.out, a.identities, a.per_identity, a.size)
    print(json.dumps({"demo": summary}, indent=1))
    return summary


if __name__ == "__main__":
    main()
