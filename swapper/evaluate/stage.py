"""The evaluation stage: any swapper on FF++ (or any aligned pairs), measured the same way.

    python -m swapper.evaluate --protocol ffpp --data FFPP_ROOT --checkpoint CKPT --output REPORT_DIR \
        --id-model cosface:PATH --pose-model hopenet:PATH --expr-model deep3d:PATH [--fid-model inception:PATH] \
        [--detector scrfd:PATH.onnx | landmarks:FILE.json] [--frames 10] [--limit N] [--device cuda] [--batch-size 32]
    python -m swapper.evaluate --protocol pairs --source DIR --target DIR [--pairs FILE] ...

    pairs (ffpp: `manipulated_sequences/*/c23/videos/TTT_SSS.mp4`; pairs: sorted order or --pairs)
      -> frames (ffpp: --frames evenly spaced of `original_sequences/youtube/c23/videos/NNN.mp4`)
      -> faces (the detector, or the cache REPORT_DIR/landmarks.json) -> crops (the generator's framing)
      -> swapper (a generator, `baseline:source`, `baseline:target`) -> swaps, quantised to 8 bits
      -> metric models on swap, target and source crops -> REPORT_DIR/parts/UNIT.{npz,parquet}
      -> retrieval over the gallery, FID, latency -> rows.parquet, report.json, report.md, plots/

Swap j of an FF++ pair uses target frame j and source frame j (the j-th of each video's evenly
spaced frames). The source identity for retrieval is the gallery: one entry per source (an FF++
source video: the mean embedding of its frames; pairs: the source image), and a hit is the swap's
own source. Every metric is computed on the swapped crop against the target crop in the
generator's framing (no paste-back), so a swapper is judged on what it outputs.

`--checkpoint` is anything `swapper.swap` loads (a run dir, `final/`, a checkpoint folder, a
converted official folder, a `generator.safetensors`), or a built-in reference: `baseline:source`
(outputs the source face) or `baseline:target` (outputs the target unchanged). With any recogniser
the first retrieves 100%, and the second has zero pose and expression error.

Everything resumes: each unit (an FF++ pair, i.e. one target video; or a chunk of --chunk-size
pairs) is written as one part, and a rerun with the same settings skips finished parts. The
settings that make figures comparable are fixed in REPORT_DIR/settings.json; a rerun with other
settings is refused. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline import cli
from pipeline.dataset import atomic_open, atomic_write_json
from pipeline.distributed import resolve_device
from swapper.evaluate.config import VOLATILE, EvalConfig
from swapper.evaluate.ffpp import LANDMARKS, Faces, ffpp_pairs, ffpp_units
from swapper.evaluate.measure import ROW_SCHEMA, Models, latency, measure, part_paths, read_part, write_part
from swapper.evaluate.pairs import aligned_pairs, pairs_units
from swapper.evaluate.swappers import GeneratorSwapper, load_swapper
from swapper.metrics import retrieval as ret
from swapper.metrics.expression import load_expression
from swapper.metrics.fid import frechet_distance, load_fid
from swapper.metrics.pose import load_pose
from swapper.metrics.recogniser import load_recogniser
from swapper.metrics.report import plot_distributions, write_markdown

SETTINGS = "settings.json"


def settings_of(cfg: EvalConfig, swapper: Any, models: Models, gallery: str) -> dict[str, Any]:
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items() if k not in VOLATILE}
    values.update(
        swapper=swapper.name,
        image_size=swapper.image_size,
        gallery=gallery,
        recogniser=models.recogniser.name,
        pose=models.pose.name,
        expression=models.expression.name,
        fid=models.fid.name if models.fid else None,
    )
    return values


def check_settings(output: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the folder was started with (written on the first run); a rerun must match them,
    except the detector: once the cache holds a frame's faces, the cache is what is used."""
    path = output / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        keys = (set(before) | set(settings)) - {"detector"}
        diff = sorted(k for k in keys if before.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{output} holds a run with other settings ({', '.join(diff)}): "
                "use another --output, or the same settings"
            )
        return before
    atomic_write_json(path, settings)
    return settings


