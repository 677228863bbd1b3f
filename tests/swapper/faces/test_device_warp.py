"""The device warp (`--warp device`) against the host path, on torch's CPU kernels.

Tolerances, in 0..255 levels, mean over the pixels < 0.05 everywhere: the aligned crop is the host crop
to at most 2 levels anywhere (both sample the same points with grid_sample, from grids that may differ in
the last float bit: a rare rounding flip, one level in a YUV plane, up to two in RGB); the YUV paste-back
(its planes) to at most 1 level; the RGB paste-back to at most 2 (the device warps the mask in float where
the host uses Pillow's truncating 8-bit warp: at most one level of alpha). Where the mask cannot reach,
both keep the frame's bytes exactly.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from swapper import swap
from swapper.faces.align import estimate, invert
from swapper.faces.blend import crop_mask
from swapper.faces.canvas import RgbCanvas, Yuv420Canvas
from swapper.faces.detect import Face
from swapper.faces.device_warp import DeviceWarp, resolve_warp
from swapper.faces.swapper import FaceOptions, FaceSwapper, Item
from tests.swapper.faces import scenes
from tests.swapper.faces.builders import (
    background,
    decode_video,
    place,
    similarity,
    smooth_face,
    write_landmarks,
    write_video,
)
from tests.swapper.faces.test_blend import reach

CROP_MAX, YUV_PASTE_MAX, RGB_PASTE_MAX, MEAN = 2, 1, 2, 0.05  # levels of 255


def i420(rgb: np.ndarray) -> np.ndarray:
    """An RGB picture as swscale encodes it to limited-range BT.709 yuv420p."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", dst_colorspace="ITU709")
    return frame.to_ndarray(format="yuv420p")


def canvases(photo: np.ndarray) -> dict[str, tuple]:
    """Two fresh copies (host, device) of the photo as each kind of canvas."""
    h, w = photo.shape[:2]
    planes = i420(photo)
    return {
        "rgb": (RgbCanvas(Image.fromarray(photo)), RgbCanvas(Image.fromarray(photo))),
        "yuv": (Yuv420Canvas(planes.copy(), w, h, 1, 1), Yuv420Canvas(planes.copy(), w, h, 1, 1)),
    }


def pixels(canvas) -> np.ndarray:
    return canvas.array if isinstance(canvas, Yuv420Canvas) else np.asarray(canvas.image)


def levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))


@pytest.fixture(scope="module")
def astronaut():
    return scenes.astronaut(), scenes.hand_points()  # a real 512x512 photo and its face's 5 points


