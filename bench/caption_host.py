"""Host-side cost of the caption stage, per core: read, decode, resize to 448, write the tar.

Compared in the same run with plain Pillow decode + resize of the same files (no draft decoding),
because these machines are noisy. Prints one JSON line.

    python bench/caption_host.py [--n 150] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.images import load_image  # noqa: E402
from pipeline.shards import ShardSample, write_shard  # noqa: E402

SIZE = 448


def make_jpeg(side: int, seed: int, quality: int = 92) -> bytes:
    """A photo-like JPEG: smooth shading, shapes and mild noise, so file size and decode cost are
    close to a real face crop's (pure noise would be far too expensive to decode)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x * 180 + 40, y * 160 + 50, (1 - x) * 120 + 60], axis=-1)
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, side, 2)
        r = int(rng.integers(side // 20, side // 4))
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(side / 200))
    noise = rng.normal(0, 6, (side, side, 3))
    img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def plain(paths: list[Path]) -> None:
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)


def host_path(paths: list[Path], out: Path) -> None:
    def samples():
        for p in paths:
            loaded = load_image(p.read_bytes(), "jpg", SIZE)
            meta = json.dumps({"key": p.stem, "width": loaded.width, "height": loaded.height}).encode()
            yield ShardSample(p.stem, {"jpg": loaded.data, "json": meta, "txt": b"caption"})

    write_shard(out, samples())


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    result: dict = {"bench": "caption_host", "machine": f"{platform.machine()} cpu, 1 core per measure", "n": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for side in (512, 1024):
            paths = []
            for i in range(args.n):
                p = root / f"{side}_{i}.jpg"
                p.write_bytes(make_jpeg(side, i % 10))
                paths.append(p)
            plain(paths[:5])  # warm the page cache and Pillow
            base = best_rate(lambda paths=paths: plain(paths), args.n, args.repeats)
            host = best_rate(
                lambda paths=paths, side=side: host_path(paths, root / f"s{side}.tar"), args.n, args.repeats
            )
            result[f"plain_decode_resize_{side}_img_s"] = round(base, 1)
            result[f"host_path_{side}_img_s"] = round(host, 1)
            result[f"ratio_{side}"] = round(host / base, 3)
    result["target_ratio_512_ge_0.85"] = result["ratio_512"] >= 0.85
    result["target_ratio_1024_ge_1.6"] = result["ratio_1024"] >= 1.6
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
