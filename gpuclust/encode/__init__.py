"""The encode stage: images -> embeddings with a frozen pretrained encoder.

Encoders come from one registry (`registry.py`, timm's idiom): `create_encoder("dino_vitb16")`,
`list_encoders("*dino*")`, `@register_encoder` for your own builder, or `Encoder(my_module, transform=...)` for a
module of your own. Importing this package registers the packaged encoders and `timm:` (models.py), then the
study's zoo, `torchvision:` and `checkpoint:` (zoo.py); neither module imports the other.
"""
from . import models as _models  # noqa: F401  (registers the packaged encoders and timm:)
from . import zoo as _zoo  # noqa: F401  (registers the zoo, torchvision: and checkpoint:)
from .encoder import Encoder
from .extract import Embeddings, extract
from .registry import (ENCODERS, PREFIXES, build_encoder, check_encoder_spec, create_encoder, encoder_help,
                       is_encoder, list_encoders, register_encoder, register_prefix)

__all__ = ["Embeddings", "extract", "ENCODERS", "PREFIXES", "Encoder", "build_encoder", "check_encoder_spec",
           "create_encoder", "encoder_help", "is_encoder", "list_encoders", "register_encoder", "register_prefix"]
