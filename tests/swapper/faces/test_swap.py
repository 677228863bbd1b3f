"""`python -m swapper.swap` on faces in the wild: photos, a folder tree, videos and bad inputs."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from swapper import swap
from swapper.faces.align import align, apply, arcface_crop
from swapper.faces.blend import crop_mask, paste, paste_box
from swapper.swap import SwapConfig
from tests.swapper.faces import scenes
from tests.swapper.faces.builders import (
    GEN_SIZE,
    background,
    decode_video,
    place,
    similarity,
    smooth_face,
    write_landmarks,
    write_video,
)
from training.artifact import load_generator, load_identity


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A photo with one face (a rotated, scaled smooth face) and its landmarks."""
    root = tmp_path_factory.mktemp("source")
    canvas, kps = place(background(200, 180, seed=10), smooth_face(96, seed=11), similarity(1.2, -8.0, (40.0, 30.0)))
    Image.fromarray(canvas).save(root / "me.png")
    return root / "me.png", kps


def run_swap(*args: str) -> dict:
    return swap.main(["--device", "cpu", "--no-progress", "--min-face", "10", *args])  # later flags win


def test_photos_in_a_tree_with_a_faceless_and_a_corrupt_one(tmp_path, tiny_generator, source):
    src, src_kps = source
    targets = tmp_path / "targets"
    (targets / "sub").mkdir(parents=True)
    one, kps_one = place(background(320, 240, seed=1), smooth_face(96, seed=2), similarity(1.6, 20.0, (150.0, 20.0)))
    Image.fromarray(one).save(targets / "one.png")
    two, kps_a = place(background(400, 260, seed=3), smooth_face(96, seed=4), similarity(1.0, -10.0, (20.0, 60.0)))
    two, kps_b = place(two, smooth_face(96, seed=5), similarity(1.5, 5.0, (220.0, 40.0)))
    Image.fromarray(two).save(targets / "sub" / "two.jpg", quality=95)
    Image.fromarray(background(120, 90, seed=6)).save(targets / "empty.jpg", quality=90)
    (targets / "sub" / "broken.jpg").write_bytes((targets / "empty.jpg").read_bytes()[:300])  # truncated JPEG
    entries = {"me.png": [src_kps], "one.png": [kps_one], "sub/two.jpg": [kps_a, kps_b]}
    lm = write_landmarks(tmp_path / "lm.json", entries)
    out = tmp_path / "out"
    summary = run_swap("--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(targets),
                       "--output", str(out), "--detector", f"landmarks:{lm}", "--batch-size", "2")  # fmt: skip
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "empty.jpg", "one.png", "sub/two.jpg",
    ]  # fmt: skip
    assert (summary["frames"], summary["faces_swapped"], summary["no_face"]) == (3, 3, 1)
    assert summary["errors"] == {"unreadable_image": 1}
    assert summary["failures"][0]["path"].endswith("broken.jpg")
    # no face: the very file; photos keep their size
    assert (out / "empty.jpg").read_bytes() == (targets / "empty.jpg").read_bytes()
    assert Image.open(out / "sub" / "two.jpg").size == (400, 260)

    # one.png, by hand: the source's 112 ArcFace crop -> identity; align, generator, paste back
    generator, spec = load_generator(tiny_generator, "cpu")
    identity = load_identity(spec, SwapConfig(checkpoint=tiny_generator, source=src, target=targets))
    with torch.no_grad():
        src_crop = arcface_crop(np.array(Image.open(src).convert("RGB")), src_kps).copy()
        z = identity(torch.from_numpy(src_crop).permute(2, 0, 1)[None].float() / 255)
        crop, m = align(one, kps_one, GEN_SIZE, "ffhq")
        swapped = generator(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255, z)[0]
    expected = Image.fromarray(one)
    swapped = (swapped.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    paste(expected, swapped, m, crop_mask("feather", GEN_SIZE, "ffhq"))
    got = np.asarray(Image.open(out / "one.png"))
    # the same up to the last bit of a few swap pixels (the stage ran the generator at batch 2)
    assert np.abs(got.astype(int) - np.asarray(expected)).max() <= 1
    assert (got != np.asarray(expected)).mean() < 0.005
    # outside the pasted box the photo is bit-exact; inside, the face changed
    x0, y0, x1, y1 = paste_box(crop_mask("feather", GEN_SIZE, "ffhq"), m, (320, 240))
    outside = np.ones((240, 320), bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(got[outside], one[outside])
    assert np.abs(got[y0:y1, x0:x1].astype(int) - one[y0:y1, x0:x1]).mean() > 10


def test_faces_largest_min_face_mask_blend_and_a_saved_cache(tmp_path, tiny_generator, source):
    src, src_kps = source
    two, kps_small = place(background(400, 260, seed=3), smooth_face(96, seed=4), similarity(0.6, 0.0, (20.0, 60.0)))
    two, kps_big = place(two, smooth_face(96, seed=5), similarity(1.5, 5.0, (220.0, 40.0)))
    Image.fromarray(two).save(tmp_path / "two.png")
    lm = write_landmarks(tmp_path / "lm.json", {"me.png": [src_kps], "two.png": [kps_small, kps_big]})
    common = ["--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(tmp_path / "two.png"),
              "--detector", f"landmarks:{lm}"]  # fmt: skip
    largest = run_swap(*common, "--output", str(tmp_path / "largest.png"), "--faces", "largest", "--blend", "mask")
    assert (largest["faces_swapped"], largest["faces_too_small"]) == (1, 0)
    got = np.asarray(Image.open(tmp_path / "largest.png"))
    _, m_small = align(two, kps_small, GEN_SIZE, "ffhq")
    x0, y0, x1, y1 = paste_box(crop_mask("mask", GEN_SIZE, "ffhq"), m_small, (400, 260))
    np.testing.assert_array_equal(got[y0:y1, x0:x1], two[y0:y1, x0:x1])  # the smaller face is untouched
    cache = tmp_path / "cache.json"
    small = run_swap(*common, "--output", str(tmp_path / "big.png"), "--min-face", "60", "--save-landmarks", str(cache))
    assert (small["faces_swapped"], small["faces_too_small"]) == (1, 1)
    saved = json.loads(cache.read_text())
    assert sorted(saved) == ["me.png", "two.png"] and len(saved["two.png"]) == 2  # every detection, small ones too


def face_placement(i: int) -> np.ndarray:
    return similarity(1.4, -10.0 + 3 * i, (100.0 + 4 * i, 30.0))  # drifting right and turning


def face_video(n: int, w: int = 320, h: int = 240) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames with one face drifting and turning, and its landmarks per frame."""
    frames, kps = [], []
    face = smooth_face(96, seed=21)
    for i in range(n):
        f, k = place(background(w, h, seed=20), face, face_placement(i))
        frames.append(f)
        kps.append(k)
    return frames, kps


def test_a_video_keeps_its_frames_rate_and_audio(tmp_path, tiny_generator, source):
    src, src_kps = source
    frames, kps = face_video(12)
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames, fps=24, audio_seconds=0.5)
    entries = {"me.png": [src_kps]} | {f"clip.mp4#{i}": [k] for i, k in enumerate(kps) if i != 5}  # frame 5: none
    lm = write_landmarks(tmp_path / "lm.json", entries)
    out = tmp_path / "swapped.mp4"
    summary = run_swap(
        "--checkpoint",
        str(tiny_generator),
        "--source",
        str(src),
        "--target",
        str(clip),
        "--output",
        str(out),
        "--detector",
        f"landmarks:{lm}",
        "--batch-size",
        "4",
        "--crf",
        "0",
        "--video-preset",
        "ultrafast",
        "--no-smooth",  # the landmarks given are exact: paste where they say (smoothing: test_track.py)
    )  # fmt: skip  (lossless: exact where untouched)
    assert (summary["frames"], summary["faces_swapped"], summary["no_face"]) == (12, 11, 1)
    assert summary["errors"] == {} and summary["videos"][0]["frames_written"] == 12
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        assert b.streams.video[0].codec_context.name == "h264"
        assert b.streams.video[0].average_rate == a.streams.video[0].average_rate == Fraction(24)
        assert b.streams.audio[0].codec_context.name == "aac"
        audio_in = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        audio_out = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert audio_out == audio_in and len(audio_in) > 20  # copied packet for packet
    before, after = decode_video(clip, "yuv420p"), decode_video(out, "yuv420p")  # (H * 3/2, W) I420
    assert len(after) == len(before) == 12
    np.testing.assert_array_equal(after[5], before[5])  # no face: the decoder's bytes, re-encoded losslessly
    for i in range(12):
        if i == 5:
            continue
        changed = before[i] != after[i]
        luma = changed[:240]
        assert luma.mean() > 0.05  # the face was swapped ...
        corners = apply(face_placement(i), [[0, 0], [96, 0], [96, 96], [0, 96]])  # the face's footprint
        (x0, y0), (x1, y1) = corners.min(0) - 3, corners.max(0) + 3
        ys, xs = np.nonzero(luma)
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1  # ... and nothing else


def test_bad_videos_are_reported_and_the_run_goes_on(tmp_path, tiny_generator, source):
    src, src_kps = source
    frames, kps = face_video(12)
    targets = tmp_path / "targets"
    targets.mkdir()
    write_video(targets / "good.mp4", frames[:6])
    write_video(tmp_path / "whole.mp4", frames)
    data = (tmp_path / "whole.mp4").read_bytes()
    (targets / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])  # index at the end: nothing readable
    write_video(tmp_path / "fast.mp4", frames, options={"movflags": "faststart"})
    data = (tmp_path / "fast.mp4").read_bytes()
    (targets / "cut_fast.mp4").write_bytes(data[: len(data) * 6 // 10])  # index first: the frames up to the cut
    (targets / "noise.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    entries = {"me.png": [src_kps]}
    for name in ("good.mp4", "cut_fast.mp4"):
        entries |= {f"{name}#{i}": [k] for i, k in enumerate(kps)}
    lm = write_landmarks(tmp_path / "lm.json", entries)
    out = tmp_path / "out"
    summary = run_swap("--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(targets),
                       "--output", str(out), "--detector", f"landmarks:{lm}")  # fmt: skip
    assert summary["errors"]["unreadable_video"] == 2  # cut.mp4 and noise.avi
    assert summary["errors"]["truncated_video"] == 1
    assert {f["reason"] for f in summary["failures"] if f["path"].endswith("cut_fast.mp4")} >= {"truncated_video"}
    assert sorted(p.name for p in out.iterdir()) == ["cut_fast.mp4", "good.mp4"]
    assert len(decode_video(out / "good.mp4")) == 6
    partial = len(decode_video(out / "cut_fast.mp4"))
    assert 0 < partial < 12 and summary["faces_swapped"] == 6 + partial


def test_aligned_is_chosen_on_purpose_and_a_source_without_a_face_is_refused(tmp_path, tiny_generator, source):
    src, _ = source
    crop = tmp_path / "crop.png"
    Image.fromarray(smooth_face(80, seed=30)).save(crop)
    summary = run_swap("--checkpoint", str(tiny_generator), "--source", str(crop), "--target", str(crop),
                       "--output", str(tmp_path / "o.png"), "--detector", "aligned")  # fmt: skip
    assert summary["detector"] == "aligned" and Image.open(tmp_path / "o.png").size == (GEN_SIZE, GEN_SIZE)
    with pytest.raises(SystemExit, match="--source crop.png: no face found"):  # the default, MTCNN, finds none
        run_swap("--checkpoint", str(tiny_generator), "--source", str(crop), "--target", str(crop))
    lm = write_landmarks(tmp_path / "lm.json", {})
    with pytest.raises(SystemExit, match="no face found.*no entry 'me.png'"):
        run_swap("--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(crop),
                 "--output", str(tmp_path / "x.png"), "--detector", f"landmarks:{lm}")  # fmt: skip
    with pytest.raises(SystemExit, match="--faces must be"):
        run_swap("--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(crop),
                 "--output", str(tmp_path / "x.png"), "--faces", "some")  # fmt: skip


def test_scrfd_detections_cached_and_replayed_give_the_same_swap(tmp_path, tiny_generator):
    """--detector scrfd: (a graph with known outputs) -> --save-landmarks -> --detector landmarks: the same file."""
    from tests.swapper.faces.test_detect import build_scrfd

    model = tmp_path / "scrfd.onnx"
    build_scrfd(model)
    photo = tmp_path / "photo.png"
    Image.fromarray(background(128, 96, seed=50)).save(photo)  # the graph finds 2 faces in any picture
    source = tmp_path / "source.png"
    Image.fromarray(background(128, 96, seed=51)).save(source)
    common = ["--checkpoint", str(tiny_generator), "--source", str(source), "--target", str(photo), "--min-face", "0"]
    cache = tmp_path / "faces.json"
    first = run_swap(*common, "--output", str(tmp_path / "a.png"), "--detector", f"scrfd:{model}",
                     "--save-landmarks", str(cache))  # fmt: skip
    assert first["faces_swapped"] == 2
    saved = json.loads(cache.read_text())
    assert sorted(saved) == ["photo.png", "source.png"]  # the source too: the cache replays the run
    assert [round(f["score"], 2) for f in saved["photo.png"]] == [0.9, 0.7]
    again = run_swap(*common, "--output", str(tmp_path / "b.png"), "--detector", f"landmarks:{cache}")
    assert again["faces_swapped"] == 2
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert np.abs(a.astype(int) - b).max() <= 1  # landmarks are cached to 1/1000 px


# ---- first contact: what a new user does wrong gets one line and exit status 2


def fails_with(capsys, *args: str) -> str:
    """Run the swap CLI, expect exit status 2, and return its one stderr line."""
    with pytest.raises(SystemExit) as e:
        run_swap(*args)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swapper.swap: error: "), lines
    return lines[0]


def test_a_real_photo_is_swapped_at_its_own_size_with_no_download(tmp_path, tiny_generator, capsys, monkeypatch):
    """The astronaut (a real 512x512 photo) with the default detector, MTCNN: the face is found, swapped and
    pasted back; the photo keeps its size, and only the face's region changes. A photo with no face is
    written unchanged and the run, having swapped nothing, exits 2."""
    monkeypatch.chdir(tmp_path)  # where the default --output goes
    photo = tmp_path / "astronaut.png"
    Image.fromarray(scenes.astronaut()).save(photo)
    summary = run_swap("--checkpoint", str(tiny_generator), "--source", str(photo), "--target", str(photo))
    assert summary["detector"] == "mtcnn" and summary["faces_swapped"] == 1
    before, after = np.asarray(Image.open(photo)), np.asarray(Image.open(tmp_path / "swap.png"))
    assert after.shape == before.shape == (512, 512, 3)  # never squashed into the generator's square
    changed = np.abs(after.astype(int) - before).sum(axis=2) > 0
    ys, xs = np.nonzero(changed)
    hand = scenes.hand_points()  # the face's 5 hand-placed points
    centre, eyes = hand.mean(0), np.linalg.norm(hand[1] - hand[0])
    assert changed.mean() > 0.01 and abs(xs.mean() - centre[0]) < eyes and abs(ys.mean() - centre[1]) < eyes
    assert np.hypot(xs - centre[0], ys - centre[1]).max() < 4 * eyes  # nothing changed far from the face
    empty = tmp_path / "wall.png"
    Image.fromarray(background(400, 300, seed=40)).save(empty)
    with pytest.raises(SystemExit) as e:
        run_swap("--checkpoint", str(tiny_generator), "--source", str(photo), "--target", str(empty),
                 "--output", str(tmp_path / "wall_out.png"))  # fmt: skip
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "swapper.swap: error: no face was swapped (no_face: 1)"
    assert (tmp_path / "wall_out.png").read_bytes() == empty.read_bytes()


def test_checkpoints_that_are_not_generators_are_named(tmp_path, tiny_generator, capsys):
    crop = tmp_path / "crop.png"
    Image.fromarray(smooth_face(64, seed=30)).save(crop)
    official = tmp_path / "alphaface_demo.pt"
    torch.save({"swapper": {"E.w": torch.zeros(2)}}, official)
    truncated = tmp_path / "cut" / "generator.safetensors"
    truncated.parent.mkdir()
    truncated.write_bytes(tiny_generator.read_bytes()[:2000])
    readme = tmp_path / "README.md"
    readme.write_text("# a readme\n" * 50)
    for path in (readme, official, truncated):
        line = fails_with(capsys, "--checkpoint", str(path), "--source", str(crop), "--target", str(crop))
        assert f"--checkpoint {path} is not a generator file" in line
    assert "swapper.convert --from alphaface-official" in fails_with(
        capsys, "--checkpoint", str(official), "--source", str(crop), "--target", str(crop)
    )


def test_outputs_a_folder_target_cannot_use(tmp_path, tiny_generator, monkeypatch, capsys):
    targets = tmp_path / "crops"
    targets.mkdir()
    for i in range(2):
        Image.fromarray(smooth_face(64, seed=30 + i)).save(targets / f"{i}.png")
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"not a folder")
    line = fails_with(capsys, "--checkpoint", str(tiny_generator), "--source", str(targets / "0.png"),
                      "--target", str(targets), "--output", str(taken), "--detector", "aligned")  # fmt: skip
    assert "is a file" in line and taken.read_bytes() == b"not a folder"
    monkeypatch.chdir(tmp_path)  # no --output: a folder of swaps, not a folder named swap.png
    summary = run_swap("--checkpoint", str(tiny_generator), "--source", str(targets / "0.png"), "--target",
                       str(targets), "--detector", "aligned")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "swaps").iterdir()) == ["0.png", "1.png"]
    assert summary["faces_swapped"] == 2 and not (tmp_path / "swap.png").exists()


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, tiny_generator, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    crop = tmp_path / "crop.png"
    Image.fromarray(smooth_face(64, seed=30)).save(crop)
    line = fails_with(capsys, "--checkpoint", str(tiny_generator), "--source", str(crop), "--target", str(crop),
                      "--output", str(tmp_path / "o.png"), "--device", "cuda")  # fmt: skip
    assert "no CUDA GPU" in line and "--device cpu" in line


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_swapped_photos_have_the_mode_the_umask_gives(tmp_path, tiny_generator, umask):
    crop = tmp_path / "crop.png"
    Image.fromarray(smooth_face(64, seed=32)).save(crop)
    old = os.umask(umask)
    try:
        run_swap("--checkpoint", str(tiny_generator), "--source", str(crop), "--target", str(crop),
                 "--detector", "aligned", "--output", str(tmp_path / "out.png"))  # fmt: skip
    finally:
        os.umask(old)
    assert oct((tmp_path / "out.png").stat().st_mode & 0o777) == oct(0o666 & ~umask)  # not mkstemp's 0600


def test_compile_cuda_graph_on_a_cpu_is_one_line_and_eager_is_the_module(tmp_path, tiny_generator, capsys):
    crop = tmp_path / "crop.png"
    Image.fromarray(smooth_face(64, seed=31)).save(crop)
    args = ["--checkpoint", str(tiny_generator), "--source", str(crop), "--target", str(crop), "--device", "cpu"]
    line = fails_with(capsys, *args, "--output", str(tmp_path / "o.png"), "--compile", "cuda-graph")
    assert "--compile cuda-graph needs a CUDA device" in line
    plain = run_swap(*args, "--detector", "aligned", "--output", str(tmp_path / "eager.png"), "--compile", "eager")
    assert plain["faces_swapped"] == 1


def test_a_landmarks_file_that_is_not_json_is_named(tmp_path, tiny_generator, source, capsys):
    src, _ = source
    bad = tmp_path / "faces.json"
    bad.write_text("kps: [1, 2]\n")
    line = fails_with(capsys, "--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(src),
                      "--output", str(tmp_path / "o.png"), "--detector", f"landmarks:{bad}")  # fmt: skip
    assert f"landmarks file {bad} is not JSON" in line


def test_nothing_swapped_exits_2_and_no_note_comes_before_an_argument_error(tmp_path, tiny_generator, source, capsys):
    src, src_kps = source
    frames, _ = face_video(6)
    write_video(tmp_path / "whole.mp4", frames)
    data = (tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])  # its index was at the end: no frame can be read
    lm = write_landmarks(tmp_path / "lm.json", {"me.png": [src_kps]})
    with pytest.raises(SystemExit) as e:
        run_swap("--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(cut),
                 "--output", str(tmp_path / "o.mp4"), "--detector", f"landmarks:{lm}")  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err
    (report,) = [line for line in err.splitlines() if line.startswith("swapper.swap: unreadable_video: ")]
    assert report.count(str(cut)) == 1  # the path once, not "path: path: ..."
    assert err.strip().splitlines()[-1].startswith("swapper.swap: error: no face was swapped (unreadable_video: 1")
    # an argument error: one line, and the random-identity note is not printed before it
    line = fails_with(capsys, "--checkpoint", str(tiny_generator), "--source", str(src), "--target", str(cut),
                      "--output", str(tmp_path / "o.png"), "--detector", f"landmarks:{lm}")  # fmt: skip
    assert "must be a video file" in line
