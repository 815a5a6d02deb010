"""Scores for generated clips, judged by a trained clip classifier (tasks.AudioClassifierTask).

Prompted continuations (`continuation_scores`): each clip continues the start of a labelled
recording (e.g. the first 0.1 s of a spoken digit) and only the generated part is classified.
The prompt's label is then a reference, so "the classifier recognises the generated clips" has
a direct measure: accuracy against chance (1 / classes), with a one-sided binomial p-value; the
real rest of the same recordings, classified the same way, is the ceiling.

Inception score (Salimans et al. 2016; the SC09 metric of WaveGAN, DiffWave, SaShiMi and Mamba):
    IS = exp( mean_i KL( p(y | x_i) || p(y) ) ),   p(y) = mean_i p(y | x_i)
It lies in [1, C] for C classes: 1 when every clip gets the same class distribution (e.g. all
noise), C when each clip is classified with certainty and the classes are used equally often.
It rewards confident (intelligible) and diverse clips; it says nothing about whether a clip
sounds natural, and it depends on the classifier: quote it with that classifier's test
accuracy on real clips (the same score on real test clips is the ceiling to compare with).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio.functional as AF


def load_classifier(ckpt: str | os.PathLike):
    """A `mamba-seq fit experiment=digit_classifier` checkpoint -> AudioClassifierTask in eval mode (CPU)."""
    from .audio_classifier import AudioClassifierTask

    path = Path(ckpt)
    if not path.is_file():
        raise ValueError(f"classifier checkpoint not found: {path}")
    return AudioClassifierTask.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


@torch.no_grad()
def classifier_probabilities(classifier, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                             batch_size: int = 64) -> torch.Tensor:
    """waveforms: (B, T) float at the classifier's sample rate; lengths: (B,) real samples (None: all T)
    -> class probabilities (B, C) float64, rows summing to 1. Runs in eval mode on the classifier's device."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    if lengths is None:
        lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long)
    out = []
    for start in range(0, waveforms.shape[0], batch_size):
        w = waveforms[start:start + batch_size].to(device)
        n = lengths[start:start + batch_size].to(device)
        out.append(classifier(w, n).double().softmax(-1).cpu())
    classifier.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, classifier.hparams.num_classes, dtype=torch.float64)


def inception_score(probs: torch.Tensor) -> float:
    """probs: (n, C), rows p(y | x_i) summing to 1 -> exp(mean_i KL(p(y|x_i) || p(y))), in [1, C];
    0 log 0 = 0."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.dim() != 2 or p.shape[0] == 0:
        raise ValueError(f"inception_score needs (n, C) probabilities with n >= 1, got shape {tuple(p.shape)}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=torch.float64), atol=1e-6):
        raise ValueError("inception_score needs rows of probabilities (non-negative, summing to 1)")
    marginal = p.mean(0, keepdim=True)
    kl = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log()), torch.zeros_like(p))
    return float(kl.sum(1).mean().exp())


def _as_batch(clips, sample_rate: int | None, target_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paths, 1-D tensors or a (B, T) tensor -> (zero-padded (B, T') at target_rate, lengths (B,)).
    Files are read (mono) and resampled to target_rate; tensors are taken to be at sample_rate."""
    from data_modules.audio import read_audio

    if isinstance(clips, torch.Tensor):
        if clips.dim() not in (1, 2):
            raise ValueError(f"waveforms must be (B, T) or (T,), got shape {tuple(clips.shape)}")
        clips = list(clips[None] if clips.dim() == 1 else clips)
    waves = []
    for c in clips:
        if isinstance(c, (str, os.PathLike)):
            waves.append(read_audio(c, target_rate))
            continue
        if sample_rate is None:
            raise ValueError("give sample_rate= with waveform tensors")
        w = torch.as_tensor(c).float().reshape(-1)
        waves.append(w if int(sample_rate) == target_rate else AF.resample(w, int(sample_rate), target_rate))
    if not waves:
        raise ValueError("no clips to score")
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths


