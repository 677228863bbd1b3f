"""The evaluation stage: any swapper on FF++ (or any aligned pairs), measured the same way.

    python -m training.evaluate --protocol ffpp --data FFPP_ROOT --checkpoint CKPT --output REPORT_DIR \
        --id-model cosface:PATH --pose-model hopenet:PATH --expr-model deep3d:PATH [--fid-model inception:PATH] \
        [--detector scrfd:PATH.onnx | landmarks:FILE.json] [--frames 10] [--limit N] [--device cuda] [--batch-size 32]
    python -m training.evaluate --protocol pairs --source DIR --target DIR [--pairs FILE] ...

    pairs (ffpp: `manipulated_sequences/*/c23/videos/TTT_SSS.mp4`; pairs: sorted order or --pairs)
      -> frames (ffpp: --frames evenly spaced of `original_sequences/youtube/c23/videos/NNN.mp4`)
      -> faces (the detector, or the cache REPORT_DIR/landmarks.json) -> crops (the generator's framing)
      -> swapper (a generator, `baseline:source`, `baseline:target`) -> swaps, quantised to 8 bits
      -> metric models on swap, target and source crops -> REPORT_DIR/parts/UNIT.{npz,parquet}
      -> retrieval over the gallery, FID, latency -> rows.parquet, report.json, report.md, plots/

Swap j of an FF++ pair uses target frame j and source frame j (the j-th of each video's evenly
spaced frames). The source identity for retrieval is the gallery: one entry per source (an FF++
source video: the mean embedding of its frames; pairs: the source image), and a hit is the swap's
own source. Every metric is computed on the swapped crop against the target crop in the
generator's framing (no paste-back), so a swapper is judged on what it outputs.

`--checkpoint` is anything `training.swap` loads (a run dir, `final/`, a checkpoint folder, a
converted official folder, a `generator.safetensors`), or a built-in reference: `baseline:source`
(outputs the source face) or `baseline:target` (outputs the target unchanged). With any recogniser
the first retrieves 100%, and the second has zero pose and expression error.

Everything resumes: each unit (an FF++ pair, i.e. one target video; or a chunk of --chunk-size
pairs) is written as one part, and a rerun with the same settings skips finished parts. The
settings that make figures comparable are fixed in REPORT_DIR/settings.json; a rerun with other
settings is refused. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from pipeline import cli
from pipeline.dataset import atomic_open, atomic_write_json
from pipeline.distributed import resolve_device
from training.faces import video
from training.faces.align import ARCFACE_SIZE, CROPS, estimate
from training.faces.detect import Face, LandmarksFile, Scrfd, frame_key, save_landmarks, select_faces
from training.inference import official_source
from training.metrics import MetricModel
from training.metrics import retrieval as ret
from training.metrics.expression import load_expression
from training.metrics.fid import frechet_distance, load_fid
from training.metrics.pose import load_pose
from training.metrics.recogniser import load_recogniser
from training.metrics.report import plot_distributions, write_markdown

PROTOCOLS = ("ffpp", "pairs")
BASELINES = ("baseline:source", "baseline:target")
ORIGINALS = Path("original_sequences/youtube/c23/videos")
MANIPULATED = "manipulated_sequences/*/c23/videos/*.mp4"
PAIR_NAME = re.compile(r"(\d{3})_(\d{3})\.mp4")
LANDMARKS = "landmarks.json"
SETTINGS = "settings.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# settings that do not change a figure, so a rerun may change them
VOLATILE = ("output", "limit", "batch_size", "device", "latency_runs", "latency_warmup", "progress")


@dataclass(frozen=True)
class EvalConfig:
    # --- what is evaluated
    checkpoint: str  # a generator (as training.swap takes it), baseline:source or baseline:target
    output: Path  # REPORT_DIR: parts, rows.parquet, report.json, report.md, plots, the landmarks cache
    id_model: str  # cosface:PATH (arcface_torch IResNet r50/r100) | tiny
    pose_model: str  # hopenet:PATH (hopenet_robust_alpha1.pkl) | tiny
    expr_model: str  # deep3d:PATH (Deep3DFaceRecon epoch_20.pth) | tiny
    fid_model: str = "none"  # inception:PATH (torchvision Inception-v3) | tiny | none
    protocol: str = field(default="ffpp", metadata={"choices": PROTOCOLS})  # ffpp | pairs
    # --- ffpp
    data: Path | None = None  # FF++ root (original_sequences/, manipulated_sequences/)
    detector: str | None = None  # scrfd:PATH.onnx | landmarks:FILE.json (default: REPORT_DIR/landmarks.json)
    frames: int = 10  # evenly spaced frames per video
    det_threshold: float = 0.5  # SCRFD score threshold
    # --- pairs
    source: Path | None = None  # folder of aligned source faces (the generator's framing)
    target: Path | None = None  # folder of aligned target faces
    pairs: Path | None = None  # lines `TARGET SOURCE` (paths inside --target / --source); default: sorted order
    chunk_size: int = 256  # pairs per resumable part
    # --- both
    limit: int | None = None  # evaluate the first N pairs only
    crop: str = field(default="ffhq", metadata={"choices": tuple(sorted(CROPS))})  # the generator's crop framing
    image_size: int | None = None  # crop side (default: the generator's; 256 for the baselines)
    gen_id_weights: Path | None = None  # the generator's identity encoder (default: the one recorded with it)
    gen_emap: Path | None = None  # its emap .npy (default: the recorded one)
    # --- compute
    batch_size: int = 32  # crops per network call
    device: str | None = None  # cpu | cuda | auto (default)
    latency_runs: int = 100  # timed generator calls at batch 1 (0: no latency)
    latency_warmup: int = 10  # untimed calls first
    progress: bool = True  # tqdm bar over units

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "ffpp" and self.data is None:
            raise ValueError("--protocol ffpp needs --data FFPP_ROOT")
        if self.protocol == "pairs" and (self.source is None or self.target is None):
            raise ValueError("--protocol pairs needs --source DIR and --target DIR")
        if self.frames < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("--frames, --batch-size and --chunk-size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.latency_runs < 0 or self.latency_warmup < 0:
            raise ValueError("--latency-runs and --latency-warmup must be >= 0")
        if self.crop not in CROPS:
            raise ValueError(f"--crop must be one of {sorted(CROPS)}, got {self.crop!r}")
        if self.image_size is not None and (self.image_size < 16 or self.image_size % 4):
            raise ValueError("--image-size must be a multiple of 4, >= 16")
        if self.detector is not None:
            kind, _, arg = self.detector.partition(":")
            if kind not in ("scrfd", "landmarks") or not arg:
                raise ValueError(f"--detector must be scrfd:PATH.onnx or landmarks:FILE.json, got {self.detector!r}")
        if self.checkpoint.startswith("baseline:") and self.checkpoint not in BASELINES:
            raise ValueError(f"--checkpoint baseline must be one of {BASELINES}, got {self.checkpoint!r}")


# ---------------------------------------------------------------------------------------------
# Swappers: (targets, sources) crops -> swaps, all (B, 3, S, S) in [0, 1]


@dataclass
class Batch:
    targets: torch.Tensor  # (B, 3, S, S) in [0, 1], 8-bit values
    sources: torch.Tensor  # (B, 3, S, S) the source faces in the same framing
    source_arcface: torch.Tensor | None  # (B, 3, 112, 112) ArcFace crops of the sources (ffpp), else None
    source_paths: list[Path] | None  # the source files (pairs), for the official eval.py preprocessing


class BaselineSwapper:
    """`baseline:source` returns the source face; `baseline:target` the target unchanged."""

    def __init__(self, which: str, image_size: int) -> None:
        self.name, self.image_size, self.which = f"baseline:{which}", image_size, which
        self.truncate, self.generator = False, None

    def __call__(self, batch: Batch) -> torch.Tensor:
        return batch.sources if self.which == "source" else batch.targets


class GeneratorSwapper:
    """A trained generator with its identity encoder, fed as `training.swap` feeds it."""

    def __init__(self, cfg: EvalConfig, device: torch.device) -> None:
        from training.inference import load_generator, load_identity, resolve_generator

        self.generator, self.spec = load_generator(cfg.checkpoint, device)
        overrides = SimpleNamespace(id_weights=cfg.gen_id_weights, emap=cfg.gen_emap, id_arch=None)
        self.identity = load_identity(self.spec, overrides).to(device)
        self.image_size = int(self.spec["image_size"])
        self.official = self.spec.get("preprocess")  # converted official weights: eval.py's handling
        self.truncate = self.official is not None  # eval.py truncates its output to 8 bits
        self.name = f"{self.spec.get('preset')} step {self.spec.get('step')} ({resolve_generator(cfg.checkpoint)[0]})"

    def embed(self, batch: Batch) -> torch.Tensor:
        device = batch.targets.device
        if self.official and batch.source_paths is not None:  # eval.py: PIL bilinear 112, quantised
            x = torch.cat([official_source(p, self.official) for p in batch.source_paths]).to(device)
            return self.identity.encode(x)
        if batch.source_arcface is not None:  # faces in the wild: the 112 ArcFace crop, as training.swap
            return self.identity(batch.source_arcface)
        return self.identity(batch.sources)  # aligned crops: resized to 112, as in training

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.generator(batch.targets, self.embed(batch)).float()


def load_swapper(cfg: EvalConfig, device: torch.device) -> BaselineSwapper | GeneratorSwapper:
    if cfg.checkpoint in BASELINES:
        return BaselineSwapper(cfg.checkpoint.partition(":")[2], cfg.image_size or 256)
    swapper = GeneratorSwapper(cfg, device)
    if cfg.image_size is not None and cfg.image_size != swapper.image_size:
        raise ValueError(f"--image-size {cfg.image_size} differs from the generator's {swapper.image_size}")
    return swapper


def quantise(x: torch.Tensor, truncate: bool) -> torch.Tensor:
    """What a saved 8-bit image holds: rounded (or truncated, as the official eval.py writes)."""
    scaled = x.clamp(0, 1) * 255
    return (scaled.floor() if truncate else scaled.round()) / 255


# ---------------------------------------------------------------------------------------------
# Units of work: the faces of one FF++ pair, or of one chunk of aligned pairs


@dataclass
class Unit:
    name: str  # the part's file stem
    pairs: list[str]  # pair names in the unit
    rows: list[dict[str, Any]] = field(default_factory=list)  # per frame pair: pair, target, source, frames
    targets: list[np.ndarray] = field(default_factory=list)  # (S, S, 3) uint8 per row
    sources: list[np.ndarray] = field(default_factory=list)  # (S, S, 3) uint8 per row
    source_arcface: list[np.ndarray] = field(default_factory=list)  # (112, 112, 3) uint8 per row (ffpp)
    source_paths: list[Path] = field(default_factory=list)  # per row (pairs)
    gallery: dict[str, list[np.ndarray]] = field(default_factory=dict)  # source key -> its (S, S, 3) crops


def to_tensor(crops: list[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).to(device).permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S)


# ---- FF++


def ffpp_pairs(root: Path) -> list[tuple[str, str]]:
    """The official (target, source) pairs, from the manipulated videos' names `TTT_SSS.mp4`."""
    found = {m.groups() for p in root.glob(MANIPULATED) if (m := PAIR_NAME.fullmatch(p.name))}
    if not found:
        raise FileNotFoundError(f"--data {root}: no {MANIPULATED} named TTT_SSS.mp4 (the official FF++ pairs)")
    return sorted(found)


