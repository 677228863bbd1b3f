"""The exported generator: weights and spec are one atomic unit."""

from __future__ import annotations

import pytest
import torch

from training import artifact
from training.artifact import read_generator_spec, save_generator


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value)}


def test_a_crash_after_the_weights_never_pairs_them_with_the_old_spec(tmp_path, monkeypatch):
    path = save_generator(tmp_path, _state(1.0), {"step": 100})

    def crash(*args, **kwargs):
        raise OSError("killed between the two files")

    monkeypatch.setattr(artifact, "atomic_write_json", crash)
    with pytest.raises(OSError, match="killed"):
        save_generator(tmp_path, _state(2.0), {"step": 200})
    # the weights file is the new one, the readable copy still the old one: the spec read is the new one
    assert (tmp_path / "generator.json").read_text().count("100") == 1
    assert read_generator_spec(path) == {"step": 200}


def test_a_file_from_before_the_embedded_spec_reads_its_json(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "generator.safetensors"
    save_file(_state(1.0), str(path), metadata={"format": artifact.GENERATOR_FORMAT})
    with pytest.raises(FileNotFoundError, match="holds no spec"):
        read_generator_spec(path)
    (tmp_path / "generator.json").write_text('{"step": 7}')
    assert read_generator_spec(path) == {"step": 7}
