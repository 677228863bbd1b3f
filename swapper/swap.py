"""The swap stage: inference with a trained generator, on aligned crops or on faces in the wild.

    python -m swapper.swap --checkpoint CKPT --source FACE_IMG --target IMG|DIR|VIDEO [--output PATH] \
        [--detector scrfd:PATH.onnx | landmarks:FILE.json | aligned] [--faces all|largest|N] \
        [--min-face 40] [--blend feather|mask] [--crop ffhq|arcface] [--batch-size 16] \
        [--device cpu|cuda] [--dtype fp32|bf16] [--save-landmarks FILE.json]

    source -> (detect, largest face, 112 ArcFace crop) -> identity encoder -> id embedding ─┐
    targets -> detect -> align (5 points -> template at the generator's size) ──> generator (batched)
            <- paste back (inverse warp, feathered mask) <───────────────────────────── swaps

With `--detector aligned` the inputs are aligned face crops as in training: they are resized to the
generator's image size and the output is the swapped crop (a folder of targets -> `STEM.png` files).
Without `--detector`, inputs that are all crops in the generator's framing (square, at most twice its
side) are taken as aligned; anything else (a whole photo, a video) is refused with the detector
options, never squashed into the generator's square. With a detector, any photo or video goes in and
comes out at its own size: photo -> photo (format by suffix), folder -> the same tree (photos and
videos), video -> H.264 video with the same frames, frame rate and audio. A target with no face is written unchanged and
counted; a file or frame that cannot be read is reported and counted and the run goes on. The crop
convention and the landmarks format are in docs/faces.md and `swapper.faces.detect`.

`--checkpoint` is a run directory (its `final/`), a `final/` folder, a checkpoint folder
`checkpoints/step_NNNNNNN` (its EMA weights, else the raw generator's), or a
`generator.safetensors` with its `generator.json` beside it. The identity encoder is the one
recorded with the generator unless `--id-weights` (and `--emap`) say otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from pipeline import cli
from pipeline.distributed import resolve_device
from swapper.faces import video
from swapper.faces.align import CROPS, arcface_crop
from swapper.faces.blend import BLENDS
from swapper.faces.canvas import RgbCanvas
from swapper.faces.detect import Detector, frame_key, parse_detector, save_landmarks
from swapper.faces.swapper import FaceOptions, FaceSwapper, Item
from swapper.images import (
    UNREADABLE,
    copy_file,
    load_face,
    load_rgb,
    official_source,
    official_target,
    save_image,
    save_photo,
)
from training.artifact import load_generator, load_identity, resolve_generator
from training.models import Generator, IdentityEncoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DETECTOR_CHOICES = "scrfd:PATH.onnx, landmarks:FILE.json or aligned"
CROP_SLACK = 2  # an aligned crop is square and at most this many times the generator's side
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SwapConfig:
    # --- model and files
    checkpoint: Path  # RUN_DIR, its final/, a checkpoint folder, or a generator .safetensors (+ .json)
    source: Path  # the face whose identity is transferred: an aligned crop, or a photo with a detector
    target: Path  # a photo, a video, or a folder of them (aligned crops with --detector aligned)
    output: Path | None = None  # a file for one target, a folder for a folder (default: swap.png, swap.mp4, swaps/)
    id_weights: Path | None = None  # identity encoder checkpoint (default: the one recorded with the generator)
    emap: Path | None = None  # InSwapper emap .npy (default: the recorded one)
    id_arch: str | None = field(default=None, metadata={"choices": ("r50", "r100")})  # default: the recorded one
    # --- faces
    detector: str | None = None  # scrfd:PATH.onnx | landmarks:FILE.json | aligned (crops; default for crops only)
    faces: str = "all"  # all | largest | N: which faces of each target to swap (largest first)
    min_face: float = 40.0  # faces whose box is shorter than this (pixels) are left alone
    blend: str = field(default="feather", metadata={"choices": BLENDS})  # feather: whole crop | mask: inner face
    crop: str = field(default="ffhq", metadata={"choices": tuple(sorted(CROPS))})  # the generator's crop framing
    det_threshold: float = 0.5  # SCRFD score threshold
    save_landmarks: Path | None = None  # write every detection here (the landmarks format), to reuse
    # --- video
    video_codec: str = "libx264"  # H.264 encoder (h264_nvenc where FFmpeg has it)
    video_preset: str = "veryfast"  # x264 preset (ultrafast ... veryslow)
    crf: int = 18  # x264 constant quality (0: lossless)
    # --- compute
    batch_size: int = 16  # faces (or aligned targets) per generator call
    device: str | None = None  # cpu | cuda | auto (default)
    dtype: str = field(default="fp32", metadata={"choices": tuple(sorted(DTYPES))})  # autocast around the generator
    progress: bool = True  # tqdm bar in frames/s

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"--blend must be one of {BLENDS}, got {self.blend!r}")
        if self.crop not in CROPS:
            raise ValueError(f"--crop must be one of {sorted(CROPS)}, got {self.crop!r}")
        if self.faces not in ("all", "largest") and not (self.faces.isdigit() and int(self.faces) > 0):
            raise ValueError(f"--faces must be all, largest or a positive count, got {self.faces!r}")
        if self.min_face < 0 or not 0 < self.det_threshold <= 1:
            raise ValueError("--min-face must be >= 0 and --det-threshold in (0, 1]")
        kind, _, arg = (self.detector or "aligned").partition(":")
        if not (self.detector in (None, "aligned") or (kind in ("scrfd", "landmarks") and arg)):
            raise ValueError(f"--detector must be {DETECTOR_CHOICES}, got {self.detector!r}")
        if not Path(self.source).is_file():
            raise FileNotFoundError(f"--source {self.source} is not a file")
        if not Path(self.target).exists():
            raise FileNotFoundError(f"--target {self.target} does not exist")


def list_targets(target: Path) -> list[Path]:
    """Aligned crops: the file, or the images directly inside the folder."""
    if target.is_file():
        return [target]
    found = sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"--target {target} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def list_media(target: Path) -> list[Path]:
    """Faces in the wild: the file, or every photo and video in the folder's tree (hidden files skipped)."""
    if target.is_file():
        return [target]
    suffixes = IMAGE_SUFFIXES + video.VIDEO_SUFFIXES
    found = sorted(
        p
        for p in target.rglob("*")
        if p.is_file()
        and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(target).parts)
    )
    if not found:
        raise FileNotFoundError(f"--target {target} holds no photos or videos")
    return found


