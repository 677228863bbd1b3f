"""The world's CLIP: a tiny open_clip model trained contrastively on (image, caption) pairs with open_clip's
own ClipLoss, saved as a model-config JSON and a safetensors checkpoint, so that
`pipeline.embed --clip-model clip-world.json --pretrained clip-world.safetensors` and the trainer's
`clip_model: auto` load it like any open_clip model.

What it learns in this budget: background and lighting (the loudest differences between captions), little
of pose or expression. The CLIP losses therefore mostly speak for the background here, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from demo.world.nets import augment, images_tensor, to_unit

CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 96, "head_width": 32, "patch_size": 16},
    # the standard 77-token context and 49,408-token vocabulary: open_clip's own BPE tokenizer applies
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
CONFIG_FILE, WEIGHTS_FILE = "clip-world.json", "clip-world.safetensors"


def train_clip(world: dict[str, np.ndarray], out: Path, steps: int, seed: int, batch: int = 128,
               lr: float = 2e-3, progress: bool = True) -> tuple[Path, Path]:  # fmt: skip
    """Train on the training split; returns (config JSON, checkpoint)."""
    import open_clip
    from safetensors.torch import save

    from pipeline.clip_tower import _encode_trimmed, register_model_config
    from pipeline.dataset import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, CONFIG)
    name = register_model_config(out / CONFIG_FILE)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    pre = open_clip.get_model_preprocess_cfg(model)
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    rows = np.where(world["split"] == 0)[0]
    xs = images_tensor(world, rows)
    captions = world["caption"][rows].tolist()
    tokens = open_clip.get_tokenizer(name)(captions)
    length = int(tokens.argmax(1).max()) + 1  # pooled at the end token: the padding after it is never seen
    tokens = tokens[:, :length]
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in tqdm(range(steps), desc="world: CLIP", disable=not progress):
        idx = torch.randint(0, len(rows), (batch,), generator=g)
        x, _ = augment(to_unit(xs[idx]), g, flip=False, shift=2)  # no flips: captions say left and right
        image = model.encode_image((x - mean) / std, normalize=True)
        text = F.normalize(_encode_trimmed(model, tokens[idx]), dim=-1)
        loss = loss_fn(image, text, model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    state = {k: v.contiguous() for k, v in model.eval().state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata={"config": json.dumps(CONFIG)}))
    return out / CONFIG_FILE, out / WEIGHTS_FILE
