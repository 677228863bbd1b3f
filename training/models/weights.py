"""Loading a frozen network's weights: state-dict files, and the error for weights that are missing."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


class MissingWeights(FileNotFoundError):
    """A frozen network (identity encoder, VGG16, CLIP) has no real weights and random ones were not allowed."""


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``, never full
    unpickling). A ``{"state_dict": ...}`` wrapper is unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state
