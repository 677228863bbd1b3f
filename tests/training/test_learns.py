"""A short guard that training teaches the generator to use its identity input.

Through `training.train` itself (the loop, the loss, the optimiser), the identity term alone trains the tiny
generator for a few dozen steps. The measure is the identity contrast of held-out swaps: the mean cosine of
a swap's identity embedding to its own source, minus the mean to the other sources. A generator that ignores
its identity vector (a detached or zeroed input, a decoder that learnt to drop it) cannot raise it: its
swaps would not depend on the source at all. `make world` measures the same on the world's judge.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tests.training.run_builders import IMAGE_SIZE, demo_args
from training.artifact import load_generator, load_identity
from training.models.generator import Generator
from training.train import main

ID_ONLY = [
    "loss.id_weight=10", "loss.adv_start_step=1000000", "lr_g=3.0e-3", "batch_size=4", "ema_decay=0",
    "pairs={random: 1}", "sample_every=1000", "checkpoint_every=1000",
    *(f"loss.{k}_weight=0" for k in ("rec", "perceptual", "cycle", "mask", "clip_id", "clip_text", "adv")),
]  # fmt: skip
STEPS = 30


def _faces(root: Path) -> torch.Tensor:
    """16 held-out synthetic faces (identities the training data does not have), (16, 3, S, S) in [0, 1]."""
    from demo import synthetic

    synthetic.generate(root, "vggface2-hq", identities=8, per_identity=2, seed=7, size=96)
    files = sorted(root.rglob("*.jpg"))
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def contrast(run: Path, faces: torch.Tensor) -> float:
    generator, spec = load_generator(run)
    identity = load_identity(spec, SimpleNamespace(id_weights=None, emap=None, id_arch=None))
    sources, targets = faces[::2], faces[1::2].roll(1, 0)  # (8, 3, S, S) each, different identities
    z = identity(sources)
    swaps = F.normalize(identity(generator(targets, z)), dim=-1)
    sims = swaps @ F.normalize(z, dim=-1).T  # (8, 8): swap i against source j
    own = sims.diagonal().mean()
    return float(own - (sims.sum() - sims.diagonal().sum()) / (sims.numel() - len(sims)))


def test_the_identity_term_makes_the_swap_carry_the_source(tmp_path, train_data, train_clip, monkeypatch):
    faces = _faces(tmp_path / "heldout")
    main(demo_args([train_data], tmp_path / "start", train_clip, *ID_ONLY, max_steps=1))
    main(demo_args([train_data], tmp_path / "trained", train_clip, *ID_ONLY, max_steps=STEPS))
    before, after = contrast(tmp_path / "start", faces), contrast(tmp_path / "trained", faces)

    forward = Generator.forward  # a broken generator: its identity input never reaches the network
    monkeypatch.setattr(Generator, "forward", lambda self, target, z: forward(self, target, torch.zeros_like(z)))
    main(demo_args([train_data], tmp_path / "broken", train_clip, *ID_ONLY, max_steps=STEPS))
    monkeypatch.undo()  # judged as a normal generator: the zeroed input was the defect, not the weights
    broken = contrast(tmp_path / "broken", faces)
    print(f"identity contrast: start {before:.4f}, trained {after:.4f}, identity input ignored {broken:.4f}")
    assert after > before + 0.05 and after > 3 * max(broken, 0.0) + 0.03