def default_output(target: Path) -> Path:
    if target.is_dir():
        return Path("swaps")
    return Path("swap.mp4") if video.is_video(target) else Path("swap.png")


def check_output(target: Path, output: Path) -> None:
    """Refuse an --output that cannot take what --target gives, before any model is loaded."""
    if target.is_dir() and output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, but the --target folder {target} needs a folder to write into")
    if target.is_file() and output.is_dir():
        raise ValueError(f"--output {output} is a folder; name the file to write for --target {target}")
    if target.is_file() and video.is_video(target) and not video.is_video(output):
        raise ValueError(f"--output {output} must be a video file (.mp4, .mkv, .mov) for the video {target}")


def not_a_crop(path: Path, size: int) -> str | None:
    """Why `path` is not an aligned crop of a `size` generator (a video, not square, far larger), or None."""
    if video.is_video(path):
        return "a video"
    try:
        with Image.open(path) as img:
            w, h = img.size
    except UNREADABLE:
        return None  # reported as unreadable when it is swapped
    if w != h or w > CROP_SLACK * size:
        return f"a {w}x{h} image"
    return None


def choose_detector(cfg: SwapConfig, size: int) -> str:
    """The --detector given; without one, `aligned` only when every input is a crop in the generator's
    framing: a whole photo must never be squashed into the generator's square."""
    if cfg.detector is not None:
        return cfg.detector
    target = Path(cfg.target)
    for flag, path in [("--source", Path(cfg.source)), *(("--target", p) for p in list_media(target))]:
        reason = not_a_crop(path, size)
        if reason:
            raise ValueError(
                f"{flag} {path} is {reason}, not an aligned face crop for this {size} px generator: give a "
                f"detector (--detector scrfd:PATH.onnx or landmarks:FILE.json), or --detector aligned to "
                "resize it as a crop anyway"
            )
    return "aligned"


# ---------------------------------------------------------------------------------------------
# Stage


