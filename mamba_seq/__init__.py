"""mamba-seq: Mamba models for very long DNA and audio sequences (the model layer)."""

from .bidirectional import BiMambaMixer
from .config import MambaConfig
from .generation import generate, sample_next
from .inference import InferenceCache, check_can_decode
from .mixer import MambaMixer
from .model import MambaBackbone, MambaBlock, MambaLMHeadModel, RMSNorm, no_weight_decay_param_names
from .rc_equivariant import RCEmbedding, RCLMHead, reverse_complement_hidden, reverse_complement_ids

__all__ = [
    "BiMambaMixer", "MambaConfig", "MambaMixer", "MambaBackbone", "MambaBlock", "MambaLMHeadModel", "RMSNorm",
    "no_weight_decay_param_names", "RCEmbedding", "RCLMHead", "reverse_complement_hidden", "reverse_complement_ids",
    "InferenceCache", "check_can_decode", "generate", "sample_next",
]
