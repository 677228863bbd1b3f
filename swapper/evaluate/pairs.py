"""Aligned pairs: folders of face crops in the generator's framing, paired by sorted order or a pairs file.

Optional, for data with known truth (the synthetic world, or any labelled set): `--gallery DIR` makes
retrieval per identity (a source's identity is the first folder of its path), `--truth FILE` gives each
target's yaw, pitch and expression class, and `--target-masks DIR` the region a swap may change.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from swapper.evaluate.config import IMAGE_SUFFIXES, EvalConfig
from swapper.evaluate.measure import Unit
from swapper.images import load_rgb


def list_images(folder: Path) -> list[str]:
    found = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not found:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def aligned_pairs(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(target, source) relative paths: from --pairs, else the i-th target with the i-th source (sorted)."""
    target, source = Path(cfg.target), Path(cfg.source)
    if cfg.pairs is not None:
        pairs = []
        for n, line in enumerate(Path(cfg.pairs).read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"--pairs {cfg.pairs}:{n}: expected `TARGET SOURCE`, got {line!r}")
            for folder, rel in ((target, parts[0]), (source, parts[1])):
                if not (folder / rel).is_file():
                    raise FileNotFoundError(f"--pairs {cfg.pairs}:{n}: {folder / rel} not found")
            pairs.append((parts[0], parts[1]))
        if not pairs:
            raise ValueError(f"--pairs {cfg.pairs} lists no pairs")
        return pairs
    targets, sources = list_images(target), list_images(source)
    if len(targets) != len(sources):
        raise ValueError(
            f"--target has {len(targets)} images and --source {len(sources)}: pairing by sorted order needs "
            "the same count (or give --pairs FILE)"
        )
    return list(zip(targets, sources))


def load_aligned(path: Path, size: int, resample: Image.Resampling) -> np.ndarray:
    rgb = load_rgb(path)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), resample)
    return np.asarray(rgb).copy()  # (S, S, 3) uint8


def identity_of(rel: str) -> str:
    """A path's identity under --gallery: its first folder (`id00012/003.png` -> `id00012`)."""
    head, sep, _ = rel.partition("/")
    return head if sep else ""


def load_gallery(folder: Path, size: int, resample: Image.Resampling, skipped: Counter) -> dict[str, list[np.ndarray]]:
    """identity -> its gallery crops, from `folder/IDENTITY/*` images (an unreadable one is counted, not used)."""
    gallery: dict[str, list[np.ndarray]] = {}
    for rel in list_images(folder):
        if identity_of(rel):
            try:
                gallery.setdefault(identity_of(rel), []).append(load_aligned(folder / rel, size, resample))
            except (OSError, ValueError) as e:
                skipped["unreadable_gallery_image"] += 1
                print(f"swapper.evaluate: unreadable_gallery_image: {rel}: {e}", file=sys.stderr)
    return gallery


TRUTH_KEYS = {"yaw": float, "pitch": float, "expression": int}


def load_truth(path: Path, targets: set[str]) -> dict[str, dict[str, float | int | None]]:
    """target -> {truth_yaw, truth_pitch, truth_expression} (None where a line lacks the key), from JSON
    lines; every evaluated target must have a line."""
    truth: dict[str, dict[str, float | int | None]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            truth[str(rec["image"])] = {
                f"truth_{k}": None if rec.get(k) is None else kind(rec[k]) for k, kind in TRUTH_KEYS.items()
            }
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(
                f'--truth {path}:{n}: expected a JSON object with an "image" key and numeric yaw, pitch, expression'
            ) from None
    missing = sorted(targets - set(truth))
    if missing:
        raise ValueError(f"--truth {path} has no line for {len(missing)} target(s), e.g. {missing[0]}")
    return truth


def load_mask(folder: Path, target: str, size: int) -> np.ndarray:
    """(S, S) bool: where the swap may change the target (the mask's non-black pixels)."""
    path = (folder / target).with_suffix(".png")
    if not path.is_file():
        raise FileNotFoundError(f"--target-masks {folder}: no mask {path.name} for target {target}")
    mask = Image.open(path).convert("L")
    if mask.size != (size, size):
        mask = mask.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(mask) > 0


def pairs_units(cfg: EvalConfig, pairs: list[tuple[str, str]], size: int, official: bool, skipped: Counter):
    target, source = Path(cfg.target), Path(cfg.source)
    # the official eval.py resizes with PIL bilinear; swapper.swap's aligned path with bicubic
    resample = Image.Resampling.BILINEAR if official else Image.Resampling.BICUBIC
    truth = load_truth(Path(cfg.truth), {t for t, _ in pairs}) if cfg.truth is not None else None
    by_identity = cfg.gallery is not None
    if by_identity and not any(identity_of(rel) for rel in list_images(Path(cfg.gallery))):
        raise FileNotFoundError(f"--gallery {cfg.gallery} holds no IDENTITY/ folders of images")
    if cfg.target_masks is not None:  # checked before REPORT_DIR exists: a refused run leaves nothing
        for t, _ in pairs:
            if not (Path(cfg.target_masks) / t).with_suffix(".png").is_file():
                raise FileNotFoundError(f"--target-masks {cfg.target_masks}: no mask for target {t} (its path, .png)")

    def build(k: int, chunk: list[tuple[str, str]]) -> Unit:
        unit = Unit(f"chunk_{k:05d}", [f"{t} {s}" for t, s in chunk])
        if by_identity and k == 0:  # the whole gallery goes into the first part; finish() reads every part's
            unit.gallery = load_gallery(Path(cfg.gallery), size, resample, skipped)
        for t, s in chunk:
            try:
                tgt = load_aligned(target / t, size, resample)
                src = load_aligned(source / s, size, resample)
            except (OSError, ValueError) as e:
                skipped["unreadable_image"] += 1
                print(f"swapper.evaluate: unreadable_image: pair {t} {s}: {e}", file=sys.stderr)
                continue
            keys = (identity_of(s), identity_of(t)) if by_identity else (s, t)
            unit.rows.append({"pair": f"{t} {s}", "target": t, "source": s, "target_frame": 0, "source_frame": 0,
                              "slot": 0, "source_key": keys[0], "target_key": keys[1],
                              **(truth[t] if truth else {})})  # fmt: skip
            unit.targets.append(tgt)
            unit.sources.append(src)
            unit.source_paths.append(source / s)
            if cfg.target_masks is not None:
                unit.masks.append(load_mask(Path(cfg.target_masks), t, size))
            if not by_identity:
                unit.gallery.setdefault(s, [src])
        return unit

    for k in range(0, len(pairs), cfg.chunk_size):
        chunk = pairs[k : k + cfg.chunk_size]
        yield f"chunk_{k // cfg.chunk_size:05d}", lambda k=k // cfg.chunk_size, chunk=chunk: build(k, chunk)
