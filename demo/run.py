"""`make demo`: the whole flow on built-in synthetic data, on CPU, in about three minutes.

    stage one:  synthetic faces -> tiny InternVL3 -> caption -> embed -> data card
    stage two:  a miniature world (demo.world at a small size): an identity encoder, CLIP, a judge and an
                attribute net trained on its faces -> caption -> embed -> train -> evaluate -> swap -> paste back

No network is used. Stage one's models have random weights, so its captions are noise: it shows that
every stage runs and what it writes. Stage two learns: its networks are trained in the world, and its
held-out swaps are measured by `swapper.evaluate` against copy-source and copy-target (`make world` is
the full-size experiment). A rerun resumes: finished shards, embeddings, networks and runs are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# demo.world at a size that trains in about 2.5 minutes on 2 cores: 48 training identities, 12 held out,
# the full recipe alone (make world has the full size, the ablations and the broken control)
DEMO_WORLD = [
    "--train-ids", "48", "--train-per-id", "8", "--heldout-ids", "12", "--heldout-per-id", "6",
    "--id-steps", "80", "--judge-steps", "40", "--attr-steps", "40", "--clip-steps", "20",
    "--warm-steps", "200", "--steps", "60", "--variants", "full", "--pairs", "64",
]  # fmt: skip


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
    from demo.world import judge
    from demo.world import run as world_run
    from swapper import swap

    world = out / "world"
    _step("a miniature world: networks trained on its faces, the swapper trained and judged (demo.world)")
    report = world_run.main(["--out", str(world), *DEMO_WORLD])
    summary["world"] = {row: {k: report[row][k] for k in judge.COLUMNS} for row in world_run.ROWS if row in report}
    run_dir = world / "runs" / "full_s0"
    summary["train"] = str(run_dir)

    _step("swap (one held-out identity onto a folder of another's faces)")
    heldout = world / "heldout" / "faces"
    identities_dirs = sorted(p for p in heldout.iterdir() if p.is_dir())
    source = sorted(identities_dirs[0].glob("*.png"))[0]
    summary["swap"] = swap.main(
        [
            "--checkpoint", str(run_dir), "--source", str(source), "--target", str(identities_dirs[-1]),
            "--output", str(out / "swaps"), "--detector", "aligned", "--device", "cpu",
        ]
    )  # fmt: skip
    _step("faces in the wild (two held-out faces placed in a scene, found by landmarks, swapped, pasted back)")
    from demo.faces import pasted_back_demo

    targets = sorted(identities_dirs[-1].glob("*.png"))[:2]
    summary["faces_in_the_wild"] = pasted_back_demo(run_dir, source, targets, out / "faces")
    summary["sample_grid"] = str(world / "grid_full_s0.png")
    summary["report"] = str(world / "report.md")
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
