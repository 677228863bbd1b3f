"""The evaluation stage's one config: what is evaluated, on which protocol, with which metric models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swapper.faces.align import CROPS

PROTOCOLS = ("ffpp", "pairs")
BASELINES = ("baseline:source", "baseline:target")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# settings that do not change a figure, so a rerun may change them
VOLATILE = ("output", "limit", "batch_size", "device", "latency_runs", "latency_warmup", "progress")


@dataclass(frozen=True)
class EvalConfig:
    # --- what is evaluated
    checkpoint: str  # a generator (as swapper.swap takes it), baseline:source or baseline:target
    output: Path  # REPORT_DIR: parts, rows.parquet, report.json, report.md, plots, the landmarks cache
    id_model: str  # cosface:PATH (arcface_torch IResNet r50/r100) | tiny
    pose_model: str  # hopenet:PATH (hopenet_robust_alpha1.pkl) | tiny
    expr_model: str  # deep3d:PATH (Deep3DFaceRecon epoch_20.pth) | tiny
    fid_model: str = "none"  # inception:PATH (torchvision Inception-v3) | tiny | none
    protocol: str = field(default="ffpp", metadata={"choices": PROTOCOLS})  # ffpp | pairs
    # --- ffpp
    data: Path | None = None  # FF++ root (original_sequences/, manipulated_sequences/)
    detector: str | None = None  # mtcnn | scrfd:PATH.onnx | landmarks:FILE.json (default: REPORT_DIR/landmarks.json)
    frames: int = 10  # evenly spaced frames per video
    det_threshold: float = 0.5  # SCRFD score threshold
    # --- pairs
    source: Path | None = None  # folder of aligned source faces (the generator's framing)
    target: Path | None = None  # folder of aligned target faces
    pairs: Path | None = None  # lines `TARGET SOURCE` (paths inside --target / --source); default: sorted order
    chunk_size: int = 256  # pairs per resumable part
    gallery: Path | None = (
        None  # folder of IDENTITY/ images: the gallery is each identity's mean, a source's identity its first folder
    )
    truth: Path | None = (
        None  # JSON lines {"image": TARGET, "yaw": deg, "pitch": deg, "expression": class}: errors against it
    )
    target_masks: Path | None = None  # masks (TARGET's path, .png; white = the face a swap may change): outside_changed
    outside_threshold: float = 0.1  # a pixel outside the mask counts as changed when a channel moved more than this
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
        if self.protocol != "pairs" and (self.gallery or self.truth or self.target_masks):
            raise ValueError("--gallery, --truth and --target-masks are for --protocol pairs")
        if not 0 <= self.outside_threshold < 1:
            raise ValueError("--outside-threshold must be in [0, 1)")
        if self.detector is not None:
            kind, _, arg = self.detector.partition(":")
            if not (self.detector == "mtcnn" or (kind in ("scrfd", "landmarks") and arg)):
                raise ValueError(
                    f"--detector must be mtcnn, scrfd:PATH.onnx or landmarks:FILE.json, got {self.detector!r}"
                )
        if self.checkpoint.startswith("baseline:") and self.checkpoint not in BASELINES:
            raise ValueError(f"--checkpoint baseline must be one of {BASELINES}, got {self.checkpoint!r}")
