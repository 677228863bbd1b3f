"""Publishing a trained swapper to the Hub, and loading it back by repo id, without the network.

The staged folder is what the Hub will hold. The loading tests lay it out in huggingface_hub's own cache
layout (blobs, snapshot symlinks, refs/main) and let the real `snapshot_download` find it under
HF_HUB_OFFLINE=1, through `swapper.swap.main` exactly as a user runs it. The upload is exercised up to the
offline boundary, in a subprocess with a dead HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants
from PIL import Image
from safetensors.torch import load_file

from swapper import publish_model, swap
from training.artifact import load_generator, load_identity, read_generator_spec, resolve_generator, save_generator
from training.models import TINY_ID, IResNet

REPO = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_modelPublishTestTokenThatMustNeverBePrinted"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[Path, Path]:
    """(source crop, folder of target crops): aligned synthetic faces, as `--detector aligned` takes them."""
    from demo.synthetic import generate

    root = tmp_path_factory.mktemp("publish_faces")
    generate(root / "raw", "vggface2-hq", identities=2, per_identity=2, seed=7, size=96)
    return root / "raw" / "n000001" / "0001_01.jpg", root / "raw" / "n000002"


def hub_cache(hub_dir: Path, repo: str, folder: Path) -> str:
    """`folder` as huggingface_hub caches a downloaded model repo: files in blobs/ by hash, the snapshot's
    files as relative symlinks to them, and refs/main naming the commit. Returns the commit hash."""
    root = hub_dir / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()  # any 40 hex digits
    for src in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        data = src.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return commit


def _dry_run(checkpoint: Path | str, stage: Path, *extra: str) -> dict:
    return publish_model.main(
        ["--checkpoint", str(checkpoint), "--repo-id", "user/tiny-swap", "--stage-dir", str(stage), "--dry-run", *extra]
    )


def _swap(checkpoint: str, faces: tuple[Path, Path], out: Path) -> dict[str, np.ndarray]:
    source, targets = faces
    swap.main(["--checkpoint", checkpoint, "--source", str(source), "--target", str(targets), "--output", str(out),
               "--detector", "aligned", "--device", "cpu", "--no-progress"])  # fmt: skip
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.iterdir())}


def test_dry_run_stages_a_card_and_the_same_generator(demo_run, tmp_path, capsys):
    stage = tmp_path / "stage"
    summary = _dry_run(demo_run, stage)
    printed = capsys.readouterr().out
    assert summary["uploaded"] is False and "DRY RUN, nothing is uploaded" in printed
    staged = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    assert staged == sorted([publish_model.MARKER, "README.md", "generator.json", "generator.safetensors"])
    for f in summary["files"]:  # the plan lists every file that would be uploaded, and only those
        assert f["path"] in printed
    assert publish_model.MARKER not in [f["path"] for f in summary["files"]]

    card = ModelCard.load(stage / "README.md")
    assert card.data.library_name == "alphaface" and card.data.license == "other"
    assert {"face-swapping", "alphaface"} <= set(card.data.tags)
    assert card.data.datasets is None  # the test data was never staged for the Hub by pipeline.publish
    text = card.text
    assert "preset `tiny`, step 5" in text and "64 px" in text
    assert "## Misuse and out-of-scope use" in text and "consent" in text and "impersonate" in text
    assert "python -m swapper.swap --checkpoint hf://user/tiny-swap" in text
    assert "## Licence" in text and "## Intended use" in text and "## Training data" in text
    assert str(tmp_path.parent) not in card.content  # no local path of this machine
    assert str(tmp_path.parent) not in (stage / "generator.json").read_text()

    # the published file: spec in its header (random identity encoder recorded as such), same outputs
    spec = read_generator_spec(stage / "generator.safetensors")
    assert spec["identity"]["random"] is True and spec["identity"]["weights"] is None
    assert json.loads((stage / "generator.json").read_text()) == spec
    original, _ = load_generator(demo_run)
    staged, staged_spec = load_generator(stage)
    torch.manual_seed(3)
    target, z = torch.rand(2, 3, 64, 64), torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    with torch.no_grad():
        assert torch.equal(staged(target, z), original(target, z))

    # a rerun replaces its own folder; a folder it did not make is refused, untouched
    _dry_run(demo_run, stage)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as err:
        _dry_run(demo_run, foreign)
    assert err.value.code == 2 and "was not made by swapper.publish_model" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def _real_identity_generator(demo_run: Path, root: Path) -> Path:
    """demo_run's generator, its spec pointing at a real identity encoder on disk (tiny widths, a torch .pth
    state dict and an emap .npy, by absolute path as a local run records them)."""
    torch.manual_seed(11)
    backbone = IResNet(**TINY_ID)
    with torch.no_grad():
        backbone.train()(torch.rand(4, 3, 112, 112) * 2 - 1)  # BatchNorm statistics that are not the defaults
    (root / "id").mkdir(parents=True)
    torch.save(backbone.eval().state_dict(), root / "id" / "w_tiny.pth")
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((512, 512)))
    np.save(root / "id" / "emap.npy", q.astype(np.float32))
    weights, spec = resolve_generator(demo_run)
    files = {"weights": str(root / "id" / "w_tiny.pth"), "emap": str(root / "id" / "emap.npy")}
    spec["identity"] = {"arch": "tiny", **files, "use_emap": True, "random": False, "seed": 0}
    return save_generator(root / "final", load_file(str(weights)), spec).parent


def _report(folder: Path) -> Path:
    """A swapper.evaluate REPORT_DIR in its format (report.json fields the card reads, report.md, a plot)."""
    metrics = {"id_retrieval": {"top1": 91.5, "top5": 97.0}, "pose_error": {"mean": 2.5},
               "expression_error": {"mean": 3.25}, "fid": None}  # fmt: skip
    report = {"swapper": "tiny step 5 (x)", "metrics": metrics, "latency": {"median_ms": 4.5},
              "settings": {"protocol": "pairs", "detector": "aligned inputs", "crop": "ffhq", "image_size": 64,
                           "id_model": "cosface", "pose_model": "hopenet", "expr_model": "deep3d"}}  # fmt: skip
    (folder / "plots").mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text("# Evaluation report\n")
    Image.new("RGB", (4, 4)).save(folder / "plots" / "id_cosine.png")
    return folder


def test_a_published_generator_loads_by_repo_id_from_the_hub_cache_offline(
    demo_run, faces, tmp_path, monkeypatch, capsys
):
    gen = _real_identity_generator(demo_run, tmp_path / "local")
    local = _swap(str(gen), faces, tmp_path / "out_local")

    stage = tmp_path / "stage"
    _dry_run(gen, stage, "--report", str(_report(tmp_path / "report")))
    for name in ("identity.safetensors", "emap.npy", "evaluation/report.json", "evaluation/report.md",
                 "evaluation/plots/id_cosine.png"):  # fmt: skip
        assert (stage / name).is_file(), name
    spec = read_generator_spec(stage / "generator.safetensors")
    assert spec["identity"]["weights"] == "identity.safetensors" and spec["identity"]["emap"] == "emap.npy"
    card = ModelCard.load(stage / "README.md").text
    assert "| **this model** (this run) | 91.50 | 2.50 | 3.25 |" in card and "evaluation/report.md" in card

    # the Hub copy, in huggingface_hub's cache; the local identity files gone, so only the repo's can serve
    hub_dir = tmp_path / "hf_home" / "hub"
    commit = hub_cache(hub_dir, "user/tiny-swap", stage)
    shutil.rmtree(tmp_path / "local")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_dir))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_dir))  # what that variable sets at import time
    assert constants.HF_HUB_OFFLINE  # tests/conftest.py: snapshot_download may only read the cache
    assert _swap("hf://user/tiny-swap", faces, tmp_path / "out_hub").keys() == local.keys()
    for name, pixels in _swap("hf://user/tiny-swap", faces, tmp_path / "out_hub").items():
        assert np.array_equal(pixels, local[name]), name

    snapshot = hub_dir / "models--user--tiny-swap" / "snapshots" / commit
    for ref in ("hf://user/tiny-swap", "user/tiny-swap", f"hf://user/tiny-swap@{commit}", f"user/tiny-swap@{commit}"):
        weights, spec = resolve_generator(ref)
        assert weights == snapshot / "generator.safetensors", ref
        assert spec["identity"]["weights"] == str(snapshot / "identity.safetensors")
    load_identity(spec, swap.SwapConfig(checkpoint=Path("x"), source=faces[0], target=faces[1]))

    # a local folder of that name wins over the Hub
    monkeypatch.chdir(tmp_path)
    shutil.copytree(stage, tmp_path / "user" / "tiny-swap")
    assert resolve_generator("user/tiny-swap")[0] == Path("user/tiny-swap/generator.safetensors")


def test_a_missing_hub_repo_offline_is_one_line(faces, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    for ref, expect in (("hf://user/missing", "--checkpoint hf://user/missing: the Hub model user/missing"),
                        ("user/missing@v2", "--checkpoint user/missing@v2: no such local path; the Hub model "
                         "user/missing (revision v2)")):  # fmt: skip
        with pytest.raises(SystemExit) as err:
            _swap(ref, faces, tmp_path / "out")
        assert err.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"swapper.swap: error: {expect}"), lines
        assert "not in the local Hub cache" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]


def test_the_dataset_repo_that_publish_staged_goes_into_the_card(demo_run, train_data, tmp_path):
    from pipeline.publish import main as publish_dataset

    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    publish_dataset(["--dataset", str(data), "--repo-id", "someone/faces", "--dry-run"])  # stages data/hub
    run = tmp_path / "run"
    shutil.copytree(demo_run / "final", run / "final")
    values = yaml.safe_load((demo_run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**values, "data": [str(data)]}))

    summary = _dry_run(run, tmp_path / "stage")
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    assert summary["datasets"] == ["someone/faces"] and card.data.datasets == ["someone/faces"]
    assert "https://huggingface.co/datasets/someone/faces" in card.text
    assert "16 images" in card.text and "faces drawn by this project" in card.text
    _dry_run(run, tmp_path / "stage", "--dataset-repo", "other/set")
    assert ModelCard.load(tmp_path / "stage" / "README.md").data.datasets == ["other/set"]
    assert not (run / "hub").exists()  # --stage-dir given: nothing beside the run
    publish_model.main(["--checkpoint", str(run), "--repo-id", "user/tiny-swap", "--dry-run"])
    assert (run / "hub" / "generator.safetensors").is_file()  # the default: RUN_DIR/hub


def test_a_real_run_stops_at_the_offline_hub_in_one_line_without_the_token(demo_run, tmp_path):
    """Republish a cached Hub model: HF_HOME from the environment finds it, the upload meets offline mode."""
    _dry_run(demo_run, tmp_path / "first")
    hub_cache(tmp_path / "hf_home" / "hub", "user/tiny-swap", tmp_path / "first")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN=FAKE_TOKEN,
               HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")  # fmt: skip
    stage = tmp_path / "again"
    args = ["--checkpoint", "hf://user/tiny-swap", "--repo-id", "other/tiny-swap", "--stage-dir", str(stage)]
    done = subprocess.run([sys.executable, "-m", "swapper.publish_model", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "upload plan" in done.stdout and "token:     HF_TOKEN is set" in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "upload: creating the repo other/tiny-swap failed" in lines[0]
    assert "offline" in lines[0].lower()
    assert FAKE_TOKEN not in done.stdout + done.stderr
    assert (stage / "generator.safetensors").is_file()  # staged from the cache before the upload was tried
