"""Metrics over a whole evaluation set with percentile-bootstrap intervals.

`bootstrap_interval(metric, scores, labels)` takes any `metric(scores, labels) -> float` on 1-D
tensors. Resamples are drawn as one (block, n) index matrix at a time; a metric marked
`batched = True` (the ones below) is then called once per block on (block, n) tensors and returns
(block,) values (1000 resamples of 10k examples: about 0.6 s for AUROC on one CPU core); any other
callable is called once per resample (about 1 ms each for a torchmetrics function at n = 10k).

A resample that holds a single class (AUROC, MCC, ... are undefined there) is redrawn, never
skipped: the interval is then the bootstrap distribution conditioned on both classes being
present; it differs from the unconditioned one only when a class has a handful of examples.
The number of redraws is logged. If the positive or negative class is so rare that a resample
keeps coming out single-class (1000 rounds), that is an error: the set is too small for an interval.

Scores: higher = more likely class 1. They may be probabilities or any real scores (logits,
log-likelihood ratios). The rank metrics (`auroc`, `average_precision`) depend on the order only
and treat ties exactly (Mann-Whitney with half credit; one threshold per distinct score).
torchmetrics silently applies a sigmoid to float scores outside [0, 1], which in float32 turns
logits beyond ~17 into ties of 1.0; `binary_report` hands torchmetrics a tie-preserving rank
transform instead, so its AUROC/AUPRC equal those of the raw scores.

Several processes (DDP): each rank scores its own shard of a split, and the shards differ in size.
The torchmetrics metrics the tasks use sync their states themselves (a `cat` state is gathered
whatever each rank's length); a task that collects examples itself gathers them with
`gather_from_ranks` before computing anything, so every rank computes the whole split's numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics import Metric as TorchMetric
from torchmetrics.classification import BinaryConfusionMatrix, MulticlassConfusionMatrix
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_matthews_corrcoef,
)

log = logging.getLogger(__name__)

# resamples per block: keep a block's (block, n) float64 tensors near 2^22 elements (32 MB)
_BLOCK_ELEMENTS = 1 << 22
_MAX_REDRAW_ROUNDS = 1000

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def batched(fn):
    """Mark a metric that also takes (B, n) scores/labels row-wise and returns (B,) values."""
    fn.batched = True
    return fn


def _check_inputs(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (scores float64 (n,), labels int64 (n,)), both classes present; else a ValueError saying what's wrong."""
    scores = torch.as_tensor(scores).detach().cpu().to(torch.float64).reshape(-1)
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.is_floating_point():
        if not torch.all(labels == labels.round()):
            raise ValueError("labels must be 0/1 integers, got non-integral floats")
    labels = labels.to(torch.int64).reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(f"scores ({scores.numel()}) and labels ({labels.numel()}) differ in length")
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"{bad} of {scores.numel()} scores are NaN or infinite; fix the scores first")
    if labels.numel() and not torch.all((labels == 0) | (labels == 1)):
        raise ValueError(f"labels must be 0 or 1, got values {torch.unique(labels).tolist()[:10]}")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        raise ValueError(f"need both classes for these metrics; got {n_pos} positives of {labels.numel()}")
    return scores, labels


def gather_from_ranks(obj) -> list:
    """[rank 0's obj, rank 1's, ...] from every process of a data-parallel run, or [obj] in a
    single process. Any picklable object, of any size per rank (e.g. a shard's scores and labels).
    Every rank must call it (it is a collective)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class SplitCrossEntropy(TorchMetric):
    """The cross-entropy of a whole split, F.cross_entropy(weight=class_weight) over all its
    examples: accumulates sum(w_i * ce_i) and sum(w_i) (w_i = class_weight[label_i], else 1), in
    float64, synced across ranks as sums. So it is the same on 1 or N processes and however the
    split is batched (a mean of per-batch means is neither, once class weights make batches count
    unequally). A NaN loss stays NaN (torchmetrics' MeanMetric drops NaNs, or ignores the weights
    with nan_strategy="disable")."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("weighted_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> None:
        """logits (n, C), labels (n,) int64."""
        ce = F.cross_entropy(logits.float(), labels, reduction="none").double()
        w = class_weight[labels].double() if class_weight is not None else torch.ones_like(ce)
        self.weighted_sum += (ce * w).sum()
        self.weight += w.sum()

    def compute(self) -> torch.Tensor:
        return (self.weighted_sum / self.weight).float()


