"""The world's own networks, trained on its training identities: recognisers (the project's IResNet with an
ArcFace-margin head) and the attribute net (yaw and pitch regression, expression classification).

The identity encoder the swapper trains against is `id_arch: world` (training.models.iresnet.IRESNET_SMALL)
in arcface_torch's key layout, so `--set id_weights=...` loads it like any ArcFace backbone. The judge and
the attribute net are for evaluation only, with their own seeds and widths: a swapper is never judged by a
network it trained against. Their files are swapper.metrics.world's, so `swapper.evaluate --id-model
world:PATH` loads them. All see blurred, noisy, shifted and re-lit faces, so that they measure faces and not
sharpness (a pose regressor trained on clean images reads a blurred face 20 degrees wrong).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from swapper.metrics.retrieval import rank
from swapper.metrics.world import AttrNet, WorldRecogniser
from training.models.iresnet import IRESNET_SMALL, IResNet

ID_SHAPE = IRESNET_SMALL["world"]  # the encoder the swapper trains against
JUDGE_SHAPE = {"layers": (1, 1, 1, 1), "widths": (12, 24, 48, 96), "input_size": 32}  # evaluation only
ATTR_SHAPE = {"layers": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "input_size": 48}


def to_unit(x_u8: Tensor) -> Tensor:
    return x_u8.float() / 255.0


def images_tensor(world: dict[str, np.ndarray], rows: np.ndarray) -> Tensor:
    return torch.from_numpy(world["images"][rows]).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Each row blurred with its own sigma (B,) in pixels (0: none); a separable 5-tap kernel."""
    t = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (B, 5)
    _, _, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    out = sum(k[:, i, None, None, None] * xp[:, :, :, i : i + w] for i in range(5))
    return sum(k[:, i, None, None, None] * out[:, :, i : i + h, :] for i in range(5))


def augment(x: Tensor, g: torch.Generator, flip: bool = True, shift: int = 3) -> tuple[Tensor, Tensor]:
    """(B, 3, S, S) in [0, 1]: blur (sigma up to 1.5) and noise (std up to 0.05) on 60% of rows each, gain
    0.85-1.15, a shift of up to `shift` px, and horizontal flips; returns the images and the flips (B,)."""
    b = x.shape[0]
    x = gaussian_blur(x, torch.rand(b, generator=g) * 1.5 * (torch.rand(b, generator=g) < 0.6))
    noise = torch.rand(b, 1, 1, 1, generator=g) * 0.05 * (torch.rand(b, 1, 1, 1, generator=g) < 0.6)
    x = x + noise * torch.randn(x.shape, generator=g)
    x = (x - 0.5) * (0.85 + 0.3 * torch.rand(b, 1, 1, 1, generator=g)) + 0.5
    if shift:
        dx, dy = torch.randint(-shift, shift + 1, (2,), generator=g).tolist()
        x = torch.roll(F.pad(x, (shift,) * 4, mode="replicate"), (dy, dx), (2, 3))[:, :, shift:-shift, shift:-shift]
    flips = torch.rand(b, generator=g) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    return torch.where(flips[:, None, None, None], x.flip(-1), x).clamp(0, 1), flips


def _schedule(net: nn.Module, extra: list[nn.Parameter], steps: int, lr: float) -> tuple[Any, Any]:
    opt = torch.optim.AdamW([*net.parameters(), *extra], lr=lr, weight_decay=5e-4)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)


def _update(opt: torch.optim.Optimizer, sched: Any, loss: Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


# ---------------------------------------------------------------------------------------------
# Recognisers


class ArcMargin(nn.Module):
    """ArcFace's additive angular margin: s * cos(theta + m) for the true class."""

    def __init__(self, dim: int, classes: int, s: float = 24.0, m: float = 0.4) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, emb: Tensor, y: Tensor, m: float) -> Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.w)).clamp(-1 + 1e-6, 1 - 1e-6)
        target = torch.cos(torch.acos(cos).gather(1, y[:, None]) + m)
        return self.s * cos.scatter(1, y[:, None], target)


