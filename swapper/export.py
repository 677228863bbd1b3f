"""Export a trained generator to ONNX.

    python -m swapper.export --checkpoint RUN_DIR_OR_GENERATOR_FILE --onnx OUT.onnx [--opset 18] \
        [--verify] [--tolerance 1e-4]

The graph is the generator alone: inputs `target` (B, 3, S, S) in [0, 1] and `id_embedding`
(B, 512), L2-normalised (the identity encoder's output, computed outside), output `swap`
(B, 3, S, S) in [0, 1]; S is the run's image size (256 for the real presets) and the batch is
dynamic. The generator spec (preset, config, identity encoder, step) is stored as the model's
`alphaface_spec` metadata. `--verify` runs onnxruntime against torch on a random batch and fails
(exit status 2) when any output pixel differs by more than `--tolerance` (default 1e-4 on outputs in
[0, 1]: fp32 kernels differ by about 1e-6 here; a wrong graph differs by far more).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cli import parse_config, stage_main
from pipeline.dataset import atomic_write_bytes
from training.artifact import load_generator

INPUTS = ("target", "id_embedding")
OUTPUT = "swap"


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> dict[str, Any]:
    """Write the ONNX file atomically (nothing is left when the export fails); returns the spec and path."""
    generator, spec = load_generator(checkpoint, "cpu")
    size = int(spec["image_size"])
    example = (torch.rand(2, 3, size, size), F.normalize(torch.randn(2, generator.config.id_dim), dim=1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
        program = torch.onnx.export(
            generator,
            example,
            dynamo=True,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={"target": {0: batch}, "id_embedding": {0: batch}},
            opset_version=opset,
            external_data=False,  # one self-contained file (the official generator is ~0.55 GB, under 2 GB)
            verbose=False,
        )
    program.model.metadata_props["alphaface_spec"] = json.dumps(spec, sort_keys=True)
    atomic_write_bytes(out, program.model_proto.SerializeToString())  # a failed export leaves no file
    return {"onnx": str(out), "opset": opset, "image_size": size, "spec": spec}


def verify(checkpoint: str | Path, onnx_path: str | Path, batch: int = 3, seed: int = 0) -> float:
    """Max |onnxruntime - torch| over a random batch (a batch size the export did not trace)."""
    import onnxruntime as ort

    generator, spec = load_generator(checkpoint, "cpu")
    size = int(spec["image_size"])
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 3, size, size, generator=g)
    z = F.normalize(torch.randn(batch, generator.config.id_dim, generator=g), dim=1)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ours,) = session.run([OUTPUT], {"target": target.numpy(), "id_embedding": z.numpy()})
    with torch.no_grad():
        ref = generator(target, z).numpy()
    return float(np.abs(ours - ref).max())


class VerifyFailed(ValueError):
    """onnxruntime and torch disagree past the tolerance."""


def verify_export(checkpoint: str | Path, onnx_path: str | Path, tolerance: float) -> float:
    """`verify`, raising VerifyFailed past `tolerance`; returns the difference."""
    diff = verify(checkpoint, onnx_path)
    if not diff <= tolerance:  # NaN fails too
        raise VerifyFailed(f"onnxruntime differs from torch by {diff:.3g} (> --tolerance {tolerance:g}) on {onnx_path}")
    return diff


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path  # RUN_DIR, its final/, a checkpoint, or a generator file
    onnx: Path  # the .onnx file to write
    opset: int = 18  # ONNX opset
    verify: bool = False  # compare onnxruntime with torch on a random batch
    tolerance: float = 1e-4  # --verify fails when the largest difference exceeds this

    def __post_init__(self) -> None:
        if self.tolerance <= 0:
            raise ValueError("--tolerance must be > 0")


def run(cfg: ExportConfig) -> dict[str, Any]:
    start = time.perf_counter()
    summary = export_onnx(cfg.checkpoint, cfg.onnx, cfg.opset)
    if cfg.verify:
        summary["max_abs_diff"] = verify_export(cfg.checkpoint, cfg.onnx, cfg.tolerance)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    summary = stage_main(
        "swapper.export",
        lambda: parse_config("python -m swapper.export", __doc__, ExportConfig, argv),
        run,
        (FileNotFoundError, ValueError),
        "export",
    )
    return summary


if __name__ == "__main__":
    main()
