"""tasks.evaluation against independent plain-numpy oracles, and the bootstrap's behaviour."""

import math

import numpy as np
import pytest
import torch

from tasks.evaluation import (
    BinaryMCC,
    MulticlassMCC,
    accuracy,
    auroc,
    average_precision,
    binary_report,
    bootstrap_interval,
    bootstrap_values,
    f1,
    mcc,
)


# -- oracles: written from the definitions, no shared code ----------------------------------
def auroc_mann_whitney(scores, labels):
    """U / (n_pos n_neg): every (positive, negative) pair, 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    u = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return u / (len(pos) * len(neg))


def average_precision_by_thresholds(scores, labels):
    """Sum over distinct thresholds t (descending) of (recall(t) - recall(previous t)) * precision(t)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    total, ap, last_recall = labels.sum(), 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        called = scores >= t
        tp = int((called & (labels == 1)).sum())
        recall = tp / total
        ap += (recall - last_recall) * tp / int(called.sum())
        last_recall = recall
    return ap


def confusion(preds, labels):
    tp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 1)
    fp = sum(1 for p, y in zip(preds, labels) if p == 1 and y == 0)
    fn = sum(1 for p, y in zip(preds, labels) if p == 0 and y == 1)
    tn = sum(1 for p, y in zip(preds, labels) if p == 0 and y == 0)
    return tp, fp, fn, tn


