"""Session-wide test settings: no network, ever.

Set before any test module imports huggingface_hub or transformers, which read these at import.
"""

import json
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


# ---- finished training datasets and a demo run, built once per session (the training and swapper tests
# share them)


@pytest.fixture(scope="session")
def train_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny open_clip config (demo.tiny_models') under this suite's own name."""
    from demo.tiny_models import CLIP_TINY_CONFIG
    from tests.training.run_builders import CLIP_NAME

    path = tmp_path_factory.mktemp("train_clip") / f"{CLIP_NAME}.json"
    path.write_text(json.dumps(CLIP_TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """VGGFace2-HQ layout: 4 identities x 4 images, 2 shards, captioned and embedded."""
    from tests.training.run_builders import build_dataset

    return build_dataset(tmp_path_factory.mktemp("train_data"), "vggface2-hq", train_clip, 4, 4)


@pytest.fixture(scope="session")
def mask_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """CelebA-HQ layout with CelebAMask-HQ masks: 2 identities x 4 images, 1 shard."""
    from tests.training.run_builders import build_dataset

    return build_dataset(tmp_path_factory.mktemp("mask_data"), "celeba-hq", train_clip, 2, 4)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, train_data: Path, train_clip: Path) -> Path:
    """A straight 5-step demo run on the test data (the reference of the resume test; swap and export use it)."""
    from tests.training.run_builders import RUN_SETS, RUN_STEPS, demo_args
    from training.train import main

    out = tmp_path_factory.mktemp("demo_run") / "run"
    main(demo_args([train_data], out, train_clip, *RUN_SETS, max_steps=RUN_STEPS))
    return out


@pytest.fixture(scope="session")
def binary_mask_data(tmp_path_factory: pytest.TempPathFactory, train_clip: Path) -> Path:
    """An older dataset: binary face+hair masks and no `mask_format` in its stats; 2 shards of 4."""
    from tests.training.mask_builders import build_binary_mask_dataset

    return build_binary_mask_dataset(tmp_path_factory.mktemp("binary_mask_data"), train_clip)
