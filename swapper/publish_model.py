"""Publish a trained swapper to the Hugging Face Hub as a model repo, with a generated model card.

    python -m swapper.publish_model --checkpoint RUN_OR_FOLDER --repo-id USER/NAME [--dry-run] [--private] \
        [--stage-dir DIR] [--revision BRANCH] [--report REPORT_DIR] [--dataset-repo USER/NAME] \
        [--license other] [--id-weights W --emap E]

    resolve (training.artifact) -> stage (generator, identity encoder, report, card) -> load the staged
    folder back -> upload

The staged folder (default RUN_DIR/hub, or beside the generator file when there is no run) is the repo
as it will be on the Hub, and `--checkpoint` of swap, export, evaluate and init_from reads it as
`hf://USER/NAME`:

    README.md                   the model card: summary, training data, frozen networks, evaluation, use,
                                licence, intended use and misuse
    generator.safetensors       the weights with the spec in the header (training.artifact), the spec
    generator.json              naming the identity files below relative to the folder, and no local path
    identity.safetensors        the identity encoder it was trained with, when real (a .pth becomes
                                safetensors: nothing on the Hub is unpickled); a random one is recorded as such
    emap.npy                    its emap, when it uses one
    evaluation/                 swapper.evaluate's report.json, report.md and plots/, when there is a report
                                (--report, else the one report.json in RUN_DIR or a folder directly in it)

The card's `datasets:` names the dataset repos given with --dataset-repo, else the repo pipeline.publish
staged beside each training dataset (DATASET/hub, its card's loading example). --dry-run stages, loads
the staged folder back and prints the plan; it contacts nothing (a Hub --checkpoint is still fetched).
The token comes from HF_TOKEN or the saved login, through huggingface_hub; it is never printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml
from safetensors.torch import save as safetensors_bytes

from pipeline.cli import fail, parse_config, stage_main
from pipeline.dataset import DatasetDir, atomic_open, atomic_write_bytes
from pipeline.hub import public_model_name, source_info, source_of
from pipeline.publish import MARKER as DATASET_STAGE_MARKER
from pipeline.publish import StepFailed, named_step, replace_stage, token_source
from swapper.metrics.report import HEADERS, markdown_table, paper_rows, run_row
from training.artifact import (
    EMAP_FILE,
    HUB_PREFIX,
    HUB_REPO_ID,
    IDENTITY_FILE,
    RUN_CONFIG,
    hub_reference,
    load_generator,
    load_identity,
    resolve_generator,
    save_generator,
)
from training.models.weights import load_state_dict_file

MARKER = ".alphaface-model-stage"  # marks a folder this stage made: only such a folder is ever replaced
REPORT_DIR = "evaluation"
MANAGED = [IDENTITY_FILE, EMAP_FILE, f"{REPORT_DIR}/**"]  # removed from the repo when a new stage lacks them
_STAGED_DATASET = re.compile(r'load_dataset\(\s*"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"')
PAPER = "AlphaFace: High Fidelity and Real-time Face Swapper Robust to Facial Pose"  # arXiv 2601.16429

# What a model trained on each source inherits (docs/design.md §8; pipeline.hub.LICENCES decides redistribution)
DATA_TERMS = {
    "celeba-hq": "CelebA-HQ / CelebAMask-HQ: non-commercial research only; redistribution is forbidden",
    "vggface2-hq": "VGGFace2-HQ: web photographs, largely copyrighted by their owners; VGGFace2's research terms",
    "alphaface": "the official AlphaFace sample data (FFHQ / LPFF crops): each image keeps its own licence",
}


@dataclass(frozen=True)
class PublishModelConfig:
    # --- input
    checkpoint: str  # RUN_DIR, its final/, a checkpoint folder, a generator .safetensors, or hf://USER/NAME
    repo_id: str  # USER/NAME or ORG/NAME of the Hub model repo
    report: Path | None = None  # a swapper.evaluate REPORT_DIR; default: the one report.json in the run dir
    dataset_repos: tuple[str, ...] = ()  # Hub dataset repo it was trained on (repeat); default: pipeline.publish's
    id_weights: Path | None = None  # publish this identity encoder instead of the recorded one (files moved)
    emap: Path | None = None  # its emap .npy, instead of the recorded one
    # --- what is released
    license: str = "other"  # the card's licence id; other: the terms of the data and encoder, in the card
    private: bool = False  # create the repo private
    revision: str | None = None  # branch to upload to (created if missing); default: main
    # --- local
    stage_dir: Path | None = None  # where the repo is built; default RUN_DIR/hub
    dry_run: bool = False  # stage, check and print the plan; contact nothing

    def __post_init__(self) -> None:
        for flag, repo in (("--repo-id", self.repo_id), *(("--dataset-repo", d) for d in self.dataset_repos)):
            if not HUB_REPO_ID.fullmatch(repo):
                raise ValueError(f"{flag} must look like USER/NAME, not {repo!r}")
        if self.revision is not None and not self.revision.strip():
            raise ValueError("--revision must not be empty")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.license):
            raise ValueError(f"--license must be a Hub licence id such as other or apache-2.0, not {self.license!r}")
        if self.report is not None and not (Path(self.report) / "report.json").is_file():
            raise FileNotFoundError(f"--report {self.report} holds no report.json (a swapper.evaluate --output)")
        for flag, path in (("--id-weights", self.id_weights), ("--emap", self.emap)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path} is not a file")


# ---------------------------------------------------------------- what the run records


def find_run_dir(weights: Path) -> Path | None:
    """The run directory of RUN_DIR/final/generator.safetensors or RUN_DIR/checkpoints/step_N/*.safetensors."""
    candidates = [weights.parents[1]] if weights.parent.name == "final" else []
    if len(weights.parents) > 2 and weights.parents[1].name == "checkpoints":
        candidates.append(weights.parents[2])
    return next((c for c in candidates if (c / RUN_CONFIG).is_file()), None)


def find_report(run_dir: Path | None) -> Path | None:
    """The one swapper.evaluate report in the run dir or a folder directly in it; several are refused."""
    if run_dir is None:
        return None
    found = [p.parent for p in (run_dir / "report.json", *sorted(run_dir.glob("*/report.json"))) if p.is_file()]
    if len(found) > 1:
        raise ValueError(
            f"{run_dir} holds several evaluation reports ({', '.join(map(str, found))}): pick one with --report"
        )
    return found[0] if found else None


