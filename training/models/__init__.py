"""AlphaFace models: identity encoder (ArcFace IResNet), generator (CAII), discriminator."""

from training.models.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    build_discriminator,
)
from training.models.generator import (
    CAII_MODES,
    GENERATOR_PRESETS,
    CAIIBlock,
    CAIIOp,
    Generator,
    GeneratorConfig,
    adain,
    build_generator,
    channel_adain,
    spatial_stats,
)
from training.models.identity import IdentityEncoder
from training.models.iresnet import (
    IRESNET_LAYERS,
    IResNet,
    build_iresnet,
    load_iresnet,
    load_state_dict_file,
)

__all__ = [
    "CAII_MODES",
    "GENERATOR_PRESETS",
    "IRESNET_LAYERS",
    "CAIIBlock",
    "CAIIOp",
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "IResNet",
    "IdentityEncoder",
    "adain",
    "build_discriminator",
    "build_generator",
    "build_iresnet",
    "channel_adain",
    "load_iresnet",
    "load_state_dict_file",
    "spatial_stats",
]
