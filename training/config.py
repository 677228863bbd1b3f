"""The trainer's one config: a frozen dataclass, YAML presets with `base:` inheritance, `--set` overrides.

    training/configs/alphaface.yaml           the full default: the official code exactly (docs/official.md)
    training/configs/alphaface-improved.yaml  base: alphaface.yaml, plus what we do better
    training/configs/alphaface-fast.yaml      base: alphaface-improved.yaml, plus our fast generator
    training/configs/demo.yaml                base: alphaface-fast.yaml, tiny and CPU-sized

`load_config(path, overrides=["loss.adv_start_step=0", "lr_g=2e-4"])` reads a preset, follows its
`base:` chain (paths relative to the file), deep-merges the mapping fields (`loss`, `pairs`,
`generator_overrides`, `discriminator`), applies the overrides (dotted keys reach into those
mappings; each value is parsed as YAML by a safe loader, never evaluated) and checks everything in
`TrainConfig.__post_init__`. `to_dict` / `dump_yaml` give the resolved config that the trainer writes
into the run directory, which `load_config` reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from pipeline.embeddings import resolve_clip
from training.models import GENERATOR_PRESETS, DiscriminatorConfig, GeneratorConfig
from training.models.weights import MissingWeights

AdvLoss = Literal["lsgan", "hinge"]  # the adversarial loss: LSGAN (MSE, official) or hinge
RecMode = Literal["forward", "self_pairs"]  # reconstruction: an extra G(x_t, E_id(x_t)) pass, or self pairs
Reduction = Literal["mean", "official"]  # one mean over all rows, or the official per-direction sums
MaskRegion = Literal["inner_face", "face_hair"]  # what a label-map mask lets the swap repaint (training.batch)
CompileMode = Literal["none", "default", "max-autotune-no-cudagraphs"]  # torch.compile modes for training
AdamImpl = Literal["auto", "fused", "foreach", "for-loop"]  # torch.optim.AdamW's implementations
PAIR_KINDS = ("random", "same_identity", "self")
PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = ("tensorboard", "wandb")
ID_ARCHS = ("r50", "r100", "world", "tiny")  # world: demo.world's small trained IResNet; tiny: random, tests only
MAPPING_FIELDS = ("pairs", "generator_overrides", "discriminator", "loss")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (`mixed_precision: no` stays the string "no"),
    and `1e-4` is a float (YAML 1.1 needs `1.0e-4`). Everything else is the safe loader's."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain data only, no Python objects


@dataclass(frozen=True)
class LossConfig:
    """Every default is the official code's (alphaface.yaml); alphaface-improved.yaml fixes the defects."""

    # Weights (official defaults)
    id_weight: float = 10.0  # 1 - cos of ArcFace embeddings
    rec_weight: float = 0.5  # self-reconstruction L1
    perceptual_weight: float = 0.5  # VGG16 feature L1 to the target
    cycle_weight: float = 0.5  # swap there and back
    mask_weight: float = 0.5  # L1 outside the mask region (`mask_region`) the swap may repaint
    clip_id_weight: float = 1.0  # 1 - cos of CLIP image embeddings (swap, source)
    clip_text_weight: float = 1.0  # gated caption consistency
    adv_weight: float = 1.0  # generator adversarial loss
    # Schedules and variants
    adv_start_step: int = 200_001  # first (0-based) step of the adversarial phase; official: global_step > 200000
    train_d_before_adv: bool = False  # also train D (and step its schedule) before adv_start_step; official: no
    adv_loss: AdvLoss = "lsgan"  # "lsgan" (MSE, official) or "hinge"
    rec_mode: RecMode = "forward"  # "forward": extra pass G(x_t, E_id(x_t)); "self_pairs": rows flagged is_self
    clip_text_factorised: bool = False  # per-attribute gates when the batch has attribute embeddings
    # Official-code reproduction switches
    reduction: Reduction = "official"  # "official" (directions added, clip_text summed) or "mean" over all rows
    clip_x255: bool = True  # the official CLIP input defect (x255 before normalising); only alphaface.yaml keeps it
    mask_region: MaskRegion = "inner_face"  # region of a label-map mask the swap may repaint (training.batch)

    def __post_init__(self) -> None:
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_weight")}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {negative}")
        if self.adv_start_step < 0:
            raise ValueError("adv_start_step must be >= 0")
        for name, kind in (
            ("adv_loss", AdvLoss),
            ("rec_mode", RecMode),
            ("reduction", Reduction),
            ("mask_region", MaskRegion),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"{name} must be one of {get_args(kind)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TrainConfig:
    # --- run
    data: tuple[str, ...] = ()  # dataset directories written by caption + embed (--data, repeatable)
    output: str | None = None  # RUN_DIR: config, checkpoints, samples, stats, TensorBoard logs (--output)
    max_steps: int = 500_000  # optimiser steps (--max-steps); the adversarial term starts at loss.adv_start_step
    seed: int = 0  # model init, data order, pairing and flips all derive from it
    device: str = "auto"  # auto (each process's GPU if CUDA is there, else CPU) | cpu (forced, gloo across processes)

    # --- data
    image_size: int = 256  # square side images are decoded to; the generator presets are designed for 256
    batch_size: int = 2  # pairs per process per micro-step; both directions make 2x this many swaps (official 2)
    grad_accum_steps: int = 1  # micro-steps per optimiser step
    num_workers: int = 4  # DataLoader workers per process (decode + join in the reader)
    shuffle_buffer: int = 2048  # samples each worker shuffles over; shards are identity-sorted, so keep it large
    pairs: dict[str, float] = field(default_factory=lambda: {"random": 1.0, "same_identity": 0.0, "self": 0.0})
    # ^ rates of (source, target) pair kinds; random is the official recipe; normalised to sum 1
    flip: float = 0.5  # probability of a horizontal flip per image (captions naming left/right then skip clip_text)
    use_masks: bool = True  # masked-reconstruction loss on samples whose shard has a mask (label map or region)
    both_directions: bool = True  # every pair also swaps the other way (official: losses in both directions)

    # --- models
    generator: str = "alphaface"  # preset: alphaface (official) | alphaface-fast | tiny
    generator_overrides: dict[str, Any] = field(default_factory=dict)  # GeneratorConfig fields, e.g. caii_mode
    discriminator: dict[str, Any] = field(default_factory=dict)  # DiscriminatorConfig fields (image_size is ours)
    init_from: str | None = None  # generator folder (a run's final/, swapper.convert's DIR) to start G from

    # --- frozen networks and their weights (real training needs all of them)
    id_arch: str = "r50"  # ArcFace IResNet: r50 (official, w600k) | r100 | tiny (random only)
    id_weights: str | None = None  # arcface_torch backbone checkpoint (.pth / .safetensors)
    emap: str | None = None  # InSwapper 512x512 "emap" (.npy) applied after ArcFace (official)
    use_emap: bool = True  # false: plain normalised ArcFace embeddings, no emap needed
    vgg_weights: str | None = None  # torchvision vgg16-397923af.pth (or .safetensors) for the perceptual loss
    vgg_input_size: int = 224  # VGG16 input side (official 224)
    clip_model: str = "auto"  # auto: the CLIP the data was embedded with; or as given to embed --clip-model
    clip_pretrained: str = "auto"  # auto: the one recorded beside the data for clip_model; or embed's --pretrained
    allow_random_weights: bool = False  # demo/tests only: random frozen networks where weights are missing

    # --- losses (LossConfig above: weights, adversarial schedule, variants)
    loss: LossConfig = field(default_factory=LossConfig)

    # --- optimisation (official: AdamW 1e-4, betas (0, 0.99), wd 5e-4, StepLR x0.97 / 20k, clip 1.0)
    lr_g: float = 1e-4  # generator learning rate
    lr_d: float = 1e-4  # discriminator learning rate
    betas: tuple[float, float] = (0.0, 0.99)  # AdamW betas, both networks
    weight_decay: float = 5e-4  # AdamW weight decay, both networks
    lr_step: int = 20_000  # StepLR period, in optimiser steps
    lr_gamma: float = 0.97  # StepLR factor
    grad_clip: float = 1.0  # max gradient norm per network; 0 disables
    mixed_precision: str = "no"  # no (fp32, official) | fp16 | bf16 (Accelerate autocast; fp16 adds loss scaling)
    ema_decay: float = 0.0  # EMA of the generator's weights (exported at the end); 0 (official) disables

    # --- speed and memory (none changes what is trained; bench/train_step.py measures them)
    grad_checkpointing: bool = False  # recompute G's activations in backward: ~0.1x G's activation memory, +1 G forward
    channels_last: bool = False  # G and D in channels-last memory: tensor-core convolutions without layout copies
    compile: CompileMode = "none"  # torch.compile G and D; the first steps compile (TORCHINDUCTOR_CACHE_DIR keeps it)
    adam: AdamImpl = "auto"  # AdamW kernels: auto (fused on CUDA, PyTorch's default elsewhere) | fused | foreach | ...
    finite_check_every: int = 50  # steps between NaN/Inf checks (one host sync each); checkpoints always check first

    # --- logging and checkpoints
    log_every: int = 50  # steps between metric lines (TensorBoard + stats.jsonl)
    sample_every: int = 2000  # steps between sample grids (source | target | swap) in RUN_DIR/samples
    num_samples: int = 8  # rows of a sample grid (fixed pairs, taken once per run)
    checkpoint_every: int = 5000  # steps between checkpoints in RUN_DIR/checkpoints
    keep_checkpoints: int = 3  # newest complete checkpoints kept
    trackers: tuple[str, ...] = ("tensorboard",)  # Accelerate trackers: tensorboard, wandb
    progress: bool = True  # tqdm bar on the main process

    def __post_init__(self) -> None:
        data = (self.data,) if isinstance(self.data, str | Path) else self.data
        object.__setattr__(self, "data", tuple(str(d) for d in data))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "trackers", tuple(self.trackers))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", _loss_config(self.loss))
        for name in ("max_steps", "image_size", "batch_size", "grad_accum_steps", "lr_step", "vgg_input_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "shuffle_buffer",
                     "finite_check_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.num_samples < 0:
            raise ValueError("num_workers and num_samples must be >= 0")
        unknown = set(self.pairs) - set(PAIR_KINDS)
        if unknown or not all(v >= 0 for v in self.pairs.values()) or not sum(self.pairs.values()) > 0:
            raise ValueError(f"pairs must map {PAIR_KINDS} to rates >= 0 with a positive sum, got {self.pairs}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip must be a probability, got {self.flip}")
        if self.generator not in GENERATOR_PRESETS:
            raise ValueError(f"generator must be one of {sorted(GENERATOR_PRESETS)}, got {self.generator!r}")
        _check_fields(GeneratorConfig, self.generator_overrides, "generator_overrides")
        _check_fields(DiscriminatorConfig, self.discriminator, "discriminator", exclude=("image_size",))
        if self.id_arch not in ID_ARCHS:
            raise ValueError(f"id_arch must be one of {ID_ARCHS}, got {self.id_arch!r}")
        if self.id_arch == "tiny" and (not self.allow_random_weights or self.id_weights):
            raise ValueError("id_arch tiny is a random test network: allow_random_weights: true and no id_weights")
        if not self.clip_model or not self.clip_pretrained:
            raise ValueError("clip_model and clip_pretrained must name the CLIP the dataset was embedded with")
        if self.clip_model == "auto" and self.clip_pretrained != "auto":
            raise ValueError("clip_pretrained is set but clip_model is auto: set clip_model too (as given to embed)")
        if not (self.lr_g > 0 and self.lr_d > 0 and self.weight_decay >= 0 and 0 < self.lr_gamma <= 1):
            raise ValueError("need lr_g, lr_d > 0, weight_decay >= 0 and 0 < lr_gamma <= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.grad_clip >= 0:  # NaN fails too
            raise ValueError("grad_clip must be >= 0 (0 disables)")
        if self.device not in ("auto", "cpu"):
            raise ValueError(f"device must be auto or cpu, got {self.device!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if set(self.trackers) - set(TRACKERS):
            raise ValueError(f"trackers must be among {TRACKERS}, got {self.trackers}")
        for name, kind in (("compile", CompileMode), ("adam", AdamImpl)):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"{name} must be one of {get_args(kind)}, got {getattr(self, name)!r}")

    @property
    def pair_rates(self) -> dict[str, float]:
        """The pair kinds' rates, normalised to sum 1, in PAIR_KINDS order."""
        total = sum(self.pairs.values())
        return {k: self.pairs.get(k, 0.0) / total for k in PAIR_KINDS}

    def missing_weights(self) -> list[str]:
        """What real training still lacks: empty when every frozen network has weights (or random is allowed)."""
        if self.allow_random_weights:
            return []
        missing = []
        if not self.id_weights:
            missing.append("id_weights (insightface arcface_torch IResNet backbone, e.g. w600k r50)")
        if self.use_emap and not self.emap:
            missing.append("emap (the InSwapper 512x512 emap as .npy; or set use_emap: false)")
        if self.loss.perceptual_weight and not self.vgg_weights:
            missing.append("vgg_weights (torchvision vgg16-397923af.pth)")
        if (self.loss.clip_id_weight or self.loss.clip_text_weight) and self.clip_pretrained == "none":
            missing.append("clip_pretrained (the open_clip tag or checkpoint the dataset was embedded with)")
        return missing

    def check_weights(self) -> None:
        """Refuse to train without real weights unless `allow_random_weights: true`; check the files exist."""
        missing = self.missing_weights()
        if missing:
            raise MissingWeights(
                "real training needs weights for the frozen networks; missing: "
                + "; ".join(missing)
                + ". Pass them with --set id_weights=... emap=... vgg_weights=... clip_pretrained=... "
                "(or the same keys in the config). Random weights are only for the demo and tests "
                "(allow_random_weights: true, as demo.yaml sets)."
            )
        for name in ("id_weights", "emap", "vgg_weights"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise MissingWeights(f"{name}: {path} does not exist or is not a file")

    def with_dataset_clip(self) -> TrainConfig:
        """`clip_pretrained: auto` resolved to the CLIP that pipeline.embed recorded beside the data (for
        `clip_model: auto`, the one tag the datasets share); a dataset missing, uncaptioned or not embedded
        is named."""
        if self.clip_pretrained != "auto":
            return self
        model, pretrained = resolve_clip([Path(d) for d in self.data], self.clip_model)
        return dataclasses.replace(self, clip_model=model, clip_pretrained=pretrained)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe values (tuples become lists, the loss config a mapping)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "loss":
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Checks


def _check_fields(cls: type, values: dict[str, Any], where: str, exclude: tuple[str, ...] = ()) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    unknown = sorted(set(values) - known)
    if unknown:
        hint = _suggest(unknown[0], sorted(known))
        raise ValueError(f"{where}: unknown field(s) {unknown}{hint}; known: {sorted(known)}")


def _loss_config(values: dict[str, Any]) -> LossConfig:
    _check_fields(LossConfig, values, "loss")
    defaults = LossConfig()
    return LossConfig(**{k: _coerce(f"loss.{k}", v, getattr(defaults, k)) for k, v in values.items()})


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Numbers as the field's type. YAML 1.1 reads `1e-4` (no dot) as a string and `2e5` too; accept
    those, and integral floats for int fields; refuse anything else that does not fit."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if not isinstance(default, int | float) or value is None:
        return value
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(default, float):
        return float(number)
    if not math.isfinite(number) or float(number) != int(number):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# YAML and overrides


PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def resolve_preset(path: str | Path) -> Path:
    """A config path as given, or else a preset of training/configs/ by name (`alphaface`, `demo.yaml`)."""
    path = Path(path)
    if path.is_file() or path.parent != Path("."):
        return path
    for candidate in (PRESETS_DIR / path.name, PRESETS_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    return path


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset as a mapping, its `base:` chain merged in (the child wins; mappings merge key by key)."""
    if not _seen:
        path = resolve_preset(path)
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"config inheritance cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (the presets: {', '.join(presets())})")
    data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(read_yaml(path.parent / base, (*_seen, path)), data)


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if key in MAPPING_FIELDS and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key=value` strings onto a config mapping; `a.b=value` sets key b of mapping field a.

    Values are parsed as YAML by a safe loader (`1e-4`, `true`, `[a, b]`, `null`), never evaluated.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        value = parse_yaml(raw) if raw.strip() else None
        top, _, sub = key.partition(".")
        if top not in known:
            raise ValueError(f"--set {key}: unknown config key {top!r}{_suggest(top, known)}")
        if sub:
            if top not in MAPPING_FIELDS:
                raise ValueError(f"--set {key}: {top!r} is not a mapping field")
            current = out.get(top)
            if current is None:  # not in the file: start from the field's default, not from nothing
                current = getattr(TrainConfig(), top)
            if isinstance(current, LossConfig):
                current = dataclasses.asdict(current)
            out[top] = {**(current or {}), sub: value}
        else:
            out[top] = value
    return out


def from_dict(values: dict[str, Any]) -> TrainConfig:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}{_suggest(unknown[0], known)}")
    defaults = TrainConfig()
    # a mapping field left empty in YAML (`pairs:` with its entries commented out) means its default
    values = {k: v for k, v in values.items() if not (k in MAPPING_FIELDS and k != "loss" and v is None)}
    values = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    if "loss" in values:  # a partial loss mapping fills up from LossConfig's own (official) defaults
        values["loss"] = _loss_config(values["loss"] or {})
    for name in ("pairs",):  # a partial pairs mapping keeps the other kinds at 0
        if name in values and values[name] is not None:
            values[name] = {k: float(v) for k, v in values[name].items()}
    return TrainConfig(**values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **fields: Any) -> TrainConfig:
    """A preset file (or the defaults when `path` is None), then `fields`, then `--set` overrides."""
    values = read_yaml(path) if path is not None else {}
    values.update({k: v for k, v in fields.items() if v is not None})
    return from_dict(apply_overrides(values, overrides or []))