class Failures:
    """Bad inputs, counted by reason, printed as they happen and listed in the summary."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rows: list[dict[str, str]] = []

    def __call__(self, path: Path, reason: str, detail: object) -> None:
        self.counts[reason] += 1
        self.rows.append({"path": str(path), "reason": reason, "detail": str(detail)})
        print(f"swapper.swap: {reason}: {path}: {detail}", file=sys.stderr)


def source_embedding(cfg: SwapConfig, identity: IdentityEncoder, detector: Detector | None, size: int) -> torch.Tensor:
    """(1, 512): an aligned source crop resized, or the largest detected face's 112 ArcFace crop."""
    device = next(identity.parameters()).device
    source = Path(cfg.source)
    if detector is None:
        return identity(load_face(source, size)[None].to(device))
    image = load_rgb(source)
    faces = detector(image, source.name)
    if not faces:
        hint = f" (no entry {source.name!r} in the landmarks file)" if cfg.detector.startswith("landmarks:") else ""
        raise ValueError(f"--source {source}: no face found{hint}")
    largest = max(faces, key=lambda f: f.area)
    crop = torch.from_numpy(arcface_crop(image, largest.kps).copy()).permute(2, 0, 1).float() / 255  # (3, 112, 112)
    return identity(crop[None].to(device))


