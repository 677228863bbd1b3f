"""The AlphaFace generator: fusion encoder -> CAII blocks -> decoder.

Reads bottom-up: config and presets, AdaIN helpers, the CAII operation unit and block, the
encoder and decoder, then :class:`Generator` and :func:`build_generator`.

Call contract: ``generator(target, id_embedding)`` with ``target`` ``(B, 3, H, W)`` in [0, 1]
(H and W multiples of the encoder's total stride; the presets are designed for 256) and
``id_embedding`` ``(B, 512)`` L2-normalised; it returns the swap, ``(B, 3, H, W)`` in [0, 1].
``target_range`` says what the first convolution sees: the [0, 1] image itself (``unit``, as the
official encoder reads it) or ``2x - 1`` (``signed``, zero-centred). The two are the same function
class (the first conv's weights and bias absorb the affine map), so only training dynamics and
weight layout differ; official weights need ``unit``.

Presets (costs at 256x256, counted with ``torch.utils.flop_counter``; see ``bench/generator.py``):

- ``alphaface``: the official network. Encoder to 1024x64x64, six CAII blocks there, decoder.
  About 138.6M parameters and 717 GMAC, two thirds of it in the twelve 1024-channel 3x3 CAII
  convolutions at 64x64. CAII mode ``official``, target read in [0, 1], instance-norm eps 1e-8:
  the official arithmetic, so converted official weights (``swapper.convert``) run unchanged.
- ``alphaface-fast``: our design, the same network one octave lower and a little narrower. One
  more stride-2 encoder stage puts the six CAII blocks on a 32x32 grid (the latent grid InSwapper
  itself uses; SimSwap injects identity at 28x28), and their width drops from 1024 to 768: the
  identity path keeps its depth (12 identity-modulated convolutions and style projections) at
  0.14x the CAII cost. The encoder and decoder, a third of the official GMACs, mostly
  in wide convolutions at 128-256 px, are narrowed to 64-256 channels there. About 0.13x the
  MACs and 0.56x the parameters. CAII mode ``bidirectional``, ``signed`` target, eps 1e-5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

CAIIMode = Literal["official", "bidirectional", "one_way"]
CAII_MODES: tuple[str, ...] = get_args(CAIIMode)
TargetRange = Literal["unit", "signed"]
TARGET_RANGES: tuple[str, ...] = get_args(TargetRange)


# ---------------------------------------------------------------------------------------------
# Config and presets


@dataclass(frozen=True)
class GeneratorConfig:
    # Fusion encoder: reflect-pad 3 + k7 conv, then k3 convs; LeakyReLU(0.2) after each.
    encoder_channels: tuple[int, ...] = (128, 256, 512, 1024)  # output channels of each conv
    encoder_strides: tuple[int, ...] = (1, 1, 2, 2)  # stride of each conv (1 or 2)
    target_range: TargetRange = "unit"  # encoder input: "unit" = the [0, 1] target (official), "signed" = 2x - 1
    # CAII: identity injection at the encoder's resolution and width.
    num_caii_blocks: int = 6  # residual blocks, each two operation units
    caii_mode: CAIIMode = "official"  # "official" (AdaIN collapses to a spatial mean) or "bidirectional"
    id_dim: int = 512  # identity embedding size
    eps: float = 1e-8  # instance-norm / AdaIN epsilon (official 1e-8; > 0: the official AdaIN divides by it)
    # Decoder: each "up" stage is bilinear x2 then a k3 conv; then k3 convs at full resolution
    # (the last unpadded), reflect-pad 3 and a k5 conv to RGB, tanh.
    decoder_up_channels: tuple[int, ...] = (512, 256)  # one entry per x2 upsampling
    decoder_channels: tuple[int, ...] = (128, 128, 128)  # full-resolution convs
    # The size the preset is designed and costed for (any multiple of the total stride runs).
    image_size: int = 256

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "encoder_strides", "decoder_up_channels", "decoder_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # YAML overrides give lists
        if not self.encoder_channels or len(self.encoder_channels) != len(self.encoder_strides):
            raise ValueError("encoder_channels and encoder_strides must be non-empty and of equal length")
        if any(s not in (1, 2) for s in self.encoder_strides):
            raise ValueError(f"encoder strides must be 1 or 2, got {self.encoder_strides}")
        if self.encoder_strides[0] != 1:
            raise ValueError("the first (k7) encoder conv must have stride 1")
        if self.target_range not in TARGET_RANGES:
            raise ValueError(f"target_range must be one of {TARGET_RANGES}, got {self.target_range!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.caii_mode not in CAII_MODES:
            raise ValueError(f"caii_mode must be one of {CAII_MODES}, got {self.caii_mode!r}")
        if self.num_caii_blocks < 1 or self.id_dim < 1:
            raise ValueError("num_caii_blocks and id_dim must be positive")
        if len(self.decoder_up_channels) != self.encoder_strides.count(2):
            raise ValueError(
                f"decoder needs one up stage per stride-2 encoder conv: "
                f"{len(self.decoder_up_channels)} != {self.encoder_strides.count(2)}"
            )
        if not self.decoder_channels:
            raise ValueError("decoder_channels needs at least the final unpadded conv")
        if any(c < 1 for c in self.encoder_channels + self.decoder_up_channels + self.decoder_channels):
            raise ValueError("channel counts must be positive")
        if self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the stride {self.stride}")

    @property
    def stride(self) -> int:
        return math.prod(self.encoder_strides)

    @property
    def caii_channels(self) -> int:
        return self.encoder_channels[-1]


GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "alphaface": GeneratorConfig(),
    "alphaface-fast": GeneratorConfig(
        encoder_channels=(64, 128, 256, 768),
        encoder_strides=(1, 2, 2, 2),
        target_range="signed",
        caii_mode="bidirectional",
        eps=1e-5,
        decoder_up_channels=(256, 128, 64),
        decoder_channels=(64, 64),
    ),
    # demo.world's swapper at 64 px: CAII over 3 blocks of 24 channels on a 32x32 grid, 189k parameters
    "world": GeneratorConfig(
        encoder_channels=(12, 24),
        encoder_strides=(1, 2),
        num_caii_blocks=3,
        target_range="signed",
        caii_mode="bidirectional",
        eps=1e-5,
        decoder_up_channels=(16,),
        decoder_channels=(12,),
        image_size=64,
    ),
    # For tests and the CPU demo only: same topology as alphaface-fast, ~240x cheaper.
    "tiny": GeneratorConfig(
        encoder_channels=(8, 16, 16, 32),
        encoder_strides=(1, 2, 2, 2),
        num_caii_blocks=2,
        target_range="signed",
        caii_mode="bidirectional",
        eps=1e-5,
        decoder_up_channels=(16, 16, 8),
        decoder_channels=(8, 8),
    ),
}


# ---------------------------------------------------------------------------------------------
# AdaIN helpers


def spatial_stats(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std over space, each ``(B, C, 1, 1)`` (biased variance)."""
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
    return mean, (var + eps).sqrt()


