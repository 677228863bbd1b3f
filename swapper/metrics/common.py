"""What every metric model shares: the spec syntax, re-framing crops, and loading state dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swapper.faces.align import template, umeyama
from training.models.weights import load_state_dict_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_spec(
    spec: str, kind: str | tuple[str, ...], flag: str, extra: tuple[str, ...] = ()
) -> tuple[str, Path | None]:
    """`KIND:PATH` (one of `kind`) -> (KIND, path), `tiny` -> ("tiny", None), or one of `extra` (e.g. `none`)."""
    if spec == "tiny" or spec in extra:
        return spec, None
    kinds = (kind,) if isinstance(kind, str) else kind
    head, _, arg = spec.partition(":")
    if head not in kinds or not arg:
        choices = " | ".join([*(f"{k}:PATH" for k in kinds), "tiny", *extra])
        raise ValueError(f"{flag} must be {choices}, got {spec!r}")
    path = Path(arg)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {spec}: no such file {path}")
    return head, path


def load_weights(path: Path, unwrap: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """A state dict from `.safetensors` or a torch file (weights_only=True), unwrapping the first of
    `unwrap` present (e.g. Deep3DFaceRecon's `net_recon`) and a DataParallel `module.` prefix."""
    if path.suffix == ".safetensors":
        state = load_state_dict_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        for key in unwrap:
            if isinstance(raw, dict) and isinstance(raw.get(key), dict):
                raw = raw[key]
                break
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
        if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
            raise ValueError(f"{path}: not a state dict of tensors")
        state = raw
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(model: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming the first mismatches."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:400]
        raise ValueError(f"{what}: the weights are not this architecture: {first}") from None


def reframe(crops: Tensor, crop: str, dst: np.ndarray, size: int) -> Tensor:
    """Re-warp `(B, 3, S, S)` crops in the `crop` framing so their 5 template points land on `dst`
    (pixels of a size x size output): bilinear, zeros outside, the same map for every crop.

    The crop's landmarks are the template's points by construction, so this is the similarity
    from the generator's template to the model's (e.g. ffhq 256 -> ArcFace 112).
    """
    s = crops.shape[-1]
    m = umeyama(template(crop, s), dst)  # crop pixels -> output pixels
    back = np.linalg.inv(np.vstack([m, [0, 0, 1]]))  # output -> crop
    # align_corners=False: pixel i of n sits at (2 i + 1) / n - 1
    to_norm = np.array([[2 / s, 0, 1 / s - 1], [0, 2 / s, 1 / s - 1], [0, 0, 1]])
    from_norm = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])
    theta = torch.tensor((to_norm @ back @ from_norm)[:2], dtype=crops.dtype, device=crops.device)
    grid = F.affine_grid(theta[None].expand(len(crops), 2, 3), [len(crops), 3, size, size], align_corners=False)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, 3, size, size)


def resize(crops: Tensor, size: int) -> Tensor:
    """`(B, 3, S, S)` -> `(B, 3, size, size)`, bilinear with antialiasing when shrinking."""
    if crops.shape[-1] == size:
        return crops
    return F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def imagenet(x: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def calibrate_bn(model: nn.Module, size: int, seed: int) -> None:
    """Set a random network's BatchNorm statistics from one pass over smooth random images, so
    different inputs give clearly different outputs (an uncalibrated random net collapses them)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.momentum = 1.0
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(16, 3, 8, 8, generator=g)
    with torch.no_grad():
        model.train()(F.interpolate(coarse, size=size, mode="bilinear", align_corners=False))
    model.eval()


class MetricModel(nn.Module):
    """A frozen metric network: `(B, 3, S, S)` crops in [0, 1], `crop` framing -> `(B, D)` float."""

    spec: str  # how it was asked for, e.g. `cosface:/w/r100.pth` or `tiny`
    name: str  # what it is, for the report, e.g. `CosFace IResNet-100`

    def finish(self, spec: str, name: str) -> MetricModel:
        self.spec, self.name = spec, name
        return self.eval().requires_grad_(False)