def frame_indices(count: int, frames: int) -> list[int]:
    """`frames` evenly spaced 0-based indices over `count` frames, first and last included."""
    if count <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(frames, count))})


def count_frames(path: Path) -> int:
    """Frames in the first video stream, counted by demuxing (headers can be missing or wrong)."""
    import av

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            return sum(1 for p in c.demux(stream) if p.size)
    except (av.FFmpegError, OSError, IndexError) as e:
        raise video.VideoError("unreadable_video", video.why(e), path) from e


def read_frames(path: Path, indices: list[int]) -> dict[int, Any]:
    """Canvases of the frames at `indices` (decoding order), decoded in one pass."""
    import av

    wanted, out = set(indices), {}
    try:
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i in wanted:
                    out[i] = video.to_canvas(frame)
                if i >= max(wanted):
                    break
    except (av.FFmpegError, OSError) as e:
        raise video.VideoError("unreadable_video", video.why(e), path) from e
    return out


class Faces:
    """The face of each frame: from the cache (REPORT_DIR/landmarks.json, seeded from a landmarks
    file), else from the detector; every lookup is recorded so the cache holds the whole run."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.path = Path(cfg.output) / LANDMARKS
        self.cache: dict[str, list[Face]] = LandmarksFile(self.path).faces if self.path.is_file() else {}
        self.detector: Scrfd | None = None
        if cfg.detector and cfg.detector.startswith("landmarks:"):
            given = cfg.detector.partition(":")[2]
            if not Path(given).is_file():
                raise FileNotFoundError(f"--detector {cfg.detector}: no such file")
            self.given = LandmarksFile(given).faces
        else:
            self.given = None
            if cfg.detector:
                self.detector = Scrfd(cfg.detector.partition(":")[2], threshold=cfg.det_threshold)
            elif not self.cache:
                raise ValueError(
                    f"--protocol ffpp needs --detector scrfd:PATH.onnx or landmarks:FILE.json "
                    f"(or a cache {self.path} from an earlier run)"
                )
        self.dirty = False

    def __call__(self, canvas: Any, key: str) -> Face | None:
        if key not in self.cache:
            if self.given is not None:
                faces = self.given.get(key, [])
            elif self.detector is not None:
                faces = self.detector(canvas, key)
            else:
                faces = []
            self.cache[key], self.dirty = faces, True
        chosen, _ = select_faces(self.cache[key], "largest", 0.0)
        return chosen[0] if chosen else None

    def save(self) -> None:
        if self.dirty:
            save_landmarks(self.path, self.cache)
            self.dirty = False


def video_crops(
    root: Path, number: str, cfg: EvalConfig, size: int, faces: Faces
) -> list[tuple[int, np.ndarray, np.ndarray] | None]:
    """Per evenly spaced frame of video NNN: (frame index, generator crop, ArcFace crop), or None (no face)."""
    rel = ORIGINALS / f"{number}.mp4"
    path = root / rel
    if not path.is_file():
        raise video.VideoError("missing_video", "no such file", path)
    indices = frame_indices(count_frames(path), cfg.frames)
    canvases = read_frames(path, indices)
    out: list[tuple[int, np.ndarray, np.ndarray] | None] = []
    for i in indices:
        canvas = canvases.get(i)
        face = faces(canvas, frame_key(rel.as_posix(), i)) if canvas is not None else None
        if face is None:
            out.append(None)
            continue
        gen = canvas.crop(estimate(face.kps, size, cfg.crop), size)
        arc = canvas.crop(estimate(face.kps, ARCFACE_SIZE, "arcface"), ARCFACE_SIZE)
        out.append((i, gen, arc))
    return out


def ffpp_units(cfg: EvalConfig, pairs: list[tuple[str, str]], size: int, faces: Faces, skipped: Counter) -> Iterator:
    """(pair name, a function building its Unit): the work is done only for parts not yet written."""
    root = Path(cfg.data)

    def build(t: str, s: str) -> Unit | None:
        name = f"{t}_{s}"
        try:
            tgt = video_crops(root, t, cfg, size, faces)
            src = video_crops(root, s, cfg, size, faces)
        except video.VideoError as e:
            skipped[e.reason] += 1
            print(f"training.evaluate: {e.reason}: pair {name}: {e.path}: {e.detail}", file=sys.stderr)
            return None
        finally:
            faces.save()
        unit = Unit(name, [name])
        unit.gallery[s] = [f[1] for f in src if f is not None]
        for j, (tf, sf) in enumerate(zip(tgt, src)):  # frame j of each, as far as both have frames
            if tf is None or sf is None:
                skipped["no_face_target" if tf is None else "no_face_source"] += 1
                continue
            unit.rows.append({"pair": name, "target": t, "source": s, "target_frame": tf[0], "source_frame": sf[0],
                              "slot": j})  # fmt: skip
            unit.targets.append(tf[1])
            unit.sources.append(sf[1])
            unit.source_arcface.append(sf[2])
        if not unit.gallery[s]:
            del unit.gallery[s]
        return unit

    for t, s in pairs:
        yield f"{t}_{s}", lambda t=t, s=s: build(t, s)


# ---- aligned pairs


def list_images(folder: Path) -> list[str]:
    found = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not found:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def aligned_pairs(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(target, source) relative paths: from --pairs, else the i-th target with the i-th source (sorted)."""
    target, source = Path(cfg.target), Path(cfg.source)
    if cfg.pairs is not None:
        pairs = []
        for n, line in enumerate(Path(cfg.pairs).read_text(encoding="utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"--pairs {cfg.pairs}:{n}: expected `TARGET SOURCE`, got {line!r}")
            for folder, rel in ((target, parts[0]), (source, parts[1])):
                if not (folder / rel).is_file():
                    raise FileNotFoundError(f"--pairs {cfg.pairs}:{n}: {folder / rel} not found")
            pairs.append((parts[0], parts[1]))
        if not pairs:
            raise ValueError(f"--pairs {cfg.pairs} lists no pairs")
        return pairs
    targets, sources = list_images(target), list_images(source)
    if len(targets) != len(sources):
        raise ValueError(
            f"--target has {len(targets)} images and --source {len(sources)}: pairing by sorted order needs "
            "the same count (or give --pairs FILE)"
        )
    return list(zip(targets, sources))


def load_aligned(path: Path, size: int, resample: Image.Resampling) -> np.ndarray:
    from training.inference import load_rgb

    rgb = load_rgb(path)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), resample)
    return np.asarray(rgb).copy()  # (S, S, 3) uint8


