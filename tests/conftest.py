"""Session-wide test settings: no network, ever.

Set before any test module imports huggingface_hub or transformers, which read these at import.
"""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder holding `internvl3-tiny/` and `clip-tiny.json`, as `python -m demo.tiny_models` writes."""
    from demo.tiny_models import main

    out = tmp_path_factory.mktemp("tiny_models")
    main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_internvl(tiny_models_dir) -> Path:
    return tiny_models_dir / "internvl3-tiny"


@pytest.fixture(scope="session")
def embed_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(model-config JSON, checkpoint): a tiny open_clip model with fixed random weights, saved once.

    Its own name, `embed-test-clip`, so it never collides with another test's config in open_clip's
    global registry.
    """
    import open_clip
    import torch

    from tests.pipeline.shard_builders import write_tiny_clip_config

    root = tmp_path_factory.mktemp("embed_clip")
    config = write_tiny_clip_config(root / "embed-test-clip.json")
    open_clip.add_model_config(config)
    torch.manual_seed(1234)
    model = open_clip.create_model("embed-test-clip")
    ckpt = root / "embed-test-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return config, ckpt
