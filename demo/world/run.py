"""`make world` / `python -m demo.world --out DIR`: the miniature AlphaFace experiment on a CPU.

    faces with truth -> identity encoder, CLIP, judge, attribute net (trained in the world)
      -> caption --engine existing -> embed -> train (warm-up, then the recipe and its ablations)
      -> held-out swaps judged -> DIR/report.{md,json}, grids

Every stage is the project's own: `pipeline.caption`, `pipeline.embed` and `training.train` run on the
world's files as they do on VGGFace2-HQ. A rerun resumes: finished files are kept, and an interrupted
training run continues from its last checkpoint. The figures are the world's, not the paper's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "world.yaml"
ROWS = ("baseline:source", "baseline:target", "full", "no_clip", "no_clip_text", "one_way", "id_weight_0")
# the ablations, as --set overrides of world.yaml (the full recipe)
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_clip": ["loss.clip_id_weight=0", "loss.clip_text_weight=0"],
    "no_clip_text": ["loss.clip_text_weight=0"],
    "one_way": ["generator_overrides={caii_mode: one_way}"],
    "id_weight_0": ["loss.id_weight=0"],  # the broken control: it must fail the ID columns
}
# the warm-up: reconstruction alone on self pairs, one generator pass per image (no swap, cycle or identity
# passes), so that the autoencoder, the bottleneck from scratch, is learnt cheaply first
WARM_UP = [
    "pairs={random: 0, self: 1}", "both_directions=false", "batch_size=16", "lr_g=2.0e-3",
    *(f"loss.{k}_weight=0" for k in ("id", "cycle", "mask", "clip_id", "clip_text")),
]  # fmt: skip


@dataclass(frozen=True)
class WorldConfig:
    out: Path
    seeds: tuple[int, ...] = (0,)
    train_ids: int = 160
    train_per_id: int = 16
    heldout_ids: int = 32
    heldout_per_id: int = 10
    id_steps: int = 200
    judge_steps: int = 200
    attr_steps: int = 160
    clip_steps: int = 120
    warm_steps: int = 300
    steps: int = 120
    pairs: int = 256
    variants: tuple[str, ...] = tuple(VARIANTS)
    progress: bool = True
    extra: tuple[str, ...] = field(default=())  # --set overrides for every variant


def _log(msg: str) -> None:
    print(f"\n=== world: {msg} ===", file=sys.stderr, flush=True)


def build_world(cfg: WorldConfig) -> dict[str, np.ndarray]:
    from demo.world.draw import WorldSize, generate, write_alphaface
    from pipeline.dataset import atomic_open

    path = cfg.out / "world.npz"
    if not path.is_file():
        _log("drawing the faces")
        size = WorldSize(cfg.train_ids, cfg.train_per_id, cfg.heldout_ids, cfg.heldout_per_id)
        world = generate(size, seed=0, progress=cfg.progress)
        with atomic_open(path) as f:
            np.savez_compressed(f, **world)
    world = dict(np.load(path))
    done = cfg.out / "source" / "written.json"
    if not done.is_file():
        from pipeline.dataset import atomic_write_json

        n = write_alphaface(world, cfg.out / "source")
        atomic_write_json(done, {"images": n})
    return world


def train_nets(cfg: WorldConfig, world: dict[str, np.ndarray]) -> dict[str, Any]:
    """The frozen networks and the judges; each is trained once and kept."""
    from demo.world import nets
    from demo.world.clip import CONFIG_FILE, WEIGHTS_FILE, train_clip
    from demo.world.judge import GALLERY_PER_ID
    from pipeline.dataset import atomic_write_json
    from swapper.metrics.world import save

    folder = cfg.out / "nets"
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "nets.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    for name, shape, seed, steps in (("identity", nets.ID_SHAPE, 0, cfg.id_steps),
                                     ("judge", nets.JUDGE_SHAPE, 1, cfg.judge_steps)):  # fmt: skip
        if name not in record:
            _log(f"{name} recogniser (IResNet {shape['widths']}, ArcFace margin, seed {seed})")
            t0 = time.perf_counter()
            net = nets.train_recogniser(world, shape, seed, steps, desc=name, progress=cfg.progress)
            save(net, folder / f"{name}.safetensors", {**shape, "seed": seed, "steps": steps})
            figures = nets.retrieval(net, world, GALLERY_PER_ID)
            record[name] = {**figures, "seconds": round(time.perf_counter() - t0, 1), "seed": seed}
            atomic_write_json(record_path, record)
    if "attributes" not in record:
        _log("attribute net (yaw, pitch, expression; seed 2)")
        t0 = time.perf_counter()
        net = nets.train_attr(world, seed=2, steps=cfg.attr_steps, progress=cfg.progress)
        save(net, folder / "attributes.safetensors", {**nets.ATTR_SHAPE, "seed": 2, "steps": cfg.attr_steps})
        record["attributes"] = {**_attr_figures(net, world), "seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_json(record_path, record)
    if "clip" not in record:
        _log("CLIP (open_clip, contrastive on image-caption pairs; seed 3)")
        t0 = time.perf_counter()
        train_clip(world, folder / "clip", cfg.clip_steps, seed=3, progress=cfg.progress)
        record["clip"] = {"seconds": round(time.perf_counter() - t0, 1), "steps": cfg.clip_steps}
        atomic_write_json(record_path, record)
    clip = folder / "clip"
    record["paths"] = {"identity": str(folder / "identity.safetensors"), "clip_config": str(clip / CONFIG_FILE),
                       "clip_weights": str(clip / WEIGHTS_FILE)}  # fmt: skip
    return record


def _attr_figures(net: Any, world: dict[str, np.ndarray]) -> dict[str, float]:
    import torch

    from demo.world.nets import images_tensor, predict, to_unit

    rows = np.where(world["split"] == 1)[0]
    pose, logits = predict(net, to_unit(images_tensor(world, rows)))
    return {
        "yaw_err": float((pose[:, 0] - torch.from_numpy(world["yaw"][rows])).abs().mean()),
        "pitch_err": float((pose[:, 1] - torch.from_numpy(world["pitch"][rows])).abs().mean()),
        "expr_acc": float((logits.argmax(1) == torch.from_numpy(world["expression"][rows])).float().mean()),
    }


def build_dataset(cfg: WorldConfig, record: dict[str, Any]) -> Path:
    """caption (the world's own captions) and embed (the world's CLIP), as for real data."""
    from pipeline import caption, embed

    dataset = cfg.out / "dataset"
    _log("caption --engine existing, embed with the world's CLIP")
    caption.main(["--source", "alphaface", "--input", str(cfg.out / "source"), "--output", str(dataset),
                  "--engine", "existing", "--shard-size", "512", "--dataset-name", "world",
                  *([] if cfg.progress else ["--no-progress"])])  # fmt: skip
    paths = record["paths"]
    embed.main(["--dataset", str(dataset), "--clip-model", paths["clip_config"], "--pretrained", paths["clip_weights"],
                "--device", "cpu", *([] if cfg.progress else ["--no-progress"])])  # fmt: skip
    return dataset


def train_run(cfg: WorldConfig, run: Path, dataset: Path, record: dict[str, Any], steps: int, sets: list[str],
              seed: int) -> Path:  # fmt: skip
    """One training.train run; skipped when its final generator exists, resumed when it has checkpoints."""
    from training import train

    final = run / "final"
    if (final / "generator.safetensors").is_file():
        return final
    args = ["--config", str(CONFIG), "--data", str(dataset), "--output", str(run), "--max-steps", str(steps),
            "--set", f"id_weights={record['paths']['identity']}", f"seed={seed}", *sets, *cfg.extra]  # fmt: skip
    if (run / "checkpoints").is_dir():
        args.append("--resume")
    if not cfg.progress:
        args += ["--set", "progress=false"]
    train.main(args)
    return final


def train_all(cfg: WorldConfig, dataset: Path, record: dict[str, Any]) -> dict[str, dict[str, Path]]:
    """Per seed: a warm-up per CAII mode, then each variant fine-tuned from its mode's warm-up."""
    finals: dict[str, dict[str, Path]] = {}
    for seed in cfg.seeds:
        warm: dict[str, Path] = {}
        for name in cfg.variants:
            mode = "one_way" if name == "one_way" else "bidirectional"
            if mode not in warm:
                _log(f"warm-up ({mode} CAII, seed {seed}): reconstruction only, {cfg.warm_steps} steps")
                sets = [*WARM_UP, f"generator_overrides={{caii_mode: {mode}}}"]
                warm[mode] = train_run(cfg, cfg.out / "runs" / f"warm_{mode}_s{seed}", dataset, record,
                                       cfg.warm_steps, sets, seed)  # fmt: skip
            _log(f"{name} (seed {seed}): {cfg.steps} steps from the warm-up")
            sets = [f"init_from={warm[mode]}", *VARIANTS[name]]
            run = cfg.out / "runs" / f"{name}_s{seed}"
            finals.setdefault(name, {})[str(seed)] = train_run(cfg, run, dataset, record, cfg.steps, sets, 100 + seed)
    return finals


