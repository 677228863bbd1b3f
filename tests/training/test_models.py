"""Identity encoder, generator (presets, CAII modes) and discriminator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from tests.training.conftest import make_tiny_identity
from training.models import (
    GENERATOR_PRESETS,
    CAIIOp,
    GeneratorConfig,
    IdentityEncoder,
    build_discriminator,
    build_generator,
    build_iresnet,
    load_iresnet,
)
from training.models.generator import channels_last_batch_limit, compiled_for_inference, largest_activation

# ---------------------------------------------------------------------------------------------
# IResNet / identity encoder

WIDTHS = (64, 128, 256, 512)


def insightface_layout(layers: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an arcface_torch IResNet checkpoint, written from the published layout."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 3, 3)
    bn("bn1", 64)
    shapes["prelu.weight"] = (64,)
    in_ch = 64
    for li, (n, c) in enumerate(zip(layers, WIDTHS, strict=True), start=1):
        for bi in range(n):
            p, cin = f"layer{li}.{bi}", in_ch if bi == 0 else c
            bn(f"{p}.bn1", cin)
            shapes[f"{p}.conv1.weight"] = (c, cin, 3, 3)
            bn(f"{p}.bn2", c)
            shapes[f"{p}.prelu.weight"] = (c,)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn3", c)
            if bi == 0:
                shapes[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
        in_ch = c
    bn("bn2", 512)
    shapes["fc.weight"] = (512, 512 * 7 * 7)
    shapes["fc.bias"] = (512,)
    bn("features", 512)
    return shapes


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """insightface's forward order, written functionally from the state dict (stride on conv2)."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5
        )

    x = F.prelu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"), sd["prelu.weight"])
    for li, n in enumerate(layers, start=1):
        for bi in range(n):
            p = f"layer{li}.{bi}"
            out = F.conv2d(bn(x, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=2 if bi == 0 else 1, padding=1), f"{p}.bn3")
            short = x if bi else bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2), f"{p}.downsample.1")
            x = out + short
    x = bn(x, "bn2").flatten(1)
    return bn(F.linear(x, sd["fc.weight"], sd["fc.bias"]), "features")


def randomise_bn_(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)


@pytest.mark.parametrize("arch,layers", [("r50", (3, 4, 14, 3)), ("r100", (3, 13, 30, 3))])
def test_iresnet_state_dict_is_insightface_layout(arch: str, layers: tuple[int, ...]) -> None:
    got = {k: tuple(v.shape) for k, v in build_iresnet(arch).state_dict().items()}
    assert got == insightface_layout(layers)