def pairs_units(cfg: EvalConfig, pairs: list[tuple[str, str]], size: int, official: bool, skipped: Counter):
    target, source = Path(cfg.target), Path(cfg.source)
    # the official eval.py resizes with PIL bilinear; training.swap's aligned path with bicubic
    resample = Image.Resampling.BILINEAR if official else Image.Resampling.BICUBIC

    def build(k: int, chunk: list[tuple[str, str]]) -> Unit:
        unit = Unit(f"chunk_{k:05d}", [f"{t} {s}" for t, s in chunk])
        for t, s in chunk:
            try:
                tgt = load_aligned(target / t, size, resample)
                src = load_aligned(source / s, size, resample)
            except (OSError, ValueError) as e:
                skipped["unreadable_image"] += 1
                print(f"training.evaluate: unreadable_image: pair {t} {s}: {e}", file=sys.stderr)
                continue
            unit.rows.append({"pair": f"{t} {s}", "target": t, "source": s, "target_frame": 0, "source_frame": 0,
                              "slot": 0})  # fmt: skip
            unit.targets.append(tgt)
            unit.sources.append(src)
            unit.source_paths.append(source / s)
            unit.gallery.setdefault(s, [src])
        return unit

    for k in range(0, len(pairs), cfg.chunk_size):
        chunk = pairs[k : k + cfg.chunk_size]
        yield f"chunk_{k // cfg.chunk_size:05d}", lambda k=k // cfg.chunk_size, chunk=chunk: build(k, chunk)


