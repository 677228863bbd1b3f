"""swapper.evaluate end to end on a miniature FF++ tree of real MP4s, with tiny random metric models.

The tree has the official names: `original_sequences/youtube/c23/videos/NNN.mp4` and
`manipulated_sequences/{Deepfakes,FaceSwap}/c23/videos/TTT_SSS.mp4`. Each original video shows one
synthetic identity (a smooth random texture framed as an FFHQ crop, so its 5 landmarks are known
exactly) moving a little from frame to frame; a landmarks JSON gives those points, so no detector
weights are needed. One frame has no face, which must be skipped and counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.cli import StageFailed
from swapper import evaluate
from swapper.evaluate import stage
from swapper.faces.align import apply, template, warp
from swapper.metrics import retrieval
from swapper.metrics.fid import frechet_distance
from tests.swapper.faces.builders import face_entry, write_video
from training.artifact import generator_spec, save_generator
from training.config import load_config
from training.models import build_generator

REPO = Path(__file__).resolve().parents[2]
SIZE = 64  # the crop side (and the tiny generator's)
FRAMES = 6  # frames per mini video; --frames 3 of them are evaluated
PAIRS = [("000", "001"), ("001", "000"), ("002", "003"), ("003", "002")]
EMPTY = "original_sequences/youtube/c23/videos/003.mp4#0"  # a frame with no face
TINY = ["--id-model", "tiny", "--pose-model", "tiny", "--expr-model", "tiny"]


def face_texture(seed: int, size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8: a smooth random texture with dark spots on the ffhq template points."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(30, 226, (6, 6, 3), dtype=np.uint8))
    face = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)).astype(np.float64)
    ys, xs = np.mgrid[:size, :size]
    for x, y in template("ffhq", size):
        face *= 1 - 0.6 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * (0.03 * size) ** 2))[..., None]
    return np.clip(face.round(), 0, 255).astype(np.uint8)


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def scene(face: np.ndarray, t: np.ndarray, w: int = 160, h: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The face drawn into a grey frame under `t` (crop -> frame), and its 5 landmarks there."""
    frame = np.full((h, w, 3), 90.0)
    warped = warp(face, t, (w, h)).astype(np.float64)
    cover = warp(np.full(face.shape[:2], 255, np.uint8), t, (w, h)).astype(np.float64)[..., None] / 255
    out = np.clip(np.round(warped * cover + frame * (1 - cover)), 0, 255).astype(np.uint8)
    return out, apply(t, template("ffhq", face.shape[0]))


