"""The convert stage: the released official AlphaFace weights as one of our generator folders.

    python -m swapper.convert --from alphaface-official --checkpoint alphaface_demo.pt \
        --id-weights arcface_w600k_r50_pytorch.pt --emap emp.npy --output DIR
    python -m swapper.swap --checkpoint DIR --source S.png --target T.png --output O.png

    official Swapper state (E.*, G.*)   -> DIR/generator.safetensors + DIR/generator.json
    official folded-BN ArcFace r50      -> DIR/identity.safetensors (arcface_torch layout)
    emp.npy                             -> DIR/emap.npy

`DIR` is what training writes as `RUN_DIR/final/` (`training.artifact.save_generator`), so
`swapper.swap`, `swapper.export` and training's `init_from` take it. Its `generator.json` adds
`preprocess`, the official `eval.py` image handling, which swap then applies exactly: the source
resized to 112 (PIL bilinear) and quantised as `(x * 255).int() / 127.5 - 1`, the target resized
to 256 (PIL bilinear) and read in [0, 1], the output `(tanh + 1) / 2` written with truncation.

Files are read with `torch.load(weights_only=True)` (never full unpickling). A checkpoint whose
keys or shapes are not the official network's is refused, naming the first mismatch.

Key maps (official -> ours), from the official `Models/Swapper_Units_AdIN.py`:

    E.Encoder.layer_{i}.0.*                        encoder.{2i+1}.*          (4 convs; reflect pad 3 first)
    E.fusion_module.fusion_layer_{k}.OP{j}.Conv1.* blocks.{k}.op{j}.conv.*   (CAII 3x3 conv)
    E.fusion_module.fusion_layer_{k}.OP{j}.IFF.fc.* blocks.{k}.op{j}.style.* ([gamma, beta] = fc(z))
    G.Conv1, G.Conv2, G.Conv3, G.Conv4_new, G.Conv5_new, G.Conv6_new  the decoder's convs, in order

and from `Models/arcface_resnet.py` (`resnet50`: BatchNorm folded into biased convs, except each
block's first BN and the head's) to insightface's `arcface_torch` IResNet: a folded conv becomes our
bias-free conv plus a BatchNorm that only adds the bias (weight 1, mean 0, variance 1 - eps), so
our encoder computes the official one to float rounding:

    conv1.{weight,bias}                conv1.weight + bn1 (bias)         prelu -> prelu
    layerL.B.bn1.*                     layerL.B.bn1.*
    layerL.B.conv1 / conv2             layerL.B.conv1 + bn2 / conv2 + bn3 layerL.B.prelu -> prelu
    layerL.0.downsample.{weight,bias}  layerL.0.downsample.0 + downsample.1
    bn2.*  fc5.*  bn3.*                bn2.*  fc.*  features.*
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from pipeline.cli import parse_config, stage_main
from pipeline.dataset import atomic_write_bytes
from swapper.images import OFFICIAL_EVAL
from training.artifact import GENERATOR_FORMAT, save_generator
from training.models import GENERATOR_PRESETS, Generator, GeneratorConfig
from training.models.identity import TINY_ID
from training.models.iresnet import BN_EPS, IResNet, build_iresnet

SOURCES = ("alphaface-official",)
IDENTITY_FILE = "identity.safetensors"
EMAP_FILE = "emap.npy"
_DECODER_NAMES = ("Conv1", "Conv2", "Conv3", "Conv4_new", "Conv5_new", "Conv6_new")


class ConversionError(ValueError):
    """A file that is not the official network it claims to be."""


# ---------------------------------------------------------------------------------------------
# Reading files


def load_torch_file(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:
        try:  # mmap: the released checkpoint is ~1.9 GB, most of it not the swapper
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: holds objects other than tensors and plain containers, which weights_only loading "
            f"refuses (never unpickling arbitrary code): {str(e).splitlines()[0]}"
        ) from None


def _tensors(state: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{what}: not a state dict of tensors")
    return state


def swapper_state(checkpoint: Any, what: str) -> tuple[dict[str, Tensor], int | None]:
    """The ``Swapper`` state dict of an official checkpoint (``ckpt["swapper"]``, or a bare state
    dict) and its ``global_step`` when recorded."""
    if isinstance(checkpoint, dict) and "swapper" in checkpoint:
        step = checkpoint.get("global_step")
        return _tensors(checkpoint["swapper"], f"{what}['swapper']"), step if isinstance(step, int) else None
    return _tensors(checkpoint, what), None


def check_layout(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Refuse ``state`` unless its keys and shapes are exactly ``expected``; name the first mismatch
    (in the official network's order, then unexpected keys sorted)."""
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing key {key!r} (shape {shape})")
        elif tuple(state[key].shape) != shape:
            problems.append(f"{key!r} has shape {tuple(state[key].shape)}, the official network needs {shape}")
    problems += [f"unexpected key {k!r}" for k in sorted(set(state) - set(expected))]
    if problems:
        raise ConversionError(
            f"{what} does not match the official network: first mismatch: {problems[0]} "
            f"({len(problems)} mismatch(es) in all)"
        )


