"""The report: the paper's FF++ table with this run's row, the settings, and plots.

The paper's rows are printed only where a figure can be cited. AlphaFace's ID retrieval, pose and
time are the paper's figures as docs/design.md §7 records them (arXiv 2601.16429); its expression
and FID, and every other method's figures, come only from a transcription that has not been checked
against the paper here, so they print as "not verified". Fill a cell in by adding the figure and
its source to PAPER_FFPP, never from memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import atomic_open

PAPER = "AlphaFace (Yu et al., arXiv 2601.16429)"
COLUMNS = ("id_retrieval", "pose", "expression", "fid", "ms")
HEADERS = ("ID retrieval (%) ↑", "Pose ↓", "Expression ↓", "FID ↓", "ms ↓")
NOT_VERIFIED = "not verified"
# method -> column -> (figure, source) ; a missing column prints "not verified"
PAPER_FFPP: dict[str, dict[str, tuple[float, str]]] = {
    "FSGAN": {},
    "SimSwap": {},
    "BlendFace": {},
    "HiFiFace": {},
    "FaceDancer": {},
    "DiffSwap": {},
    "AlphaFace": {
        "id_retrieval": (98.77, "docs/design.md §7, the paper's FF++ figure"),
        "pose": (1.24, "docs/design.md §7, the paper's FF++ figure"),
        "ms": (24.1, "docs/design.md §7, the paper's figure (RTX 4090)"),
    },
}


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def paper_rows() -> list[list[str]]:
    rows = []
    for method, cells in PAPER_FFPP.items():
        rows.append([method, *[_cell(cells[c][0]) if c in cells else NOT_VERIFIED for c in COLUMNS]])
    return rows


def run_row(label: str, metrics: dict[str, Any], latency: dict[str, Any] | None) -> list[str]:
    ms = latency.get("median_ms") if latency else None
    values = {
        "id_retrieval": metrics.get("id_retrieval", {}).get("top1"),
        "pose": metrics.get("pose_error", {}).get("mean"),
        "expression": metrics.get("expression_error", {}).get("mean"),
        "fid": metrics.get("fid"),
        "ms": ms,
    }
    return [f"**{label}** (this run)", *[_cell(values[c]) for c in COLUMNS]]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: Path, report: dict[str, Any], plots: list[str]) -> None:
    m, s, lat = report["metrics"], report["settings"], report.get("latency")
    table = markdown_table(["method", *HEADERS], [*paper_rows(), run_row(report["swapper"], m, lat)])
    sources = sorted({src for cells in PAPER_FFPP.values() for _, src in cells.values()})
    settings = [
        f"- protocol: `{s['protocol']}`; pairs evaluated: {m['pairs']} ({m['rows']} frame pairs); "
        f"gallery: {m['gallery_size']} sources ({s['gallery']})",
        f"- frames per video: {s.get('frames')}; detector: `{s.get('detector')}`; "
        f"crop: `{s['crop']}` at {s['image_size']} px",
        f"- recogniser: {s['id_model']}; pose: {s['pose_model']}; expression: {s['expr_model']}; FID: {s['fid_model']}",
        f"- swapper: `{report['swapper']}`",
    ]
    if lat:
        settings.append(
            f"- latency: median {lat['median_ms']:.2f} ms per image at batch 1 on {lat['device']} "
            f"({lat['runs']} runs after {lat['warmup']} warm-up, {lat['dtype']}); the paper's 24.1 ms is on an RTX 4090"
        )
    detail = [
        f"- ID retrieval top-1 / top-5: {_cell(m['id_retrieval']['top1'])} / {_cell(m['id_retrieval']['top5'])} %; "
        f"mean ID cosine: {_cell(m['id_similarity']['mean'], 4)}",
        f"- pose error (L2 of yaw, pitch, roll, degrees): mean {_cell(m['pose_error']['mean'], 3)}, "
        f"median {_cell(m['pose_error']['median'], 3)}",
        f"- expression error (L2 of the expression model's outputs): mean {_cell(m['expression_error']['mean'], 3)}, "
        f"median {_cell(m['expression_error']['median'], 3)}",
        f"- yaw / pitch error (absolute, degrees, against the {m.get('pose_reference', 'target estimate')}): mean "
        f"{_cell(m['yaw_error']['mean'], 3)} / {_cell(m['pitch_error']['mean'], 3)}"
        if "yaw_error" in m
        else None,
        f"- target ID retrieval top-1 / top-5 (its identity still wins): {_cell(m['target_id_retrieval']['top1'])}"
        f" / {_cell(m['target_id_retrieval']['top5'])} %"
        if m.get("target_id_retrieval")
        else None,
        f"- expression accuracy (the swap's class is the target's): {_cell(m['expression_accuracy'])} %"
        if m.get("expression_accuracy") is not None
        else None,
        f"- pixels changed outside the face (--target-masks): {_cell(m['outside_changed'])} %"
        if m.get("outside_changed") is not None
        else None,
        f"- FID (swaps vs target crops): {_cell(m.get('fid'), 3)}",
        f"- skipped: {report['skipped'] or 'none'}",
    ]
    text = [
        "# Evaluation report",
        "",
        "## FF++ (the paper's table and this run)",
        "",
        table,
        "",
        f"Paper figures: {PAPER}; sources: " + "; ".join(sources) + f". Cells marked '{NOT_VERIFIED}' come only "
        "from an unchecked transcription and are left out. Figures from other harnesses differ in detector, "
        "recogniser, frames and gallery; compare a row with this run's only where the settings below match.",
        "",
        "## Settings",
        "",
        *settings,
        "",
        "## This run",
        "",
        *[line for line in detail if line is not None],
        "",
        "## Distributions",
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
    ]
    with atomic_open(path, "w") as f:
        f.write("\n".join(text))


def plot_distributions(folder: Path, columns: dict[str, np.ndarray]) -> list[str]:
    """One histogram PNG per per-pair metric; returns their paths relative to the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for name, values in columns.items():
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.hist(values, bins=min(50, max(5, len(values) // 4)) if len(values) else 5, color="#4472c4")
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("frame pairs")
        if len(values):
            ax.axvline(values.mean(), color="k", ls="--", lw=1, label=f"mean {values.mean():.3g}")
            ax.legend()
        fig.tight_layout()
        rel = f"plots/{name}.png"
        with atomic_open(folder / rel, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        out.append(rel)
    return out
