"""LightningModules: the glue between a backbone and a data module, one per training objective."""

from .audio_classifier import AudioClassifierTask
from .causal_lm import CausalLMTask
from .generation_scoring import classifier_probabilities, inception_score, score_clips
from .masked_lm import MaskedLMTask
from .numeric_guard import NonFiniteError, NonFiniteGuard
from .sequence_classification import SequenceClassificationTask
from .streaming_scores import StreamingLMScores  # noqa: F401
from .variant_effect import VariantEffectTask, ZeroShotVariantTask

__all__ = [
    "AudioClassifierTask", "CausalLMTask", "MaskedLMTask", "NonFiniteError", "NonFiniteGuard", "SequenceClassificationTask", "VariantEffectTask",
    "ZeroShotVariantTask", "classifier_probabilities", "inception_score", "score_clips",
]
