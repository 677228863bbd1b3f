"""The world's table: held-out (source, target) pairs swapped and measured as the paper measures FF++.

- ID retrieval: the judge recogniser (never trained against) embeds each swap; the gallery holds each
  held-out identity's mean embedding over its first `GALLERY_PER_ID` images, which no pair uses. Top-1 and
  top-5 of the source's identity (and, beside it, how often the target's identity still wins).
- Pose and expression: the attribute net's yaw and pitch against the target's drawn yaw and pitch (mean
  absolute error, degrees), and its expression against the target's drawn one (accuracy).
- Outside the face: the fraction of pixels outside the target's face-and-hair region (dilated by 2 px) that
  the swap changed by more than 0.1 in any channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from demo.world.draw import face_hair
from demo.world.nets import AttrNet, gallery, images_tensor, predict, to_unit
from pipeline.dataset import atomic_open
from swapper.metrics.retrieval import rank
from training.models.iresnet import IResNet

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


@dataclass
class Judge:
    world: dict[str, np.ndarray]
    recogniser: IResNet
    attr: AttrNet

    def __post_init__(self) -> None:
        self.ids, self.vectors = gallery(self.recogniser, self.world, GALLERY_PER_ID)
        region = torch.from_numpy(face_hair(self.world["labels"])).float()[:, None]
        self.region = (F.max_pool2d(region, 5, 1, 2) > 0)[:, 0]  # (N, S, S): face, hair, ears and 2 px

    @torch.no_grad()
    def __call__(self, swaps: Tensor, src: np.ndarray, tgt: np.ndarray) -> dict[str, float]:
        """`swaps` (N, 3, S, S) in [0, 1] for the pairs (src, tgt)."""
        w = self.world
        x = F.interpolate(swaps, size=self.recogniser.input_size, mode="bilinear", align_corners=False)
        emb = torch.cat([self.recogniser(c * 2 - 1) for c in x.split(256)]).numpy()
        col = {u: k for k, u in enumerate(self.ids.tolist())}
        ranks, _ = rank(emb, [col[u] for u in w["identity"][src]], self.vectors.numpy())  # the source's entry
        target_ranks, _ = rank(emb, [col[u] for u in w["identity"][tgt]], self.vectors.numpy())
        pose, logits = predict(self.attr, swaps)
        changed = (swaps - to_unit(images_tensor(w, tgt))).abs().amax(1) > 0.1  # (N, S, S)
        outside = ~self.region[tgt]
        return {
            "id_top1": float((ranks < 1).mean()),
            "id_top5": float((ranks < 5).mean()),
            "id_target_top1": float((target_ranks < 1).mean()),
            "yaw_err": float((pose[:, 0] - torch.from_numpy(w["yaw"][tgt])).abs().mean()),
            "pitch_err": float((pose[:, 1] - torch.from_numpy(w["pitch"][tgt])).abs().mean()),
            "expr_acc": float((logits.argmax(1) == torch.from_numpy(w["expression"][tgt])).float().mean()),
            "outside_changed": float((changed & outside).sum() / outside.sum()),
        }


@torch.no_grad()
def swap_pairs(generator: torch.nn.Module, identity: torch.nn.Module, world: dict[str, np.ndarray],
               src: np.ndarray, tgt: np.ndarray, zero_identity: bool = False) -> Tensor:  # fmt: skip
    """The generator's swaps of the pairs, (N, 3, S, S) in [0, 1]; `zero_identity` feeds it no identity."""
    out = []
    for i in range(0, len(src), 128):
        source, target = (to_unit(images_tensor(world, rows[i : i + 128])) for rows in (src, tgt))
        z = identity(source)
        out.append(generator(target, torch.zeros_like(z) if zero_identity else z).clamp(0, 1))
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
