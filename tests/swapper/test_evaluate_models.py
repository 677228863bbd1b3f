"""Each real-architecture metric loader takes a state dict with the released files' key names and
shapes (random values), strictly, from a real file; a wrong file is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import inception_v3

from swapper.faces.align import apply, template, umeyama
from swapper.metrics.common import reframe
from swapper.metrics.expression import EXP, HEADS, Deep3DRecon, load_expression
from swapper.metrics.fid import load_fid
from swapper.metrics.pose import HopeNet, load_pose
from swapper.metrics.recogniser import load_recogniser
from training.models.iresnet import build_iresnet


def randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Same keys and shapes, random values (a plain dict: no `_metadata`, as old pickles have none)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue  # the 2017/2020 releases predate this buffer; BatchNorm fills it in
        out[k] = (
            torch.rand(v.shape, generator=g) + 0.5
            if k.endswith("running_var")
            else torch.randn(v.shape, generator=g) * 0.02
        )
    return out


def test_cosface_r50_loads_strictly_and_its_arch_is_told_from_the_keys(tmp_path: Path) -> None:
    state = randomised(build_iresnet("r50").state_dict())
    assert state["fc.weight"].shape == (512, 512 * 7 * 7) and "layer3.13.bn3.weight" in state
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = load_recogniser(f"cosface:{path}")
    assert "IResNet-50" in model.name
    torch.testing.assert_close(model.backbone.state_dict()["layer3.13.conv2.weight"], state["layer3.13.conv2.weight"])
    emb = model(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    del state["features.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="not this architecture"):
        load_recogniser(f"cosface:{path}")


def test_reframe_puts_the_template_points_on_the_arcface_points() -> None:
    crops = torch.zeros(1, 3, 256, 256)
    x, y = np.rint(template("ffhq", 256)[2]).astype(int)  # the nose point of the ffhq crop
    crops[0, :, y, x] = 1.0
    out = reframe(crops, "ffhq", template("arcface", 112), 112)[0, 0]
    iy, ix = np.unravel_index(int(out.argmax()), out.shape)
    # the least-squares similarity of the two templates (not an exact fit of each point)
    ex, ey = apply(umeyama(template("ffhq", 256), template("arcface", 112)), np.array([[x, y]], float))[0]
    assert abs(ix - ex) <= 0.75 and abs(iy - ey) <= 0.75


def hopenet_state() -> dict[str, torch.Tensor]:
    state = {(k.removeprefix("trunk.")): v for k, v in HopeNet().state_dict().items()}
    return randomised(state, seed=1)


def test_hopenet_loads_the_released_layout_strictly(tmp_path: Path) -> None:
    state = hopenet_state()
    # the names and shapes of hopenet_robust_alpha1.pkl: a torchvision ResNet-50 at the top level + 4 heads
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer4.2.bn3.running_var"].shape == (2048,)
    assert state["fc_yaw.weight"].shape == (66, 2048) and state["fc_roll.bias"].shape == (66,)
    assert state["fc_finetune.weight"].shape == (3, 2051)
    assert not any(k.startswith(("fc.", "trunk.")) for k in state)
    # angles: the expectation over 66 bins, * 3 - 99; a head peaked on bin b says 3 b - 99 degrees
    for name, b in (("fc_yaw", 40), ("fc_pitch", 33), ("fc_roll", 10)):
        state[f"{name}.weight"] = torch.zeros(66, 2048)
        state[f"{name}.bias"] = torch.full((66,), -1e4)
        state[f"{name}.bias"][b] = 0.0
    path = tmp_path / "hopenet_robust_alpha1.pkl"
    torch.save(state, path)
    model = load_pose(f"hopenet:{path}")
    angles = model(torch.rand(2, 3, 96, 96))
    torch.testing.assert_close(angles, torch.tensor([[21.0, 0.0, -69.0]] * 2))
    del state["fc_finetune.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="fc_finetune.bias"):
        load_pose(f"hopenet:{path}")


def test_deep3d_loads_net_recon_strictly_and_slices_the_expression(tmp_path: Path) -> None:
    state = randomised(Deep3DRecon().state_dict(), seed=2)
    assert [state[f"final_layers.{i}.weight"].shape for i in range(7)] == [(n, 2048, 1, 1) for n in HEADS]
    assert sum(HEADS) == 257 and slice(80, 144) == EXP and "backbone.layer3.5.conv3.weight" in state
    assert not any(k.startswith("backbone.fc.") for k in state)
    expected = torch.arange(64, dtype=torch.float32)
    state["final_layers.1.weight"] = torch.zeros(64, 2048, 1, 1)
    state["final_layers.1.bias"] = expected
    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": state, "epoch": 20}, path)
    model = load_expression(f"deep3d:{path}")
    coeffs = model.coefficients(torch.rand(1, 3, 64, 64))
    assert coeffs.shape == (1, 257)
    torch.testing.assert_close(model(torch.rand(2, 3, 64, 64)), expected.expand(2, 64))


def test_inception_loads_torchvision_weights_strictly(tmp_path: Path) -> None:
    state = randomised(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), seed=3)
    assert state["fc.weight"].shape == (1000, 2048) and "AuxLogits.fc.weight" in state
    path = tmp_path / "inception_v3_google.pth"
    torch.save(state, path)
    model = load_fid(f"inception:{path}")
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2048)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="not this architecture"):
        load_fid(f"inception:{path}")
