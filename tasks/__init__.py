"""LightningModules: the glue between a backbone and a data module, one per training objective."""

from .causal_lm import CausalLMTask
from .masked_lm import MaskedLMTask
from .sequence_classification import SequenceClassificationTask
from .variant_effect import VariantEffectTask, ZeroShotVariantTask

__all__ = ["CausalLMTask", "MaskedLMTask", "SequenceClassificationTask", "VariantEffectTask", "ZeroShotVariantTask"]
