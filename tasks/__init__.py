"""LightningModules: the glue between a backbone and a data module, one per training objective."""

from .causal_lm import CausalLMTask
from .sequence_classification import SequenceClassificationTask

__all__ = ["CausalLMTask", "SequenceClassificationTask"]