@pytest.fixture(scope="module")
def r50_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random-weight r50 (BN statistics randomised too) saved as .pth and .safetensors."""
    torch.manual_seed(0)
    model = build_iresnet("r50").eval()
    randomise_bn_(model)
    sd = model.state_dict()
    root = tmp_path_factory.mktemp("r50")
    torch.save(sd, root / "backbone.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "backbone.safetensors"))
    return {"model": model, "sd": sd, "root": root}


def test_iresnet_loads_strictly_and_round_trips(r50_files: dict) -> None:
    model, sd, root = r50_files["model"], r50_files["sd"], r50_files["root"]
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = model(x)
        for name in ("backbone.pth", "backbone.safetensors"):
            assert torch.equal(load_iresnet("r50", root / name)(x), expected), name
        # The forward follows insightface's order of operations, checked against a functional copy.
        ref = reference_forward(sd, x, (3, 4, 14, 3))
    torch.testing.assert_close(expected, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

    # Strict: a missing key or an extra key is an error, not a silent partial load.
    broken = dict(sd)
    broken.pop("layer3.13.bn3.running_var")
    save_file(broken, str(root / "missing.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_iresnet("r50", root / "missing.safetensors")
    torch.save({**sd, "layer4.3.conv1.weight": sd["layer4.2.conv1.weight"]}, root / "extra.pth")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_iresnet("r50", root / "extra.pth")


def test_identity_encoder_pipeline_emap_and_freezing(r50_files: dict) -> None:
    backbone, root = r50_files["model"], r50_files["root"]
    emap = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    np.save(root / "emap.npy", emap)

    plain = IdentityEncoder.from_files("r50", root / "backbone.pth")
    mapped = IdentityEncoder.from_files("r50", root / "backbone.safetensors", emap=root / "emap.npy")
    images = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        raw = backbone(F.interpolate(images, size=(112, 112), mode="bilinear", align_corners=False) * 2 - 1)
        expected_plain = F.normalize(raw, dim=1)
        expected_mapped = F.normalize(expected_plain @ torch.from_numpy(emap), dim=1)
        torch.testing.assert_close(plain(images), expected_plain)
        got = mapped(images)
        torch.testing.assert_close(got, expected_mapped)
        torch.testing.assert_close(got.norm(dim=1), torch.ones(1))

    # Frozen: no parameter trains, eval mode survives a parent's .train(), the input still gets grads.
    parent = torch.nn.ModuleDict({"id": mapped, "head": torch.nn.Linear(2, 2)}).train()
    assert parent["head"].training and not mapped.training and not mapped.backbone.layer1[0].bn1.training
    assert not any(p.requires_grad for p in mapped.parameters())
    x = torch.rand(1, 3, 97, 131, requires_grad=True)  # any input size
    emb = mapped(x)
    assert emb.shape == (1, 512)
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in mapped.parameters())
    with pytest.raises(ValueError, match="emap"):
        IdentityEncoder(backbone, np.zeros((512, 256), dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# Generator


def count(preset: str) -> tuple[int, float]:
    """(parameters, GMAC per 256x256 swap), counted on the meta device without running kernels."""
    with torch.device("meta"):
        g = build_generator(preset)
        flops = FlopCounterMode(display=False)
        with flops:
            out = g(torch.empty(2, 3, 256, 256), torch.empty(2, 512))
    assert out.shape == (2, 3, 256, 256)
    return sum(p.numel() for p in g.parameters()), flops.get_total_flops() / 2e9 / 2


def test_preset_costs() -> None:
    params, gmac = count("alphaface")
    assert abs(params / 138.6e6 - 1) < 0.02, params
    assert abs(gmac / 717 - 1) < 0.03, gmac
    fast_params, fast_gmac = count("alphaface-fast")
    assert fast_gmac <= 0.25 * gmac, (fast_gmac, gmac)
    assert fast_params < params


def check_contract(preset: str, mode: str, size: int) -> None:
    torch.manual_seed(0)
    g = build_generator(preset).eval()
    assert g.config.caii_mode == mode and all(b.op1.mode == mode for b in g.blocks)
    target = torch.rand(1, 3, size, size)
    z = F.normalize(torch.randn(1, 512), dim=1)
    with torch.inference_mode():
        out = g(target, z)
    assert out.shape == (1, 3, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0  # not a constant image


def test_generator_contract_fast_256() -> None:
    check_contract("alphaface-fast", "bidirectional", 256)


def test_generator_contract_official_small() -> None:
    # The full 256x256 run is ~700 GMAC on CPU (slow test below); the network is fully convolutional,
    # and test_preset_costs runs its 256x256 shapes on the meta device.
    check_contract("alphaface", "official", 64)


@pytest.mark.slow
def test_generator_contract_official_256() -> None:
    check_contract("alphaface", "official", 256)


def test_generator_config_overrides_and_checks() -> None:
    g = build_generator("tiny", caii_mode="official", num_caii_blocks=3)
    assert len(g.blocks) == 3 and all(b.op2.mode == "official" for b in g.blocks)
    assert GENERATOR_PRESETS["alphaface"].caii_channels == 1024 and GENERATOR_PRESETS["alphaface"].stride == 4
    with pytest.raises(ValueError, match="caii_mode"):
        GeneratorConfig(caii_mode="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="up stage"):
        GeneratorConfig(decoder_up_channels=(512,))
    with pytest.raises(ValueError, match="unknown generator preset"):
        build_generator("alphaface-xl")
    with pytest.raises(ValueError, match="multiple of the stride"):
        build_generator("tiny")(torch.rand(1, 3, 60, 60), torch.randn(1, 512))


def _op(mode: str, seed: int = 0) -> CAIIOp:
    torch.manual_seed(seed)
    return CAIIOp(channels=16, id_dim=512, mode=mode, activate=True, eps=1e-5)  # type: ignore[arg-type]


def test_official_caii_equals_spatial_mean_reduction() -> None:
    op = _op("official")
    x, z = torch.randn(2, 16, 8, 8) * 3 + 1, F.normalize(torch.randn(2, 512), dim=1)
    with torch.no_grad():
        # The reduction: AdaIN(g, x) on a 1x1 map is the spatial mean of x.
        g, b = op.style(z).chunk(2, dim=1)  # (B, C) each
        mean_x = x.mean(dim=(2, 3))  # (B, C)
        g, b = (g + mean_x) / 2, (b + mean_x) / 2
        h = F.instance_norm(op.conv(F.pad(x, (1, 1, 1, 1), mode="reflect")), eps=1e-5)
        expected = F.relu(g[:, :, None, None] * h + b[:, :, None, None])
        torch.testing.assert_close(op(x, z), expected, rtol=1e-5, atol=1e-5)
        mod_g, mod_b = op.modulation(x, z)
        torch.testing.assert_close(mod_g.flatten(1), g, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mod_b.flatten(1), b, rtol=1e-6, atol=1e-6)


def test_bidirectional_caii_depends_on_target_statistics() -> None:
    x, z = torch.randn(2, 16, 8, 8), F.normalize(torch.randn(2, 512), dim=1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    x_wide = mean + 3.0 * (x - mean)  # same spatial mean, three times the spatial std
    x_shift = x + 2.0  # same std, shifted mean
    with torch.no_grad():
        official, bidir = _op("official"), _op("bidirectional")
        g_off, _ = official.modulation(x, z)
        g_off_wide, _ = official.modulation(x_wide, z)
        torch.testing.assert_close(g_off, g_off_wide)  # official: blind to the target's std
        g_bi, b_bi = bidir.modulation(x, z)
        g_bi_wide, _ = bidir.modulation(x_wide, z)
        g_bi_shift, _ = bidir.modulation(x_shift, z)
        assert (g_bi - g_bi_wide).abs().max() > 0.1
        assert (g_bi - g_bi_shift).abs().max() > 0.1

        # Non-degenerate and exact: the code is normalised over channels, re-styled with x's stats.
        code = bidir.style(z)[:, :16]  # the g half, (B, C)
        code_n = (code - code.mean(1, keepdim=True)) / (code.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        x_std = (x.var(dim=(2, 3), unbiased=False) + 1e-5).sqrt()
        expected = (code + x_std * code_n + x.mean(dim=(2, 3))) / 2
        torch.testing.assert_close(g_bi.flatten(1), expected, rtol=1e-5, atol=1e-5)
        # ... so the identity code still matters after mixing, unlike the official collapse's AdaIN part.
        assert (code_n.std(dim=1) > 0.5).all()
        # And the whole op output differs between x and x_wide in bidirectional mode.
        assert (bidir(x, z) - bidir(x_wide, z)).abs().max() > 1e-2


def test_one_way_caii_injects_the_identity_alone() -> None:
    x, z = torch.randn(2, 16, 8, 8), F.normalize(torch.randn(2, 512), dim=1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    with torch.no_grad():
        op = _op("one_way")
        g, b = op.modulation(x, z)
        code_g, code_b = op.style(z).chunk(2, dim=1)
        torch.testing.assert_close(g.flatten(1), 1 + code_g)
        torch.testing.assert_close(b.flatten(1), code_b)
        # blind to the target's statistics: nothing flows from target to identity
        g_wide, b_wide = op.modulation(mean + 3.0 * (x - mean) + 2.0, z)
        torch.testing.assert_close((g, b), (g_wide, b_wide))
        assert (op(x, z) - op(x, F.normalize(torch.randn(2, 512), dim=1))).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Discriminator


def test_discriminator_patch_logits() -> None:
    torch.manual_seed(0)
    d = build_discriminator(kind="patch")  # ours; the official one is pinned in test_official.py
    with torch.inference_mode():
        out = d(torch.rand(2, 3, 256, 256))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    small = build_discriminator(kind="patch", image_size=64, base_channels=8, max_channels=16, num_down=3)
    assert small(torch.rand(1, 3, 64, 64)).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="multiple"):
        build_discriminator(kind="patch", image_size=100)


def test_tiny_identity_helper_is_frozen() -> None:
    enc = make_tiny_identity()
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training


# ---------------------------------------------------------------------------------------------
# Fixed-shape inference (compiled_for_inference) and the channels-last batch limit


def _swap_inputs(batch: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 3, size, size, generator=g), F.normalize(torch.randn(batch, 512, generator=g), dim=1)


def test_compiled_inference_is_the_eager_forward_whole_graph():
    # aot_eager runs the graph torch.compile captures (fullgraph: a break would raise) without inductor's
    # C++ build, which takes minutes on these CPUs (the inductor test below is marked slow)
    torch.manual_seed(0)
    G = build_generator("tiny")
    assert compiled_for_inference(G, "eager") is G
    fn = compiled_for_inference(G, "default", backend="aot_eager")
    with torch.inference_mode():
        for batch in (1, 3, 1):  # one graph per shape (dynamic=False), reused
            target, z = _swap_inputs(batch)
            torch.testing.assert_close(fn(target, z), G(target, z), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        compiled_for_inference(G, "fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CUDA device"):
        compiled_for_inference(G, "cuda-graph")(*_swap_inputs(1))


@pytest.mark.slow
def test_inductor_compiled_inference_matches_eager():
    torch.manual_seed(0)
    G = build_generator("tiny")
    fn = compiled_for_inference(G, "default")
    with torch.inference_mode():
        target, z = _swap_inputs(2)
        torch.testing.assert_close(fn(target, z), G(target, z), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_inference_matches_eager_and_keeps_each_result():
    torch.manual_seed(0)
    G = build_generator("tiny").cuda()
    fn = compiled_for_inference(G, "cuda-graph")
    with torch.inference_mode():
        a, b = (tuple(t.cuda() for t in _swap_inputs(n)) for n in (2, 2))
        out_a, out_b = fn(*a), fn(*b)  # the second replay does not overwrite the first result
        torch.testing.assert_close(out_a, G(*a), rtol=0, atol=1e-5)
        torch.testing.assert_close(out_b, G(*b), rtol=0, atol=1e-5)


def test_largest_activation_is_the_upsampled_decoder_map():
    # official: the second x2 upsample holds 512 channels at 256 x 256, 2**25 elements per image; a batch of 64
    # is 2**31 elements, past what the channels-last bilinear upsample indexes (the bench crash of issue 22)
    assert largest_activation(GENERATOR_PRESETS["alphaface"]) == 512 * 256 * 256
    assert channels_last_batch_limit(GENERATOR_PRESETS["alphaface"]) == 63
    assert largest_activation(GENERATOR_PRESETS["alphaface"], 128) == 512 * 128 * 128
