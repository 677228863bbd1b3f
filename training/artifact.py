"""The generator file: what training hands to everything that uses a trained swapper.

    RUN_DIR/final/generator.safetensors   the weights, with the spec inside the safetensors header
    RUN_DIR/final/generator.json          a readable copy of the spec

The spec says how to rebuild and feed the generator: preset, GeneratorConfig, image size, the
identity encoder it was trained with, the CLIP of its data, and (for converted official weights)
the official eval.py preprocessing. Weights and spec are one file written atomically, so no crash
pairs new weights with an old spec; files from before that fall back to the `.json` beside them.

`load_generator(path)` takes every `--checkpoint` form: a run directory (its `final/`), a `final/`
folder, a training checkpoint `checkpoints/step_NNNNNNN` (its EMA weights, else the raw
generator's; the spec is rebuilt from the run's `config.yaml`), a `generator.safetensors`, or a Hub
model repo that `swapper.publish_model` wrote: `hf://USER/NAME[@REVISION]`, or a plain
`USER/NAME[@REVISION]` when no such local path exists. A repo is fetched by huggingface_hub's
`snapshot_download` (its cache, and HF_HUB_OFFLINE: a cached repo loads offline), only the files of
HUB_FILES, and read with safetensors and `np.load(allow_pickle=False)`: nothing from the Hub is unpickled.

The identity encoder files a spec records are absolute paths for a local run, or names relative to
the generator file's folder for a published one (`identity.safetensors`, `emap.npy`);
`resolve_generator` anchors relative names to that folder, so `load_identity(spec, ...)` finds them
wherever the folder lies (the Hub cache, a staged folder, a copy).
This module imports only the models, so the swapper can load a generator without the trainer's
losses or loop.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from pipeline.dataset import atomic_write_bytes, atomic_write_json
from training.models import GENERATOR_PRESETS, Generator, GeneratorConfig, IdentityEncoder, build_identity

if TYPE_CHECKING:
    from training.config import TrainConfig

GENERATOR_FILE = "generator.safetensors"
GENERATOR_FORMAT = "alphaface-generator/1"
SPEC_KEY = "alphaface_spec"  # the generator spec, as JSON, in the safetensors header
RUN_CONFIG = "config.yaml"  # the resolved config a run writes into its directory
CHECKPOINT_STATE = "trainer_state.json"  # marks a complete training checkpoint (training.checkpoint)
CHECKPOINT_EMA = "ema.safetensors"
CHECKPOINT_MODEL = "model.safetensors"  # accelerate's save_state: the first prepared model, G
# A published generator folder (swapper.publish_model): the identity encoder beside the generator, by
# these names, which the spec records relative to the folder. The Hub fetch downloads HUB_FILES only.
IDENTITY_FILE = "identity.safetensors"
EMAP_FILE = "emap.npy"
HUB_FILES = (GENERATOR_FILE, "generator.json", IDENTITY_FILE, EMAP_FILE)
HUB_PREFIX = "hf://"
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # the Hub's USER/NAME


class NotAGenerator(ValueError):
    """A --checkpoint file that is not a generator safetensors file (another format, or damaged)."""

    def __init__(self, path: Path, error: Exception) -> None:
        hint = ""
        if Path(path).suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):
            hint = (
                "; an official AlphaFace checkpoint (.pt) must be converted first: "
                "python -m swapper.convert --from alphaface-official --checkpoint FILE.pt --output DIR"
            )
        super().__init__(
            f"--checkpoint {path} is not a generator file (the .safetensors that training.train or "
            f"swapper.convert writes): {error}{hint}"
        )


# ---------------------------------------------------------------------------------------------
# The spec


def identity_record(values: dict[str, Any]) -> dict[str, Any]:
    """How swap rebuilds a run's identity encoder (absolute paths: swap runs from anywhere)."""
    weights, emap, use_emap = values.get("id_weights"), values.get("emap"), values.get("use_emap", True)
    return {
        "arch": values.get("id_arch", "r50"),
        "weights": str(Path(weights).resolve()) if weights else None,
        "emap": str(Path(emap).resolve()) if emap and use_emap else None,
        "use_emap": use_emap,
        "random": not weights,  # allow_random_weights runs: swap rebuilds the same seeded network
        "seed": values.get("seed", 0),
    }