# ---------------------------------------------------------------------------------------------
# The generator


def _check_official_topology(config: GeneratorConfig) -> None:
    """Widths may differ (tests use a narrow copy); the layer structure must be the official one."""
    official = GENERATOR_PRESETS["alphaface"]
    for name in ("encoder_strides", "caii_mode", "target_range", "eps", "image_size"):
        if getattr(config, name) != getattr(official, name):
            raise ValueError(
                f"the official network has {name}={getattr(official, name)!r}, not {getattr(config, name)!r}"
            )
    if len(config.decoder_up_channels) != 2 or len(config.decoder_channels) != 3:
        raise ValueError("the official decoder has 2 upsampling convs and 3 full-resolution convs")


def generator_key_map(config: GeneratorConfig) -> dict[str, str]:
    """Official ``Swapper`` state-dict key -> our :class:`Generator` key, in the official order."""
    _check_official_topology(config)
    out: dict[str, str] = {}
    for i in range(len(config.encoder_channels)):
        for p in ("weight", "bias"):
            out[f"E.Encoder.layer_{i}.0.{p}"] = f"encoder.{2 * i + 1}.{p}"  # encoder.0 is the reflect pad
    for k in range(config.num_caii_blocks):
        for j in (1, 2):
            for theirs, ours in (("Conv1", "conv"), ("IFF.fc", "style")):
                for p in ("weight", "bias"):
                    out[f"E.fusion_module.fusion_layer_{k}.OP{j}.{theirs}.{p}"] = f"blocks.{k}.op{j}.{ours}.{p}"
    with torch.device("meta"):
        decoder = Generator(config).decoder
    convs = [i for i, m in enumerate(decoder) if isinstance(m, nn.Conv2d)]
    for name, index in zip(_DECODER_NAMES, convs, strict=True):
        for p in ("weight", "bias"):
            out[f"G.{name}.{p}"] = f"decoder.{index}.{p}"
    return out


def convert_generator(state: dict[str, Tensor], config: GeneratorConfig, what: str = "checkpoint") -> dict[str, Tensor]:
    """Our generator's state dict from the official ``Swapper``'s (checked key by key, shape by shape)."""
    keys = generator_key_map(config)
    with torch.device("meta"):
        ours = Generator(config).state_dict()
    check_layout(state, {k: tuple(ours[v].shape) for k, v in keys.items()}, what)
    return {ours_key: state[key].float().contiguous() for key, ours_key in keys.items()}


# ---------------------------------------------------------------------------------------------
# The identity encoder


def _identity_bn(bias: Tensor) -> dict[str, Tensor]:
    """A BatchNorm that adds ``bias`` and nothing else (eval mode): ``(x - 0) / sqrt(1 - eps + eps) + b``."""
    n = bias.shape[0]
    return {
        "weight": torch.ones(n),
        "bias": bias.float(),
        "running_mean": torch.zeros(n),
        "running_var": torch.full((n,), 1.0 - BN_EPS),
        "num_batches_tracked": torch.zeros((), dtype=torch.long),
    }


