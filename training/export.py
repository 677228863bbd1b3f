"""Export a trained generator to ONNX.

    python -m training.export --checkpoint RUN_DIR_OR_GENERATOR_FILE --onnx OUT.onnx [--opset 18] [--verify]

The graph is the generator alone: inputs `target` (B, 3, S, S) in [0, 1] and `id_embedding`
(B, 512), L2-normalised (the identity encoder's output, computed outside), output `swap`
(B, 3, S, S) in [0, 1]; S is the run's image size (256 for the real presets) and the batch is
dynamic. The generator spec (preset, config, identity encoder, step) is stored as the model's
`alphaface_spec` metadata. `--verify` runs onnxruntime against torch on a random batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.swap import load_generator

INPUTS = ("target", "id_embedding")
OUTPUT = "swap"


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> dict[str, Any]:
    """Write the ONNX file (temporary name, then os.replace); returns the spec and the path."""
    generator, spec = load_generator(checkpoint, "cpu")
    size = int(spec["image_size"])
    example = (torch.rand(2, 3, size, size), F.normalize(torch.randn(2, generator.config.id_dim), dim=1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.onnx")
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
    program.save(str(tmp))
    os.replace(tmp, out)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN_DIR, its final/, a checkpoint, or a file")
    p.add_argument("--onnx", required=True, type=Path, help="output .onnx file")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--verify", action="store_true", help="compare onnxruntime with torch on a random batch")
    a = p.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = export_onnx(a.checkpoint, a.onnx, a.opset)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"training.export: error: {e}") from e
    if a.verify:
        summary["max_abs_diff"] = verify(a.checkpoint, a.onnx)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps({"export": {k: v for k, v in summary.items() if k != "spec"}}), file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
