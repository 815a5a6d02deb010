"""benchmarks/promoter_baseline.py: its logistic regression, its k-mer features, and its split
being the promoter experiment's own."""

import importlib.util
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_modules import LabelledSequenceDataModule
from data_modules.tokenizers import DNATokenizer

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("promoter_baseline", ROOT / "benchmarks" / "promoter_baseline.py")
baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baseline)


def blobs(n, seed):
    """Two Gaussian clouds in 5-D, 3 sd apart along a random direction; labels 0/1."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=5)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5)) + 3.0 * np.outer(y - 0.5, direction) + 7.0  # offset: standardisation must cope
    return x, y


def test_logistic_regression_separates_an_easy_case_at_its_optimum():
    x, y = blobs(400, 0)
    model = baseline.fit_logistic_regression(x, y, l2=1e-3)
    x_new, y_new = blobs(400, 1)
    assert ((model.probabilities(x) > 0.5).numpy() == y).mean() > 0.9
    assert ((model.probabilities(x_new) > 0.5).numpy() == y_new).mean() > 0.9
    # the returned weights are a stationary point of the penalised loss (checked by autograd here)
    z = (torch.as_tensor(x) - model.mean) / model.scale
    w, b = model.weight.clone().requires_grad_(True), model.bias.clone().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(z @ w + b, torch.as_tensor(y, dtype=torch.float64)) + 0.5e-3 * (w @ w)
    loss.backward()
    assert max(w.grad.abs().max(), b.grad.abs()) < 1e-5
    # a warm start from a stronger penalty reaches the same optimum as a cold start
    warm = baseline.fit_logistic_regression(x, y, l2=1e-3, init=baseline.fit_logistic_regression(x, y, l2=1.0))
    assert torch.allclose(warm.weight, model.weight, atol=1e-4)


def test_kmer_frequencies_count_windows_without_n():
    tok = DNATokenizer()
    seqs = ["ACGTAC", "AANCA", "GG"]
    codes = baseline.base_codes([tok.encode(s) for s in seqs], tok)
    for k in (1, 2, 3):
        freqs = baseline.kmer_frequencies(codes, k)
        for row, s in enumerate(seqs):
            windows = [s[i : i + k] for i in range(len(s) - k + 1) if "N" not in s[i : i + k]]
            oracle = Counter(windows)
            for kmer in map("".join, itertools.product("ACGT", repeat=k)):
                index = int("".join(str("ACGT".index(c)) for c in kmer), 4)
                expected = oracle[kmer] / len(windows) if windows else 0.0
                assert freqs[row, index] == pytest.approx(expected), (s, kmer)
    assert baseline.gc_fraction(codes)[:, 0] == pytest.approx([0.5, 0.25, 1.0])


@pytest.mark.parametrize("kind", ["grouped", "stratified"])
def test_baseline_split_is_the_data_modules_split(kind):
    """The benchmark composes the experiment's config; built here from the constructor's arguments
    directly, the same data module must give identical train/val/test ids and sequences."""
    datamodule, _ = baseline.load_split(kind)
    direct = LabelledSequenceDataModule(
        str(ROOT / "mamba_seq" / "assets" / "promoters_ecoli_bsubtilis.csv"), id_column="fasta_header",
        where={"organism": "E_coli_sigma70"}, split=kind, seed=0,
    )
    direct.setup()
    for part in ("train", "val", "test"):
        assert datamodule.sets[part].ids == direct.sets[part].ids
        assert datamodule.sets[part].labels == direct.sets[part].labels
        assert all(np.array_equal(a, b) for a, b in zip(datamodule.sets[part].token_ids, direct.sets[part].token_ids))
    assert len(set(datamodule.sets["test"].ids)) == len(datamodule.sets["test"].ids) > 300
