"""The world's report: report.json (each row's figures, for other tools) and report.md (the paper's shape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from demo.world.judge import COLUMNS

FIGURES = ("id_top1", "id_top5", "yaw_err", "pitch_err", "expr_acc", "outside_changed")  # report.json's
TABLE = (("baseline:source", "copy the source"), ("baseline:target", "copy the target"), ("full", "AlphaFace recipe"))
ABLATIONS = (
    ("full", "full recipe (CAII, CLIP image + text)"),
    ("no_clip", "w/o CLIP losses"),
    ("no_clip_text", "w/o CLIP text term"),
    ("one_way", "one-way injection instead of CAII"),
    ("id_weight_0", "identity loss weight 0 (broken control)"),
)


def summarise(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Each row's figures: the mean over its seeds, and each seed's own."""
    rows: dict[str, dict[str, Any]] = {}
    for row, per_seed in results.items():
        mean = {c: round(float(np.mean([v[c] for v in per_seed.values()])), 4) for c in COLUMNS}
        rows[row] = {**mean, "seeds": {s: {c: round(v[c], 4) for c in COLUMNS} for s, v in per_seed.items()}}
    return rows


def write_report(out: Path, results: dict[str, dict[str, dict[str, float]]], nets: dict[str, Any],
                 config: dict[str, Any], seconds: float) -> dict[str, Any]:  # fmt: skip
    from pipeline.dataset import atomic_write_bytes, atomic_write_json

    rows = summarise(results)
    report = {**rows, "seconds": seconds, "nets": {k: v for k, v in nets.items() if k != "paths"}, "config": config}
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown(rows, nets, config, seconds).encode())
    return report


def _cells(r: dict[str, Any]) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    return (f"{pct(r['id_top1'])} | {pct(r['id_top5'])} | {pct(r['id_target_top1'])} | {r['yaw_err']:.1f} | "
            f"{r['pitch_err']:.1f} | {pct(r['expr_acc'])} | {pct(r['outside_changed'])}")  # fmt: skip


HEADER = ("| ID top-1 (%) | ID top-5 (%) | target ID top-1 (%) | yaw err (deg) | pitch err (deg) | expression (%) | "
          "outside changed (%) |")  # fmt: skip


def markdown(rows: dict[str, dict[str, Any]], nets: dict[str, Any], config: dict[str, Any], seconds: float) -> str:
    seeds = ", ".join(str(s) for s in config["seeds"])
    lines = [
        "# The miniature AlphaFace world: report",
        "",
        "These are the world's figures, on 64 px synthetic faces, not the paper's: they show whether the "
        "trainer learns a swap, and what each part of the recipe does, in the paper's table shapes.",
        "",
        f"{config['pairs']} held-out (source, target) pairs of identities never seen in training; swapper seeds "
        f"{seeds} (each row: the mean over them); {config['warm_steps']} warm-up steps, then {config['steps']} "
        f"steps per row; {seconds / 60:.1f} minutes in all.",
        "",
        "## Against the baselines (the paper's FF++ table)",
        "",
        f"| method {HEADER}",
        "|---" * 8 + "|",
    ]
    lines += [f"| {label} | {_cells(rows[key])} |" for key, label in TABLE if key in rows]
    lines += ["", "## Ablations (the paper's ablation table)", "", f"| variant {HEADER}", "|---" * 8 + "|"]
    lines += [f"| {label} | {_cells(rows[key])} |" for key, label in ABLATIONS if key in rows]
    ident, judge, attr = nets.get("identity", {}), nets.get("judge", {}), nets.get("attributes", {})
    lines += [
        "",
        "Every row is measured by `python -m swapper.evaluate --protocol pairs` (its own report: eval/ROW/). "
        "ID: the judge recogniser's retrieval of the source's identity among all held-out identities; target ID: "
        "how often the target's identity still wins. Yaw, pitch and expression: the attribute net against the "
        "target's drawn truth. Outside changed: pixels outside the target's face and hair changed by more than 0.1.",
        "",
        "## The world's networks (held-out identities)",
        "",
        "| network | trained against | figure |",
        "|---|---|---|",
        "| identity encoder (IResNet 16-128, 32 px) | the swapper trains against it | "
        f"top-1 {100 * ident.get('top1', 0):.1f}%, top-5 {100 * ident.get('top5', 0):.1f}% |",
        f"| judge recogniser (IResNet 12-96, 32 px, another seed) | evaluation only | top-1 "
        f"{100 * judge.get('top1', 0):.1f}%, top-5 {100 * judge.get('top5', 0):.1f}% |",
        f"| attribute net (IResNet 16-128, 48 px) | evaluation only | yaw {attr.get('yaw_err', 0):.1f} deg, "
        f"pitch {attr.get('pitch_err', 0):.1f} deg, expression {100 * attr.get('expr_acc', 0):.1f}% (chance 25%) |",
        "| CLIP (open_clip ViT, 64 px, patch 16) | the CLIP losses | learns background and lighting more than pose |",
        "",
        "## Held-out swaps (source | target | swap)",
        "",
    ]
    for key, label in ABLATIONS:
        if key in rows:
            first = next(iter(rows[key]["seeds"]))
            lines += [f"**{label}** (seed {first})", "", f"![{key}](grid_{key}_s{first}.png)", ""]
    return "\n".join(lines)