def log_split_loss(module, metric: SplitCrossEntropy, prefix: str) -> None:
    """Log `{prefix}/loss` from a SplitCrossEntropy and reset it. Every rank calls it (the sums are
    synced across ranks) and logs the same number; nothing is logged when no rank saw an example."""
    with metric.sync_context():  # inside: the states are the sums over all ranks; this rank's after
        seen = metric.weight.item() > 0
        loss = (metric.weighted_sum / metric.weight).float() if seen else None
    metric.reset()
    if loss is not None:
        module.log(f"{prefix}/loss", loss, sync_dist=False)  # already the whole split's


# -- metrics: (n,) -> scalar tensor, or (B, n) -> (B,) ------------------------------------------
@batched
def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve = P(score of a random positive > that of a random negative) with
    ties counted half (the Mann-Whitney U / (n_pos * n_neg)); equals the trapezoidal ROC area.
    scores, labels: (n,) or (B, n) -> () or (B,)."""
    pos, neg = _per_distinct_score(scores, labels)  # (B, U), ascending scores
    neg_below = neg.cumsum(-1) - neg
    u = (pos * (neg_below + 0.5 * neg)).sum(-1)
    return u / (pos.sum(-1) * neg.sum(-1))


@batched
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the precision-recall curve as average precision: sum over distinct score
    thresholds (descending) of (recall gain) x precision, as torchmetrics' binary_average_precision.
    scores, labels: (n,) or (B, n) -> () or (B,)."""
    pos, neg = _per_distinct_score(scores, labels)
    pos, neg = pos.flip(-1), neg.flip(-1)  # descending thresholds
    tp, fp = pos.cumsum(-1), neg.cumsum(-1)
    precision = tp / (tp + fp).clamp_min(1e-300)  # tp + fp = 0 only where pos = 0 too
    return (pos * precision).sum(-1) / pos.sum(-1)


@batched
def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of hard 0/1 predictions equal to the label. (n,) or (B, n) -> () or (B,)."""
    return (preds.to(torch.int64) == labels.to(torch.int64)).to(torch.float64).mean(-1)


@batched
def mcc(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Matthews correlation of hard 0/1 predictions, (tp tn - fp fn) / sqrt of the four margins;
    0 where a margin is empty (all predictions, or all labels, one class), as sklearn.
    (n,) or (B, n) -> () or (B,)."""
    tp, fp, fn, tn = _confusion(preds, labels)
    denom = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return torch.where(denom > 0, (tp * tn - fp * fn) / denom.clamp_min(1e-300), torch.zeros_like(denom))


def mcc_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """Matthews correlation from a (K, K) confusion matrix (rows true, columns predicted), the
    K-class form (Gorodkin 2004), which is the binary formula at K = 2; 0 where it is undefined
    (one predicted or one true class), as sklearn. -> () float64."""
    c = confmat.to(torch.float64)
    total, correct, true, pred = c.sum(), c.trace(), c.sum(1), c.sum(0)
    cov = correct * total - (true * pred).sum()
    denom = torch.sqrt((total * total - (pred * pred).sum()) * (total * total - (true * true).sum()))
    return torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(denom))


