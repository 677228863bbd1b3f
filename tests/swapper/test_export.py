"""`swapper.export --verify` fails past its tolerance, and a failed export leaves no file behind."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from swapper import export


def test_verify_passes_a_faithful_export_and_fails_a_wrong_one(tmp_path, demo_run):
    path = tmp_path / "generator.onnx"
    summary = export.main(["--checkpoint", str(demo_run), "--onnx", str(path), "--verify"])
    assert 0 <= summary["max_abs_diff"] <= export.ExportConfig.__dataclass_fields__["tolerance"].default

    # the same graph with one weight changed: what a wrong export looks like
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(weights * 3.0 + 0.5, init.name))
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    with pytest.raises(export.VerifyFailed, match="onnxruntime differs from torch by .*> --tolerance 0.0001"):
        export.verify_export(demo_run, wrong, 1e-4)


def test_bad_flags_and_failed_exports_are_one_line_with_status_2(tmp_path, demo_run, capsys):
    with pytest.raises(SystemExit) as err:
        export.main(["--checkpoint", str(demo_run), "--onnx", str(tmp_path / "a.onnx"), "--tolerance", "0"])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "swapper.export: error: --tolerance must be > 0 (see --help)"
    ]
    with pytest.raises(SystemExit) as err:
        export.main(["--checkpoint", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "out" / "b.onnx")])
    assert err.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