def train_recogniser(
    world: dict[str, np.ndarray], shape: dict[str, Any], seed: int, steps: int, batch: int = 128, lr: float = 2e-3,
    desc: str = "recogniser", progress: bool = True,
) -> IResNet:  # fmt: skip
    """An IResNet of `shape` on the training identities (the margin warms up over the first 30% of steps)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rows = np.where(world["split"] == 0)[0]
    _, y_all = np.unique(world["identity"][rows], return_inverse=True)
    y_all, xs = torch.from_numpy(y_all), images_tensor(world, rows)
    net = IResNet(**shape)
    head = ArcMargin(512, int(y_all.max()) + 1)
    opt, sched = _schedule(net, list(head.parameters()), steps, lr)
    net.train()
    for step in tqdm(range(steps), desc=f"world: {desc}", disable=not progress):
        idx = torch.randint(0, len(rows), (batch,), generator=g)
        x, _ = augment(to_unit(xs[idx]), g)
        x = F.interpolate(x, size=net.input_size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(head(net(x * 2 - 1), y_all[idx], head.m * min(1.0, step / (0.3 * steps))), y_all[idx])
        _update(opt, sched, loss)
    return net.eval()


@torch.no_grad()
def embed(net: IResNet, x_u8: Tensor, batch: int = 256) -> Tensor:
    """L2-normalised embeddings of uint8 images, as `swapper.evaluate --id-model world:PATH` computes them."""
    recogniser = WorldRecogniser(net)
    return torch.cat([recogniser(to_unit(x_u8[i : i + batch])) for i in range(0, len(x_u8), batch)])


def gallery(net: IResNet, world: dict[str, np.ndarray], per_id: int) -> tuple[np.ndarray, Tensor]:
    """Held-out identities and their gallery vectors: the mean embedding of each one's first `per_id` images."""
    rows = np.where(world["split"] == 1)[0]
    ids = world["identity"][rows]
    uniq = np.unique(ids)
    vectors = [F.normalize(embed(net, images_tensor(world, rows[ids == u][:per_id])).mean(0), dim=0) for u in uniq]
    return uniq, torch.stack(vectors)


def retrieval(net: IResNet, world: dict[str, np.ndarray], per_id: int) -> dict[str, float]:
    """Top-1 and top-5 of the held-out probes (each identity's images after its gallery ones)."""
    uniq, vectors = gallery(net, world, per_id)
    rows = np.where(world["split"] == 1)[0]
    probes = np.concatenate([rows[world["identity"][rows] == u][per_id:] for u in uniq])
    col = {u: k for k, u in enumerate(uniq.tolist())}
    ranks, _ = rank(embed(net, images_tensor(world, probes)).numpy(), [col[u] for u in world["identity"][probes]],
                    vectors.numpy())  # fmt: skip
    return {"top1": float((ranks < 1).mean()), "top5": float((ranks < 5).mean())}


# ---------------------------------------------------------------------------------------------
# Attribute net


def train_attr(
    world: dict[str, np.ndarray], seed: int, steps: int, batch: int = 128, lr: float = 2e-3, progress: bool = True
) -> AttrNet:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rows = np.where(world["split"] == 0)[0]
    xs = images_tensor(world, rows)
    yaw, pitch = torch.from_numpy(world["yaw"][rows]), torch.from_numpy(world["pitch"][rows])
    expr = torch.from_numpy(world["expression"][rows])
    net = AttrNet(**ATTR_SHAPE)
    opt, sched = _schedule(net, [], steps, lr)
    net.train()
    for _ in tqdm(range(steps), desc="world: attribute net", disable=not progress):
        idx = torch.randint(0, len(rows), (batch,), generator=g)
        x, flips = augment(to_unit(xs[idx]), g, shift=2)
        pose, logits = net(x)
        y_yaw = torch.where(flips, -yaw[idx], yaw[idx])  # a mirrored face turns the other way
        loss = 4 * (F.smooth_l1_loss(pose[:, 0] / 30, y_yaw / 30) + F.smooth_l1_loss(pose[:, 1] / 30, pitch[idx] / 30))
        loss = loss + F.cross_entropy(logits, expr[idx])
        _update(opt, sched, loss)
    return net.eval()


@torch.no_grad()
def predict(net: AttrNet, images01: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    outs = [net(images01[i : i + batch]) for i in range(0, len(images01), batch)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