# ---------------------------------------------------------------------------------------------
# Measuring a unit


@dataclass
class Models:
    recogniser: MetricModel
    pose: MetricModel
    expression: MetricModel
    fid: MetricModel | None


def features(model: MetricModel, crops: torch.Tensor, batch_size: int) -> np.ndarray:
    """`model` over `crops` in fixed batches, so the same crops always meet the same arithmetic."""
    out = [model(crops[i : i + batch_size]).cpu() for i in range(0, len(crops), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def measure(unit: Unit, swapper: Any, models: Models, cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    """The unit's per-row scalars and vectors, and its gallery entries."""
    n, bs = len(unit.rows), cfg.batch_size
    gallery_keys = sorted(unit.gallery)
    gallery = [ret.gallery_entry(features(models.recogniser, to_tensor(unit.gallery[k], device), bs))
               for k in gallery_keys]  # fmt: skip
    arrays: dict[str, np.ndarray] = {
        "gallery_keys": np.array(gallery_keys, dtype=str),
        "gallery": np.stack(gallery).astype(np.float32) if gallery else np.zeros((0, 0), np.float32),
    }
    if n == 0:
        return {"rows": [], "arrays": arrays}
    targets = to_tensor(unit.targets, device)
    swaps = []
    for i in range(0, n, bs):
        batch = Batch(
            targets[i : i + bs],
            to_tensor(unit.sources[i : i + bs], device),
            to_tensor(unit.source_arcface[i : i + bs], device) if unit.source_arcface else None,
            unit.source_paths[i : i + bs] if unit.source_paths else None,
        )
        swaps.append(quantise(swapper(batch), swapper.truncate))
    swap = torch.cat(swaps)  # (n, 3, S, S)
    pose_s, pose_t = features(models.pose, swap, bs), features(models.pose, targets, bs)
    exp_s, exp_t = features(models.expression, swap, bs), features(models.expression, targets, bs)
    arrays["swap_id"] = features(models.recogniser, swap, bs)
    if models.fid is not None:
        arrays["fid_swap"], arrays["fid_target"] = features(models.fid, swap, bs), features(models.fid, targets, bs)
    pose_err = np.linalg.norm(pose_s.astype(np.float64) - pose_t, axis=1)
    exp_err = np.linalg.norm(exp_s.astype(np.float64) - exp_t, axis=1)
    rows = []
    for i, row in enumerate(unit.rows):
        rows.append({
            **row,
            "yaw": float(pose_s[i, 0]), "pitch": float(pose_s[i, 1]), "roll": float(pose_s[i, 2]),
            "target_yaw": float(pose_t[i, 0]), "target_pitch": float(pose_t[i, 1]), "target_roll": float(pose_t[i, 2]),
            "pose_error": float(pose_err[i]),
            "expression_error": float(exp_err[i]),
        })  # fmt: skip
    return {"rows": rows, "arrays": arrays}


# ---------------------------------------------------------------------------------------------
# Parts on disk: UNIT.npz (vectors) first, then UNIT.parquet (rows), which marks the part done

ROW_SCHEMA = pa.schema([
    ("pair", pa.string()), ("target", pa.string()), ("source", pa.string()),
    ("target_frame", pa.int32()), ("source_frame", pa.int32()), ("slot", pa.int32()),
    ("yaw", pa.float32()), ("pitch", pa.float32()), ("roll", pa.float32()),
    ("target_yaw", pa.float32()), ("target_pitch", pa.float32()), ("target_roll", pa.float32()),
    ("pose_error", pa.float64()), ("expression_error", pa.float64()),
])  # fmt: skip


def part_paths(output: Path, name: str) -> tuple[Path, Path]:
    return output / "parts" / f"{name}.npz", output / "parts" / f"{name}.parquet"


def write_part(output: Path, name: str, measured: dict[str, Any]) -> None:
    npz, parquet = part_paths(output, name)
    with atomic_open(npz, "wb") as f:
        np.savez(f, **measured["arrays"])
    table = pa.Table.from_pylist(measured["rows"], schema=ROW_SCHEMA)
    with atomic_open(parquet, "wb") as f:
        pq.write_table(table, f)


def read_part(output: Path, name: str) -> tuple[pa.Table, dict[str, np.ndarray]]:
    npz, parquet = part_paths(output, name)
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return pq.read_table(parquet), arrays


# ---------------------------------------------------------------------------------------------
# Latency


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU {model} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def latency(swapper: Any, cfg: EvalConfig, device: torch.device) -> dict[str, Any] | None:
    """The generator alone at batch 1 (the identity embedding is per source, computed once)."""
    if cfg.latency_runs == 0 or swapper.generator is None:
        return None
    size = swapper.image_size
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, size, size, generator=g).to(device)
    z = torch.nn.functional.normalize(torch.randn(1, swapper.generator.config.id_dim, generator=g), dim=1).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.latency_warmup):
        swapper.generator(target, z)
    sync()
    times = []
    for _ in range(cfg.latency_runs):
        start = time.perf_counter()
        swapper.generator(target, z)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "runs": cfg.latency_runs,
        "warmup": cfg.latency_warmup,
        "device": device_name(device),
        "dtype": "fp32",
        "image_size": size,
    }