def spec_from_values(values: dict[str, Any], config: GeneratorConfig, step: int, ema: bool) -> dict[str, Any]:
    """The spec from a run's resolved config (as a mapping: `TrainConfig.to_dict()` or its config.yaml)."""
    return {
        "format": GENERATOR_FORMAT,
        "preset": values.get("generator", "alphaface"),
        "generator_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "image_size": values.get("image_size", 256),  # the side its inputs are resized to
        "step": step,
        "ema": ema,  # EMA weights (ema_decay > 0) or the raw generator's
        "identity": identity_record(values),
        "clip": {"model": values.get("clip_model"), "pretrained": values.get("clip_pretrained")},
    }


def generator_spec(cfg: TrainConfig, config: GeneratorConfig, step: int, ema: bool) -> dict[str, Any]:
    """What swap and export need to rebuild and feed a run's generator."""
    return spec_from_values(cfg.to_dict(), config, step, ema)


def spec_config(spec: dict[str, Any]) -> GeneratorConfig:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["generator_config"].items()}
    return GeneratorConfig(**values)


# ---------------------------------------------------------------------------------------------
# The file


def save_generator(folder: Path, state: dict[str, Tensor], spec: dict[str, Any]) -> Path:
    """The weights and their spec as one file, written atomically: the spec is in the safetensors header,
    so no crash can pair new weights with an old spec. `generator.json` beside it is a readable copy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GENERATOR_FILE
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": GENERATOR_FORMAT, SPEC_KEY: json.dumps(spec, sort_keys=True)}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
    atomic_write_json(path.with_suffix(".json"), spec)
    return path


def read_generator_spec(path: Path) -> dict[str, Any]:
    """The spec of a generator file: the one inside it; for files written before that, the `.json` beside."""
    try:
        with safe_open(str(path), framework="pt") as f:
            embedded = (f.metadata() or {}).get(SPEC_KEY)
    except SafetensorError as e:
        raise NotAGenerator(path, e) from None
    if embedded is not None:
        return json.loads(embedded)
    spec_path = Path(path).with_suffix(".json")
    if not spec_path.is_file():
        raise FileNotFoundError(f"{path} holds no spec and has no {spec_path.name} beside it")
    return json.loads(spec_path.read_text(encoding="utf-8"))


def _checkpoint_spec(folder: Path) -> tuple[Path, dict[str, Any]]:
    """A training checkpoint folder: its weights, and the spec rebuilt from the run's config.yaml."""
    config_path = folder.parent.parent / RUN_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no run config at {config_path}")
    values = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}  # written by yaml.safe_dump
    preset = values.get("generator", "alphaface")
    if preset not in GENERATOR_PRESETS:
        raise ValueError(f"{config_path}: unknown generator preset {preset!r}")
    overrides = {
        k: tuple(v) if isinstance(v, list) else v for k, v in (values.get("generator_overrides") or {}).items()
    }
    config = dataclasses.replace(GENERATOR_PRESETS[preset], **overrides)
    step = json.loads((folder / CHECKPOINT_STATE).read_text(encoding="utf-8"))["step"]
    ema = (folder / CHECKPOINT_EMA).is_file()
    return (folder / CHECKPOINT_EMA if ema else folder / CHECKPOINT_MODEL), spec_from_values(values, config, step, ema)


def hub_reference(checkpoint: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when --checkpoint names a Hub model repo, else None.

    `hf://USER/NAME[@REVISION]` always does (a `Path` folds `hf://` into `hf:/`, so both are read); a
    plain `USER/NAME[@REVISION]` only when no such local path exists, so a local folder always wins."""
    text = str(checkpoint)
    if text.startswith("hf:/"):
        ref = text[len("hf:") :].lstrip("/")
        repo, _, revision = ref.partition("@")
        if not HUB_REPO_ID.fullmatch(repo):
            raise ValueError(
                f"--checkpoint {text}: a Hub model is {HUB_PREFIX}USER/NAME or {HUB_PREFIX}USER/NAME@REVISION"
            )
        return repo, revision or None
    repo, _, revision = text.partition("@")
    if HUB_REPO_ID.fullmatch(repo) and not Path(text).exists():
        return repo, revision or None
    return None


def fetch_hub_generator(repo: str, revision: str | None) -> Path:
    """The `generator.safetensors` of a Hub model repo, from huggingface_hub's cache (downloaded when online).

    Every failure is one line naming the repo: offline and not cached, no such repo or revision, or a
    repo that is not a published generator."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"the Hub model {repo}" + (f" (revision {revision})" if revision else "")
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(HUB_FILES)))
    except LocalEntryNotFoundError:  # not cached, and offline or unreachable
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise FileNotFoundError(
            f"{name} is not in the local Hub cache ({constants.HF_HUB_CACHE}) and {why}: "
            "fetch it once online, or check the name"
        ) from None
    except GatedRepoError:  # before RepositoryNotFoundError, its parent
        raise FileNotFoundError(f"{name} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{name}: no such revision on the Hub") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{name} does not exist (or is private: set HF_TOKEN to a token that reads it)"
        ) from None
    except HfHubHTTPError as e:  # another answer (401, 5xx, ...); huggingface_hub never puts the token in it
        raise ValueError(f"fetching {name} failed: {e}") from None
    path = folder / GENERATOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{name} holds no {GENERATOR_FILE}: it is not a generator swapper.publish_model wrote")
    return path


