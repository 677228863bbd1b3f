"""The world's table: held-out (source, target) pairs swapped and measured by `swapper.evaluate --protocol
pairs`, the stage that measures FF++, with the world's metric networks (`world:PATH`) and its truth.

`export` writes the held-out identities as files evaluate reads:
- `faces/IDENTITY/ROW.png`, and `pairs.txt` (`TARGET SOURCE`): pairs of two different identities, from
  outside the gallery;
- `gallery/IDENTITY/`: each identity's first `GALLERY_PER_ID` images, which no pair uses. ID top-1 and
  top-5: the judge recogniser (never trained against) retrieves the source's identity among them all;
  target ID top-1: how often the target's identity still wins;
- `truth.jsonl`: each target's drawn yaw, pitch and expression. The attribute net's yaw and pitch of the
  swap against them (mean absolute error, degrees), and its expression (accuracy);
- `masks/IDENTITY/ROW.png`: the target's face-and-hair region, dilated by 2 px. Outside changed: the
  fraction of pixels outside it that the swap changed by more than 0.1 in any channel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from demo.world.draw import face_hair
from demo.world.nets import images_tensor, to_unit
from pipeline.dataset import atomic_open, atomic_write_bytes, atomic_write_json

GALLERY_PER_ID = 4
COLUMNS = ("id_top1", "id_top5", "id_target_top1", "yaw_err", "pitch_err", "expr_acc", "outside_changed")


def heldout_pairs(world: dict[str, np.ndarray], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` fixed (source, target) rows of two different held-out identities, from outside the gallery."""
    rng = np.random.default_rng(seed)
    rows = np.where(world["split"] == 1)[0]
    ids = world["identity"][rows]
    probes = np.concatenate([rows[ids == u][GALLERY_PER_ID:] for u in np.unique(ids)])
    src, tgt = [], []
    while len(src) < n:
        a, b = rng.choice(probes, 2, replace=False)
        if world["identity"][a] != world["identity"][b]:
            src.append(a)
            tgt.append(b)
    return np.array(src), np.array(tgt)


def export(world: dict[str, np.ndarray], folder: Path, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out files (kept when `folder/done.json` says they are complete); returns the pairs' rows."""
    src, tgt = heldout_pairs(world, pairs)
    if (folder / "done.json").is_file():
        return src, tgt
    rows = np.where(world["split"] == 1)[0]
    ids = world["identity"]
    region = torch.from_numpy(face_hair(world["labels"][rows])).float()[:, None]
    masks = (F.max_pool2d(region, 5, 1, 2) > 0)[:, 0].numpy()  # face, hair, ears and 2 px
    rel = {int(r): f"{ids[r]:04d}/{r:05d}.png" for r in rows}
    gallery = {int(r) for u in np.unique(ids[rows]) for r in rows[ids[rows] == u][:GALLERY_PER_ID]}
    truth = []
    for k, r in enumerate(rows.tolist()):
        _png(folder / ("gallery" if r in gallery else "faces") / rel[r], world["images"][r])
        if r not in gallery:  # the pairs' faces: the targets, whose masks evaluate reads
            _png(folder / "masks" / rel[r], masks[k].astype(np.uint8) * 255)
        truth.append({"image": rel[r], "yaw": float(world["yaw"][r]), "pitch": float(world["pitch"][r]),
                      "expression": int(world["expression"][r])})  # fmt: skip
    atomic_write_bytes(folder / "truth.jsonl", "".join(json.dumps(t) + "\n" for t in truth).encode())
    atomic_write_bytes(folder / "pairs.txt", "".join(f"{rel[t]} {rel[s]}\n" for s, t in zip(src, tgt)).encode())
    atomic_write_json(folder / "done.json", {"pairs": len(src), "identities": int(len(np.unique(ids[rows])))})
    return src, tgt


def _png(path: Path, pixels: np.ndarray) -> None:
    with atomic_open(path) as f:
        Image.fromarray(pixels).save(f, format="PNG")


def evaluate(checkpoint: str, heldout: Path, nets: Path, output: Path) -> dict[str, float]:
    """`swapper.evaluate --protocol pairs` on the held-out pairs; the row's figures as fractions and degrees."""
    from swapper.evaluate import stage

    faces = str(heldout / "faces")
    m = stage.main([
        "--protocol", "pairs", "--checkpoint", checkpoint, "--output", str(output), "--image-size", "64",
        "--source", faces, "--target", faces, "--pairs", str(heldout / "pairs.txt"),
        "--gallery", str(heldout / "gallery"), "--truth", str(heldout / "truth.jsonl"),
        "--target-masks", str(heldout / "masks"), "--id-model", f"world:{nets / 'judge.safetensors'}",
        "--pose-model", f"world:{nets / 'attributes.safetensors'}",
        "--expr-model", f"world:{nets / 'attributes.safetensors'}",
        "--latency-runs", "0", "--device", "cpu", "--no-progress",
    ])["metrics"]  # fmt: skip
    return {
        "id_top1": m["id_retrieval"]["top1"] / 100, "id_top5": m["id_retrieval"]["top5"] / 100,
        "id_target_top1": m["target_id_retrieval"]["top1"] / 100,
        "yaw_err": m["yaw_error"]["mean"], "pitch_err": m["pitch_error"]["mean"],
        "expr_acc": m["expression_accuracy"] / 100, "outside_changed": m["outside_changed"] / 100,
    }  # fmt: skip


@torch.no_grad()
def swap_pairs(generator: torch.nn.Module, identity: torch.nn.Module, world: dict[str, np.ndarray],
               src: np.ndarray, tgt: np.ndarray) -> Tensor:  # fmt: skip
    """The generator's swaps of the pairs, (N, 3, S, S) in [0, 1] (for the grids; evaluate measures its own)."""
    out = []
    for i in range(0, len(src), 128):
        source, target = (to_unit(images_tensor(world, rows[i : i + 128])) for rows in (src, tgt))
        out.append(generator(target, identity(source)).clamp(0, 1))
    return torch.cat(out)


def grid(path: Path, world: dict[str, np.ndarray], src: np.ndarray, tgt: np.ndarray, swaps: Tensor,
         rows: int = 8) -> None:  # fmt: skip
    """source | target | swap, `rows` pairs in two columns, upscaled 2x (nearest)."""
    cells = []
    for k in range(rows):
        swap = (swaps[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        cells.append(np.concatenate([world["images"][src[k]], world["images"][tgt[k]], swap], 1))
    half = (rows + 1) // 2
    left, right = np.concatenate(cells[:half], 0), np.concatenate(cells[half:], 0)
    right = np.pad(right, ((0, left.shape[0] - right.shape[0]), (0, 0), (0, 0)), constant_values=255)
    img = np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], 1)
    with atomic_open(path) as f:
        Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(f, format="PNG")
