"""The EMA of the generator's weights: the update rule, the decay ramp, and an exact state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.ema import EMA


def _tiny(seed: int = 0) -> nn.Module:
    """Floating parameters and buffers (BatchNorm's running stats) plus an integer buffer."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))


def _perturb_(model: nn.Module, step: int) -> None:
    """A deterministic training step: every floating tensor of the state moves."""
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn(v.shape, generator=g, dtype=v.dtype))
    model[1].num_batches_tracked += 1


def test_shadow_holds_float32_copies_of_the_floating_state_only():
    model = _tiny()
    ema = EMA(model, decay=0.99)
    floating = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(ema.shadow) == floating and "1.num_batches_tracked" not in ema.shadow
    assert {"1.running_mean", "1.running_var"} <= floating  # buffers are averaged too
    for k, v in model.state_dict().items():
        if k in floating:
            assert ema.shadow[k].dtype == torch.float32 and torch.equal(ema.shadow[k], v)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    _perturb_(model, 0)  # copies, not views of the live weights
    assert all(torch.equal(ema.shadow[k], before[k]) for k in before)
    half = EMA(_tiny().half(), decay=0.99)
    assert all(v.dtype == torch.float32 for v in half.shadow.values())


def test_decay_ramps_up_to_its_ceiling():
    ema = EMA(_tiny(), decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(8) == pytest.approx(0.5)
    assert ema.decay_at(90) == pytest.approx(0.91)
    ramp = [ema.decay_at(s) for s in range(0, 20_000, 100)]
    assert all(a < b for a, b in zip(ramp, ramp[1:], strict=False) if b < 0.999)
    assert max(ramp) == 0.999 and ema.decay_at(10**7) == 0.999  # capped at the configured decay
    assert EMA(_tiny(), decay=0.5).decay_at(100) == 0.5
    assert EMA(_tiny(), decay=0.0).decay_at(0) == 0.0


def test_update_is_a_lerp_towards_the_live_weights_with_the_ramped_decay():
    model = _tiny()
    ema = EMA(model, decay=0.9)
    reference = {k: v.double().clone() for k, v in ema.shadow.items()}
    for step in range(40):
        _perturb_(model, step)
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        live = model.state_dict()
        for k in reference:
            reference[k] = d * reference[k] + (1 - d) * live[k].double()
    for k, v in ema.shadow.items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v.double(), reference[k], rtol=1e-5, atol=1e-5)
    # the average lags: neither the start nor the live weights
    live = model.state_dict()["0.weight"]
    assert not torch.allclose(ema.shadow["0.weight"], live, atol=1e-2)


def test_one_update_by_hand():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.fill_(4.0)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 2.0]]))
        model.bias.fill_(0.0)
    ema.update(model, step=8)  # decay_at(8) = 0.5: halfway
    assert torch.equal(ema.shadow["weight"], torch.tensor([[2.0, 0.0]]))
    assert torch.equal(ema.shadow["bias"], torch.tensor([2.0]))
    ema.update(model, step=0)  # decay 0.1: 90% of the way to the live weights
    torch.testing.assert_close(ema.shadow["weight"], torch.tensor([[2.9, 1.8]]))


def test_zero_decay_tracks_the_live_weights_exactly():
    model = _tiny()
    ema = EMA(model, decay=0.0)
    _perturb_(model, 0)
    ema.update(model, step=1000)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in ema.shadow.items())


def test_a_resumed_average_continues_bit_for_bit(tmp_path):
    from safetensors.torch import load_file, save_file

    straight_model, resumed_model = _tiny(), _tiny()
    straight = EMA(straight_model, decay=0.95)
    for step in range(6):
        _perturb_(straight_model, step)
        straight.update(straight_model, step)
        if step == 2:  # a checkpoint, as training.checkpoint writes it
            save_file(straight.state_dict(), str(tmp_path / "ema.safetensors"))
            model_state = {k: v.clone() for k, v in straight_model.state_dict().items()}

    resumed_model.load_state_dict(model_state)
    resumed = EMA(resumed_model, decay=0.95)  # a fresh process: the shadow starts from the live weights
    resumed.load_state_dict(load_file(str(tmp_path / "ema.safetensors")))
    for step in range(3, 6):
        _perturb_(resumed_model, step)
        resumed.update(resumed_model, step)
    assert resumed.shadow.keys() == straight.shadow.keys()
    assert all(torch.equal(resumed.shadow[k], straight.shadow[k]) for k in straight.shadow)


def test_state_dict_round_trip_is_cpu_float32_and_owns_its_memory():
    ema = EMA(_tiny(), decay=0.9)
    state = ema.state_dict()
    assert state.keys() == ema.shadow.keys()
    assert all(v.device.type == "cpu" and v.is_contiguous() and not v.requires_grad for v in state.values())
    other = EMA(_tiny(seed=1), decay=0.9)
    halves = {k: v.half() for k, v in state.items()}
    other.load_state_dict(halves)  # stored at lower precision: loaded as float32
    assert all(v.dtype == torch.float32 for v in other.shadow.values())
    assert all(torch.equal(other.shadow[k], halves[k].float()) for k in state)
    loaded = {k: v.clone() for k, v in state.items()}
    other.load_state_dict(loaded)
    for v in loaded.values():  # the caller's tensors are not aliased
        v.zero_()
    assert all(torch.equal(other.shadow[k], state[k]) for k in state)


@pytest.mark.parametrize("change", ["missing", "extra", "renamed"])
def test_a_state_of_another_model_is_refused(change):
    ema = EMA(_tiny(), decay=0.9)
    state = ema.state_dict()
    if change == "missing":
        del state["1.running_var"]
    elif change == "extra":
        state["3.weight"] = torch.zeros(1)
    else:
        state["module.0.weight"] = state.pop("0.weight")
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with pytest.raises(ValueError, match="EMA state does not match the model") as err:
        ema.load_state_dict(state)
    named = {"missing": "1.running_var", "extra": "3.weight", "renamed": "module.0.weight"}[change]
    assert named in str(err.value)
    assert all(torch.equal(ema.shadow[k], before[k]) for k in before)  # the shadow is left as it was


def test_a_state_with_the_right_keys_but_other_shapes_is_refused():
    model = _tiny()
    ema = EMA(model, decay=0.9)
    state = ema.state_dict()
    state["0.bias"] = torch.zeros(2, 4)  # the model's bias is (4,)
    with pytest.raises(ValueError, match="does not match"):
        ema.load_state_dict(state)


def test_live_weights_of_another_dtype_average_into_the_float32_shadow():
    model = _tiny().double()
    ema = EMA(model, decay=0.5)
    assert ema.to("cpu") is ema
    start = {k: v.clone() for k, v in ema.shadow.items()}
    _perturb_(model, 0)
    ema.update(model, 1000)
    live = model.state_dict()
    for k, v in ema.shadow.items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, (0.5 * start[k].double() + 0.5 * live[k]).float())
