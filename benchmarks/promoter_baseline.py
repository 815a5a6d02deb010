"""Promoter baselines on the model's own split: k-mer logistic regression and GC fraction alone.

The split is not rebuilt here: the data module is instantiated from the composed Hydra config of
`experiment=promoter_classification` (bundled promoter CSV, E. coli sigma70, seed 0), with only
`data.split` overridden, so train/val/test are exactly the sets the Mamba model sees.

Models, each fit on train only (full-batch LBFGS, L2 on the weights, not the bias, in float64):
- k-mer LR: frequencies of every k-mer for k = 1..K (each k normalised by its number of windows;
  windows holding N skipped), standardised with the train mean/sd. K in 1..6 and the L2 strength
  are chosen by validation AUROC; the test split is scored once, with the chosen model.
- GC LR: one feature, the GC fraction (the label proxy DESIGN.md measures: coding windows are GC-rich).
Prediction = probability > 0.5 (as the classifier's argmax). Metrics over the whole test split
with percentile-bootstrap 95% intervals (tasks/evaluation.binary_report, 1000 resamples).

    python benchmarks/promoter_baseline.py [--json PATH] [--kinds grouped stratified] [--n-boot 1000] [OVERRIDE ...]

OVERRIDEs are Hydra overrides passed to the composed config (e.g. data.seed=1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tasks.evaluation import auroc, binary_report  # noqa: E402

PARTS = ("train", "val", "test")
MAX_K = 6
L2_GRID = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.001)  # fit strongest first, each warm-starting the next
OVERLAP_K = 20  # the leak DESIGN.md measures: test sequences sharing an exact 20-mer with train
_COMPLEMENT = np.array([3, 2, 1, 0])  # A C G T -> T G C A on base codes 0..3


# -- the split ----------------------------------------------------------------------------
def load_split(kind: str, overrides: list[str] = ()):
    """The promoter experiment's data module, split `kind` (grouped / stratified), set up.
    -> (data module, composed data config)."""
    from hydra.utils import instantiate

    from mamba_seq.cli import compose

    cfg = compose(["experiment=promoter_classification", f"data.split={kind}", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return datamodule, cfg.data


def base_codes(token_ids: list[np.ndarray], tokenizer) -> np.ndarray:
    """Token ids of variable-length sequences -> (n, L_max) int64, A C G T = 0..3, -1 for N and padding."""
    base = np.full(tokenizer.vocab_size, -1, dtype=np.int64)
    for i, b in enumerate("ACGT"):
        base[tokenizer.base_ids[b]] = i
    codes = np.full((len(token_ids), max(len(t) for t in token_ids)), -1, dtype=np.int64)
    for row, t in enumerate(token_ids):
        codes[row, : len(t)] = base[t]
    return codes


def kmer_frequencies(codes: np.ndarray, k: int) -> np.ndarray:
    """(n, L) base codes -> (n, 4^k) float64: each k-mer's count / the sequence's number of valid
    k-windows (those without N or padding); k-mer index = base-4 number of its bases, first base highest."""
    n, length = codes.shape
    windows = np.lib.stride_tricks.sliding_window_view(codes, k, axis=1)  # (n, L-k+1, k)
    valid = (windows >= 0).all(-1)
    index = (np.clip(windows, 0, 3) * 4 ** np.arange(k - 1, -1, -1)).sum(-1)
    rows = np.broadcast_to(np.arange(n)[:, None], index.shape)
    counts = np.zeros((n, 4**k))
    np.add.at(counts, (rows[valid], index[valid]), 1.0)
    return counts / np.maximum(valid.sum(1, keepdims=True), 1)


def gc_fraction(codes: np.ndarray) -> np.ndarray:
    """(n, L) base codes -> (n, 1) fraction of G or C among the A/C/G/T bases."""
    acgt = (codes >= 0).sum(1)
    return (((codes == 1) | (codes == 2)).sum(1) / np.maximum(acgt, 1))[:, None]


def shares_kmer_with(codes: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """(n,) bool: the sequence shares an exact k-mer (either strand) with some reference sequence."""
    def canonical_kmers(c: np.ndarray) -> list[set[bytes]]:
        out = []
        for row in c:
            row = row[row >= 0]
            rc = _COMPLEMENT[row[::-1]]
            fwd = row.astype(np.uint8).tobytes()
            rev = rc.astype(np.uint8).tobytes()
            m = len(row)
            out.append({min(fwd[j : j + k], rev[m - j - k : m - j]) for j in range(m - k + 1)})
        return out

    seen = set().union(*canonical_kmers(reference))
    return np.array([bool(s & seen) for s in canonical_kmers(codes)])


# -- L2 logistic regression ---------------------------------------------------------------
@dataclass
class LogisticRegression:
    weight: torch.Tensor  # (d,)
    bias: torch.Tensor  # ()
    mean: torch.Tensor  # (d,) train feature mean, subtracted before the weights
    scale: torch.Tensor  # (d,) train feature sd (floored), divided by before the weights

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(n, d) raw features -> (n,) logits."""
        x = torch.as_tensor(x, dtype=torch.float64)
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def probabilities(self, x) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def fit_logistic_regression(x, y, l2: float, max_iter: int = 300,
                            init: LogisticRegression | None = None) -> LogisticRegression:
    """Minimise mean binary cross-entropy + l2/2 * |w|^2 over standardised features x (n, d) and
    0/1 labels y (n,), full batch, LBFGS with a strong-Wolfe line search; the bias is not penalised.
    Stops when the largest gradient entry is below 1e-6. `init`: a fit on the same x to start from
    (a regularisation path: each fit starts where the previous, stronger one ended)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if init is None:
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-8)  # a constant feature: its weight stays 0 under L2
        weight = torch.zeros(x.shape[1], dtype=torch.float64)
        prior = y.mean().clamp(1e-6, 1 - 1e-6)
        bias = torch.log(prior / (1 - prior))  # start at the class prior
    else:
        mean, scale, weight, bias = init.mean, init.scale, init.weight, init.bias
    z = (x - mean) / scale
    weight, bias = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ weight + bias, y) + 0.5 * l2 * (weight @ weight)
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticRegression(weight.detach(), bias.detach(), mean, scale)


def select_kmer_model(feats: dict[str, dict[int, np.ndarray]], labels: dict[str, np.ndarray]):
    """K (k = 1..K features) and L2 by validation AUROC; ties go to the smaller K, then stronger L2.
    -> (model, K, l2, validation AUROC, every (K, l2, val AUROC) tried)."""
    tried, best = [], None
    for top_k in range(1, MAX_K + 1):
        x_train = np.hstack([feats["train"][k] for k in range(1, top_k + 1)])
        x_val = np.hstack([feats["val"][k] for k in range(1, top_k + 1)])
        model = None
        for l2 in sorted(L2_GRID, reverse=True):
            model = fit_logistic_regression(x_train, labels["train"], l2, init=model)
            score = float(auroc(model.logits(x_val), torch.as_tensor(labels["val"])))
            tried.append((top_k, l2, score))
            if best is None or score > best[3] + 1e-12:
                best = (model, top_k, l2, score)
    return (*best, tried)


# -- the benchmark ------------------------------------------------------------------------
def run_split(kind: str, overrides: list[str], n_boot: int) -> dict:
    datamodule, data_cfg = load_split(kind, overrides)
    tok = datamodule.tokenizer
    codes = {p: base_codes(datamodule.sets[p].token_ids, tok) for p in PARTS}
    labels = {p: np.asarray(datamodule.sets[p].labels) for p in PARTS}
    class_names = datamodule.class_names
    counts = {p: {class_names[c]: int((labels[p] == c).sum()) for c in range(len(class_names))} for p in PARTS}
    leak = {p: float(shares_kmer_with(codes[p], codes["train"], OVERLAP_K).mean()) for p in ("val", "test")}

    feats = {p: {k: kmer_frequencies(codes[p], k) for k in range(1, MAX_K + 1)} for p in PARTS}
    kmer_model, top_k, l2, val_auroc, tried = select_kmer_model(feats, labels)
    x_test = np.hstack([feats["test"][k] for k in range(1, top_k + 1)])
    y_test = torch.as_tensor(labels["test"])
    rows = [{
        "split": kind, "model": "k-mer LR", "chosen_on_val": f"k=1..{top_k}, l2={l2:g}", "val_auroc": val_auroc,
        **binary_report(kmer_model.probabilities(x_test), y_test, 0.5, n_boot=n_boot),
    }]
    gc = {p: gc_fraction(codes[p]) for p in PARTS}
    gc_model = fit_logistic_regression(gc["train"], labels["train"], l2=1e-4)
    rows.append({
        "split": kind, "model": "GC-fraction LR", "chosen_on_val": "-",
        "val_auroc": float(auroc(gc_model.logits(gc["val"]), torch.as_tensor(labels["val"]))),
        "gc_weight_per_sd": float(gc_model.weight[0]),
        **binary_report(gc_model.probabilities(gc["test"]), y_test, 0.5, n_boot=n_boot),
    })
    return {"split": kind, "data": OmegaConf.to_container(data_cfg, resolve=True),
            "class_counts": counts, "share_20mer_with_train": leak, "test_ids": list(datamodule.sets["test"].ids),
            "selection": [{"k_max": k, "l2": lam, "val_auroc": a} for k, lam, a in tried], "results": rows}


def interval(row: dict, name: str) -> str:
    return f"{row[name]:.3f} [{row[name + '_low']:.3f}, {row[name + '_high']:.3f}]"


def markdown(runs: list[dict]) -> str:
    lines = ["| split | part | n | promoter (1) | non-promoter (0) | shares a 20-mer with train |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        for part, c in run["class_counts"].items():
            share = f"{100 * run['share_20mer_with_train'][part]:.1f}%" if part != "train" else "-"
            lines.append(f"| {run['split']} | {part} | {sum(c.values())} | {c.get('1', 0)} | {c.get('0', 0)} | {share} |")
    lines += ["", "| split | model | chosen on val | val AUROC | n test (pos) | accuracy | MCC | F1 | AUROC | AUPRC |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["results"]:
            metrics = " | ".join(interval(r, m) for m in ("accuracy", "mcc", "f1", "auroc", "auprc"))
            lines.append(f"| {r['split']} | {r['model']} | {r['chosen_on_val']} | {r['val_auroc']:.3f} | "
                         f"{r['n']} ({r['n_positive']}) | {metrics} |")
    return "\n".join(lines)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        return out.stdout.strip() + (" (working tree modified)" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the results (and the test ids) as JSON here")
    parser.add_argument("--kinds", nargs="+", default=["grouped", "stratified"], choices=["grouped", "stratified"])
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the fits are small, and one thread is not slowed by "
                             "other processes on a shared machine the way a synchronising pool is)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the composed config, e.g. data.seed=1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = [run_split(kind, args.overrides, args.n_boot) for kind in args.kinds]
    wall = time.perf_counter() - start
    print(markdown(runs))
    print(f"\nbootstrap: {args.n_boot} resamples, percentile 95% intervals; threshold 0.5 on the probability; "
          f"wall time {wall:.1f} s on {platform.machine()} CPU ({torch.get_num_threads()} threads)")
    if args.json:
        given = argv if argv is not None else sys.argv[1:]
        payload = {"command": " ".join(["python", "benchmarks/promoter_baseline.py", *given]),
                   "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
                   "device": f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
                   "wall_s": wall, "runs": runs}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
