"""swapper.evaluate with data whose truth is known: the world's metric networks (`world:PATH`), a per-identity
gallery, a truth file and target masks, on drawn world faces exported as `make world` exports them.

Every figure is checked against a hand computation with the same networks, so a wrong key, axis, reference
or mask would show. The networks are untrained (seeded): the arithmetic is what is tested here; that the
trained ones judge swaps is `make world`'s (tests/test_world.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from demo.world.draw import WorldSize, generate
from demo.world.judge import export
from demo.world.nets import ATTR_SHAPE, JUDGE_SHAPE
from pipeline.cli import StageFailed
from swapper import evaluate
from swapper.metrics import retrieval
from swapper.metrics.world import AttrNet, WorldRecogniser, load_attr, load_iresnet, save
from training.models.iresnet import IResNet

PAIRS = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    faces = generate(WorldSize(train_ids=1, train_per_id=1, heldout_ids=6, heldout_per_id=7), seed=0, progress=False)
    export(faces, root / "heldout", PAIRS)
    torch.manual_seed(0)
    save(IResNet(**JUDGE_SHAPE).eval(), root / "judge.safetensors", JUDGE_SHAPE)
    save(AttrNet(**ATTR_SHAPE).eval(), root / "attributes.safetensors", ATTR_SHAPE)
    return root


def args(root: Path, checkpoint: str, output: Path, **extra: str) -> list[str]:
    h = root / "heldout"
    flags = {
        "--protocol": "pairs", "--checkpoint": checkpoint, "--output": str(output), "--image-size": "64",
        "--source": str(h / "faces"), "--target": str(h / "faces"), "--pairs": str(h / "pairs.txt"),
        "--gallery": str(h / "gallery"), "--truth": str(h / "truth.jsonl"), "--target-masks": str(h / "masks"),
        "--id-model": f"world:{root / 'judge.safetensors'}", "--pose-model": f"world:{root / 'attributes.safetensors'}",
        "--expr-model": f"world:{root / 'attributes.safetensors'}", "--latency-runs": "0", "--device": "cpu",
        **extra,
    }  # fmt: skip
    return [*(x for kv in flags.items() for x in kv), "--no-progress"]


def load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


@torch.no_grad()
def by_hand(root: Path, copy: str) -> dict[str, float]:
    """The figures of `baseline:{copy}`, computed here from the exported files alone."""
    h = root / "heldout"
    pairs = [line.split() for line in (h / "pairs.txt").read_text().splitlines()]
    truth = {r["image"]: r for r in map(json.loads, (h / "truth.jsonl").read_text().splitlines())}
    judge, attr = WorldRecogniser(load_iresnet(root / "judge.safetensors")), load_attr(root / "attributes.safetensors")
    ids = sorted(p.name for p in (h / "gallery").iterdir())
    table = np.stack([retrieval.gallery_entry(judge(torch.cat([load(f) for f in sorted((h / "gallery" / i).glob("*"))]))
                                              .numpy()) for i in ids])  # fmt: skip
    swaps = torch.cat([load(h / "faces" / (s if copy == "source" else t)) for t, s in pairs])
    targets = torch.cat([load(h / "faces" / t) for t, _ in pairs])
    emb = judge(swaps).numpy()
    src_rank, _ = retrieval.rank(emb, [ids.index(s.split("/")[0]) for _, s in pairs], table)
    tgt_rank, _ = retrieval.rank(emb, [ids.index(t.split("/")[0]) for t, _ in pairs], table)
    pose, logits = attr(swaps)
    targets_of = [t for t, _ in pairs]
    expr = [truth[t]["expression"] for t in targets_of]
    masks = np.stack([np.asarray(Image.open((h / "masks" / t).with_suffix(".png"))) > 0 for t, _ in pairs])
    changed = ((swaps - targets).abs().amax(1) > 0.1).numpy() & ~masks
    return {
        "top1": 100 * float((src_rank < 1).mean()), "top5": 100 * float((src_rank < 5).mean()),
        "target_top1": 100 * float((tgt_rank < 1).mean()),
        "yaw": float(np.mean([abs(float(pose[i, 0]) - truth[t]["yaw"]) for i, t in enumerate(targets_of)])),
        "pitch": float(np.mean([abs(float(pose[i, 1]) - truth[t]["pitch"]) for i, t in enumerate(targets_of)])),
        "expr": 100 * float(np.mean(logits.argmax(1).numpy() == np.array(expr))),
        "outside": 100 * float(np.mean(changed.sum((1, 2)) / (~masks).sum((1, 2)))),
    }  # fmt: skip


@pytest.mark.parametrize("copy", ["source", "target"])
def test_world_networks_gallery_truth_and_masks_match_a_hand_computation(world: Path, tmp_path: Path, copy: str):
    m = evaluate.main(args(world, f"baseline:{copy}", tmp_path / copy))["metrics"]
    want = by_hand(world, copy)
    assert m["rows"] == PAIRS and m["gallery_size"] == 6  # one entry per identity, not per source image
    assert m["id_retrieval"]["top1"] == pytest.approx(want["top1"]) and m["id_retrieval"]["top5"] == pytest.approx(
        want["top5"]
    )
    assert m["target_id_retrieval"]["top1"] == pytest.approx(want["target_top1"])
    assert m["pose_reference"] == "truth"
    assert m["yaw_error"]["mean"] == pytest.approx(want["yaw"], abs=1e-3)
    assert m["pitch_error"]["mean"] == pytest.approx(want["pitch"], abs=1e-3)
    assert m["expression_accuracy"] == pytest.approx(want["expr"])
    assert m["outside_changed"] == pytest.approx(want["outside"])
    if copy == "target":
        assert m["outside_changed"] == 0.0
    else:  # another identity's whole image: most of the background differs
        assert m["outside_changed"] > 50
    report = (tmp_path / copy / "report.md").read_text()
    assert "against the truth" in report and "pixels changed outside the face" in report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("mask", "no mask for target"),
        ("truth", "has no line for 1 target"),
        ("truth_value", "numeric yaw, pitch, expression"),
        ("id_model", "not a world network file"),
        ("gallery", "holds no IDENTITY/ folders"),
    ],
)
def test_incomplete_truth_is_one_line_and_leaves_no_report_dir(world, tmp_path, change, message, capsys):
    h = tmp_path / "heldout"
    shutil.copytree(world / "heldout", h)
    root = tmp_path
    for name in ("judge.safetensors", "attributes.safetensors"):
        shutil.copy(world / name, root / name)
    targets = [line.split()[0] for line in (h / "pairs.txt").read_text().splitlines()]
    late = targets[2 * len(targets) // 3]  # one target late in the list, not the first
    if change == "mask":
        (h / "masks" / late).unlink()
    elif change == "truth":
        lines = [x for x in (h / "truth.jsonl").read_text().splitlines() if json.loads(x)["image"] != late]
        (h / "truth.jsonl").write_text("\n".join(lines) + "\n")
    elif change == "truth_value":
        lines = [json.loads(x) for x in (h / "truth.jsonl").read_text().splitlines()]
        lines[len(lines) // 2]["yaw"] = "left"  # a typo in one line of many
        (h / "truth.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    elif change == "id_model":
        (root / "judge.safetensors").write_bytes(b"not safetensors at all")
    else:
        for f in (h / "gallery").rglob("*.png"):
            f.rename(h / "gallery" / f.name)  # images, but no identity folders
    out = tmp_path / "report"
    with pytest.raises(StageFailed, match=message) as e:
        evaluate.main(args(root, "baseline:source", out))
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_truth_masks_and_gallery_belong_to_the_pairs_protocol(tmp_path: Path, capsys) -> None:
    argv = ["--protocol", "ffpp", "--data", str(tmp_path), "--checkpoint", "baseline:source", "--output",
            str(tmp_path / "r"), "--id-model", "tiny", "--pose-model", "tiny", "--expr-model", "tiny",
            "--gallery", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    assert e.value.code == 2 and "for --protocol pairs" in capsys.readouterr().err


def test_an_unreadable_gallery_image_is_counted_and_its_identity_kept(world: Path, tmp_path: Path) -> None:
    shutil.copytree(world / "heldout", tmp_path / "heldout")
    for name in ("judge.safetensors", "attributes.safetensors"):
        shutil.copy(world / name, tmp_path / name)
    images = sorted((tmp_path / "heldout" / "gallery").rglob("*.png"))
    images[len(images) * 2 // 3].write_bytes(b"\x89PNG truncated")  # one image late in the listing
    s = evaluate.main(args(tmp_path, "baseline:target", tmp_path / "report"))
    assert s["skipped"] == {"unreadable_gallery_image": 1}
    assert s["metrics"]["gallery_size"] == 6 and s["metrics"]["rows"] == PAIRS  # its other images still stand
