"""Shared fixtures: the tiny models, built once per test session (offline, random weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder holding `internvl3-tiny/` and `clip-tiny.json`, as `python -m pipeline.tiny_models` writes."""
    from pipeline.tiny_models import main

    out = tmp_path_factory.mktemp("tiny_models")
    main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_internvl(tiny_models_dir) -> Path:
    return tiny_models_dir / "internvl3-tiny"
