"""Aligned pairs: folders of face crops in the generator's framing, paired by sorted order or a pairs file."""

from __future__ import annotations

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


def pairs_units(cfg: EvalConfig, pairs: list[tuple[str, str]], size: int, official: bool, skipped: Counter):
    target, source = Path(cfg.target), Path(cfg.source)
    # the official eval.py resizes with PIL bilinear; swapper.swap's aligned path with bicubic
    resample = Image.Resampling.BILINEAR if official else Image.Resampling.BICUBIC

    def build(k: int, chunk: list[tuple[str, str]]) -> Unit:
        unit = Unit(f"chunk_{k:05d}", [f"{t} {s}" for t, s in chunk])
        for t, s in chunk:
            try:
                tgt = load_aligned(target / t, size, resample)
                src = load_aligned(source / s, size, resample)
            except (OSError, ValueError) as e:
                skipped["unreadable_image"] += 1
                print(f"swapper.evaluate: unreadable_image: pair {t} {s}: {e}", file=sys.stderr)
                continue
            unit.rows.append({"pair": f"{t} {s}", "target": t, "source": s, "target_frame": 0, "source_frame": 0,
                              "slot": 0})  # fmt: skip
            unit.targets.append(tgt)
            unit.sources.append(src)
            unit.source_paths.append(source / s)
            unit.gallery.setdefault(s, [src])
        return unit

    for k in range(0, len(pairs), cfg.chunk_size):
        chunk = pairs[k : k + cfg.chunk_size]
        yield f"chunk_{k // cfg.chunk_size:05d}", lambda k=k // cfg.chunk_size, chunk=chunk: build(k, chunk)