def summarise(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    if not len(values):
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan")}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std())}


def finish(output: Path, names: list[str], skipped: Counter) -> tuple[dict[str, Any], pa.Table]:
    """Retrieval over the gallery, FID and the summary, from the parts on disk (so a resumed run and
    an uninterrupted one compute the same figures from the same bytes)."""
    tables, swap_ids, fid_s, fid_t, gallery = [], [], [], [], {}
    for name in names:
        table, arrays = read_part(output, name)
        tables.append(table)
        for k, v in zip(arrays["gallery_keys"].tolist(), arrays["gallery"]):
            gallery.setdefault(k, v)
        if table.num_rows:
            swap_ids.append(arrays["swap_id"])
            if "fid_swap" in arrays:
                fid_s.append(arrays["fid_swap"])
                fid_t.append(arrays["fid_target"])
    rows = pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()
    keys = sorted(gallery)
    index = {k: i for i, k in enumerate(keys)}
    sources = rows.column("source_key").to_pylist()
    have = [s in index for s in sources]
    if not all(have):  # a source without any face has no gallery entry: its rows cannot be scored
        skipped["source_not_in_gallery"] += len(have) - sum(have)
        rows = rows.filter(pa.array(have))
        swap_ids = [np.concatenate(swap_ids)[np.array(have)]] if swap_ids else []
        sources = [s for s, h in zip(sources, have) if h]
    q = np.concatenate(swap_ids) if swap_ids else np.zeros((0, 1))
    ranks, cos = np.zeros(0, np.int64), np.zeros(0)
    target_ranks = np.full(len(q), -1, np.int64)  # -1: the target's identity has no gallery entry
    if len(q):
        table = np.stack([gallery[k] for k in keys])
        ranks, cos = ret.rank(q, [index[s] for s in sources], table)
        targets = rows.column("target_key").to_pylist()
        known = np.array([t in index for t in targets])
        if known.any():  # how often the target's own identity still wins: the swap did not move it
            target_ranks[known] = ret.rank(q[known], [index[t] for t in targets if t in index], table)[0]
    rows = (
        rows.append_column("id_rank", pa.array(ranks.astype(np.int32)))
        .append_column("id_cosine", pa.array(cos.astype(np.float64)))
        .append_column("target_id_rank", pa.array(target_ranks.astype(np.int32)))
    )
    fid = None
    if fid_s:
        xs, ys = np.concatenate(fid_s), np.concatenate(fid_t)
        fid = frechet_distance(xs, ys) if len(xs) >= 2 else None
    metrics = {
        "pairs": len(set(rows.column("pair").to_pylist())),
        "rows": rows.num_rows,
        "gallery_size": len(keys),
        "id_retrieval": ret.top_k(ranks, (1, 5)),
        "id_similarity": summarise(cos),
        "pose_error": summarise(rows.column("pose_error").to_numpy()),
        "expression_error": summarise(rows.column("expression_error").to_numpy()),
        "fid": fid,
        **per_axis(rows, target_ranks),
    }
    return metrics, rows


def per_axis(rows: pa.Table, target_ranks: np.ndarray) -> dict[str, Any]:
    """The figures that exist only with the data for them (None otherwise): target-identity retrieval (targets
    in the gallery), yaw and pitch error (against --truth where given), expression accuracy (a classifier),
    and the fraction of pixels changed outside the face (--target-masks), in percent."""

    def pct(column: str) -> float | None:
        v = rows.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        v = v[np.isfinite(v)]
        return float(100.0 * v.mean()) if len(v) else None

    known = target_ranks[target_ranks >= 0]
    truth = rows.column("truth_yaw").to_numpy(zero_copy_only=False)
    return {
        "target_id_retrieval": ret.top_k(known, (1, 5)) if len(known) else None,
        "yaw_error": summarise(rows.column("yaw_error").to_numpy(zero_copy_only=False)),
        "pitch_error": summarise(rows.column("pitch_error").to_numpy(zero_copy_only=False)),
        "pose_reference": "truth" if len(truth) and np.isfinite(truth).all() else "target estimate",
        "expression_accuracy": pct("expression_match"),
        "outside_changed": pct("outside_changed"),
    }


def run(cfg: EvalConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output = Path(cfg.output)
    device = torch.device(resolve_device(cfg.device))
    swapper = load_swapper(cfg, device)
    size = swapper.image_size
    models = Models(
        load_recogniser(cfg.id_model, cfg.crop).to(device),
        load_pose(cfg.pose_model).to(device),
        load_expression(cfg.expr_model).to(device),
        None,
    )
    fid_model = load_fid(cfg.fid_model)
    models.fid = fid_model.to(device) if fid_model is not None else None
    skipped: Counter[str] = Counter()
    if cfg.protocol == "ffpp":
        if not Path(cfg.data).is_dir():
            raise FileNotFoundError(f"--data {cfg.data} is not a folder")
        pairs = ffpp_pairs(Path(cfg.data))[: cfg.limit]
        faces = Faces(cfg)
        units = list(ffpp_units(cfg, pairs, size, faces, skipped))
        gallery = "mean embedding of each source video's frames"
    else:
        for flag, folder in (("--source", cfg.source), ("--target", cfg.target)):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{flag} {folder} is not a folder")
        pairs = aligned_pairs(cfg)[: cfg.limit]
        official = isinstance(swapper, GeneratorSwapper) and swapper.official is not None
        units = list(pairs_units(cfg, pairs, size, official, skipped))
        gallery = "each identity's mean over --gallery" if cfg.gallery is not None else "each source image"
    settings = settings_of(cfg, swapper, models, gallery)
    output.mkdir(parents=True, exist_ok=True)  # only once every input is known good: no empty REPORT_DIR
    first = check_settings(output, settings)

    done, resumed, names = 0, 0, []
    bar = tqdm(units, unit="part", desc="evaluate", disable=not cfg.progress)
    for name, build in bar:
        if part_paths(output, name)[1].is_file():
            resumed += 1
            names.append(name)
            continue
        unit = build()
        if unit is None:  # counted in `skipped`
            continue
        write_part(output, name, measure(unit, swapper, models, cfg, device))
        done += 1
        names.append(name)
    bar.close()
    metrics, rows = finish(output, names, skipped)
    with atomic_open(output / "rows.parquet", "wb") as f:
        pq.write_table(rows, f)
    lat = latency(swapper, cfg, device)
    report = {
        "swapper": swapper.name,
        "metrics": metrics,
        "settings": {
            "protocol": cfg.protocol,
            "frames": cfg.frames if cfg.protocol == "ffpp" else None,
            "detector": (first["detector"] or f"cache {LANDMARKS}") if cfg.protocol == "ffpp" else "aligned inputs",
            "crop": cfg.crop,
            "image_size": size,
            "gallery": gallery,
            "pairs_listed": len(pairs),
            "id_model": models.recogniser.name,
            "pose_model": models.pose.name,
            "expr_model": models.expression.name,
            "fid_model": models.fid.name if models.fid else "none",
        },
        "skipped": dict(sorted(skipped.items())),
        "latency": lat,
    }
    columns = {
        "id_cosine": rows.column("id_cosine").to_numpy(),
        "id_rank": rows.column("id_rank").to_numpy(),
        "pose_error": rows.column("pose_error").to_numpy(),
        "expression_error": rows.column("expression_error").to_numpy(),
        "yaw_error": rows.column("yaw_error").to_numpy(),
        "pitch_error": rows.column("pitch_error").to_numpy(),
        **(
            {"outside_changed": rows.column("outside_changed").to_numpy()}
            if metrics["outside_changed"] is not None
            else {}
        ),
    }
    plots = plot_distributions(output, columns)
    atomic_write_json(output / "report.json", report)
    write_markdown(output / "report.md", report, plots)
    return {
        **report,
        "parts_done": done,
        "parts_resumed": resumed,
        "output": str(output),
        "seconds": round(time.perf_counter() - start, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def config() -> EvalConfig:
        try:
            return cli.parse_config("python -m swapper.evaluate", __doc__, EvalConfig, argv)
        except FileNotFoundError as e:
            cli.fail("swapper.evaluate", str(e))

    return cli.stage_main("swapper.evaluate", config, run, (FileNotFoundError, ValueError, ImportError), "evaluate")


if __name__ == "__main__":
    main()