def _label_indices(labels, names: list[str]) -> torch.Tensor:
    """Class indices (ints) or class names -> (n,) long."""
    if isinstance(labels, torch.Tensor):
        return labels.long().reshape(-1)
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in labels:
        if isinstance(v, str):
            if v not in index:
                raise ValueError(f"label {v!r} is not one of the classifier's classes {names}")
            out.append(index[v])
        else:
            if not 0 <= int(v) < len(names):
                raise ValueError(f"label index {v} is outside 0..{len(names) - 1} ({names})")
            out.append(int(v))
    return torch.tensor(out, dtype=torch.long)


def score_clips(classifier_ckpt, clips: Sequence | torch.Tensor, sample_rate: int | None = None,
                labels: Sequence | torch.Tensor | None = None, batch_size: int = 64) -> dict:
    """Score clips with a classifier checkpoint (a path, or an AudioClassifierTask).

    clips: WAV paths (read and resampled to the classifier's rate), 1-D tensors or a (B, T) tensor
    at `sample_rate` (resampled when it differs from the classifier's). labels: class indices or
    class names, optional. -> {"n", "inception_score", "class_histogram" {name: count of argmax},
    "mean_max_probability", "accuracy" (only with labels), "sample_rate", "class_names"}."""
    classifier = load_classifier(classifier_ckpt) if isinstance(classifier_ckpt, (str, os.PathLike)) else classifier_ckpt
    rate = int(classifier.hparams.sample_rate)
    names = [str(c) for c in classifier.hparams.class_names]
    waves, lengths = _as_batch(clips, sample_rate, rate)
    probs = classifier_probabilities(classifier, waves, lengths, batch_size=batch_size)
    predicted = probs.argmax(1)
    counts = torch.bincount(predicted, minlength=len(names)).tolist()
    out = {
        "n": int(probs.shape[0]),
        "inception_score": inception_score(probs),
        "class_histogram": dict(zip(names, counts)),
        "mean_max_probability": float(probs.max(1).values.mean()),
        "sample_rate": rate,
        "class_names": names,
    }
    if labels is not None:
        y = _label_indices(labels, names)
        if len(y) != out["n"]:
            raise ValueError(f"{len(y)} labels for {out['n']} clips")
        out["accuracy"] = float((predicted == y).double().mean())
    return out


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of k or more hits by chance."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return float(min(1.0, sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))))


def continuation_scores(classifier_ckpt, generated: torch.Tensor, real_rest: Sequence[torch.Tensor],
                        labels: Sequence, sample_rate: int, batch_size: int = 64) -> dict:
    """Prompted continuations judged against their prompt's label.

    generated: (n, T) float, the generated part of each clip (the prompt cut off); real_rest: n 1-D
    tensors, the same recordings after the prompt (the ceiling; empty ones are left out of it);
    labels: the prompts' class names or indices, all at `sample_rate`.
    -> {"generated": score_clips(...) with accuracy, "real_rest": likewise, "chance": 1 / C,
        "hits", "binomial_p" (P(at least this many hits by chance))}."""
    classifier = load_classifier(classifier_ckpt) if isinstance(classifier_ckpt, (str, os.PathLike)) else classifier_ckpt
    names = [str(c) for c in classifier.hparams.class_names]
    y = _label_indices(labels, names)
    gen = score_clips(classifier, generated, sample_rate=sample_rate, labels=y, batch_size=batch_size)
    keep = [i for i, w in enumerate(real_rest) if len(w) > 0]
    real = (score_clips(classifier, [real_rest[i] for i in keep], sample_rate=sample_rate, labels=y[keep],
                        batch_size=batch_size) if keep else None)
    chance = 1.0 / len(names)
    hits = round(gen["accuracy"] * gen["n"])
    return {"generated": gen, "real_rest": real, "chance": chance, "hits": hits,
            "binomial_p": binomial_tail(hits, gen["n"], chance)}