class BinaryMCC(BinaryConfusionMatrix):
    """Split-level MCC as a torchmetrics metric (accumulates the confusion matrix, synced across
    ranks). torchmetrics' own MatthewsCorrCoef returns a nonzero value for a constant predictor
    (0.068 for all-negative predictions on 86/386 positives), which a checkpoint monitor would
    reward; this one gives 0, as sklearn and `mcc` above."""

    def compute(self) -> torch.Tensor:
        return mcc_from_confusion(super().compute()).float()


class MulticlassMCC(MulticlassConfusionMatrix):
    """The K-class BinaryMCC (see mcc_from_confusion)."""

    def compute(self) -> torch.Tensor:
        return mcc_from_confusion(super().compute()).float()


@batched
def f1(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """F1 of the positive class, 2 tp / (2 tp + fp + fn); 0 where there is no positive at all.
    (n,) or (B, n) -> () or (B,)."""
    tp, fp, fn, _ = _confusion(preds, labels)
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-300), torch.zeros_like(denom))


def _confusion(preds, labels):
    p = preds.to(torch.int64) == 1
    y = labels.to(torch.int64) == 1
    count = lambda m: m.to(torch.float64).sum(-1)  # noqa: E731
    return count(p & y), count(p & ~y), count(~p & y), count(~p & ~y)


def _per_distinct_score(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives and negatives per distinct score value of each row: (B, n) each, columns in
    ascending score order, the row's U distinct values in its first U columns, the rest empty.
    A row-wise sort, not torch.unique over the block: that sorts all B*n values at once (3x slower)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels).to(torch.float64)
    squeeze = scores.dim() == 1
    if squeeze:
        scores, labels = scores[None], labels[None]
    sorted_scores, order = torch.sort(scores, dim=-1)
    sorted_labels = labels.gather(-1, order)
    starts_group = torch.ones_like(sorted_scores, dtype=torch.int64)
    starts_group[:, 1:] = (sorted_scores[:, 1:] != sorted_scores[:, :-1]).to(torch.int64)
    group = starts_group.cumsum(-1) - 1  # row-local dense rank of each score
    pos = torch.zeros_like(sorted_scores).scatter_add_(1, group, sorted_labels)
    neg = torch.zeros_like(sorted_scores).scatter_add_(1, group, 1 - sorted_labels)
    return (pos[0], neg[0]) if squeeze else (pos, neg)