def _anchor_identity(spec: dict[str, Any], folder: Path, hub: bool) -> dict[str, Any]:
    """The spec with the identity encoder's relative file names made absolute under the generator's folder.

    A local run records absolute paths, which are kept. From the Hub only names inside the snapshot are
    taken, and safetensors weights only: a spec must not point a download at a local file or a pickle."""
    rec = dict(spec.get("identity") or {})
    for key in ("weights", "emap"):
        name = rec.get(key)
        if not name:
            continue
        if hub and (Path(name).is_absolute() or ".." in Path(name).parts):
            raise ValueError(f"the Hub generator's spec names its identity {key} {name!r} outside the repo")
        if hub and key == "weights" and not name.endswith(".safetensors"):
            raise ValueError(f"the Hub generator's identity weights {name!r} are not a .safetensors file")
        rec[key] = str(folder / name) if not Path(name).is_absolute() else name
    return {**spec, "identity": rec} if "identity" in spec else spec


def resolve_generator(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(weights file, spec) for any of the accepted --checkpoint forms, a Hub repo included."""
    hub = hub_reference(path)
    if hub is not None:
        plain = not str(path).startswith("hf:/")  # USER/NAME: say that no local path has that name either
        try:
            weights = fetch_hub_generator(*hub)
        except (FileNotFoundError, ValueError) as e:
            shown = str(path) if plain else HUB_PREFIX + str(path).removeprefix("hf:").lstrip("/")
            raise type(e)(f"--checkpoint {shown}: " + ("no such local path; " if plain else "") + str(e)) from None
        return weights, _anchor_identity(read_generator_spec(weights), weights.parent, hub=True)
    path = Path(path)
    if path.is_file():
        return path, _anchor_identity(read_generator_spec(path), path.parent, hub=False)
    for candidate in (path / GENERATOR_FILE, path / "final" / GENERATOR_FILE):
        if candidate.is_file():
            return resolve_generator(candidate)
    if (path / CHECKPOINT_STATE).is_file():
        return _checkpoint_spec(path)
    raise FileNotFoundError(
        f"--checkpoint {path}: no generator here (expected a run dir with final/{GENERATOR_FILE}, a checkpoint "
        f"folder, a {GENERATOR_FILE} file, or a Hub model {HUB_PREFIX}USER/NAME)"
    )


def _strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """DDP-wrapped checkpoints (accelerate saves them wrapped) prefix every key with `module.`."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    weights, spec = resolve_generator(path)
    model = Generator(spec_config(spec))
    try:
        state = load_file(str(weights))
    except SafetensorError as e:  # a header that reads, over a file cut short
        raise NotAGenerator(weights, e) from None
    model.load_state_dict(_strip_module(state), strict=True)
    return model.eval().requires_grad_(False).to(device), spec


def load_identity(spec: dict[str, Any], cfg: Any) -> IdentityEncoder:
    """The run's identity encoder, or the one given (`cfg.id_weights`, `cfg.emap`, `cfg.id_arch`)."""
    rec = spec["identity"]
    if cfg.id_weights is not None:
        emap = cfg.emap or rec.get("emap")
        arch = cfg.id_arch or ("r50" if rec["arch"] == "tiny" else rec["arch"])  # real weights: a real arch
        return build_identity(arch, str(cfg.id_weights), emap and str(emap))
    if rec.get("random"):
        print(
            "note: this generator was trained with a random identity encoder (allow_random_weights); "
            "rebuilding the same seeded one",
            file=sys.stderr,
        )
        return build_identity(rec["arch"], None, rec.get("emap"), rec.get("use_emap", True), True, rec.get("seed", 0))
    weights = rec.get("weights")
    if not weights or not Path(weights).is_file():
        raise FileNotFoundError(
            f"the identity encoder recorded with the generator ({weights}) is not here; pass --id-weights (and --emap)"
        )
    emap = cfg.emap or rec.get("emap")
    return build_identity(cfg.id_arch or rec["arch"], weights, emap and str(emap), rec.get("use_emap", True))
