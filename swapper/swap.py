"""The swap stage: inference with a trained generator, on faces in the wild or on aligned crops.

    python -m swapper.swap --checkpoint CKPT --source FACE_PHOTO --target PHOTO|DIR|VIDEO [--output PATH] \
        [--detector mtcnn | scrfd:PATH.onnx | landmarks:FILE.json | aligned] \
        [--faces all|largest|N|left:N] [--reference PHOTO --reference-distance 0.6] [--min-face 40] \
        [--blend feather|mask] [--colour none|lab] [--no-smooth] [--crop ffhq|arcface] [--batch-size 16] \
        [--device cpu|cuda] [--dtype fp32|bf16] [--warp auto|host|device] [--compile eager|cuda-graph|...] \
        [--save-landmarks FILE.json]

    source -> detect -> largest face -> 112 ArcFace crop -> identity encoder -> id embedding ──────┐
    targets -> detect -> track + smooth (video) -> select -> align (5 points -> the generator's
            template) -> generator (batched) -> colour match -> paste back (inverse warp, soft mask)

Any photo or video goes in and comes out at its own size: photo -> photo (format by suffix), folder
-> the same tree (photos and videos), video -> H.264 video with the same frames, frame rate and
audio. The default detector is MTCNN on the weights inside facenet-pytorch's wheel, so nothing is
downloaded (installed with `pip install --no-deps facenet-pytorch==2.6.0`, as `make install` does).
`--detector aligned` is for aligned face crops as in training, chosen on purpose: each input is
resized to the generator's square and the output is the swapped crop (a folder -> `STEM.png` files).

Which faces: `--faces` all (default), the largest, the N largest, or `left:N` (the N-th from the
left); `--reference PHOTO` keeps only faces within `--reference-distance` (1 - cosine of the run's
identity embeddings) of the reference photo's face. In videos faces are tracked by box overlap and
their landmarks smoothed with a one-euro filter (`--no-smooth` turns it off); a cut resets it.
`--colour lab` matches the swap's colour to the target face's before blending. `--warp` says where the
crops and paste-backs run: `auto` (default) on the generator's device when it is CUDA, else on the
host; `host` and `device` force one (`device` on a CPU runs the same torch code there). `--compile
cuda-graph` (CUDA) captures the generator once per batch shape and replays it in one launch (about a
second of warm-up); the torch.compile modes (`default`, `reduce-overhead`, `max-autotune-no-cudagraphs`,
`max-autotune`) compile per shape (tens of seconds, over 100 s for max-autotune on the official network;
TORCHINDUCTOR_CACHE_DIR keeps the kernels for the next run).

A target with no face is written unchanged and counted; a file or frame that cannot be read is
reported and counted and the run goes on; a run that swapped no face at all exits 2. `--checkpoint`
is anything training.artifact loads: a run directory, its `final/`, a checkpoint folder, a
`generator.safetensors`, or a Hub model repo `hf://USER/NAME[@REVISION]` (plain `USER/NAME` when no
such local path exists) that `swapper.publish_model` wrote, fetched into the Hugging Face cache.
The crop convention and the landmarks format are in docs/faces.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipeline import cli
from pipeline.distributed import resolve_device
from swapper.faces import video
from swapper.faces.align import CROPS, arcface_crop
from swapper.faces.blend import BLENDS
from swapper.faces.canvas import RgbCanvas
from swapper.faces.colour import COLOURS
from swapper.faces.detect import DETECTORS, Detector, check_faces, frame_key, parse_detector, save_landmarks
from swapper.faces.device_warp import WARPS
from swapper.faces.swapper import FaceOptions, FaceSwapper, Item, Reference, to_tensor
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
from training.artifact import load_generator, load_identity
from training.models import IdentityEncoder
from training.models.generator import INFERENCE_MODES, compiled_for_inference

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SwapConfig:
    # --- model and files
    checkpoint: str  # RUN_DIR, final/, a checkpoint folder, a generator .safetensors, or hf://USER/NAME
    source: Path  # the photo whose face gives the identity (an aligned crop with --detector aligned)
    target: Path  # a photo, a video, or a folder of them (aligned crops with --detector aligned)
    output: Path | None = None  # a file for one target, a folder for a folder (default: swap.png, swap.mp4, swaps/)
    id_weights: Path | None = None  # identity encoder checkpoint (default: the one recorded with the generator)
    emap: Path | None = None  # InSwapper emap .npy (default: the recorded one)
    id_arch: str | None = field(default=None, metadata={"choices": ("r50", "r100")})  # default: the recorded one
    # --- faces
    detector: str = "mtcnn"  # mtcnn (no download) | scrfd:PATH.onnx | landmarks:FILE.json | aligned (crops)
    faces: str = "all"  # all | largest | N (the N largest) | left:N (the N-th from the left)
    reference: Path | None = None  # swap only faces like the face in this photo (group photos, videos)
    reference_distance: float = 0.6  # with --reference: the largest 1 - cosine of identity embeddings kept
    min_face: float = 40.0  # faces whose box is shorter than this (pixels) are left alone
    blend: str = field(default="feather", metadata={"choices": BLENDS})  # feather: whole crop | mask: inner face
    colour: str = field(default="none", metadata={"choices": COLOURS})  # lab: match the target face's colour
    smooth: bool = True  # video: track faces and smooth their landmarks over time (one-euro filter)
    crop: str = field(default="ffhq", metadata={"choices": tuple(sorted(CROPS))})  # the generator's crop framing
    det_threshold: float = 0.5  # detector score threshold (MTCNN's last stage: at least 0.7)
    save_landmarks: Path | None = None  # write every detection here (the landmarks format), to reuse
    # --- video
    video_codec: str = "auto"  # H.264 encoder: auto (h264_nvenc on a GPU where it opens, else libx264) | a name
    video_preset: str = "veryfast"  # x264 preset (ultrafast ... veryslow)
    crf: int = 18  # x264 constant quality (0: lossless)
    # --- compute
    batch_size: int = 16  # faces (or aligned targets) per generator call
    device: str | None = None  # cpu | cuda | auto (default)
    dtype: str = field(default="fp32", metadata={"choices": tuple(sorted(DTYPES))})  # autocast around the generator
    warp: str = field(default="auto", metadata={"choices": WARPS})  # where crops and pastes run (auto: device on CUDA)
    compile: str = field(default="eager", metadata={"choices": INFERENCE_MODES})  # fixed-shape generator calls
    progress: bool = True  # tqdm bar in frames/s

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.compile not in INFERENCE_MODES:
            raise ValueError(f"--compile must be one of {INFERENCE_MODES}, got {self.compile!r}")
        if self.warp not in WARPS:
            raise ValueError(f"--warp must be one of {WARPS}, got {self.warp!r}")
        if self.blend not in BLENDS or self.colour not in COLOURS or self.crop not in CROPS:
            raise ValueError(f"--blend, --colour and --crop must be among {BLENDS}, {COLOURS}, {sorted(CROPS)}")
        check_faces(self.faces)
        if self.min_face < 0 or not 0 < self.det_threshold <= 1 or not 0 <= self.reference_distance <= 2:
            raise ValueError("--min-face must be >= 0, --det-threshold in (0, 1] and --reference-distance in [0, 2]")
        kind, _, arg = self.detector.partition(":")
        if not (self.detector in ("mtcnn", "aligned") or (kind in ("scrfd", "landmarks") and arg)):
            raise ValueError(f"--detector must be {DETECTORS}, got {self.detector!r}")
        if self.reference is not None and self.detector == "aligned":
            raise ValueError("--reference picks faces found by a detector; --detector aligned has none to pick")
        for flag, path in (("--source", self.source), ("--reference", self.reference)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path} is not a file")
        if not Path(self.target).exists():
            raise FileNotFoundError(f"--target {self.target} does not exist")

    def face_options(self, size: int) -> FaceOptions:
        return FaceOptions(size, self.crop, self.faces, self.min_face, self.blend, self.colour, self.batch_size)


# ---------------------------------------------------------------------------------------------
# A loaded swapper: built once, used for every input (the CLI's files, the web page's requests)


class Session:
    """The generator, its identity encoder and the detector, loaded once."""

    def __init__(
        self,
        checkpoint: str | Path,
        detector: str = "mtcnn",
        device: str | None = None,
        dtype: str = "fp32",
        det_threshold: float = 0.5,
        min_face: float = 40.0,
        identity: Any = None,  # id_weights / emap / id_arch overrides (a SwapConfig will do)
        compile: str = "eager",  # training.models.generator.compiled_for_inference's mode
    ) -> None:
        self.device = torch.device(resolve_device(device))
        self.detector_name = detector
        self.detector: Detector | None = parse_detector(detector, det_threshold, min_face, str(self.device))
        self.generator, self.spec = load_generator(checkpoint, self.device)
        if compile == "cuda-graph" and self.device.type != "cuda":
            raise ValueError("--compile cuda-graph needs a CUDA device (--device cuda); eager or a torch.compile mode")
        self.forward = compiled_for_inference(self.generator, compile)  # type: ignore[arg-type]
        self.size = int(self.spec["image_size"])
        self.dtype = dtype
        self._identity_overrides = identity or SimpleNamespace(id_weights=None, emap=None, id_arch=None)

    @functools.cached_property
    def identity(self) -> IdentityEncoder:
        """Loaded on first use, after the inputs were checked (a random encoder's note prints then)."""
        return load_identity(self.spec, self._identity_overrides).to(self.device)

    def embed_photo(self, image: Image.Image, key: str, what: str = "--source") -> torch.Tensor:
        """(1, D): the largest face's 112 ArcFace crop through the identity encoder (aligned: the crop resized)."""
        if self.detector is None:
            crop = _array(
                image.resize((self.size, self.size), Image.BICUBIC) if image.size != (self.size,) * 2 else image
            )
        else:
            faces = self.detector(image, key)
            if not faces:
                landmarks = self.detector_name.startswith("landmarks:")
                raise ValueError(
                    f"{what} {key}: no face found" + (f" (no entry {key!r} in the landmarks file)" if landmarks else "")
                )
            crop = arcface_crop(_array(image), max(faces, key=lambda f: f.area).kps)  # (112, 112, 3)
        return self.identity(to_tensor([crop], self.device))

    def swap_fn(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Crops (b, 3, S, S) in [0, 1] -> swaps with identity `z`, under the session's dtype."""
        device_type, dtype = self.device.type, DTYPES[self.dtype]

        def swap(batch: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
                return self.forward(batch, z.expand(len(batch), -1)).float()  # (b, 3, S, S)

        return swap

    def reference(self, image: Image.Image, key: str, max_distance: float) -> Reference:
        embedding = self.embed_photo(image, key, "--reference")  # (1, D), normalised

        def embed(crops: torch.Tensor) -> torch.Tensor:  # (b, 3, 112, 112) ArcFace crops
            return self.identity(crops)

        return Reference(embedding, embed, max_distance)

    def face_swapper(
        self,
        z: torch.Tensor,
        options: FaceOptions,
        reference: Reference | None = None,
        record: bool = False,
        warp: str = "auto",
    ) -> FaceSwapper:
        """`warp`: where crops and paste-backs run (auto: on the device when it is CUDA)."""
        assert self.detector is not None, "faces in the wild need a detector"
        device = str(self.device)
        return FaceSwapper(self.swap_fn(z), self.detector, options, device, record, reference, warp=warp)


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


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


class Failures:
    """Bad inputs, counted by reason, printed as they happen and listed in the summary."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rows: list[dict[str, str]] = []

    def __call__(self, path: Path, reason: str, detail: object) -> None:
        self.counts[reason] += 1
        self.rows.append({"path": str(path), "reason": reason, "detail": str(detail)})
        print(f"swapper.swap: {reason}: {path}: {detail}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# One photo, one video (the web page calls these too)


def swap_photo(swapper: FaceSwapper, image: Image.Image, key: str) -> Item:
    """One photo through the face swapper: the returned item's `image.image` is the swapped photo."""
    swapper.start_clip(None)
    return next(swapper([Item(key, RgbCanvas(image))]))


def swap_video(
    swapper: FaceSwapper,
    src: Path,
    dst: Path,
    key: str,
    encode: video.EncodeOptions,
    smooth: bool = True,
    on_frame: Callable[[], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """One video through the face swapper, frames tracked and smoothed when `smooth`; raises VideoError."""
    swapper.start_clip(float(video.probe(src).fps) if smooth else None)

    def process(frames: video.Frames) -> video.Frames:
        for item in swapper(Item(frame_key(key, i), canvas, tag=i) for i, canvas in frames):
            if on_frame is not None:
                on_frame()
            yield item.tag, item.image

    try:
        return video.transcode(src, dst, process, encode, on_error=on_error)
    finally:
        swapper.start_clip(None)


# ---------------------------------------------------------------------------------------------
# The stage


def run_aligned(cfg: SwapConfig, session: Session, z: torch.Tensor, fail: Failures) -> dict[str, Any]:
    """Aligned crops in, swapped crops at the generator's size out (converted official weights: the
    official eval.py's exact resizing and rounding, from the spec's `preprocess`)."""
    target, size = Path(cfg.target), session.size
    official = session.spec.get("preprocess")
    if target.is_file() and video.is_video(target):
        raise ValueError(f"--target {target} is a video: --detector aligned takes aligned crops; give a detector")
    targets = list_targets(target)
    many = target.is_dir()
    if many:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    swap_fn = session.swap_fn(z)
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
        swaps = swap_fn(torch.stack(faces).to(session.device))  # (b, 3, size, size)
        for path, swap in zip(chunk, swaps, strict=True):
            out = Path(cfg.output) / f"{path.stem}.png" if many else Path(cfg.output)
            save_image(swap, out, truncate=official is not None)
            outputs.append(str(out))
        bar.update(len(chunk))
    bar.close()
    return {"frames": len(targets), "faces_swapped": len(outputs), "outputs": outputs}


def run_wild(
    cfg: SwapConfig, session: Session, z: torch.Tensor, reference: Reference | None, fail: Failures
) -> dict[str, Any]:
    """Photos, folders and videos: detect, align, swap in batches, paste back."""
    target, output = Path(cfg.target), Path(cfg.output)
    media = list_media(target)
    many = target.is_dir()
    photos = [p for p in media if not video.is_video(p)]
    videos = [p for p in media if video.is_video(p)]
    record = cfg.save_landmarks is not None
    swapper = session.face_swapper(z, cfg.face_options(session.size), reference, record=record, warp=cfg.warp)

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

    swapper.start_clip(None)
    for item in swapper(photo_items()):  # one stream: faces from many photos share a batch
        out = destination(item.tag)
        if not item.faces and out.suffix.lower() == item.tag.suffix.lower():
            copy_file(item.tag, out)  # no face: the file itself, byte for byte
        else:
            save_photo(item.image.image, out)
        outputs.append(str(out))
        bar.update(1)

    reports = []
    encode = video.EncodeOptions(video.pick_codec(cfg.video_codec, str(session.device)), cfg.video_preset, cfg.crf)
    for v in videos:
        try:
            report = swap_video(
                swapper,
                v,
                destination(v),
                key(v),
                encode,
                cfg.smooth,
                lambda: bar.update(1),
                lambda r, d, v=v: fail(v, r, d),
            )
        except video.VideoError as e:
            fail(v, e.reason, e.detail)
            continue
        outputs.append(str(destination(v)))
        reports.append({"path": str(v), **report})
    bar.close()
    if cfg.save_landmarks is not None:
        source = Path(cfg.source)
        if source.name not in swapper.detections:  # the source too, so the cache replays the whole run
            swapper.detections[source.name] = session.detector(load_rgb(source), source.name)
        save_landmarks(cfg.save_landmarks, swapper.detections)
    counted = ("frames", "faces_swapped", "no_face", "faces_too_small", "faces_not_the_reference")
    return {
        **{k: swapper.counts[k] for k in counted},
        "warp": swapper.warp,
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
    cfg = dataclasses.replace(cfg, output=output)
    session = Session(
        cfg.checkpoint, cfg.detector, cfg.device, cfg.dtype, cfg.det_threshold, cfg.min_face, cfg, cfg.compile
    )
    official = session.spec.get("preprocess") if session.detector is None else None  # converted official weights
    if official:  # eval.py's source: PIL bilinear 112, (x * 255).int() / 127.5 - 1
        z = session.identity.encode(official_source(Path(cfg.source), official).to(session.device))  # (1, 512)
    else:
        z = session.embed_photo(load_rgb(Path(cfg.source)), Path(cfg.source).name)  # (1, 512)
    reference = None
    if cfg.reference is not None:
        reference = session.reference(load_rgb(Path(cfg.reference)), Path(cfg.reference).name, cfg.reference_distance)
    fail = Failures()
    if session.detector is None:
        done = run_aligned(cfg, session, z, fail)
    else:
        done = run_wild(cfg, session, z, reference, fail)
    seconds = time.perf_counter() - start
    return {
        "generator": session.spec.get("preset"),
        "step": session.spec.get("step"),
        "image_size": session.size,
        "detector": cfg.detector,
        "crop": cfg.crop if session.detector is not None else None,
        "blend": cfg.blend if session.detector is not None else None,
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
    except FileNotFoundError as e:  # a --source, --reference or --target that is not there
        cli.fail("swapper.swap", str(e))


def nothing_swapped(summary: dict[str, Any]) -> str:
    counted = ("no_face", "faces_too_small", "faces_not_the_reference")
    counts = {**summary["errors"], **{k: summary.get(k, 0) for k in counted}}
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
