"""Inception score against hand-computed values and its bounds; classifier probabilities and
score_clips on tensors and on WAV files."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from tasks.audio_classifier import AudioClassifierTask
from tasks.generation_scoring import classifier_probabilities, inception_score, score_clips

SR = 8000


def test_inception_score_hand_computed():
    # p1 = (0.5, 0.5), p2 = (1, 0): marginal (0.75, 0.25)
    # KL1 = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) ; KL2 = 1 ln(1/0.75) (0 log 0 = 0)
    kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl2 = math.log(1 / 0.75)
    expected = math.exp((kl1 + kl2) / 2)
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert math.isclose(inception_score(probs), expected, rel_tol=1e-12)
    assert math.isclose(expected, 1.2408064788027995, rel_tol=1e-12)


def test_inception_score_bounds():
    # identical rows: every KL is 0 -> 1, whatever the rows are
    row = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert math.isclose(inception_score(row.repeat(7, 1)), 1.0, rel_tol=1e-12)
    # one-hot rows, classes used equally often -> C
    for c in (2, 3, 10):
        onehot = torch.eye(c).repeat(5, 1)
        assert math.isclose(inception_score(onehot), c, rel_tol=1e-12)
    # one-hot but all one class -> 1; unevenly used classes -> between
    assert math.isclose(inception_score(torch.eye(4)[[0, 0, 0]]), 1.0, rel_tol=1e-12)
    uneven = inception_score(torch.eye(4)[[0, 0, 0, 1]])
    assert 1.0 < uneven < 4.0
    # always within [1, C]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.rand(13, 5, generator=g).pow(3)
        p = p / p.sum(1, keepdim=True)
        assert 1.0 - 1e-12 <= inception_score(p) <= 5.0 + 1e-12


def test_inception_score_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probabilities"):
        inception_score(torch.tensor([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="n >= 1"):
        inception_score(torch.zeros(0, 3))


def _classifier():
    torch.manual_seed(0)
    return AudioClassifierTask(num_classes=3, sample_rate=SR, class_names=["lo", "mid", "hi"], n_mels=32,
                               channels=(4, 8)).eval()


def test_classifier_probabilities_are_rows_of_probabilities_and_respect_lengths():
    clf = _classifier()
    waves = 0.2 * torch.randn(5, 1600)
    lengths = torch.tensor([1600, 1200, 800, 1600, 400])
    probs = classifier_probabilities(clf, waves, lengths, batch_size=2)  # several batches
    assert probs.shape == (5, 3) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(5, dtype=torch.float64))
    alone = classifier_probabilities(clf, waves[2:3, :800])
    torch.testing.assert_close(probs[2:3], alone, atol=1e-6, rtol=1e-5)


def test_score_clips_from_tensors_and_wav_files(tmp_path):
    clf = _classifier()
    path = tmp_path / "clf.ckpt"
    torch.save({"state_dict": clf.state_dict(), "hyper_parameters": dict(clf.hparams),
                "pytorch-lightning_version": "2.0.0"}, path)
    rng = np.random.default_rng(0)
    waves = [0.3 * rng.standard_normal(n).astype(np.float32) for n in (1600, 900, 1200, 1600)]
    files = []
    for i, w in enumerate(waves):
        files.append(tmp_path / f"clip_{i}.wav")
        sf.write(files[-1], w, SR, subtype="FLOAT")
    from_files = score_clips(path, files, labels=["lo", "mid", "hi", "lo"])
    from_tensors = score_clips(clf, [torch.from_numpy(w) for w in waves], sample_rate=SR, labels=[0, 1, 2, 0])
    assert from_files["n"] == 4 and sum(from_files["class_histogram"].values()) == 4
    assert set(from_files["class_histogram"]) == {"lo", "mid", "hi"}
    assert 1.0 <= from_files["inception_score"] <= 3.0
    assert math.isclose(from_files["inception_score"], from_tensors["inception_score"], rel_tol=1e-4)
    assert from_files["accuracy"] == from_tensors["accuracy"]
    probs = classifier_probabilities(clf, *_padded(waves))
    predicted = probs.argmax(1)
    assert math.isclose(from_files["accuracy"], float((predicted == torch.tensor([0, 1, 2, 0])).double().mean()))
    # clips at another rate are resampled to the classifier's
    up = score_clips(clf, 0.1 * torch.randn(2, 3200), sample_rate=2 * SR)
    assert up["n"] == 2 and up["sample_rate"] == SR
    with pytest.raises(ValueError, match="not one of"):
        score_clips(clf, files[:1], labels=["nope"])
    with pytest.raises(ValueError, match="sample_rate"):
        score_clips(clf, [torch.zeros(100)])


def _padded(waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lengths


def test_binomial_tail_matches_a_trial_by_trial_recursion():
    from fractions import Fraction

    from tasks.generation_scoring import binomial_tail

    def exact_tail(k, n, p):  # the distribution of hits built one trial at a time, in exact fractions
        dist = [Fraction(1)]
        for _ in range(n):
            dist = [(dist[j] if j < len(dist) else 0) * (1 - p) + (dist[j - 1] * p if j > 0 else 0)
                    for j in range(len(dist) + 1)]
        return float(sum(dist[k:]))

    for k, n, p in [(0, 5, Fraction(1, 10)), (3, 10, Fraction(1, 10)), (19, 100, Fraction(1, 10)),
                    (7, 7, Fraction(1, 2)), (40, 64, Fraction(1, 10))]:
        assert binomial_tail(k, n, float(p)) == pytest.approx(exact_tail(k, n, p), rel=1e-9, abs=1e-300)
    with pytest.raises(ValueError):
        binomial_tail(6, 5, 0.1)


def test_continuation_scores_judge_only_the_given_part_against_the_labels():
    from tasks.generation_scoring import classifier_probabilities, continuation_scores

    torch.manual_seed(0)
    clf = AudioClassifierTask(num_classes=10, sample_rate=8000, class_names=[str(i) for i in range(10)], n_mels=16,
                              channels=(4,))
    gen = torch.randn(6, 800) * 0.3
    rest = [torch.randn(n) * 0.3 for n in (500, 0, 800, 300, 800, 700)]  # an empty rest is left out of the ceiling
    labels = ["1", "2", "3", "1", "2", "3"]
    out = continuation_scores(clf, gen, rest, labels, sample_rate=8000)
    predicted = classifier_probabilities(clf, gen).argmax(1)
    hits = int((predicted == torch.tensor([1, 2, 3, 1, 2, 3])).sum())
    assert out["hits"] == hits and out["generated"]["accuracy"] == pytest.approx(hits / 6)
    assert out["chance"] == pytest.approx(0.1) and 0 < out["binomial_p"] <= 1
    assert out["real_rest"]["n"] == 5
