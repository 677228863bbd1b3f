"""Exponential moving average of the generator's weights (the weights a run exports)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """Float32 shadow copies of a module's floating-point parameters and buffers.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))``, so early steps, where the
    weights move fast, are not averaged with the random initialisation for long. The ramp is a
    function of the step, so a resumed run averages exactly like a straight one.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, Tensor] = {
            k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        state = model.state_dict()
        keys = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k].detach().float() for k in keys], weight)

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError(f"EMA state does not match the model: {sorted(set(state) ^ set(self.shadow))[:5]}")
        reshaped = [k for k, v in state.items() if tuple(v.shape) != tuple(self.shadow[k].shape)]
        if reshaped:
            k = reshaped[0]
            raise ValueError(
                f"EMA state does not match the model: {k} is {tuple(state[k].shape)}, not {tuple(self.shadow[k].shape)}"
            )
        device = next(iter(self.shadow.values())).device
        self.shadow = {k: v.to(device=device, dtype=torch.float32).clone() for k, v in state.items()}