def make_swap_fn(generator: Generator, z: torch.Tensor, dtype: str) -> Callable[[torch.Tensor], torch.Tensor]:
    device_type = z.device.type

    def swap(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            return generator(batch, z.expand(len(batch), -1)).float()  # (b, 3, S, S)

    return swap


def run_aligned(
    cfg: SwapConfig, swap_fn: Callable, size: int, fail: Failures, device: torch.device, official: dict | None = None
) -> dict[str, Any]:
    """Today's path: aligned crops in, swapped crops at the generator's size out (with `official`, the
    spec's `preprocess` from swapper.convert: the official eval.py's exact resizing and rounding)."""
    target = Path(cfg.target)
    if target.is_file() and video.is_video(target):
        raise ValueError(f"--target {target} is a video: --detector aligned takes aligned crops; give a detector")
    targets = list_targets(target)
    many = target.is_dir()
    if many:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    outputs = []
    bar = tqdm(total=len(targets), unit="frame", desc="swap", disable=not cfg.progress)
    for i in range(0, len(targets), cfg.batch_size):
        chunk, faces = [], []
        for p in targets[i : i + cfg.batch_size]:
            try:
                faces.append(official_target(p, official) if official else load_face(p, size))
                chunk.append(p)
            except UNREADABLE as e:
                fail(p, "unreadable_image", e)
                bar.update(1)
        if not chunk:
            continue
        swaps = swap_fn(torch.stack(faces).to(device))  # (b, 3, size, size)
        for path, swap in zip(chunk, swaps, strict=True):
            out = Path(cfg.output) / f"{path.stem}.png" if many else Path(cfg.output)
            save_image(swap, out, truncate=official is not None)
            outputs.append(str(out))
        bar.update(len(chunk))
    bar.close()
    return {"frames": len(targets), "faces_swapped": len(outputs), "outputs": outputs}


def run_wild(
    cfg: SwapConfig, swap_fn: Callable, size: int, detector: Detector, fail: Failures, device: torch.device
) -> dict[str, Any]:
    """Photos, folders and videos: detect, align, swap in batches, paste back."""
    target, output = Path(cfg.target), Path(cfg.output)
    media = list_media(target)
    many = target.is_dir()
    photos = [p for p in media if not video.is_video(p)]
    videos = [p for p in media if video.is_video(p)]
    options = FaceOptions(size, cfg.crop, cfg.faces, cfg.min_face, cfg.blend, cfg.batch_size)
    swapper = FaceSwapper(swap_fn, detector, options, device=str(device), record=cfg.save_landmarks is not None)

    def key(p: Path) -> str:  # the landmarks key: path relative to --target
        return p.relative_to(target).as_posix() if many else p.name

    def destination(p: Path) -> Path:
        if not many:
            return output
        out = output / p.relative_to(target)
        return video.output_path(out) if video.is_video(p) else out

    total = len(photos)
    for v in videos:
        with contextlib.suppress(video.VideoError):  # an unreadable one is reported when it is swapped
            total += video.probe(v).frames
    bar = tqdm(total=total, unit="frame", desc="swap", disable=not cfg.progress)
    outputs: list[str] = []

    def photo_items() -> Iterator[Item]:
        for p in photos:
            try:
                image = load_rgb(p)
            except UNREADABLE as e:
                fail(p, "unreadable_image", e)
                bar.update(1)
                continue
            yield Item(key(p), RgbCanvas(image), tag=p)

    for item in swapper(photo_items()):  # one stream: faces from many photos share a batch
        out = destination(item.tag)
        if not item.faces and out.suffix.lower() == item.tag.suffix.lower():
            copy_file(item.tag, out)  # no face: the file itself, byte for byte
        else:
            save_photo(item.image.image, out)
        outputs.append(str(out))
        bar.update(1)

    reports = []
    encode = video.EncodeOptions(cfg.video_codec, cfg.video_preset, cfg.crf)
    for v in videos:
        base = key(v)

        def process(frames: video.Frames, base: str = base) -> video.Frames:
            for item in swapper(Item(frame_key(base, i), canvas, tag=i) for i, canvas in frames):
                bar.update(1)
                yield item.tag, item.image

        try:
            report = video.transcode(v, destination(v), process, encode, on_error=lambda r, d, v=v: fail(v, r, d))
        except video.VideoError as e:
            fail(v, e.reason, e.detail)
            continue
        outputs.append(str(destination(v)))
        reports.append({"path": str(v), **report})
    bar.close()
    if cfg.save_landmarks is not None:
        source = Path(cfg.source)
        if source.name not in swapper.detections:  # the source too, so the cache replays the whole run
            swapper.detections[source.name] = detector(load_rgb(source), source.name)
        save_landmarks(cfg.save_landmarks, swapper.detections)
    return {
        **{k: swapper.counts[k] for k in ("frames", "faces_swapped", "no_face", "faces_too_small")},
        "videos": reports,
        "outputs": outputs,
        "time": {k: round(v, 3) for k, v in swapper.seconds.items()},
    }


@torch.no_grad()
def run(cfg: SwapConfig) -> dict[str, Any]:
    start = time.perf_counter()
    # every check on the inputs first: nothing is loaded (or printed) for a run that cannot go ahead
    target = Path(cfg.target)
    output = Path(cfg.output) if cfg.output is not None else default_output(target)
    check_output(target, output)
    size = int(resolve_generator(cfg.checkpoint)[1]["image_size"])  # the file's header only
    cfg = dataclasses.replace(cfg, output=output, detector=choose_detector(cfg, size))
    detector = parse_detector(cfg.detector, threshold=cfg.det_threshold) if cfg.detector != "aligned" else None
    device = torch.device(resolve_device(cfg.device))
    generator, spec = load_generator(cfg.checkpoint, device)
    identity = load_identity(spec, cfg).to(device)
    official = spec.get("preprocess") if detector is None else None  # converted official weights
    if official:  # eval.py's source: PIL bilinear 112, (x * 255).int() / 127.5 - 1
        z = identity.encode(official_source(Path(cfg.source), official).to(device))  # (1, 512)
    else:
        z = source_embedding(cfg, identity, detector, size)  # (1, 512)
    swap_fn = make_swap_fn(generator, z, cfg.dtype)
    fail = Failures()
    if detector is None:
        done = run_aligned(cfg, swap_fn, size, fail, device, official)
    else:
        done = run_wild(cfg, swap_fn, size, detector, fail, device)
    seconds = time.perf_counter() - start
    return {
        "generator": spec.get("preset"),
        "step": spec.get("step"),
        "image_size": size,
        "detector": cfg.detector,
        "crop": cfg.crop if detector is not None else None,
        "blend": cfg.blend if detector is not None else None,
        "swaps": len(done["outputs"]),
        **done,
        "errors": dict(sorted(fail.counts.items())),
        "failures": fail.rows,
        "seconds": round(seconds, 3),
        "frames_per_s": round(done["frames"] / seconds, 2) if seconds > 0 else None,
    }


def parse_args(argv: list[str] | None = None) -> SwapConfig:
    try:
        return cli.parse_config("python -m swapper.swap", __doc__, SwapConfig, argv)
    except FileNotFoundError as e:  # a --source or --target that is not there
        cli.fail("swapper.swap", str(e))


def nothing_swapped(summary: dict[str, Any]) -> str:
    counts = {**summary["errors"], **{k: summary.get(k, 0) for k in ("no_face", "faces_too_small")}}
    why = ", ".join(f"{k}: {v}" for k, v in counts.items() if v) or "no input"
    return f"no face was swapped ({why})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    try:
        summary = run(cfg)
    except (FileNotFoundError, ValueError, ImportError) as e:
        cli.fail("swapper.swap", str(e))
    shown = {k: v for k, v in summary.items() if k not in ("outputs", "failures")}  # failures were printed
    print(json.dumps({"swap": shown}), file=sys.stderr)
    if not summary["faces_swapped"]:  # inputs were given, and nothing came of them
        cli.fail("swapper.swap", nothing_swapped(summary))
    return summary


if __name__ == "__main__":
    main()
