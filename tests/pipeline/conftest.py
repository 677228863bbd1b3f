"""Shared fixtures: the tiny models, built once per test session (offline, random weights)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


# Finished, embedded datasets shared by the card and publish tests (built once; tests that change a
# dataset work on a copy).
@pytest.fixture(scope="session")
def vgg(tmp_path_factory) -> Path:
    from tests.pipeline.caption_builders import embed, make_dataset, write_tiny_clip

    root = tmp_path_factory.mktemp("published_vgg")
    ds = make_dataset(root)
    embed(ds, write_tiny_clip(root / "clip"))
    return ds


@pytest.fixture(scope="session")
def celeba(tmp_path_factory) -> Path:
    from tests.pipeline.caption_builders import embed, make_dataset, write_tiny_clip

    root = tmp_path_factory.mktemp("published_celeba")
    ds = make_dataset(root, source="celeba-hq", prompt="structured", per_identity=2)
    embed(ds, write_tiny_clip(root / "clip"), attributes=True)
    return ds


@pytest.fixture(scope="session")
def alphaface_folder(tmp_path_factory):
    """The official AlphaFace layout with its odd cases (tests/pipeline/alphaface_builders.py); read-only."""
    from tests.pipeline.alphaface_builders import make_alphaface

    return make_alphaface(tmp_path_factory.mktemp("alphaface") / "256_small")


# WARNING records from transformers and vLLM, for the vLLM front-end tests
class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_log():
    """WARNING records from transformers and vLLM. transformers' `warning_once` caches what it has
    said in this process; the cache is cleared so an earlier test cannot hide a warning here."""
    logging.Logger.warning_once.cache_clear()
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("transformers", "vllm")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler.messages
    for lg in loggers:
        lg.removeHandler(handler)
