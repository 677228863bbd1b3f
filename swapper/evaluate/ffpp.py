"""FaceForensics++: the official pairs, evenly spaced frames of the c23 videos, their faces (detector or cache)."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from swapper.evaluate.config import EvalConfig
from swapper.evaluate.measure import Unit
from swapper.faces import video
from swapper.faces.align import ARCFACE_SIZE, estimate
from swapper.faces.detect import Detector, Face, LandmarksFile, frame_key, parse_detector, save_landmarks, select_faces

ORIGINALS = Path("original_sequences/youtube/c23/videos")
MANIPULATED = "manipulated_sequences/*/c23/videos/*.mp4"
PAIR_NAME = re.compile(r"(\d{3})_(\d{3})\.mp4")
LANDMARKS = "landmarks.json"


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
        self.detector: Detector | None = None
        if cfg.detector and cfg.detector.startswith("landmarks:"):
            given = cfg.detector.partition(":")[2]
            if not Path(given).is_file():
                raise FileNotFoundError(f"--detector {cfg.detector}: no such file")
            self.given = LandmarksFile(given).faces
        else:
            self.given = None
            if cfg.detector:
                self.detector = parse_detector(cfg.detector, cfg.det_threshold)
            elif not self.cache:
                raise ValueError(
                    f"--protocol ffpp needs --detector mtcnn, scrfd:PATH.onnx or landmarks:FILE.json "
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
            print(f"swapper.evaluate: {e.reason}: pair {name}: {e.path}: {e.detail}", file=sys.stderr)
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
