"""Host side of a 1080p video swap: decode, faces from the landmarks cache, warp, paste, encode.

Prints one JSON line. A 1080p H.264 clip (a moving face over a panning, grainy background, with
AAC audio) is written first, with its landmarks cache. Then, in the same run:

- `decode`: demux + decode + the frame as a YUV canvas, nothing else;
- `mtcnn`: the default detector's cost per 1080p frame (at --min-face 40 and 80);
- `passthrough`: decode -> encode (H.264) with no face work, the I/O floor;
- `host`: the whole `swapper.faces` path with the generator replaced by the identity function:
  decode, the cache lookup, the aligned crop (YUV box -> RGB, warp), the paste (warp back, blend
  in YUV), encode, audio copied;
- `device_warp`: the same, with the crop and paste on `--device` (`swapper.faces.device_warp`: each
  frame uploaded once, pasted boxes downloaded); on a CPU this times the torch path on the CPU;
- `generator`: the generator alone at batch 16 (host -> device, forward, device -> host), in
  frames per second at one face per frame. On CPU this is the tiny preset at 256 px with random
  weights (`--preset` picks another; the real ones take minutes per batch on 2 cores);
- `end_to_end`: the host path with that generator in the loop, crops and pastes where `--warp`
  says (auto: on the device when it is CUDA, else on the host).

Frames/s are wall clock on this machine (all its cores: decode, face work and encode run on
threads of their own, and FFmpeg threads the decoder and x264); `per_core_fps` is frames per
CPU-second of the whole process, the figure other jobs on the machine disturb least (the load
average is recorded before and after). Goal: host >= 60 frames/s at 1080p on 2 cores.

    python bench/swap.py [--frames 120] [--video-preset veryfast] [--preset tiny] [--warp auto] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from swapper.faces import video  # noqa: E402
from swapper.faces.align import apply, template, warp  # noqa: E402
from swapper.faces.detect import Face, LandmarksFile, MtcnnDetector, frame_key, save_landmarks  # noqa: E402
from swapper.faces.device_warp import WARPS, resolve_warp  # noqa: E402
from swapper.faces.swapper import FaceOptions, FaceSwapper, Item  # noqa: E402
from training.models import build_generator  # noqa: E402

W, H, FPS, SIZE, BATCH = 1920, 1080, 30, 256, 16


def log(msg: str) -> None:
    print(f"[bench/swap] {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]])


def make_clip(path: Path, frames: int, grain: int) -> dict[str, list[Face]]:
    """A 1080p clip to decode and encode (sensor-like grain of +-`grain` levels and a panning
    background keep x264 busy), and its landmarks cache: one face of about 400 px, drifting and turning."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize((W + 200, H + 100), Image.Resampling.BICUBIC)).astype(np.int16)
    face = np.asarray(Image.fromarray(rng.integers(60, 200, (6, 6, 3), dtype=np.uint8)).resize((256, 256)))
    noise = rng.integers(-grain, grain + 1, (8, H, W, 1), dtype=np.int16)
    cache: dict[str, list[Face]] = {}
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.options = {"preset": "veryfast", "crf": "20"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "mono"
        for i in range(frames):
            dx, dy = int(100 + 80 * math.sin(i / 20)), int(50 + 40 * math.cos(i / 25))
            frame = np.clip(scene[dy : dy + H, dx : dx + W] + noise[i % 8], 0, 255).astype(np.uint8)
            t = similarity(1.6, 12 * math.sin(i / 15), (700 + 6 * (i % 60), 250 + 2 * (i % 40)))
            cover = warp(np.full((256, 256), 255, np.uint8), t, (W, H)) > 0
            frame[cover] = warp(face, t, (W, H))[cover]
            kps = apply(t, template("ffhq", 256))
            lo, hi = kps.min(0), kps.max(0)
            cache[frame_key(path.name, i)] = [Face(np.r_[lo - 120, hi + 120], kps)]
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            for packet in v.encode(vf):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        n = int(48000 * frames / FPS)
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
        for start in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(wave[start : start + 1024][None], format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, start
            for packet in a.encode(af):
                out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    return cache


def timed(fn: Callable[[], int]) -> dict[str, float]:
    """Frames/s of `fn` (which returns its frame count), wall and per CPU-second."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    n = fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"frames": n, "seconds": round(wall, 3), "fps": round(n / wall, 1), "per_core_fps": round(n / cpu, 1)}


def decode_only(path: Path) -> int:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for f in c.decode(stream) if video.to_canvas(f) is not None)


def swap_video(path: Path, out: Path, swapper: FaceSwapper | None, encode: video.EncodeOptions) -> int:
    def process(frames: video.Frames) -> video.Frames:
        if swapper is None:
            yield from frames
            return
        items = (Item(frame_key(path.name, i), canvas, tag=i) for i, canvas in frames)
        for item in swapper(items):
            yield item.tag, item.image

    return video.transcode(path, out, process, encode)["frames_written"]


def time_mtcnn(clip: Path, device: str, frames: int = 5) -> dict:
    """MTCNN's cost per 1080p frame, at the swap's default --min-face 40 (the first frames decoded once)."""
    images = []
    with av.open(str(clip)) as c:
        for frame in c.decode(video=0):
            images.append(frame.to_image())
            if len(images) == frames:
                break
    out = {}
    for min_face in (40.0, 80.0):
        detector = MtcnnDetector(min_face=min_face, device=device)
        detector(images[0])  # warm-up
        start = time.perf_counter()
        for image in images:
            detector(image)
        out[f"ms_per_frame_min_face_{int(min_face)}"] = round((time.perf_counter() - start) / len(images) * 1e3, 1)
    return {**out, "device": device, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=120, help="clip length (1080p frames)")
    p.add_argument("--video-preset", default="veryfast", help="x264 preset of the output (the swap default)")
    p.add_argument("--preset", default="tiny", help="generator preset timed at batch 16 (tiny: CPU-sized)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grain", type=int, default=6, help="noise amplitude of the test clip (0: clean)")
    p.add_argument("--warp", default="auto", choices=WARPS, help="end_to_end's crops and pastes (auto: device on CUDA)")
    p.add_argument("--quick", action="store_true", help="48 frames")
    args = p.parse_args(argv)
    frames = 48 if args.quick else args.frames
    torch.manual_seed(0)
    encode = video.EncodeOptions("libx264", args.video_preset, 18)
    options = FaceOptions(SIZE, crop="ffhq", faces="all", min_face=40.0, blend="feather", batch_size=BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        clip, out = Path(tmp) / "clip.mp4", Path(tmp) / "out.mp4"
        log(f"writing a {W}x{H} clip of {frames} frames")
        save_landmarks(Path(tmp) / "lm.json", make_clip(clip, frames, args.grain))
        cache = LandmarksFile(Path(tmp) / "lm.json")
        result: dict = {
            "bench": "swap",
            "machine": {
                "load_before": round(os.getloadavg()[0], 2),  # other jobs on these cores skew wall-clock figures
                "cpu": platform.processor() or platform.machine(),
                "cores": len(os.sched_getaffinity(0)),
                "torch_threads": torch.get_num_threads(),
                "av": av.__version__,
                "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"])),
            },
            "video": {
                "size": f"{W}x{H}",
                "fps": FPS,
                "frames": frames,
                "codec": "libx264",
                "preset": args.video_preset,
                "crf": 18,
                "faces_per_frame": 1,
                "crop": SIZE,
                "grain": args.grain,
                "input_mbps": round(clip.stat().st_size * 8 / 1e6 / (frames / FPS), 1),
            },  # fmt: skip
        }
        log("decode only")
        result["decode"] = timed(lambda: decode_only(clip))
        log("decode -> encode, no face work")
        result["passthrough"] = timed(lambda: swap_video(clip, out, None, encode))
        log("host side: cache, crop, paste, with an identity generator")
        host = FaceSwapper(lambda x: x, cache, options, "cpu")
        result["host"] = timed(lambda: swap_video(clip, out, host, encode))
        # wall time of the face work in the main thread (decode and encode run beside it)
        result["host"]["face_ms_per_frame"] = {k: round(v / frames * 1e3, 2) for k, v in host.seconds.items()}
        log(f"the same with crops and pastes on {args.device} (device_warp)")
        on_device = FaceSwapper(lambda x: x, cache, options, args.device, warp="device")
        result["device_warp"] = timed(lambda: swap_video(clip, out, on_device, encode))
        result["device_warp"]["face_ms_per_frame"] = {
            k: round(v / frames * 1e3, 2) for k, v in on_device.seconds.items()
        }
        result["device_warp"].update(device=args.device, uploads=on_device.warper.uploads)

        log("MTCNN (the default detector) on 1080p frames")
        result["mtcnn"] = time_mtcnn(clip, args.device)

        log(f"generator {args.preset} at batch {BATCH}, {SIZE} px, on {args.device}")
        device = torch.device(args.device)
        g = build_generator(args.preset).eval().to(device)
        z = torch.nn.functional.normalize(torch.randn(1, 512, device=device), dim=1)
        crops = [np.asarray(Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)))] * BATCH
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        @torch.no_grad()
        def swap_fn(x: torch.Tensor) -> torch.Tensor:
            return g(x, z.expand(len(x), -1))

        from swapper.faces.swapper import to_images, to_tensor

        to_images(swap_fn(to_tensor(crops, device)))  # warm-up
        reps = 2 if device.type == "cpu" else 20
        start = time.perf_counter()
        for _ in range(reps):
            to_images(swap_fn(to_tensor(crops, device)))
        sync()
        batch_s = (time.perf_counter() - start) / reps
        result["generator"] = {"preset": args.preset, "weights": "random", "device": str(device),
                               "batch": BATCH, "ms_per_batch": round(batch_s * 1e3, 1),
                               "fps": round(BATCH / batch_s, 1)}  # fmt: skip
        log("end to end with that generator")
        full = FaceSwapper(swap_fn, cache, options, str(device), warp=args.warp)
        result["end_to_end"] = timed(lambda: swap_video(clip, out, full, encode))
        result["end_to_end"].update(generator=args.preset, warp=resolve_warp(args.warp, device))
    result["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    h, gen = result["host"]["fps"], result["generator"]["fps"]
    result["host_over_generator"] = round(h / gen, 2)
    result["checks"] = {"host_fps_ge_60": h >= 60, "host_fps_ge_paper_41": h >= 41}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
