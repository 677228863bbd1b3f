"""The frozen networks a run trains against: identity encoder, CLIP image tower, VGG16 perceptual net."""

from __future__ import annotations

import torch

from pipeline.clip_tower import load_clip
from training.clip_image import ClipImageTower
from training.config import TrainConfig
from training.models import IdentityEncoder
from training.models.identity import build_identity
from training.perceptual import VGGPerceptual


def build_frozen(cfg: TrainConfig) -> tuple[IdentityEncoder, ClipImageTower | None, VGGPerceptual | None]:
    identity = build_identity(
        cfg.id_arch, cfg.id_weights, cfg.emap, cfg.use_emap, cfg.allow_random_weights, seed=cfg.seed
    )
    clip = None
    if cfg.loss.clip_id_weight or cfg.loss.clip_text_weight:
        # the same model (and, for "none", the same seeded random weights) that embedded the captions
        clip = ClipImageTower(load_clip(cfg.clip_model, cfg.clip_pretrained).model)
    vgg = None
    if cfg.loss.perceptual_weight:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            vgg = VGGPerceptual(cfg.vgg_weights, allow_random=cfg.allow_random_weights, input_size=cfg.vgg_input_size)
    return identity, clip, vgg