@pytest.mark.parametrize("kind", ["rgb", "yuv"])
def test_the_device_crop_is_the_host_crop(astronaut, kind):
    photo, kps = astronaut
    warper = DeviceWarp("cpu")
    for crop, size, shift in (("ffhq", 256, 0.0), ("arcface", 112, 0.0), ("ffhq", 128, 190.0)):
        host, device = canvases(photo)[kind]
        m = estimate(kps - [shift, 0.0], size, crop)  # shift 190: the face's left half lies off the frame
        expected = host.crop(m, size)
        got = warper.crop(device, m, size)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.shape == (size, size, 3)
        err = levels(got.numpy(), expected)
        assert err.max() <= CROP_MAX and err.mean() < MEAN, (crop, size, err.max(), err.mean())
        assert expected.std() > 20  # a real face, not a flat patch
        if shift:  # where the frame ends: zeros (RGB black; in a YUV canvas Y = U = V = 0), on both paths
            assert (expected[:, : size // 4] == expected[0, 0]).all() and expected[0, 0].max() < 80
        warper.release(device)
    far = estimate(kps + [5000.0, 0.0], 64, "ffhq")  # wholly outside: all zeros, as above
    host, device = canvases(photo)[kind]
    expected = host.crop(far, 64)
    np.testing.assert_array_equal(warper.crop(device, far, 64).numpy(), expected)
    assert (expected == expected[0, 0]).all()


@pytest.mark.parametrize("kind", ["rgb", "yuv"])
@pytest.mark.parametrize("blend", ["feather", "mask"])
def test_the_device_paste_is_the_host_paste(astronaut, kind, blend):
    photo, kps = astronaut
    before = pixels(canvases(photo)[kind][0]).copy()
    host, device = canvases(photo)[kind]
    m = estimate(kps, 256, "ffhq")
    swap = np.ascontiguousarray(np.asarray(Image.fromarray(photo).resize((256, 256)))[::-1])  # another picture
    mask = crop_mask(blend, 256, "ffhq")
    host.paste(swap, m, mask)
    warper = DeviceWarp("cpu")
    warper.paste(device, torch.from_numpy(swap), m, mask)
    np.testing.assert_array_equal(pixels(device), before)  # nothing reaches the canvas before the release
    warper.release(device)
    assert warper._frames == {}
    err = levels(pixels(device), pixels(host))
    assert err.max() <= (RGB_PASTE_MAX if kind == "rgb" else YUV_PASTE_MAX) and err.mean() < MEAN
    changed = levels(pixels(device), before) > 0
    assert changed.mean() > (0.05 if blend == "feather" else 0.015)  # the face went in
    assert changed.mean() < 2 * (levels(pixels(host), before) > 0).mean()


@pytest.mark.parametrize("kind", ["rgb", "yuv"])
def test_the_device_paste_keeps_every_pixel_the_mask_cannot_reach(kind):
    h, w, size = 220, 300, 64  # test_blend's geometry: `reach` is for 64 px crops
    frame = np.random.default_rng(0).integers(0, 100, (h, w, 3), dtype=np.uint8)  # noise: any change shows
    _, device = canvases(frame)[kind]
    before = pixels(device).copy()
    m = invert(similarity(1.9, 21.0, (120.0, 40.0)))
    mask = crop_mask("feather", size, "ffhq")
    warper = DeviceWarp("cpu")
    warper.paste(device, np.full((size, size, 3), 200, np.uint8), m, mask)
    warper.release(device)
    may_change, covered = reach(np.asarray(mask), m, h, w)
    if kind == "rgb":
        out = pixels(device)
        np.testing.assert_array_equal(out[~may_change], before[~may_change])
        np.testing.assert_array_equal(out[covered], 200)
    else:
        np.testing.assert_array_equal(pixels(device)[:h][~may_change], before[:h][~may_change])  # luma


@pytest.mark.parametrize("colour", ["none", "lab"])
def test_a_frame_is_uploaded_once_for_all_its_faces(colour):
    """Two overlapping faces in each of three YUV frames, one face per generator batch: the device swapper
    uploads each frame with a face once, pastes both faces and gives back the host swapper's frames."""
    frames, faces = [], []
    for i in range(3):
        picture, kps_a = place(background(320, 240, seed=i), smooth_face(96, seed=7), similarity(1.3, 8.0, (60, 40)))
        picture, kps_b = place(picture, smooth_face(96, seed=8), similarity(1.1, -15.0, (130.0, 60.0)))
        frames.append(i420(picture))
        faces.append([Face(np.r_[k.min(0) - 40, k.max(0) + 40], k) for k in (kps_a, kps_b)] if i != 1 else [])
    options = FaceOptions(64, min_face=10.0, colour=colour, batch_size=1)

    def darker(x: torch.Tensor) -> torch.Tensor:  # a "generator" whose change shows
        return x * 0.5

    def run(warp: str) -> tuple[FaceSwapper, list[np.ndarray]]:
        swapper = FaceSwapper(darker, lambda image, key: faces[int(key)], options, "cpu", warp=warp)
        items = [Item(str(i), Yuv420Canvas(f.copy(), 320, 240, 1, 1)) for i, f in enumerate(frames)]
        return swapper, [item.image.array for item in swapper(items)]

    host, expected = run("host")
    device, got = run("device")
    assert isinstance(device.warper, DeviceWarp) and device.warp == "device" and host.warp == "host"
    assert device.warper.uploads == 2 and device.warper._frames == {}  # frame 1 has no face: never uploaded
    assert device.counts["faces_swapped"] == 4
    np.testing.assert_array_equal(got[1], frames[1])
    for i in (0, 2):
        assert levels(got[i], expected[i]).max() <= YUV_PASTE_MAX and (got[i] != frames[i]).mean() > 0.1


def test_auto_is_the_device_only_on_cuda():
    assert resolve_warp("auto", "cpu") == "host" and resolve_warp("auto", "cuda:0") == "device"
    assert resolve_warp("device", "cpu") == "device" and resolve_warp("host", "cuda") == "host"
    with pytest.raises(ValueError, match="warp must be one of"):
        resolve_warp("gpu", "cpu")


def run_swap(*args: str) -> dict:
    return swap.main(["--device", "cpu", "--no-progress", "--min-face", "10", *args])


def test_a_photo_swapped_with_warp_device_is_the_host_swap(tmp_path, tiny_generator, monkeypatch):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(scenes.astronaut()).save(photo)
    lm = write_landmarks(tmp_path / "lm.json", {"astronaut.png": [scenes.hand_points()]})
    pastes = []
    real_paste = DeviceWarp.paste
    monkeypatch.setattr(DeviceWarp, "paste", lambda self, *a: pastes.append(1) or real_paste(self, *a))
    outputs = {}
    for warp in ("host", "device", "auto"):
        out = tmp_path / f"{warp}.png"
        summary = run_swap("--checkpoint", str(tiny_generator), "--source", str(photo), "--target", str(photo),
                           "--output", str(out), "--detector", f"landmarks:{lm}", "--warp", warp)  # fmt: skip
        assert summary["faces_swapped"] == 1 and summary["warp"] == {"auto": "host"}.get(warp, warp)
        outputs[warp] = np.asarray(Image.open(out))
    assert len(pastes) == 1  # only the device run went through the device paste
    before = scenes.astronaut()
    assert (levels(outputs["host"], before).sum(-1) > 0).mean() > 0.05  # the face was swapped
    err = levels(outputs["device"], outputs["host"])
    assert err.max() <= RGB_PASTE_MAX and err.mean() < MEAN
    np.testing.assert_array_equal(outputs["auto"], outputs["host"])  # auto on a CPU: the host path


def test_a_video_swapped_with_warp_device_is_the_host_swap(tmp_path, tiny_generator):
    source, source_kps = place(background(200, 180, seed=10), smooth_face(96, seed=11), similarity(1.2, -8.0, (40, 30)))
    Image.fromarray(source).save(tmp_path / "me.png")
    frames, kps = [], []
    face = smooth_face(96, seed=21)
    for i in range(8):
        f, k = place(background(320, 240, seed=20), face, similarity(1.4, 3.0 * i, (100 + 4 * i, 30)))
        frames.append(f)
        kps.append(k)
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames, fps=24, audio_seconds=0.3)
    entries = {"me.png": [source_kps]} | {f"clip.mp4#{i}": [k] for i, k in enumerate(kps) if i != 3}  # 3: no face
    lm = write_landmarks(tmp_path / "lm.json", entries)
    decoded = {}
    for warp in ("host", "device"):
        out = tmp_path / f"{warp}.mp4"
        summary = run_swap(
            "--checkpoint",
            str(tiny_generator),
            "--source",
            str(tmp_path / "me.png"),
            "--target",
            str(clip),
            "--output",
            str(out),
            "--detector",
            f"landmarks:{lm}",
            "--batch-size",
            "3",
            "--crf",
            "0",
            "--video-preset",
            "ultrafast",
            "--no-smooth",
            "--warp",
            warp,
        )  # fmt: skip  (lossless: the pastes themselves are compared)
        assert summary["warp"] == warp and (summary["frames"], summary["faces_swapped"]) == (8, 7)
        assert summary["videos"][0]["frames_written"] == 8 and summary["videos"][0]["audio"] == "aac"
        decoded[warp] = decode_video(out, "yuv420p")
    before = decode_video(clip, "yuv420p")
    np.testing.assert_array_equal(decoded["device"][3], before[3])  # no face: the decoder's bytes
    for i in range(8):
        assert levels(decoded["device"][i], decoded["host"][i]).max() <= YUV_PASTE_MAX
        if i != 3:
            assert (decoded["device"][i][:240] != before[i][:240]).mean() > 0.05  # the face was swapped
