"""The encode stage: images -> embeddings with a frozen pretrained encoder."""
from .extract import Embeddings, extract
from .models import ENCODERS, PREFIXES, Encoder, build_encoder, check_encoder_spec

__all__ = ["Embeddings", "extract", "ENCODERS", "PREFIXES", "Encoder", "build_encoder", "check_encoder_spec"]