def mcc_formula(preds, labels):
    tp, fp, fn, tn = confusion(preds, labels)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def noisy_scores(n, seed, separation=1.0):
    """Labels ~ Bernoulli(0.3); scores = separation * label + normal noise, rounded so ties occur."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = np.round(separation * labels + rng.normal(size=n), 1)
    return torch.tensor(scores), torch.tensor(labels)


# -- metrics --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_metrics_match_oracles_with_ties(seed):
    scores, labels = noisy_scores(150, seed)
    s, y = scores.tolist(), labels.tolist()
    assert float(auroc(scores, labels)) == pytest.approx(auroc_mann_whitney(s, y), abs=1e-12)
    assert float(average_precision(scores, labels)) == pytest.approx(average_precision_by_thresholds(s, y), abs=1e-12)


def test_thresholded_metrics_match_formulas():
    rng = np.random.default_rng(3)
    preds, labels = rng.integers(0, 2, 97), rng.integers(0, 2, 97)
    tp, fp, fn, tn = confusion(preds, labels)
    p, y = torch.tensor(preds), torch.tensor(labels)
    assert float(accuracy(p, y)) == pytest.approx((tp + tn) / 97)
    assert float(f1(p, y)) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert float(mcc(p, y)) == pytest.approx(mcc_formula(preds, labels))
    assert float(mcc(torch.zeros(97, dtype=torch.long), y)) == 0.0  # degenerate predictions


def test_batched_metrics_equal_row_by_row():
    scores, labels = noisy_scores(60, 4)
    idx = torch.randint(0, 60, (7, 60), generator=torch.Generator().manual_seed(0))
    s, y = scores[idx], labels[idx]
    for fn in (auroc, average_precision):
        assert torch.allclose(fn(s, y), torch.stack([fn(s[i], y[i]) for i in range(7)]))
    p = (s > 0.5).long()
    for fn in (accuracy, mcc, f1):
        assert torch.allclose(fn(p, y), torch.stack([fn(p[i], y[i]) for i in range(7)]))


# -- binary_report --------------------------------------------------------------------------
def test_binary_report_point_estimates_match_oracles():
    scores, labels = noisy_scores(200, 5)
    logits = 40 * scores  # far beyond where a float32 sigmoid saturates: ranks must survive
    r = binary_report(logits, labels, threshold=0.0, n_boot=200)
    s, y = logits.tolist(), labels.tolist()
    preds = [int(v > 0.0) for v in s]
    tp, fp, fn, tn = confusion(preds, y)
    assert r["n"] == 200 and r["n_positive"] == sum(y)
    assert r["accuracy"] == pytest.approx((tp + tn) / 200, abs=1e-6)
    assert r["mcc"] == pytest.approx(mcc_formula(preds, y), abs=1e-6)
    assert r["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    assert r["auroc"] == pytest.approx(auroc_mann_whitney(s, y), abs=1e-6)
    assert r["auprc"] == pytest.approx(average_precision_by_thresholds(s, y), abs=1e-6)
    for name in ("accuracy", "mcc", "f1", "auroc", "auprc"):
        assert r[f"{name}_low"] <= r[name] <= r[f"{name}_high"], name


def test_binary_report_intervals_are_bootstrap_interval_on_shared_resamples():
    scores, labels = noisy_scores(120, 6)
    r = binary_report(scores, labels, threshold=0.5, n_boot=300, seed=3)
    assert (r["auroc_low"], r["auroc_high"]) == bootstrap_interval(auroc, scores, labels, n_boot=300, seed=3)
    preds = (scores > 0.5).long()
    assert (r["mcc_low"], r["mcc_high"]) == bootstrap_interval(mcc, preds, labels, n_boot=300, seed=3)


def test_binary_report_mcc_is_zero_for_one_class_predictions():
    scores, labels = noisy_scores(50, 7)
    assert binary_report(scores - 100, labels, n_boot=50)["mcc"] == 0.0


# -- bootstrap_interval ---------------------------------------------------------------------
def test_interval_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (200, 3200):
        scores, labels = noisy_scores(n, 8)
        low, high = bootstrap_interval(auroc, scores, labels, n_boot=400)
        assert low <= float(auroc(scores, labels)) <= high
        widths.append(high - low)
    # width ~ 1/sqrt(n): 16x the examples, about a quarter of the width
    assert 0.15 < widths[1] / widths[0] < 0.4


def test_interval_of_a_mean_matches_the_normal_theory_width():
    """Rows drawn with replacement, n per resample: the bootstrap sd of a mean is sd / sqrt(n)."""
    rng = np.random.default_rng(9)
    x = torch.tensor(rng.normal(size=400))
    labels = torch.tensor(rng.integers(0, 2, 400))
    low, high = bootstrap_interval(lambda s, y: float(s.mean()), x, labels, n_boot=1000)
    expected = 2 * 1.959964 * float(x.std()) / math.sqrt(400)
    assert (high - low) == pytest.approx(expected, rel=0.15)
    assert low < float(x.mean()) < high


def test_interval_is_deterministic_in_the_seed_and_the_same_for_plain_callables():
    scores, labels = noisy_scores(300, 10)
    a = bootstrap_interval(auroc, scores, labels, n_boot=200, seed=1)
    assert a == bootstrap_interval(auroc, scores, labels, n_boot=200, seed=1)
    assert a != bootstrap_interval(auroc, scores, labels, n_boot=200, seed=2)
    plain = bootstrap_interval(lambda s, y: float(auroc(s, y)), scores, labels, n_boot=200, seed=1)  # no `batched`
    assert plain == pytest.approx(a, abs=1e-12)


def test_single_class_resamples_are_redrawn():
    labels = torch.zeros(20, dtype=torch.long)
    labels[3] = 1  # a resample misses the one positive with probability (19/20)^20 = 0.36
    scores = torch.linspace(0, 1, 20, dtype=torch.float64)
    seen = []

    def checked_auroc(s, y):
        seen.append(int(y.sum()))
        return float(auroc(s, y))

    values = bootstrap_values(checked_auroc, scores, labels, n_boot=200)
    assert len(seen) == 200 and min(seen) >= 1 and torch.isfinite(values).all()


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        ([0.1, 0.2, 0.3], [0, 0, 0], "need both classes"),
        ([0.1, float("nan"), 0.3], [0, 1, 0], "NaN or infinite"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "must be 0 or 1"),
        ([0.1, 0.2], [0, 1, 1], "differ in length"),
    ],
)
def test_bad_inputs_say_what_is_wrong(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval(auroc, torch.tensor(scores), torch.tensor(labels), n_boot=10)


def test_mcc_metric_is_zero_for_a_constant_predictor():
    """torchmetrics' MatthewsCorrCoef gives 0.068 here; a predictor that says "negative" for every
    sequence has no correlation with the labels, and a checkpoint monitor must not reward it."""
    labels = torch.cat([torch.ones(86), torch.zeros(300)]).long()
    for constant in (0.1, 0.9):
        m = BinaryMCC()
        m.update(torch.full((386,), constant), labels)
        assert m.compute().item() == 0.0
    m = MulticlassMCC(3)
    m.update(torch.zeros(30, dtype=torch.long), torch.arange(30) % 3)
    assert m.compute().item() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcc_metric_matches_the_formula_over_batches(seed):
    """Accumulated over uneven batches, BinaryMCC equals `mcc` of the whole split (the
    tp tn - fp fn formula); MulticlassMCC at K = 2 equals it too, and at K = 3 it equals the
    covariance form computed by hand with numpy."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(200, generator=g) < 0.3).long()
    scores = (labels * 0.3 + torch.rand(200, generator=g) * 0.8).clamp(0, 1)
    m, m2 = BinaryMCC(), MulticlassMCC(2)
    for lo, hi in ((0, 7), (7, 120), (120, 200)):
        m.update(scores[lo:hi], labels[lo:hi])
        m2.update((scores[lo:hi] > 0.5).long(), labels[lo:hi])
    expected = mcc((scores > 0.5).long(), labels).item()
    assert m.compute().item() == pytest.approx(expected, abs=1e-6)
    assert m2.compute().item() == pytest.approx(expected, abs=1e-6)
    y = torch.randint(0, 3, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.6, y, torch.randint(0, 3, (300,), generator=g))
    m3 = MulticlassMCC(3)
    m3.update(p, y)
    Y, P = np.eye(3)[y.numpy()], np.eye(3)[p.numpy()]
    cov = lambda a, b: ((a - a.mean(0)) * (b - b.mean(0))).sum()  # noqa: E731
    assert m3.compute().item() == pytest.approx(cov(Y, P) / math.sqrt(cov(Y, Y) * cov(P, P)), abs=1e-6)