def staged_dataset_repo(dataset: Path) -> str | None:
    """The repo pipeline.publish staged this dataset for (DATASET/hub, its card's `load_dataset("USER/NAME")`).

    pipeline.publish records no repo id of its own; its staged card is the only local trace. A staged
    folder does not prove an upload: --dataset-repo overrides it."""
    stage = dataset / "hub"
    if not (stage / DATASET_STAGE_MARKER).is_file() or not (stage / "README.md").is_file():
        return None
    match = _STAGED_DATASET.search((stage / "README.md").read_text(encoding="utf-8"))
    return match.group(1) if match else None


def training_data(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What the card says of each training dataset (names only, never a local path)."""
    rows = []
    for d in (values or {}).get("data") or []:
        path = Path(d)
        if not (path / "plan.json").is_file():
            rows.append({"name": path.name, "found": False})
            continue
        plan = DatasetDir(path).load_plan()
        fp = plan.get("fingerprint", {})
        info = source_info(plan)
        synthetic = info.template == "synthetic.md"  # pipeline.hub: the built-in drawn faces
        rows.append(
            {
                "name": str(plan.get("name") or path.name),
                "found": True,
                "source": info.pretty,
                "terms": f"{info.pretty}: faces drawn by this project, no real person" if synthetic else None,
                "source_key": source_of(plan),
                "samples": plan.get("num_samples"),
                "caption_model": public_model_name(str(fp["model"])) if fp.get("model") else None,
                "prompt_id": fp.get("prompt_id"),
                "hub_repo": staged_dataset_repo(path),
            }
        )
    return rows


def read_report(folder: Path | None) -> dict[str, Any] | None:
    if folder is None:
        return None
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder}/report.json is not JSON: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ValueError(f"{folder}/report.json is not a swapper.evaluate report (no metrics)")
    return report


# ---------------------------------------------------------------- the staged folder


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f, atomic_open(dst, "wb") as g:
        shutil.copyfileobj(f, g)


def stage_identity(rec: dict[str, Any], out: Path) -> dict[str, Any]:
    """Copy the identity encoder's files into `out` under the published names; return the record naming them.

    A random encoder has no file (the seed rebuilds it). Weights in a torch pickle are rewritten as
    safetensors (read here with weights_only), so a download never unpickles anything."""
    rec = dict(rec)
    weights, emap = rec.get("weights"), rec.get("emap")
    for what, path in (("weights", None if rec.get("random") else weights), ("emap", emap)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(
                f"the identity encoder {what} recorded with the generator ({path}) is not here; "
                f"pass --{'id-weights' if what == 'weights' else 'emap'}"
            )
    if weights and not rec.get("random"):
        if str(weights).endswith(".safetensors"):
            _copy(Path(weights), out / IDENTITY_FILE)
        else:
            state = {k: v.contiguous() for k, v in load_state_dict_file(weights).items()}
            atomic_write_bytes(out / IDENTITY_FILE, safetensors_bytes(state))
        rec["weights"] = IDENTITY_FILE
    else:
        rec["weights"] = None
    if emap:
        np.load(emap, allow_pickle=False)  # an emap is a plain array: refuse anything else before it is published
        _copy(Path(emap), out / EMAP_FILE)
        rec["emap"] = EMAP_FILE
    return rec


def public_spec(spec: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """The spec as published: identity files by their staged names, and no local path of this machine."""
    out = {**spec, "identity": identity}
    out["clip"] = {k: public_model_name(str(v)) if v else v for k, v in (spec.get("clip") or {}).items()}
    if isinstance(spec.get("converted_from"), dict):
        out["converted_from"] = {
            k: Path(v).name if isinstance(v, str) and k != "format" else v for k, v in spec["converted_from"].items()
        }
    return out


def stage_report(report: Path, out: Path) -> None:
    for p in [report / "report.json", report / "report.md", *sorted((report / "plots").glob("*.png"))]:
        if p.is_file():
            _copy(p, out / REPORT_DIR / p.relative_to(report))


def check_stage_dir(stage: Path, keep: list[Path]) -> None:
    """Refuse a stage folder that holds the generator or the run, or a folder this stage did not make."""
    stage_r = stage.resolve()
    for folder in keep:
        if stage_r == folder.resolve() or stage_r in folder.resolve().parents:
            raise ValueError(f"--stage-dir {stage} would hold {folder} itself; choose another folder")
    if stage.exists() and (not stage.is_dir() or (any(stage.iterdir()) and not (stage / MARKER).is_file())):
        raise ValueError(
            f"--stage-dir {stage} exists and was not made by swapper.publish_model (no {MARKER}); "
            "it is replaced on every run, so give an empty or new folder"
        )


def staged_files(stage: Path) -> list[tuple[str, int]]:
    """(path in repo, bytes) of everything that will be uploaded."""
    return [
        (p.relative_to(stage).as_posix(), p.stat().st_size)
        for p in sorted(stage.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.relative_to(stage).as_posix().startswith(".cache/")
    ]


# ---------------------------------------------------------------- the card


def _front_matter(cfg: PublishModelConfig, datasets: list[str], demo: bool) -> str:
    meta: dict[str, Any] = {"library_name": "alphaface", "license": cfg.license}
    if cfg.license == "other":  # the Hub asks for a name and a link with `other`
        meta.update(license_name="training-data-terms", license_link=f"https://huggingface.co/{cfg.repo_id}#licence")
    meta.update(
        pipeline_tag="image-to-image",
        tags=["face-swapping", "alphaface", "gan", "image-to-image", "synthetic-media", *(["demo"] if demo else [])],
    )
    if datasets:
        meta["datasets"] = datasets
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _data_section(data: list[dict[str, Any]], values: dict[str, Any] | None) -> list[str]:
    if values is None:
        return ["Not recorded with this generator (it was published without its run directory, e.g. a "
                "converted checkpoint or a copied `final/`)."]  # fmt: skip
    lines = []
    for d in data:
        if not d["found"]:
            lines.append(f"- `{d['name']}`: the dataset folder was not found when this card was written")
            continue
        where = f" ([{d['hub_repo']}](https://huggingface.co/datasets/{d['hub_repo']}))" if d["hub_repo"] else ""
        lines.append(
            f"- `{d['name']}`{where}: {d['source']}, {d['samples'] or 0:,} images; captions by "
            f"`{d['caption_model']}` (prompt `{d['prompt_id']}`), embedded with CLIP"
        )
    keys = ("image_size", "batch_size", "max_steps", "lr_g", "lr_d", "ema_decay", "mixed_precision", "seed")
    settings = ", ".join(f"`{k}` {values[k]}" for k in keys if k in values)
    pairs = ", ".join(f"{k} {v}" for k, v in (values.get("pairs") or {}).items())
    return [*lines, "", f"Training settings: {settings}; pairs: {pairs or 'default'}."]


def _frozen_section(spec: dict[str, Any], source_rec: dict[str, Any], values: dict[str, Any] | None) -> list[str]:
    rec = spec["identity"]
    if rec.get("random"):
        identity = (
            f"a seeded random `{rec['arch']}` IResNet (seed {rec.get('seed', 0)}; a test network, no real weights)"
        )
    else:
        identity = (
            f"ArcFace `{rec['arch']}` from `{Path(str(source_rec.get('weights'))).name}`, here as `{IDENTITY_FILE}`"
        )
    emap = f", then the InSwapper emap (`{EMAP_FILE}`)" if rec.get("emap") else ", without an emap"
    clip = spec.get("clip") or {}
    vgg = "not recorded"
    if values is not None:
        vgg = f"`{Path(values['vgg_weights']).name}`" if values.get("vgg_weights") else "random (a test run)"
    return [
        f"- identity encoder (frozen; used at swap time): {identity}{emap}",
        f"- CLIP (training losses only): `{clip.get('model')}` with `{clip.get('pretrained')}` weights",
        f"- VGG16 (perceptual loss, training only): {vgg}",
    ]


def _evaluation_section(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return ["No evaluation report was published with this model (run `swapper.evaluate` and publish again "
                "with `--report`)."]  # fmt: skip
    rows = [r for r in paper_rows() if r[0] == "AlphaFace"] + [
        run_row("this model", report["metrics"], report.get("latency"))
    ]
    s = report.get("settings", {})
    return [
        markdown_table(["method", *HEADERS], rows),
        "",
        f"Protocol `{s.get('protocol')}`, detector `{s.get('detector')}`, crop `{s.get('crop')}` at "
        f"{s.get('image_size')} px; recogniser {s.get('id_model')}, pose {s.get('pose_model')}, expression "
        f"{s.get('expr_model')}. The paper's row is its own harness: compare only where the settings match. "
        f"The full report is [{REPORT_DIR}/report.md]({REPORT_DIR}/report.md).",
    ]


def _licence_section(cfg: PublishModelConfig, data: list[dict[str, Any]], rec: dict[str, Any]) -> list[str]:
    terms = [d["terms"] or DATA_TERMS.get(d["source_key"], f"{d['source']}: its own terms")
             for d in data if d.get("found")]  # fmt: skip
    lines = [
        f"The weights are released as `{cfg.license}`. A model trained on face images carries its data's terms:",
        *[f"- {t}" for t in terms or ["the training data is not recorded: find out its terms before any use"]],
    ]
    if not rec.get("random"):
        lines.append(
            "- the identity encoder: insightface releases its ArcFace models for non-commercial research only; "
            "check the terms of the weights this model ships"
        )
    lines += ["", "The AlphaFace reproduction code that trains and runs this model is Apache-2.0."]
    return lines


def render_card(
    cfg: PublishModelConfig,
    spec: dict[str, Any],
    source_rec: dict[str, Any],
    n_params: int,
    values: dict[str, Any] | None,
    data: list[dict[str, Any]],
    report: dict[str, Any] | None,
) -> str:
    demo = bool(spec["identity"].get("random")) or spec.get("preset") == "tiny"
    datasets = list(cfg.dataset_repos) or list(dict.fromkeys(d["hub_repo"] for d in data if d.get("hub_repo")))
    name = cfg.repo_id.split("/")[1]
    ref = f"{HUB_PREFIX}{cfg.repo_id}" + (f"@{cfg.revision}" if cfg.revision else "")
    g = spec["generator_config"]
    origin = " (converted from the official AlphaFace checkpoint)" if spec.get("converted_from") else ""
    warning = (
        "> **A test model.** It has a random identity encoder or the tiny test preset: its swaps are not "
        "faces. It shows the files and the card, not a trained swapper.\n"
        if demo
        else ""
    )
    text = [
        _front_matter(cfg, datasets, demo),
        f"# {name}",
        "",
        warning,
        f"A face-swapping generator of the AlphaFace architecture (*{PAPER}*, arXiv 2601.16429), trained with "
        f"the AlphaFace reproduction{origin}. It replaces the identity of the face in a target image with the "
        "identity of a source face, keeping the target's pose, expression, lighting and background.",
        "",
        f"- preset `{spec.get('preset')}`, step {spec.get('step')}, "
        + ("EMA weights" if spec.get("ema") else "raw (non-EMA) weights"),
        f"- image size {spec.get('image_size')} px (aligned face crops); CAII mode `{g.get('caii_mode')}`, "
        f"{g.get('num_caii_blocks')} CAII blocks",
        f"- {n_params:,} generator parameters ({n_params / 1e6:.2f}M), fp32 safetensors",
        "",
        "## Training data",
        "",
        *_data_section(data, values),
        "",
        "## Frozen networks",
        "",
        *_frozen_section(spec, source_rec, values),
        "",
        "## Evaluation",
        "",
        *_evaluation_section(report),
        "",
        "## How to use",
        "",
        "With the AlphaFace reproduction installed, `--checkpoint` takes this repo (fetched into the Hugging Face "
        "cache once; `HF_HUB_OFFLINE=1` then loads it offline). Detector weights (SCRFD `det_10g.onnx` of "
        "insightface's buffalo_l) are not part of this repo.",
        "",
        "```bash",
        f"python -m swapper.swap --checkpoint {ref} --source me.jpg --target photo.jpg --output out.jpg \\",
        "    --detector scrfd:det_10g.onnx",
        f"python -m swapper.swap --checkpoint {ref} --source face.png --target crops/ --detector aligned",
        f"python -m swapper.export --checkpoint {ref} --onnx generator.onnx --verify",
        "```",
        "",
        "```python",
        "from training.artifact import load_generator",
        "",
        f'generator, spec = load_generator("{ref}")  # spec: preset, image size, identity encoder',
        "```",
        "",
        "Files: `generator.safetensors` (weights, with the spec in the safetensors header), `generator.json` "
        "(the spec, readable)"
        + (f", `{IDENTITY_FILE}`" if spec["identity"].get("weights") else "")
        + (f", `{EMAP_FILE}`" if spec["identity"].get("emap") else "")
        + (f", `{REPORT_DIR}/`" if report else "")
        + ". Everything loads with safetensors or `numpy.load(allow_pickle=False)`: no pickle.",
        "",
        "## Licence",
        "",
        *_licence_section(cfg, data, source_rec),
        "",
        "## Intended use",
        "",
        "Research on face swapping and its detection: measuring identity transfer and pose robustness, building "
        "training and test data for deepfake detectors, and consented creative or post-production work in which "
        "every person shown has agreed to the use of their face.",
        "",
        "## Misuse and out-of-scope use",
        "",
        "Face swapping can hurt real people. Do not use this model, or anything made with it:",
        "",
        "- without the consent of the people whose faces are used, as source or as target;",
        "- to impersonate anyone, or for fraud, scams, identity theft or getting round identity checks;",
        "- to harass, bully, blackmail, defame or intimidate anyone;",
        "- for sexual or intimate imagery of anyone who has not consented to it, and never of minors;",
        "- for political disinformation, or to fabricate evidence or news.",
        "",
        "Label what you make as synthetic (say that a face was swapped, and keep any provenance metadata). "
        "Follow the law where you are and where the people shown are: laws on deepfakes and synthetic media, "
        "likeness and personality rights, privacy and biometric data, and the disclosure duties for deep fakes "
        "such as those of the EU AI Act.",
        "",
        "## Limitations",
        "",
        f"- trained on aligned {spec.get('image_size')} px crops; faces in the wild go through "
        "detection, alignment and paste-back (`swapper.swap`), whose quality bounds the result;",
        "- face datasets are skewed in age, skin tone and gender, so quality and identity transfer vary across "
        "people; check the evaluation on the people you care about;",
        "- the swap keeps the target's hair, head shape and context, so it is not a full change of identity, and "
        "swaps can be detected.",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@article{yu2026alphaface,",
        f"  title   = {{{PAPER}}},",
        "  author  = {Yu, Jongmin and Oh, Hyeontaek and Sun, Zhongtian and Aviles-Rivero, Angelica I. and Jeon, "
        "Moongu and Yang, Jinhong},",
        "  journal = {arXiv preprint arXiv:2601.16429},",
        "  year    = {2026}",
        "}",
        "```",
        "",
    ]
    return "\n".join(text)


# ---------------------------------------------------------------- upload


def upload(cfg: PublishModelConfig, stage: Path, message: str) -> None:
    """Create the repo (private when asked), the branch, then upload the staged folder in one call."""
    from huggingface_hub import HfApi

    api = HfApi()  # the token: HF_TOKEN or the saved login, read by huggingface_hub; never here
    with named_step(f"upload: creating the repo {cfg.repo_id}"):
        api.create_repo(cfg.repo_id, repo_type="model", private=cfg.private, exist_ok=True)
        info = api.repo_info(cfg.repo_id, repo_type="model")
    if cfg.private and not info.private:
        raise ValueError(f"{cfg.repo_id} already exists and is public, so --private cannot be honoured")
    if cfg.revision:
        with named_step(f"upload: creating the branch {cfg.revision}"):
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="model", exist_ok=True)
    with named_step("upload: sending the staged files"):
        api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=stage,
            repo_type="model",
            revision=cfg.revision,
            ignore_patterns=[MARKER],
            delete_patterns=list(MANAGED),  # an identity file or report from an earlier upload that this one lacks
            commit_message=message,
        )


# ---------------------------------------------------------------- the stage


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def run(cfg: PublishModelConfig) -> dict[str, Any]:
    """Stage, check and (unless dry_run) upload. Returns what was done."""
    weights, spec = resolve_generator(cfg.checkpoint)
    generator, _ = load_generator(cfg.checkpoint)  # strict: the weights match the spec before anything is staged
    from_hub = hub_reference(cfg.checkpoint) is not None
    run_dir = None if from_hub else find_run_dir(weights)
    if cfg.stage_dir is None and from_hub:
        raise ValueError("--stage-dir is needed to republish a Hub model (the default folder is beside a local run)")
    stage = Path(cfg.stage_dir) if cfg.stage_dir is not None else (run_dir or weights.parent) / "hub"
    check_stage_dir(stage, [weights.parent, *([run_dir] if run_dir else [])])
    values = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) if run_dir else None
    data = training_data(values)
    report_dir = Path(cfg.report) if cfg.report is not None else find_report(run_dir)
    report = read_report(report_dir)
    if report and not str(report.get("swapper", "")).startswith(f"{spec.get('preset')} step {spec.get('step')} "):
        print(f"swapper.publish_model: note: the report evaluated {report.get('swapper')!r}, not this generator")
    source_rec = dict(spec["identity"])
    if cfg.id_weights is not None:
        source_rec.update(weights=str(Path(cfg.id_weights).resolve()), random=False)
    if cfg.emap is not None:
        source_rec.update(emap=str(Path(cfg.emap).resolve()), use_emap=True)

    with named_step(f"staging into {stage} (local disk)"):
        stage.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage.name}.", suffix=".tmp", dir=stage.parent))
        try:
            (tmp / MARKER).write_text(json.dumps({"checkpoint": str(cfg.checkpoint)}) + "\n", encoding="utf-8")
            published = public_spec(spec, stage_identity(source_rec, tmp))
            save_generator(tmp, generator.state_dict(), published)
            if report_dir is not None:
                stage_report(report_dir, tmp)
            n_params = sum(p.numel() for p in generator.parameters())
            card = render_card(cfg, published, source_rec, n_params, values, data, report)
            atomic_write_bytes(tmp / "README.md", card.encode("utf-8"))
            # the staged folder alone must rebuild generator and identity encoder, as the Hub copy will
            _, staged_spec = load_generator(tmp)
            with contextlib.redirect_stderr(io.StringIO()):  # its "random encoder" note is for swap, not here
                load_identity(staged_spec, SimpleNamespace(id_weights=None, emap=None, id_arch=None))
            replace_stage(tmp, stage)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
            raise

    files = staged_files(stage)
    summary: dict[str, Any] = {
        "repo_id": cfg.repo_id,
        "repo_type": "model",
        "private": cfg.private,
        "revision": cfg.revision,
        "preset": spec.get("preset"),
        "step": spec.get("step"),
        "stage_dir": str(stage),
        "report": str(report_dir) if report_dir else None,
        "datasets": list(cfg.dataset_repos) or [d["hub_repo"] for d in data if d.get("hub_repo")],
        "files": [{"path": p, "bytes": n} for p, n in files],
        "total_bytes": sum(n for _, n in files),
        "uploaded": False,
    }
    width = max(len(p) for p, _ in files)
    print(
        "\n".join(
            [
                f"swapper.publish_model: {'DRY RUN, nothing is uploaded' if cfg.dry_run else 'upload plan'}",
                f"  repo:      {cfg.repo_id} (model), {'private' if cfg.private else 'public'}, "
                f"revision {cfg.revision or 'main'}",
                f"  generator: {spec.get('preset')} step {spec.get('step')}, {spec.get('image_size')} px",
                f"  datasets:  {', '.join(summary['datasets']) or 'none named'}",
                f"  report:    {report_dir or 'none'}",
                f"  staged in: {stage}",
                f"  upload:    {len(files)} files, {_size(summary['total_bytes'])}",
                f"  token:     {token_source()}",
                *[f"    {p:<{width}}  {_size(n):>9}" for p, n in files],
            ]
        )
    )
    if cfg.dry_run:
        return summary
    upload(cfg, stage, f"Publish {spec.get('preset')} step {spec.get('step')}")
    summary["uploaded"] = True
    print(f"swapper.publish_model: uploaded to https://huggingface.co/{cfg.repo_id}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    prog = "swapper.publish_model"

    def config() -> PublishModelConfig:
        try:
            return parse_config(f"python -m {prog}", __doc__, PublishModelConfig, argv)
        except FileNotFoundError as e:  # raised by __post_init__ for a missing --report, --id-weights, --emap
            fail(prog, str(e))

    # StepFailed names the step and never holds the token
    return stage_main(prog, config, run, (FileNotFoundError, ValueError, StepFailed), "publish_model")


if __name__ == "__main__":
    main()