def adain(content: Tensor, style_mean: Tensor, style_std: Tensor, eps: float = 1e-5) -> Tensor:
    """AdaIN: normalise ``content`` ``(B, C, h, w)`` per channel over space, then give it the style
    statistics ``(B, C, 1, 1)`` (from :func:`spatial_stats` of the style features)."""
    c_mean, c_std = spatial_stats(content, eps)
    return style_std * (content - c_mean) / c_std + style_mean


def channel_adain(code: Tensor, style_mean: Tensor, style_std: Tensor, eps: float = 1e-5) -> Tensor:
    """AdaIN for a ``(B, C, 1, 1)`` code: normalise it over its *channels*, its only non-trivial
    axis, then give it the per-channel style statistics ``(B, C, 1, 1)``."""
    var, mean = torch.var_mean(code, dim=1, correction=0, keepdim=True)  # (B, 1, 1, 1) each
    return style_std * (code - mean) / (var + eps).sqrt() + style_mean


# ---------------------------------------------------------------------------------------------
# CAII


class CAIIOp(nn.Module):
    """One CAII operation unit: identity-modulated, instance-normalised 3x3 conv.

    ``[g, b] = FC(z)``; ``g <- (g + A(g, x)) / 2`` and likewise ``b``; ``h = IN(conv(pad(x)))``;
    output ``g * h + b`` (ReLU after the first unit of a block only). ``A`` depends on the mode:

    - ``official``: ``A = AdaIN(g, x)`` with ``g`` a ``(B, C, 1, 1)`` map, exactly as in the
      official code. On a 1x1 map the content term ``g - mean(g)`` is identically zero, so
      ``AdaIN(g, x) == mean_hw(x)``: the update is just ``g <- (g + mean_hw(x)) / 2``, the identity
      code is discarded from the AdaIN and the target's std never enters. We compute that
      collapse directly (bit-identical to :func:`adain` on a 1x1 map in eager mode); the tests
      check it against the official formula.
    - ``bidirectional``: the paper's intent, made non-degenerate. Target -> identity: the code is
      normalised over its channels and re-styled with the target's per-channel spatial mean and
      std (:func:`channel_adain`). Identity -> target: the normalised target features ``h`` are
      re-styled by the resulting ``(g, b)``. Both directions now carry information.
    """

    def __init__(self, channels: int, id_dim: int, mode: CAIIMode, activate: bool, eps: float) -> None:
        super().__init__()
        self.mode = mode
        self.activate = activate
        self.eps = eps
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3)
        self.style = nn.Linear(id_dim, 2 * channels)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, activate={self.activate}"

    def modulation(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The scale and shift ``(g, b)``, each ``(B, C, 1, 1)``, for features ``x`` and code ``z``."""
        g, b = self.style(z)[:, :, None, None].chunk(2, dim=1)  # (B, 2C) -> (B, C, 1, 1) each
        x_mean, x_std = spatial_stats(x, self.eps)  # the target's statistics, (B, C, 1, 1) each
        if self.mode == "one_way":
            # the ablation of CAII: identity-to-target injection alone (SimSwap's ApplyStyle), g = 1 + FC_g(z),
            # b = FC_b(z), with no target-to-identity direction
            return 1.0 + g, b
        if self.mode == "official":
            # AdaIN(g, x) of a 1x1 map: g - mean(g) is exactly 0, so it is mean_hw(x), bit for bit in eager
            # mode. Written as such: an exported graph fuses the 1x1 normalisation into a LayerNorm whose
            # E[g^2] - E[g]^2 goes negative, and with eps 1e-8 its square root is NaN (onnxruntime).
            return (g + x_mean) / 2, (b + x_mean) / 2
        g = (g + channel_adain(g, x_mean, x_std, self.eps)) / 2
        b = (b + channel_adain(b, x_mean, x_std, self.eps)) / 2
        return g, b

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        g, b = self.modulation(x, z)
        h = F.instance_norm(self.conv(self.pad(x)), eps=self.eps)
        out = g * h + b
        return F.relu(out) if self.activate else out


class CAIIBlock(nn.Module):
    """Residual CAII block: ``x + OP2(OP1(x, z), z)``."""

    def __init__(self, channels: int, id_dim: int, mode: CAIIMode, eps: float) -> None:
        super().__init__()
        self.op1 = CAIIOp(channels, id_dim, mode, activate=True, eps=eps)
        self.op2 = CAIIOp(channels, id_dim, mode, activate=False, eps=eps)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return x + self.op2(self.op1(x, z), z)


# ---------------------------------------------------------------------------------------------
# Encoder and decoder


def _fusion_encoder(cfg: GeneratorConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ReflectionPad2d(3)]
    in_ch = 3
    for i, (out_ch, stride) in enumerate(zip(cfg.encoder_channels, cfg.encoder_strides, strict=True)):
        conv = (
            nn.Conv2d(in_ch, out_ch, kernel_size=7)
            if i == 0
            else nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)
        )
        layers += [conv, nn.LeakyReLU(0.2)]
        in_ch = out_ch
    return nn.Sequential(*layers)


def _decoder(cfg: GeneratorConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = cfg.caii_channels
    for out_ch in cfg.decoder_up_channels:
        layers += [
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
            nn.LeakyReLU(0.2),
        ]
        in_ch = out_ch
    for i, out_ch in enumerate(cfg.decoder_channels):
        last = i == len(cfg.decoder_channels) - 1
        # The last conv is unpadded (H -> H - 2); reflect-pad 3 + k5 restores H.
        layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=0 if last else 1), nn.LeakyReLU(0.2)]
        in_ch = out_ch
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, 3, kernel_size=5)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """Swap generator: ``(target (B, 3, H, W) in [0, 1], id (B, 512)) -> (B, 3, H, W) in [0, 1]``."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _fusion_encoder(config)
        self.blocks = nn.ModuleList(
            CAIIBlock(config.caii_channels, config.id_dim, config.caii_mode, config.eps)
            for _ in range(config.num_caii_blocks)
        )
        self.decoder = _decoder(config)
        self.grad_checkpointing = False  # a training-time memory option, not part of the network (no weights)

    def extra_repr(self) -> str:
        c = self.config
        return f"caii={c.num_caii_blocks}x{c.caii_channels}@1/{c.stride}, mode={c.caii_mode}, target={c.target_range}"

    def set_grad_checkpointing(self, enable: bool = True) -> Generator:
        """Keep only the inputs of the encoder, of each CAII block and of each decoder stage for backward, and
        recompute the rest there (``torch.utils.checkpoint``, non-reentrant): for about one more generator
        forward of compute, the official network keeps 0.15 instead of 1.6 GiB of activations per 256 px image
        (float32). Same outputs and gradients; applies only where autograd records (inference and ``no_grad``
        calls run as before)."""
        self.grad_checkpointing = enable
        return self

    def _run(self, fn: nn.Module | Callable[..., Tensor], *args: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _decoder_stages(self) -> list[nn.Sequential]:
        """The decoder cut before each upsampling: every x2 stage, then the full-resolution convs."""
        stages: list[list[nn.Module]] = [[]]
        for layer in self.decoder:
            if isinstance(layer, nn.Upsample) and stages[-1]:
                stages.append([])
            stages[-1].append(layer)
        return [nn.Sequential(*stage) for stage in stages]

    def forward(self, target: Tensor, id_embedding: Tensor) -> Tensor:
        h, w = target.shape[-2:]
        if h % self.config.stride or w % self.config.stride:
            raise ValueError(f"target size {h}x{w} is not a multiple of the stride {self.config.stride}")
        x = target if self.config.target_range == "unit" else target * 2.0 - 1.0
        x = self._run(self.encoder, x)  # (B, C, H/s, W/s)
        for block in self.blocks:
            x = self._run(block, x, id_embedding)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for stage in self._decoder_stages():
                x = self._run(stage, x)
        else:
            x = self.decoder(x)  # (B, 3, H, W)
        return (torch.tanh(x) + 1.0) / 2.0


def build_generator(preset: str = "alphaface", **overrides: object) -> Generator:
    """A generator from a named preset, with any :class:`GeneratorConfig` field overridden."""
    if preset not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; choose from {sorted(GENERATOR_PRESETS)}")
    return Generator(dataclasses.replace(GENERATOR_PRESETS[preset], **overrides))


# ---------------------------------------------------------------------------------------------
# Fixed-shape inference and batch limits (swap, latency benches; bench/generator.py measures them)

INT32_MAX = 2**31 - 1
InferenceMode = Literal[
    "eager", "cuda-graph", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"
]
INFERENCE_MODES: tuple[str, ...] = get_args(InferenceMode)


def largest_activation(config: GeneratorConfig, size: int | None = None) -> int:
    """Elements of the largest tensor one image makes in a forward at `size` (default: the preset's), counted
    on the meta device. Some CUDA kernels index with 32-bit integers: the channels-last bilinear upsample
    refuses outputs of INT32_MAX elements or more, which the official network reaches at a batch of 64
    (512 x 256 x 256 per image): see :func:`channels_last_batch_limit`."""
    size = size or config.image_size
    largest = 0

    def note(module: nn.Module, args: tuple, out: Tensor) -> None:
        nonlocal largest
        if isinstance(out, Tensor):
            largest = max(largest, out.numel())

    with torch.device("meta"):
        G = Generator(config)
        for m in G.modules():
            m.register_forward_hook(note)
        G(torch.empty(1, 3, size, size), torch.empty(1, config.id_dim))
    return largest


def channels_last_batch_limit(config: GeneratorConfig, size: int | None = None) -> int:
    """The largest batch of channels-last inputs whose every activation stays under INT32_MAX elements:
    63 for the official network at 256 px, 255 for alphaface-fast. Chunk larger batches."""
    return (INT32_MAX - 1) // largest_activation(config, size)


def compiled_for_inference(generator: Generator, mode: InferenceMode, backend: str = "inductor") -> Callable:
    """``generator`` as ``f(target, id_embedding) -> swap`` for inference at fixed shapes, without the
    launch overhead of eager mode (at batch 1 the official network on an H200 waits on kernel launches).

    - ``eager``: the module as it is.
    - ``cuda-graph``: each new input shape (and autocast state) is warmed up twice and captured once in a
      ``torch.cuda.CUDAGraph`` (about a second, no compiler), then replayed in one launch. CUDA only.
    - the ``torch.compile`` modes: compiled whole (``fullgraph``), one graph per shape (``dynamic=False``);
      ``reduce-overhead`` and ``max-autotune`` also replay CUDA graphs. Warm-up: the first call of each shape
      compiles (tens of seconds; ``max-autotune*`` autotunes convolutions, over 100 s for the official
      network on an H200). Inductor caches its kernels on disk (``TORCHINDUCTOR_CACHE_DIR``, by default under
      /tmp): a later process with the same network and shapes reuses them and warms up in seconds.

    The result of one call stays valid after the next (graph outputs are copied out). Call it under
    ``torch.inference_mode()`` or ``no_grad``; ``backend`` other than inductor (e.g. ``aot_eager`` in tests)
    takes no mode.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")
    generator.eval()
    if mode == "eager":
        return generator
    if mode == "cuda-graph":
        return _CudaGraphs(generator)
    options = {"mode": mode} if backend == "inductor" else {}
    compiled = torch.compile(generator, backend=backend, fullgraph=True, dynamic=False, **options)
    if backend != "inductor" or mode not in ("reduce-overhead", "max-autotune"):
        return compiled  # no CUDA graphs inside

    def replay(target: Tensor, id_embedding: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # a new inference step: earlier outputs may be overwritten
        return compiled(target, id_embedding).clone()

    return replay


class _CudaGraphs:
    """One captured CUDA graph per (shapes, dtypes, strides, autocast state) of the generator's inputs."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    def __call__(self, target: Tensor, id_embedding: Tensor) -> Tensor:
        if target.device.type != "cuda":
            raise ValueError("cuda-graph inference needs the generator and its inputs on a CUDA device")
        key = tuple((t.shape, t.dtype, t.stride()) for t in (target, id_embedding)) + (
            torch.is_autocast_enabled("cuda"),
            torch.get_autocast_dtype("cuda"),
        )
        if key not in self.graphs:
            static = target.clone(), id_embedding.clone()  # clone keeps the strides (channels-last stays so)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():  # warm-up off the capture: cuDNN choices, allocations
                for _ in range(2):
                    self.generator(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = self.generator(*static)
            self.graphs[key] = (graph, *static, out)
        graph, static_target, static_id, out = self.graphs[key]
        static_target.copy_(target)
        static_id.copy_(id_embedding)
        graph.replay()
        return out.clone()