def judge_all(cfg: WorldConfig, world: dict[str, np.ndarray], record: dict[str, Any],
              finals: dict[str, dict[str, Path]]) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """Each row measured by `swapper.evaluate --protocol pairs` on the held-out files (DIR/eval/ROW), with the
    judge recogniser and the attribute net, which no swapper trained against; a grid of each row's swaps."""
    from demo.world import judge as J
    from training.artifact import load_generator, load_identity

    _log("judging held-out swaps: swapper.evaluate --protocol pairs with the world's judge and attribute net")
    heldout, nets, evals = cfg.out / "heldout", cfg.out / "nets", cfg.out / "eval"
    src, tgt = J.export(world, heldout, cfg.pairs)
    results: dict[str, dict[str, dict[str, float]]] = {
        row: {"-": J.evaluate(row, heldout, nets, evals / row.replace(":", "_"))}
        for row in ("baseline:source", "baseline:target")
    }
    for name, per_seed in finals.items():
        for seed, final in per_seed.items():
            results.setdefault(name, {})[seed] = J.evaluate(str(final), heldout, nets, evals / f"{name}_s{seed}")
            generator, spec = load_generator(final)
            identity = load_identity(spec, argparse.Namespace(id_weights=None, emap=None, id_arch=None))
            swaps = J.swap_pairs(generator, identity, world, src[:8], tgt[:8])
            J.grid(cfg.out / f"grid_{name}_s{seed}.png", world, src, tgt, swaps)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    world = build_world(cfg)
    record = train_nets(cfg, world)
    dataset = build_dataset(cfg, record)
    finals = train_all(cfg, dataset, record)
    results = judge_all(cfg, world, record, finals)
    from demo.world.report import write_report

    report = write_report(cfg.out, results, record, {**asdict(cfg), "out": str(cfg.out)},
                          round(time.perf_counter() - start, 1))  # fmt: skip
    print(json.dumps({"report": str(cfg.out / "report.md"), "seconds": report["seconds"]}))
    return report


def parse_args(argv: list[str] | None) -> WorldConfig:
    d = WorldConfig(out=Path("world_out"))
    p = argparse.ArgumentParser(prog="python -m demo.world", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=d.out, help="the world's folder (a rerun resumes in it)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="swapper training seeds")
    for name in ("train_ids", "train_per_id", "heldout_ids", "heldout_per_id", "id_steps", "judge_steps",
                 "attr_steps", "clip_steps", "warm_steps", "steps", "pairs"):  # fmt: skip
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--variants", nargs="+", default=list(d.variants), choices=list(VARIANTS))
    p.add_argument("--set", nargs="+", default=[], dest="extra", help="training overrides for every swapper run")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    values = {k: v for k, v in vars(a).items() if k not in ("no_progress",)}
    values.update(seeds=tuple(a.seeds), variants=tuple(a.variants), extra=tuple(a.extra), progress=not a.no_progress)
    return WorldConfig(**values)
