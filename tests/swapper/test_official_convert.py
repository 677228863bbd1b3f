"""The released official weights run here (issue 12, part 2): swapper.convert, then swap, export, init_from.

Official-format state dicts are built from the official code's layer definitions (key names and
shapes written out below from `Models/Swapper_Units_AdIN.py` and `Models/arcface_resnet.py`) with
random weights, and the converted models are checked against an independent functional forward of
the official arithmetic. The generator is checked at full size on the meta device (layout) and at a
narrow width numerically (the arithmetic does not depend on the width); the r50 identity encoder,
with its BatchNorm-folded convolutions, numerically at full size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from swapper import convert, export, images, swap
from swapper.convert import OFFICIAL_EVAL, ConversionError, convert_generator, convert_official
from tests.training.run_builders import demo_args
from training import artifact
from training.models import GENERATOR_PRESETS, Generator, GeneratorConfig, IdentityEncoder

# The official topology at a narrow width: 6 CAII blocks, strides 1-1-2-2, 2 up + 3 full-res decoder convs.
NARROW = GeneratorConfig(encoder_channels=(8, 16, 16, 32), decoder_up_channels=(16, 8), decoder_channels=(8, 8, 8))
TINY_ID = ((1, 1, 1, 1), (8, 16, 16, 32))  # training.models.identity.TINY_ID: layers, widths


# ---------------------------------------------------------------------------------------------
# The official layouts, from the official code


def official_swapper_shapes(
    enc: tuple[int, ...] = (128, 256, 512, 1024),
    up: tuple[int, ...] = (512, 256),
    full: tuple[int, ...] = (128, 128, 128),
) -> dict[str, tuple[int, ...]]:
    """Swapper.state_dict() shapes: Encoder(512) (E.*) and Decoder(1024, 3) (G.*)."""
    shapes: dict[str, tuple[int, ...]] = {}
    chans, kernels = (3, *enc), (7, 3, 3, 3)  # Encoder_channel, Encoder_kernel_size
    for i in range(4):
        shapes[f"E.Encoder.layer_{i}.0.weight"] = (chans[i + 1], chans[i], kernels[i], kernels[i])
        shapes[f"E.Encoder.layer_{i}.0.bias"] = (chans[i + 1],)
    c = enc[-1]
    for k in range(6):  # Cross_Adaptive_Identity_Injdection_Block(1024, 2048, 512) x 6
        for j in (1, 2):
            p = f"E.fusion_module.fusion_layer_{k}.OP{j}"
            shapes |= {f"{p}.Conv1.weight": (c, c, 3, 3), f"{p}.Conv1.bias": (c,)}
            shapes |= {f"{p}.IFF.fc.weight": (2 * c, 512), f"{p}.IFF.fc.bias": (2 * c,)}
    dec = [("Conv1", up[0], c, 3), ("Conv2", up[1], up[0], 3), ("Conv3", full[0], up[1], 3),
           ("Conv4_new", full[1], full[0], 3), ("Conv5_new", full[2], full[1], 3),
           ("Conv6_new", 3, full[2], 5)]  # fmt: skip
    for name, out_ch, in_ch, k in dec:
        shapes |= {f"G.{name}.weight": (out_ch, in_ch, k, k), f"G.{name}.bias": (out_ch,)}
    return shapes


def official_arcface_shapes(
    layers: tuple[int, ...] = (3, 4, 14, 3), widths: tuple[int, ...] = (64, 128, 256, 512)
) -> dict[str, tuple[int, ...]]:
    """arcface_resnet.resnet50() (ResNet(FaceBottleneck, [3, 4, 14, 3])) state-dict shapes."""

    def bn(p: str, n: int) -> dict[str, tuple[int, ...]]:
        return {f"{p}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{p}.num_batches_tracked": ()
        }

    shapes = {"conv1.weight": (widths[0], 3, 3, 3), "conv1.bias": (widths[0],), "prelu.weight": (widths[0],)}
    inplanes = widths[0]
    for s, (n, planes) in enumerate(zip(layers, widths, strict=True), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            shapes |= bn(f"{p}.bn1", inplanes)
            shapes |= {f"{p}.conv1.weight": (planes, inplanes, 3, 3), f"{p}.conv1.bias": (planes,)}
            shapes |= {f"{p}.conv2.weight": (planes, planes, 3, 3), f"{p}.conv2.bias": (planes,)}
            shapes[f"{p}.prelu.weight"] = (planes,)
            if b == 0:  # stride 2: a biased 1x1 stride-2 conv (its BatchNorm folded in)
                shapes |= {f"{p}.downsample.weight": (planes, inplanes, 1, 1), f"{p}.downsample.bias": (planes,)}
            inplanes = planes
    shapes |= bn("bn2", widths[-1])
    shapes |= {"fc5.weight": (512, widths[-1] * 7 * 7), "fc5.bias": (512,)}
    return shapes | bn("bn3", 512)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Variance-preserving random weights; BatchNorm statistics and PReLU slopes in sane ranges."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0)
        elif key.endswith("running_var") or (key.endswith(".weight") and ".bn" in f".{key}" and len(shape) == 1):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("prelu.weight"):
            out[key] = 0.25 + 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


# ---------------------------------------------------------------------------------------------
# The official arithmetic, functionally


def _adain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adaptive_instance_normalistaion: sigma = sqrt((sum (x - mu)^2 + 2.3e-8) / (h * w))."""

    def mu(t: torch.Tensor) -> torch.Tensor:
        return t.sum((2, 3), keepdim=True) / (t.shape[2] * t.shape[3])

    def sigma(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((((t - mu(t)) ** 2).sum((2, 3), keepdim=True) + 0.000000023) / (t.shape[2] * t.shape[3]))

    return sigma(y) * ((x - mu(x)) / sigma(x)) + mu(y)


def official_swapper(sd: dict[str, torch.Tensor], target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Swapper.forward(target, id): Encoder (reflect pad 3, 4 convs, 6 CAII blocks), Decoder, (tanh + 1) / 2."""
    x = F.pad(target, (3, 3, 3, 3), mode="reflect")
    for i, (stride, pad) in enumerate(zip((1, 1, 2, 2), (0, 1, 1, 1), strict=True)):
        w, b = sd[f"E.Encoder.layer_{i}.0.weight"], sd[f"E.Encoder.layer_{i}.0.bias"]
        x = F.leaky_relu(F.conv2d(x, w, b, stride=stride, padding=pad), 0.2)
    for k in range(6):
        h = x
        for j in (1, 2):
            p = f"E.fusion_module.fusion_layer_{k}.OP{j}"
            code = F.linear(z, sd[f"{p}.IFF.fc.weight"], sd[f"{p}.IFF.fc.bias"])[:, :, None, None]
            half = code.shape[1] // 2
            gamma, beta = code[:, :half], code[:, half:]
            gamma, beta = (gamma + _adain(gamma, h)) / 2.0, (beta + _adain(beta, h)) / 2.0
            y = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), sd[f"{p}.Conv1.weight"], sd[f"{p}.Conv1.bias"])
            y = y - y.mean((2, 3), keepdim=True)
            y = y * (1.0 / torch.sqrt((y * y).mean((2, 3), keepdim=True) + 9.99999993922529e-9))
            y = gamma * y + beta
            h = F.relu(y) if j == 1 else y
        x = x + h

    def conv(t: torch.Tensor, name: str, pad: int) -> torch.Tensor:
        return F.conv2d(t, sd[f"G.{name}.weight"], sd[f"G.{name}.bias"], padding=pad)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

    x = F.leaky_relu(conv(up(x), "Conv1", 1), 0.2)
    x = F.leaky_relu(conv(up(x), "Conv2", 1), 0.2)
    for name in ("Conv3", "Conv4_new"):
        x = F.leaky_relu(conv(x, name, 1), 0.2)
    x = F.leaky_relu(conv(x, "Conv5_new", 0), 0.2)
    x = conv(F.pad(x, (3, 3, 3, 3), mode="reflect"), "Conv6_new", 0)
    return (torch.tanh(x) + 1.0) / 2.0


def official_arcface(sd: dict[str, torch.Tensor], x: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """arcface_resnet.ResNet.forward with FaceBottleneck blocks (BatchNorm folded into biased convs)."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])

    x = F.prelu(F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], padding=1), sd["prelu.weight"])
    for s, n in enumerate(layers, start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            out = F.conv2d(bn(x, f"{p}.bn1"), sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"], padding=1)
            out = F.prelu(out, sd[f"{p}.prelu.weight"])
            out = F.conv2d(out, sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"], stride=2 if b == 0 else 1, padding=1)
            res = F.conv2d(x, sd[f"{p}.downsample.weight"], sd[f"{p}.downsample.bias"], stride=2) if b == 0 else x
            x = out + res
    x = torch.flatten(bn(x, "bn2"), 1)
    return bn(F.linear(x, sd["fc5.weight"], sd["fc5.bias"]), "bn3")


def official_id_code(
    sd: dict[str, torch.Tensor], emap: np.ndarray, x: torch.Tensor, layers: tuple[int, ...]
) -> torch.Tensor:
    """ResNet_ID_encoder: resnet, then nn.Linear with weight emap^T and no bias, then L2 normalisation."""
    code = official_arcface(sd, x, layers) @ torch.from_numpy(emap)
    return code / torch.linalg.norm(code, dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Fixtures: official files on disk


def _write_official(root: Path, swapper: dict, arcface: dict, emap: np.ndarray) -> tuple[Path, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    ckpt, ids, emp = root / "alphaface_demo.pt", root / "arcface_w600k_r50_pytorch.pt", root / "emp.npy"
    # as train_clip.py saves it: more than the swapper, which the converter ignores
    torch.save({"epoch": 3, "global_step": 125_000, "swapper": swapper, "swapper_lr": 1e-4}, ckpt)
    torch.save(arcface, ids)
    np.save(emp, emap)
    return ckpt, ids, emp


def _emap(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((512, 512)) / math.sqrt(512)).astype(np.float32)


@pytest.fixture(scope="module")
def narrow_official(tmp_path_factory) -> dict[str, object]:
    """Narrow official swapper + tiny folded identity encoder, converted (what swap/export/init_from read)."""
    root = tmp_path_factory.mktemp("official_narrow")
    swapper = random_state(official_swapper_shapes((8, 16, 16, 32), (16, 8), (8, 8, 8)), seed=1)
    arcface = random_state(official_arcface_shapes(*TINY_ID), seed=2)
    emap = _emap(3)
    files = _write_official(root / "official", swapper, arcface, emap)
    out = root / "converted"
    summary = convert_official(*files, out, generator_config=NARROW, id_arch="tiny")
    return {"swapper": swapper, "arcface": arcface, "emap": emap, "files": files, "dir": out, "summary": summary}


# ---------------------------------------------------------------------------------------------
# Layout and arithmetic


def test_full_size_official_layout_converts_to_our_generator() -> None:
    shapes = official_swapper_shapes()
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in shapes.items()}
        ours = Generator(GENERATOR_PRESETS["alphaface"]).state_dict()
    converted = convert_generator(state, GENERATOR_PRESETS["alphaface"])
    assert converted.keys() == ours.keys()
    assert all(converted[k].shape == ours[k].shape for k in ours)
    assert abs(sum(math.prod(s) for s in shapes.values()) / 138.6e6 - 1) < 0.01  # the official 138.6M


def test_converted_generator_computes_the_official_forward(narrow_official) -> None:
    generator, spec = artifact.load_generator(narrow_official["dir"])  # what swap and export load
    assert spec["preprocess"] == OFFICIAL_EVAL and spec["ema"] is False and spec["step"] == 125_000
    assert spec["converted_from"]["format"] == "alphaface-official"
    assert (generator.config.target_range, generator.config.eps, generator.config.caii_mode) == (
        "unit",
        1e-8,
        "official",
    )
    g = torch.Generator().manual_seed(4)
    target, z = torch.rand(2, 3, 64, 64, generator=g), F.normalize(torch.randn(2, 512, generator=g), dim=1)
    with torch.no_grad():
        ref = official_swapper(narrow_official["swapper"], target, z)
        torch.testing.assert_close(generator(target, z), ref, rtol=1e-4, atol=1e-5)
        assert (ref - official_swapper(narrow_official["swapper"], target, z.roll(1, 0))).abs().max() > 1e-3


def test_converted_identity_encoder_computes_the_official_folded_r50(tmp_path) -> None:
    """Full-size w600k r50 layout with folded BatchNorm (the first conv included), random weights."""
    arcface = random_state(official_arcface_shapes(), seed=5)
    emap = _emap(6)
    swapper = random_state(official_swapper_shapes((8, 16, 16, 32), (16, 8), (8, 8, 8)), seed=7)
    files = _write_official(tmp_path / "official", swapper, arcface, emap)
    convert_official(*files, tmp_path / "out", generator_config=NARROW, id_arch="r50")
    spec = json.loads((tmp_path / "out" / "generator.json").read_text())
    encoder = IdentityEncoder.from_files("r50", spec["identity"]["weights"], spec["identity"]["emap"])  # strict
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        x112 = F.interpolate(images, (112, 112), mode="bilinear")  # train_clip.py's source: (x*255)/127.5 - 1
        ref = official_id_code(arcface, emap, x112 * 255.0 / 127.5 - 1.0, (3, 4, 14, 3))
        torch.testing.assert_close(encoder(images), ref, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(encoder.encode(x112 * 2 - 1), ref, rtol=1e-4, atol=2e-5)
        # the folded first conv's bias matters: without it the embedding moves
        no_bias = dict(arcface, **{"conv1.bias": torch.zeros_like(arcface["conv1.bias"])})
        assert (official_id_code(no_bias, emap, x112 * 2 - 1, (3, 4, 14, 3)) - ref).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# swap, export and init_from take the converted folder


def _png(path: Path, size: int, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy(), "RGB").save(path)
    return path


def test_swap_with_converted_weights_is_the_official_eval_pipeline(narrow_official, tmp_path) -> None:
    source, target = _png(tmp_path / "s.png", 150, 9), _png(tmp_path / "t.png", 200, 10)
    out = tmp_path / "o.png"
    summary = swap.main(["--checkpoint", str(narrow_official["dir"]), "--source", str(source), "--target",
                         str(target), "--output", str(out), "--detector", "aligned", "--device", "cpu",
                         "--no-progress"])  # fmt: skip
    assert summary["swaps"] == 1 and summary["image_size"] == 256
    # eval.py: s_transform = Resize((112, 112)), ToTensor, (x*255).int()/127.5 - 1; t_transform = Resize((256, 256))
    s = torch.from_numpy(np.asarray(Image.open(source).convert("RGB").resize((112, 112), Image.BILINEAR)).copy())
    s = ((s.permute(2, 0, 1).float().div(255) * 255.0).int() / 127.5 - 1.0)[None]
    assert torch.equal(images.official_source(source), s)
    t = torch.from_numpy(np.asarray(Image.open(target).convert("RGB").resize((256, 256), Image.BILINEAR)).copy())
    t = t.permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        z = official_id_code(narrow_official["arcface"], narrow_official["emap"], s, TINY_ID[0])
        y = official_swapper(narrow_official["swapper"], t, z)[0]
    expected = (y.permute(1, 2, 0) * 255.0).clamp(0, 255).byte().numpy()  # eval.py: x255, clamp, .byte()
    got = np.asarray(Image.open(out))
    assert got.shape == (256, 256, 3)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float rounding can flip a truncation at a boundary
    # ...and not the pipeline for trained runs (bicubic resizes, rounding)
    rounded = (y.permute(1, 2, 0) * 255.0).round().clamp(0, 255).byte().numpy()
    assert (rounded != expected).mean() > 0.2


def test_export_takes_the_converted_folder(narrow_official, tmp_path) -> None:
    summary = export.export_onnx(narrow_official["dir"], tmp_path / "g.onnx")
    assert summary["image_size"] == 256 and summary["spec"]["preprocess"] == OFFICIAL_EVAL
    assert export.verify(narrow_official["dir"], tmp_path / "g.onnx", batch=1) < 1e-4


def test_training_init_from_the_converted_folder(narrow_official, tmp_path, train_data, train_clip) -> None:
    from training.train import main

    widths = "encoder_channels: [8, 16, 16, 32], decoder_up_channels: [16, 8], decoder_channels: [8, 8, 8]"
    official = f"generator_overrides={{{widths}, target_range: unit, eps: 1.0e-8}}"
    sets = ["generator=alphaface", official, f"init_from={narrow_official['dir']}", "lr_g=1e-12", "sample_every=100"]
    summary = main(demo_args([train_data], tmp_path / "run", train_clip, *sets, max_steps=1))
    final = load_file(summary["final"])
    start = load_file(str(narrow_official["dir"] / "generator.safetensors"))
    assert final.keys() == start.keys()
    for k in start:  # one step at lr 1e-12 away from the converted weights
        torch.testing.assert_close(final[k], start[k], rtol=0, atol=1e-6)
    # a run whose generator differs from the folder's is refused, naming the field
    wrong = f"generator_overrides={{{widths}, target_range: unit, eps: 1.0e-5}}"
    with pytest.raises(SystemExit, match=r"init_from .*eps=1e-08"):
        main(demo_args([train_data], tmp_path / "run2", train_clip, "generator=alphaface", wrong,
                       f"init_from={narrow_official['dir']}", max_steps=1))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Refusals


class NotATensor:
    """Anything that weights_only unpickling must refuse."""


def test_mismatched_checkpoints_are_refused_naming_the_first_mismatch(narrow_official, tmp_path) -> None:
    shapes = official_swapper_shapes()
    with torch.device("meta"):
        good = {k: torch.empty(s) for k, s in shapes.items()}
    config = GENERATOR_PRESETS["alphaface"]
    missing = {k: v for k, v in good.items() if k != "E.fusion_module.fusion_layer_3.OP2.IFF.fc.bias"}
    with pytest.raises(ConversionError, match=r"first mismatch: missing key 'E\.fusion_module\.fusion_layer_3\.OP2"):
        convert_generator(missing, config)
    with torch.device("meta"):  # two bad shapes: the one earlier in the official network is named
        reshaped = good | {
            "G.Conv6_new.weight": torch.empty(3, 128, 7, 7),
            "E.Encoder.layer_1.0.weight": torch.empty(1),
        }
    with pytest.raises(
        ConversionError, match=r"first mismatch: 'E\.Encoder\.layer_1\.0\.weight' has shape \(1,\).*2 mis"
    ):
        convert_generator(reshaped, config)
    with torch.device("meta"):  # an Encoder built with add_batch_instant_norm2swapper has extra norms
        extra = good | {"E.batch_norm_0.weight": torch.empty(1024)}
    with pytest.raises(ConversionError, match=r"unexpected key 'E\.batch_norm_0\.weight'"):
        convert_generator(extra, config)

    # the command line: a narrow checkpoint is not the official network; nor is an unfolded ArcFace
    ckpt, ids, emp = narrow_official["files"]
    args = ["--from", "alphaface-official", "--checkpoint", str(ckpt), "--id-weights", str(ids), "--emap", str(emp),
            "--output", str(tmp_path / "x")]  # fmt: skip
    with pytest.raises(SystemExit, match=r"first mismatch: 'E\.Encoder\.layer_0\.0\.weight' has shape \(8, 3, 7, 7\)"):
        convert.main(args)
    unfolded = tmp_path / "backbone.pth"
    torch.save(
        IdentityEncoder.from_files("tiny", narrow_official["dir"] / "identity.safetensors").backbone.state_dict(),
        unfolded,
    )
    with pytest.raises(ConversionError, match=r"first mismatch: missing key 'conv1\.bias'"):
        convert_official(ckpt, unfolded, emp, tmp_path / "y", generator_config=NARROW, id_arch="tiny")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing written

    # never unpickling arbitrary objects
    hostile = tmp_path / "hostile.pt"
    torch.save({"swapper": narrow_official["swapper"], "config": NotATensor()}, hostile)
    with pytest.raises(ConversionError, match="weights_only"):
        convert_official(hostile, ids, emp, tmp_path / "z", generator_config=NARROW, id_arch="tiny")


# ---------------------------------------------------------------------------------------------
# Full size, end to end (slow on a CPU: ~0.7 TMAC per forward)


@pytest.mark.slow
def test_full_size_convert_and_swap_match_the_official_forward(tmp_path) -> None:
    swapper = random_state(official_swapper_shapes(), seed=11)
    arcface = random_state(official_arcface_shapes(), seed=12)
    emap = _emap(13)
    ckpt, ids, emp = _write_official(tmp_path / "official", swapper, arcface, emap)
    out = tmp_path / "converted"
    convert.main(["--from", "alphaface-official", "--checkpoint", str(ckpt), "--id-weights", str(ids),
                  "--emap", str(emp), "--output", str(out)])  # fmt: skip
    generator, spec = artifact.load_generator(out)
    assert spec["preset"] == "alphaface"
    g = torch.Generator().manual_seed(14)
    target, z = torch.rand(1, 3, 256, 256, generator=g), F.normalize(torch.randn(1, 512, generator=g), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(generator(target, z), official_swapper(swapper, target, z), rtol=1e-4, atol=1e-4)
