"""Activation checkpointing of the generator (`grad_checkpointing: true`): the same gradients, less memory kept.

Run on the `tiny` preset and on a small network of the official shape (CAII mode `official`, [0, 1]
target, eps 1e-8, two x2 decoder stages), in float32 on the CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.models import CAIIBlock, Generator, build_generator

SHAPES = {
    "tiny": {},
    # the official topology (strides 1, 1, 2, 2; CAII at 1/4; official CAII arithmetic), narrow
    "official-shaped": {
        "preset": "alphaface",
        "encoder_channels": (8, 16, 32, 48),
        "num_caii_blocks": 3,
        "decoder_up_channels": (32, 16),
        "decoder_channels": (8, 8, 8),
    },
}


def _generator(name: str) -> Generator:
    overrides = dict(SHAPES[name])
    torch.manual_seed(0)
    return build_generator(str(overrides.pop("preset", "tiny")), **overrides)


def _grads(G: Generator, target: torch.Tensor, z: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random projection of the swap, for every parameter and both inputs."""
    G.zero_grad(set_to_none=True)
    target, z = target.clone().requires_grad_(True), z.clone().requires_grad_(True)
    (G(target, z) * weight).sum().backward()
    grads = {name: p.grad.clone() for name, p in G.named_parameters()}
    return {**grads, "input/target": target.grad, "input/id": z.grad}


def _inputs(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, size, size, generator=g)
    z = F.normalize(torch.randn(2, 512, generator=g), dim=1)
    return target, z, torch.randn(2, 3, size, size, generator=g)


@pytest.mark.parametrize("name", list(SHAPES))
def test_gradients_are_the_same_with_and_without(name):
    G = _generator(name)
    target, z, weight = _inputs(32)
    plain = _grads(G, target, z, weight)
    checkpointed = _grads(G.set_grad_checkpointing(), target, z, weight)
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        assert plain[key].abs().sum() > 0, key  # every parameter takes part
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1.3e-6, atol=1e-6, msg=key)  # float32


@pytest.mark.parametrize("name", list(SHAPES))
def test_it_recomputes_the_blocks_and_decoder_and_keeps_less(name):
    G = _generator(name)
    target, z, weight = _inputs(32)
    calls = {"encoder": 0, "block": 0, "upsample": 0}
    kinds = {CAIIBlock: "block", torch.nn.Upsample: "upsample"}
    for module in G.modules():
        kind = "encoder" if module is G.encoder else kinds.get(type(module))
        if kind:  # a pre-hook: a recomputation stops once it has what backward needs
            module.register_forward_pre_hook(lambda *_, kind=kind: calls.__setitem__(kind, calls[kind] + 1))

    def kept_for_backward(checkpointing: bool) -> int:
        """Bytes autograd keeps outside checkpointed regions (those keep nothing but their inputs)."""
        G.set_grad_checkpointing(checkpointing)
        kept = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal kept
            kept += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = G(target.clone().requires_grad_(True), z)
        for k in calls:
            calls[k] = 0
        (out * weight).sum().backward()
        return kept

    plain = kept_for_backward(False)
    assert calls == {"encoder": 0, "block": 0, "upsample": 0}  # backward alone runs no forward
    checkpointed = kept_for_backward(True)
    n_blocks, n_up = len(G.blocks), len(G.config.decoder_up_channels)
    assert calls == {"encoder": 1, "block": n_blocks, "upsample": n_up}  # each recomputed once, in backward
    assert checkpointed < 0.5 * plain
    with torch.no_grad():  # inference: nothing recomputed, the same swap
        calls.update(encoder=0, block=0, upsample=0)
        G(target, z)
        assert calls == {"encoder": 1, "block": n_blocks, "upsample": n_up}