# ---------------------------------------------------------------------------------------------
# Stage


def settings_of(cfg: EvalConfig, swapper: Any, models: Models, gallery: str) -> dict[str, Any]:
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items() if k not in VOLATILE}
    values.update(
        swapper=swapper.name,
        image_size=swapper.image_size,
        gallery=gallery,
        recogniser=models.recogniser.name,
        pose=models.pose.name,
        expression=models.expression.name,
        fid=models.fid.name if models.fid else None,
    )
    return values


def check_settings(output: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the folder was started with (written on the first run); a rerun must match them,
    except the detector: once the cache holds a frame's faces, the cache is what is used."""
    path = output / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        keys = (set(before) | set(settings)) - {"detector"}
        diff = sorted(k for k in keys if before.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{output} holds a run with other settings ({', '.join(diff)}): "
                "use another --output, or the same settings"
            )
        return before
    atomic_write_json(path, settings)
    return settings


def summarise(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    if not len(values):
        return {"mean": float("nan"), "median": float("nan"), "std": float("nan")}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std())}


def finish(output: Path, names: list[str], skipped: Counter) -> tuple[dict[str, Any], pa.Table]:
    """Retrieval over the gallery, FID and the summary, from the parts on disk (so a resumed run and
    an uninterrupted one compute the same figures from the same bytes)."""
    tables, swap_ids, fid_s, fid_t, gallery = [], [], [], [], {}
    for name in names:
        table, arrays = read_part(output, name)
        tables.append(table)
        for k, v in zip(arrays["gallery_keys"].tolist(), arrays["gallery"]):
            gallery.setdefault(k, v)
        if table.num_rows:
            swap_ids.append(arrays["swap_id"])
            if "fid_swap" in arrays:
                fid_s.append(arrays["fid_swap"])
                fid_t.append(arrays["fid_target"])
    rows = pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()
    keys = sorted(gallery)
    index = {k: i for i, k in enumerate(keys)}
    sources = rows.column("source").to_pylist()
    have = [s in index for s in sources]
    if not all(have):  # a source without any face has no gallery entry: its rows cannot be scored
        skipped["source_not_in_gallery"] += len(have) - sum(have)
        rows = rows.filter(pa.array(have))
        swap_ids = [np.concatenate(swap_ids)[np.array(have)]] if swap_ids else []
        sources = [s for s, h in zip(sources, have) if h]
    q = np.concatenate(swap_ids) if swap_ids else np.zeros((0, 1))
    if len(q):
        ranks, cos = ret.rank(q, [index[s] for s in sources], np.stack([gallery[k] for k in keys]))
    else:
        ranks, cos = np.zeros(0, np.int64), np.zeros(0)
    rows = rows.append_column("id_rank", pa.array(ranks.astype(np.int32))).append_column(
        "id_cosine", pa.array(cos.astype(np.float64))
    )
    fid = None
    if fid_s:
        xs, ys = np.concatenate(fid_s), np.concatenate(fid_t)
        fid = frechet_distance(xs, ys) if len(xs) >= 2 else None
    metrics = {
        "pairs": len(set(rows.column("pair").to_pylist())),
        "rows": rows.num_rows,
        "gallery_size": len(keys),
        "id_retrieval": ret.top_k(ranks, (1, 5)),
        "id_similarity": summarise(cos),
        "pose_error": summarise(rows.column("pose_error").to_numpy()),
        "expression_error": summarise(rows.column("expression_error").to_numpy()),
        "fid": fid,
    }
    return metrics, rows