@pytest.fixture(scope="module")
def ffpp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(FF++ root, landmarks JSON) for 4 identities and the 4 pairs of PAIRS (listed by two methods)."""
    root = tmp_path_factory.mktemp("ffpp")
    marks: dict[str, list[dict]] = {}
    for n in range(4):
        face = face_texture(seed=100 + n)
        frames = []
        for i in range(FRAMES):
            t = similarity(0.9 + 0.01 * i, -4 + 1.5 * i + n, (35 + 2 * i, 14 + i))
            img, kps = scene(face, t)
            frames.append(img)
            key = f"original_sequences/youtube/c23/videos/{n:03d}.mp4#{i}"
            marks[key] = [] if key == EMPTY else [face_entry(kps)]
        write_video(root / "original_sequences/youtube/c23/videos" / f"{n:03d}.mp4", frames, fps=10)
    for method in ("Deepfakes", "FaceSwap"):
        for t, s in PAIRS:
            dst = root / "manipulated_sequences" / method / "c23/videos" / f"{t}_{s}.mp4"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((root / f"original_sequences/youtube/c23/videos/{t}.mp4").read_bytes())
    # names that are not official pairs are ignored
    (root / "manipulated_sequences/Deepfakes/c23/videos/readme.mp4").write_bytes(b"")
    landmarks = root / "landmarks.json"
    landmarks.write_text(json.dumps(marks))
    return root, landmarks


def ffpp_args(data: Path, landmarks: Path, out: Path, checkpoint: str, *extra: str) -> list[str]:
    return [
        "--protocol", "ffpp", "--data", str(data), "--detector", f"landmarks:{landmarks}", "--checkpoint", checkpoint,
        "--output", str(out), *TINY, "--frames", "3", "--image-size", str(SIZE), "--batch-size", "4",
        "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip


def test_retrieval_matches_a_hand_computation() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # entries A, B, C
    queries = np.array([[0.9, 0.1], [0.8, 0.6], [2.0, 2.0], [-1.0, -0.2]])
    own = [0, 1, 1, 0]
    ranks, cos = retrieval.rank(queries, own, gallery)
    # q0 -> A best (rank 0); q1 (0.8, 0.6): A 0.8 > B 0.6 -> rank 1; q2 on the diagonal: A ties B -> the
    # tie counts against it, rank 1; q3 towards C: C > B > A for A -> rank 2
    assert ranks.tolist() == [0, 1, 1, 2]
    np.testing.assert_allclose(cos, [0.9 / math.hypot(0.9, 0.1), 0.6, 1 / math.sqrt(2), -1 / math.hypot(1, 0.2)])
    assert retrieval.top_k(ranks, (1, 2, 5)) == {"top1": 25.0, "top2": 75.0, "top5": 100.0}
    entry_ = retrieval.gallery_entry(np.array([[2.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_allclose(entry_, [1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_frechet_distance_of_known_sets() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5])
    assert frechet_distance(x, x + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    # scaling by 2: Tr(S + 4S - 2 * 2S) = Tr(S)
    s = np.cov(x, rowvar=False)
    assert frechet_distance(x, 2 * x) == pytest.approx(float((x.mean(0) ** 2).sum() + np.trace(s)), rel=1e-9)


def test_ffpp_baselines_bound_every_metric(tmp_path: Path, ffpp: tuple[Path, Path]) -> None:
    data, landmarks = ffpp
    out_s = tmp_path / "source"
    source = evaluate.main(ffpp_args(data, landmarks, out_s, "baseline:source", "--fid-model", "tiny"))
    m = source["metrics"]
    # 4 pairs x 3 frames, less the one target frame (003 #0) and the one source frame (003 #0) with no face
    assert (m["pairs"], m["rows"], m["gallery_size"]) == (4, 10, 4)
    assert source["skipped"] == {"no_face_source": 1, "no_face_target": 1}
    assert m["id_retrieval"] == {"top1": 100.0, "top5": 100.0}

    out_t = tmp_path / "target"
    target = evaluate.main(ffpp_args(data, landmarks, out_t, "baseline:target"))
    rows = pq.read_table(out_t / "rows.parquet")
    assert rows.num_rows == 10
    assert set(rows.column("pose_error").to_pylist()) == {0.0}
    assert set(rows.column("expression_error").to_pylist()) == {0.0}
    assert target["metrics"]["pose_error"]["mean"] == 0.0 and target["metrics"]["expression_error"]["mean"] == 0.0
    # the target's own face is not the source's: retrieval is far from perfect
    assert target["metrics"]["id_retrieval"]["top1"] < 100.0
    # frames j of target and source, evenly spaced over 6 frames: 0, 2 (or 3), 5
    assert sorted(set(rows.column("target_frame").to_pylist())) == [0, 2, 5] or sorted(
        set(rows.column("target_frame").to_pylist())
    ) == [0, 3, 5]

    # the cache holds exactly the detections used, in the landmarks format, so others get the same crops
    cache = json.loads((out_t / "landmarks.json").read_text())
    given = json.loads(landmarks.read_text())
    assert len(cache) == 4 * 3 and all(cache[k] == ([{**given[k][0], "score": 1.0}] if given[k] else []) for k in cache)
    # a rerun from the cache alone (no --detector) finds every part done and the same figures
    again = evaluate.main([a for a in ffpp_args(data, landmarks, out_t, "baseline:target") if "landmarks:" not in a
                           and a != "--detector"])  # fmt: skip
    assert again["parts_resumed"] == 4 and again["metrics"] == target["metrics"]

    report = (out_s / "report.md").read_text()
    assert "| AlphaFace | 98.77 | 1.24 | not verified | not verified | 24.10 |" in report
    assert "**baseline:source** (this run) | 100.00 |" in report
    assert "tiny random IResNet" in report and "frames per video: 3" in report
    for name in ("id_cosine", "id_rank", "pose_error", "expression_error"):
        assert (out_s / "plots" / f"{name}.png").stat().st_size > 1000
    saved = json.loads((out_s / "report.json").read_text())
    assert saved["metrics"]["fid"] is not None and saved["latency"] is None  # baselines have no generator


def test_an_interrupted_run_resumes_to_the_same_report(
    tmp_path: Path, ffpp: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, landmarks = ffpp
    straight = evaluate.main(
        ffpp_args(data, landmarks, tmp_path / "straight", "baseline:target", "--fid-model", "tiny")
    )

    calls = {"n": 0}
    real = stage.write_part  # the stage writes each part through it

    def dies_on_the_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "write_part", dies_on_the_third)
    out = tmp_path / "resumed"
    args = ffpp_args(data, landmarks, out, "baseline:target", "--fid-model", "tiny")
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(args)
    assert len(list((out / "parts").glob("*.parquet"))) == 2 and not (out / "report.json").exists()
    monkeypatch.setattr(stage, "write_part", real)
    resumed = evaluate.main(args)
    assert (resumed["parts_resumed"], resumed["parts_done"]) == (2, 2)
    assert resumed["metrics"] == straight["metrics"]
    assert pq.read_table(out / "rows.parquet").equals(pq.read_table(tmp_path / "straight" / "rows.parquet"))
    # other settings into the same folder are refused, one line, exit 2
    with pytest.raises(StageFailed, match="other settings"):
        evaluate.main(ffpp_args(data, landmarks, out, "baseline:source", "--fid-model", "tiny"))


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(REPO / "training/configs/demo.yaml", image_size=SIZE)
    torch.manual_seed(0)
    g = build_generator(cfg.generator, **cfg.generator_overrides)
    folder = tmp_path_factory.mktemp("gen") / "final"
    return save_generator(folder, g.state_dict(), generator_spec(cfg, g.config, 0, False))


def test_pairs_protocol_with_a_generator_and_a_pairs_file(tmp_path: Path, tiny_generator: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    for folder, base in ((src, 0), (tgt, 10)):
        folder.mkdir()
        for i in range(3):
            Image.fromarray(face_texture(base + i, 80)).save(folder / f"{i:02d}.png")
    common = ["--protocol", "pairs", "--source", str(src), "--target", str(tgt), *TINY, "--device", "cpu",
              "--no-progress", "--chunk-size", "2"]  # fmt: skip
    out = tmp_path / "sorted"
    s = evaluate.main([*common, "--checkpoint", str(tiny_generator.parent), "--output", str(out),
                       "--fid-model", "tiny", "--latency-runs", "2", "--latency-warmup", "1"])  # fmt: skip
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert [(r["target"], r["source"]) for r in rows] == [
        ("00.png", "00.png"),
        ("01.png", "01.png"),
        ("02.png", "02.png"),
    ]
    assert s["parts_done"] == 2 and s["metrics"]["gallery_size"] == 3
    assert all(np.isfinite(r["pose_error"]) and np.isfinite(r["expression_error"]) for r in rows)
    assert s["latency"]["runs"] == 2 and s["latency"]["device"].startswith("CPU") and s["latency"]["median_ms"] > 0
    assert "step 0" in s["swapper"] and np.isfinite(s["metrics"]["fid"])

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# target source\n00.png 02.png\n01.png 02.png\n")
    b = evaluate.main([*common, "--checkpoint", "baseline:source", "--image-size", str(SIZE), "--pairs", str(pairs),
                       "--output", str(tmp_path / "file")])  # fmt: skip
    assert b["metrics"]["rows"] == 2 and b["metrics"]["gallery_size"] == 1
    assert b["metrics"]["id_retrieval"]["top1"] == 100.0 and b["metrics"]["id_similarity"]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "ffpp"], "needs --data"),
        (
            ["--protocol", "ffpp", "--data", "X", "--id-model", "arcface:x"],
            "--id-model must be cosface:PATH | world:PAT",
        ),
        (["--protocol", "ffpp", "--data", "X", "--checkpoint", "baseline:neither"], "baseline must be one of"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path: Path, args: list[str], message: str, capsys) -> None:
    base = {"--checkpoint": "baseline:source", "--output": str(tmp_path), "--id-model": "tiny",
            "--pose-model": "tiny", "--expr-model": "tiny"}  # fmt: skip
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    if "--data" in base:
        base["--data"] = str(tmp_path)
    argv = [x for kv in base.items() for x in kv]
    with pytest.raises(StageFailed, match=message) as e:
        evaluate.main(argv)
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_refused_run_leaves_no_report_dir(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    common = ["--checkpoint", "baseline:source", "--output", str(out), "--pose-model", "tiny", "--expr-model", "tiny"]
    for argv in (
        [*common, "--id-model", "tiny", "--protocol", "ffpp", "--data", str(tmp_path / "missing")],
        [*common, "--id-model", f"cosface:{tmp_path / 'r50.pth'}", "--protocol", "ffpp", "--data", str(tmp_path)],
    ):
        with pytest.raises(StageFailed):
            evaluate.main(argv)
        assert not out.exists()
    assert "no such file" in capsys.readouterr().err