# -- the bootstrap -----------------------------------------------------------------------------
def _resample_blocks(labels: torch.Tensor, n_boot: int, seed: int):
    """Yield (block, n) index matrices, n_boot rows in all, each row holding both classes.
    Deterministic in (n, n_boot, seed); rows are drawn with replacement, single-class rows redrawn."""
    n = labels.numel()
    gen = torch.Generator().manual_seed(seed)
    block = max(1, min(n_boot, _BLOCK_ELEMENTS // max(n, 1)))
    redrawn = 0
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        idx = torch.randint(0, n, (rows, n), generator=gen)
        for _ in range(_MAX_REDRAW_ROUNDS):
            n_pos = labels[idx].sum(1)
            single = (n_pos == 0) | (n_pos == n)
            if not single.any():
                break
            k = int(single.sum())
            redrawn += k
            idx[single] = torch.randint(0, n, (k, n), generator=gen)
        else:
            raise ValueError(f"bootstrap: resamples of these {n} examples ({int(labels.sum())} positive) keep "
                             f"holding a single class after {_MAX_REDRAW_ROUNDS} redraws; the set is too small "
                             "or too unbalanced for an interval")
        yield idx
    if redrawn:
        log.info("bootstrap: %d of %d resamples held a single class and were redrawn", redrawn, n_boot)


def bootstrap_values(metric: Metric, scores, labels, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
    """The metric on n_boot resamples (rows drawn with replacement): (n_boot,) float64; a
    non-finite value stays in (bootstrap_interval drops and counts them)."""
    scores, labels = _check_inputs(scores, labels)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    values = []
    for idx in _resample_blocks(labels, n_boot, seed):
        s, y = scores[idx], labels[idx]
        if getattr(metric, "batched", False):
            values.append(torch.as_tensor(metric(s, y), dtype=torch.float64).reshape(-1))
        else:
            values.append(torch.tensor([float(metric(s[i], y[i])) for i in range(len(idx))], dtype=torch.float64))
    return torch.cat(values)


def bootstrap_interval(metric: Metric, scores, labels, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of `metric(scores, labels)` at `level` (e.g. 0.95 -> the 2.5th
    and 97.5th percentiles of n_boot resampled values). scores: (n,) float; labels: (n,) 0/1.
    Resamples with one class only are redrawn (module docstring); resamples where the metric is
    NaN are dropped and counted in the log; (nan, nan) if none is finite."""
    _check_level(level)
    return _percentile_interval(bootstrap_values(metric, scores, labels, n_boot, seed), level)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _percentile_interval(values: torch.Tensor, level: float) -> tuple[float, float]:
    """(low, high) percentiles of the finite values; non-finite ones are dropped and counted."""
    finite = values[torch.isfinite(values)]
    if finite.numel() < values.numel():
        log.warning("bootstrap: the metric was not finite on %d of %d resamples; left out",
                    values.numel() - finite.numel(), values.numel())
    if finite.numel() == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = torch.quantile(finite, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)


def _tie_preserving_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Scores -> values in [0, 1] with the same order and the same ties (dense rank / (U - 1)), so
    torchmetrics neither applies a sigmoid nor creates ties of its own."""
    _, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    top = int(inverse.max()) if inverse.numel() else 0
    return inverse.to(torch.float64) / max(top, 1)


def binary_report(scores, labels, threshold: float = 0.5, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> dict:
    """Accuracy, MCC, F1 (prediction = score > threshold, torchmetrics' rule), AUROC and AUPRC
    (average precision) over the whole set, each with a percentile-bootstrap interval:
    keys `accuracy`, `accuracy_low`, `accuracy_high`, ... `mcc`, `f1`, `auroc`, `auprc`, plus `n`,
    `n_positive`, `threshold`, `n_boot`, `level`. Point estimates come from
    torchmetrics.functional; MCC is 0 where the predictions (or labels) are all one class
    (torchmetrics returns an eps-based value there, e.g. 0.18 for all-negative predictions).
    All five intervals use the same resamples. scores: (n,) real; labels: (n,) 0/1."""
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    scores, labels = _check_inputs(scores, labels)
    preds = (scores > threshold).to(torch.int64)
    ranks = _tie_preserving_ranks(scores)
    one_class_preds = preds.min() == preds.max()
    point = {
        "accuracy": float(binary_accuracy(preds, labels)),
        "mcc": 0.0 if one_class_preds else float(binary_matthews_corrcoef(preds, labels)),
        "f1": float(binary_f1_score(preds, labels)),
        "auroc": float(binary_auroc(ranks, labels)),
        "auprc": float(binary_average_precision(ranks, labels)),
    }
    on_preds = {"accuracy": accuracy, "mcc": mcc, "f1": f1}
    on_scores = {"auroc": auroc, "auprc": average_precision}
    # one resample set for all five: draw it once, then evaluate each metric on the same rows
    values: dict[str, list[torch.Tensor]] = {k: [] for k in point}
    for idx in _resample_blocks(labels, n_boot, seed):
        y = labels[idx]
        for name, fn in on_preds.items():
            values[name].append(fn(preds[idx], y))
        for name, fn in on_scores.items():
            values[name].append(fn(scores[idx], y))
    report: dict = {"n": int(labels.numel()), "n_positive": int(labels.sum()), "threshold": float(threshold),
                    "n_boot": int(n_boot), "level": float(level)}
    for name, estimate in point.items():
        low, high = _percentile_interval(torch.cat(values[name]), level)
        report[name], report[f"{name}_low"], report[f"{name}_high"] = estimate, low, high
    return report
