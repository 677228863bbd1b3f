"""AlphaFace models: identity encoder (ArcFace IResNet), generator (CAII), discriminator.

generator.py      the swapper: fusion encoder -> CAII blocks -> decoder, presets
discriminator.py  the official patch discriminator (StarGAN-v2 ResBlks)
iresnet.py        insightface arcface_torch IResNet (strict checkpoint layout)
identity.py       the frozen identity encoder: IResNet + emap + L2 normalisation
weights.py        state-dict files (weights_only / safetensors) and MissingWeights
"""

from training.models.discriminator import (
    DISCRIMINATOR_KINDS,
    Discriminator,
    DiscriminatorConfig,
    build_discriminator,
)
from training.models.generator import (
    CAII_MODES,
    GENERATOR_PRESETS,
    TARGET_RANGES,
    CAIIBlock,
    CAIIOp,
    Generator,
    GeneratorConfig,
    adain,
    build_generator,
    channel_adain,
    spatial_stats,
)
from training.models.identity import TINY_ID, IdentityEncoder, build_identity
from training.models.iresnet import IRESNET_LAYERS, IResNet, build_iresnet, load_iresnet
from training.models.weights import MissingWeights, load_state_dict_file

__all__ = [
    "CAII_MODES",
    "DISCRIMINATOR_KINDS",
    "GENERATOR_PRESETS",
    "IRESNET_LAYERS",
    "TARGET_RANGES",
    "TINY_ID",
    "CAIIBlock",
    "CAIIOp",
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "IResNet",
    "IdentityEncoder",
    "MissingWeights",
    "adain",
    "build_discriminator",
    "build_generator",
    "build_identity",
    "build_iresnet",
    "channel_adain",
    "load_iresnet",
    "load_state_dict_file",
    "spatial_stats",
]