def run(cfg: EvalConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output = Path(cfg.output)
    device = torch.device(resolve_device(cfg.device))
    swapper = load_swapper(cfg, device)
    size = swapper.image_size
    models = Models(
        load_recogniser(cfg.id_model, cfg.crop).to(device),
        load_pose(cfg.pose_model).to(device),
        load_expression(cfg.expr_model).to(device),
        None,
    )
    fid_model = load_fid(cfg.fid_model)
    models.fid = fid_model.to(device) if fid_model is not None else None
    skipped: Counter[str] = Counter()
    if cfg.protocol == "ffpp":
        if not Path(cfg.data).is_dir():
            raise FileNotFoundError(f"--data {cfg.data} is not a folder")
        pairs = ffpp_pairs(Path(cfg.data))[: cfg.limit]
        faces = Faces(cfg)
        units = list(ffpp_units(cfg, pairs, size, faces, skipped))
        gallery = "mean embedding of each source video's frames"
    else:
        for flag, folder in (("--source", cfg.source), ("--target", cfg.target)):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{flag} {folder} is not a folder")
        pairs = aligned_pairs(cfg)[: cfg.limit]
        official = isinstance(swapper, GeneratorSwapper) and swapper.official is not None
        units = list(pairs_units(cfg, pairs, size, official, skipped))
        gallery = "each source image"
    settings = settings_of(cfg, swapper, models, gallery)
    output.mkdir(parents=True, exist_ok=True)  # only once every input is known good: no empty REPORT_DIR
    first = check_settings(output, settings)

    done, resumed, names = 0, 0, []
    bar = tqdm(units, unit="part", desc="evaluate", disable=not cfg.progress)
    for name, build in bar:
        if part_paths(output, name)[1].is_file():
            resumed += 1
            names.append(name)
            continue
        unit = build()
        if unit is None:  # counted in `skipped`
            continue
        write_part(output, name, measure(unit, swapper, models, cfg, device))
        done += 1
        names.append(name)
    bar.close()
    metrics, rows = finish(output, names, skipped)
    with atomic_open(output / "rows.parquet", "wb") as f:
        pq.write_table(rows, f)
    lat = latency(swapper, cfg, device)
    report = {
        "swapper": swapper.name,
        "metrics": metrics,
        "settings": {
            "protocol": cfg.protocol,
            "frames": cfg.frames if cfg.protocol == "ffpp" else None,
            "detector": (first["detector"] or f"cache {LANDMARKS}") if cfg.protocol == "ffpp" else "aligned inputs",
            "crop": cfg.crop,
            "image_size": size,
            "gallery": gallery,
            "pairs_listed": len(pairs),
            "id_model": models.recogniser.name,
            "pose_model": models.pose.name,
            "expr_model": models.expression.name,
            "fid_model": models.fid.name if models.fid else "none",
        },
        "skipped": dict(sorted(skipped.items())),
        "latency": lat,
    }
    columns = {
        "id_cosine": rows.column("id_cosine").to_numpy(),
        "id_rank": rows.column("id_rank").to_numpy(),
        "pose_error": rows.column("pose_error").to_numpy(),
        "expression_error": rows.column("expression_error").to_numpy(),
    }
    plots = plot_distributions(output, columns)
    atomic_write_json(output / "report.json", report)
    write_markdown(output / "report.md", report, plots)
    return {
        **report,
        "parts_done": done,
        "parts_resumed": resumed,
        "output": str(output),
        "seconds": round(time.perf_counter() - start, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def config() -> EvalConfig:
        try:
            return cli.parse_config("python -m training.evaluate", __doc__, EvalConfig, argv)
        except FileNotFoundError as e:
            cli.fail("training.evaluate", str(e))

    return cli.stage_main("training.evaluate", config, run, (FileNotFoundError, ValueError, ImportError), "evaluate")


if __name__ == "__main__":
    main()