def _bn_keys(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{p}": (n,) for p in ("weight", "bias", "running_mean", "running_var")}


def official_identity_layout(backbone: IResNet) -> dict[str, tuple[int, ...]]:
    """The official folded ``resnet50`` key -> shape, for a backbone of ours with the same stages."""
    ours = backbone.state_dict()
    out: dict[str, tuple[int, ...]] = {
        "conv1.weight": tuple(ours["conv1.weight"].shape),
        "conv1.bias": (ours["bn1.weight"].shape[0],),
        "prelu.weight": tuple(ours["prelu.weight"].shape),
    }
    for stage in range(1, 5):
        for b, block in enumerate(getattr(backbone, f"layer{stage}")):
            p = f"layer{stage}.{b}"
            out |= _bn_keys(f"{p}.bn1", block.bn1.num_features)
            for conv in ("conv1", "conv2"):
                out[f"{p}.{conv}.weight"] = tuple(ours[f"{p}.{conv}.weight"].shape)
                out[f"{p}.{conv}.bias"] = (ours[f"{p}.{conv}.weight"].shape[0],)
            out[f"{p}.prelu.weight"] = tuple(ours[f"{p}.prelu.weight"].shape)
            if block.downsample is not None:
                out[f"{p}.downsample.weight"] = tuple(ours[f"{p}.downsample.0.weight"].shape)
                out[f"{p}.downsample.bias"] = (ours[f"{p}.downsample.0.weight"].shape[0],)
    out |= _bn_keys("bn2", backbone.bn2.num_features)
    out["fc5.weight"], out["fc5.bias"] = tuple(ours["fc.weight"].shape), tuple(ours["fc.bias"].shape)
    out |= _bn_keys("bn3", backbone.features.num_features)
    return out


def convert_identity(state: dict[str, Tensor], backbone: IResNet, what: str = "id weights") -> dict[str, Tensor]:
    """An ``arcface_torch`` IResNet state dict from the official folded one (BatchNorm counters,
    which the official loader also tolerates missing, are optional)."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_layout(state, official_identity_layout(backbone), what)
    out: dict[str, Tensor] = {}

    def folded(theirs: str, conv: str, bn: str) -> None:
        out[f"{conv}.weight"] = state[f"{theirs}.weight"].float()
        out.update({f"{bn}.{k}": v for k, v in _identity_bn(state[f"{theirs}.bias"]).items()})

    def bn(theirs: str, ours: str) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{ours}.{k}"] = state[f"{theirs}.{k}"].float()
        out[f"{ours}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)

    folded("conv1", "conv1", "bn1")
    out["prelu.weight"] = state["prelu.weight"].float()
    for stage in range(1, 5):
        for b, block in enumerate(getattr(backbone, f"layer{stage}")):
            p = f"layer{stage}.{b}"
            bn(f"{p}.bn1", f"{p}.bn1")
            folded(f"{p}.conv1", f"{p}.conv1", f"{p}.bn2")
            out[f"{p}.prelu.weight"] = state[f"{p}.prelu.weight"].float()
            folded(f"{p}.conv2", f"{p}.conv2", f"{p}.bn3")
            if block.downsample is not None:
                folded(f"{p}.downsample", f"{p}.downsample.0", f"{p}.downsample.1")
    bn("bn2", "bn2")
    out["fc.weight"], out["fc.bias"] = state["fc5.weight"].float(), state["fc5.bias"].float()
    bn("bn3", "features")
    backbone.load_state_dict(out, strict=True)  # every key of ours, every shape
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Stage


def convert_official(
    checkpoint: str | Path,
    id_weights: str | Path,
    emap: str | Path,
    output: str | Path,
    generator_config: GeneratorConfig | None = None,
    id_arch: str = "r50",
) -> dict[str, Any]:
    """Write ``output/`` (generator, spec, identity encoder, emap); returns a summary.

    ``generator_config`` and ``id_arch`` exist for tests (narrow copies of the official network and a
    ``tiny`` identity encoder); the command line always converts the official network and r50."""
    config = generator_config or GENERATOR_PRESETS["alphaface"]
    output = Path(output)
    state, step = swapper_state(load_torch_file(checkpoint), str(checkpoint))
    generator = convert_generator(state, config, f"{checkpoint}['swapper']")
    backbone = IResNet(**TINY_ID) if id_arch == "tiny" else build_iresnet(id_arch)
    identity = convert_identity(_tensors(load_torch_file(id_weights), str(id_weights)), backbone, str(id_weights))
    matrix = np.load(emap, allow_pickle=False)
    dim = backbone.features.num_features
    if matrix.shape != (dim, dim) or not np.issubdtype(matrix.dtype, np.floating):
        raise ConversionError(
            f"{emap}: the emap must be a ({dim}, {dim}) float matrix, got {matrix.shape} {matrix.dtype}"
        )

    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output / IDENTITY_FILE, safetensors_bytes(identity))
    buf = io.BytesIO()
    np.save(buf, matrix.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(output / EMAP_FILE, buf.getvalue())
    preset = next((name for name, c in GENERATOR_PRESETS.items() if c == config), "custom")
    spec = {
        "format": GENERATOR_FORMAT,
        "preset": preset,
        "generator_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "image_size": config.image_size,  # the side its inputs are resized to
        "step": step or 0,
        "ema": False,  # the raw official swapper
        "identity": {
            "arch": id_arch,
            "weights": str((output / IDENTITY_FILE).resolve()),
            "emap": str((output / EMAP_FILE).resolve()),
            "use_emap": True,
            "random": False,
            "seed": 0,
        },
        "clip": {"model": "ViT-B-32", "pretrained": "openai"},  # what the official training used
        "preprocess": OFFICIAL_EVAL,
        "converted_from": {
            "format": "alphaface-official",
            "checkpoint": str(Path(checkpoint).resolve()),
            "id_weights": str(Path(id_weights).resolve()),
            "emap": str(Path(emap).resolve()),
            "global_step": step,
        },
    }
    path = save_generator(output, generator, spec)  # written last: the folder is complete once it exists
    return {"output": str(output), "generator": str(path), "preset": preset, "step": step, "tensors": len(generator)}


@dataclass(frozen=True)
class ConvertConfig:
    source: str = field(metadata={"flag": "--from", "choices": SOURCES})  # what the weights are
    checkpoint: Path  # the official checkpoint (ckpt["swapper"] = E.*, G.*)
    id_weights: Path  # the official Models/arcface_w600k_r50_pytorch.pt
    emap: Path  # the official Models/emp.npy
    output: Path  # the generator folder to write

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"--from must be one of {SOURCES}, got {self.source!r}")


def run(cfg: ConvertConfig) -> dict[str, Any]:
    start = time.perf_counter()
    summary = convert_official(cfg.checkpoint, cfg.id_weights, cfg.emap, cfg.output)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return stage_main(
        "swapper.convert",
        lambda: parse_config("python -m swapper.convert", __doc__, ConvertConfig, argv),
        run,
        (FileNotFoundError, ValueError),
        "convert",
    )


if __name__ == "__main__":
    main()
