"""Zero-shot LLR scores and variant metrics against independent computations."""

from __future__ import annotations

import itertools

import pytest
import torch

from data_modules.fasta import open_fasta
from data_modules.tokenizers import DNATokenizer
from data_modules.variants import Variant, VariantWindow, read_vcf, variant_windows
from mamba_seq import MambaConfig, MambaLMHeadModel
from tasks.variant_effect import sequence_log_likelihood, variant_metrics, zero_shot_llr


def tiny_lm(seed=0) -> MambaLMHeadModel:
    torch.manual_seed(seed)
    return MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=DNATokenizer.vocab_size, d_state=4)).eval()


def test_log_likelihood_equals_prefix_by_prefix():
    """One pass with shifted targets == predicting each base from its own prefix (causality)."""
    lm = tiny_lm()
    tok = DNATokenizer()
    ids = torch.stack([torch.as_tensor(tok.encode(s)) for s in ("ACGTTGCAAC", "GGGTACNCAT")])
    with torch.no_grad():
        fast = sequence_log_likelihood(lm, ids)
        slow = torch.zeros(2)
        for t in range(1, ids.shape[1]):
            logp = torch.log_softmax(lm(ids[:, :t])[:, -1].double(), dim=-1)
            slow += logp.gather(1, ids[:, t:t + 1]).squeeze(1).float()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)


def test_llr_is_zero_for_no_change_and_antisymmetric():
    lm = tiny_lm(1)
    v = Variant("c", 5, "A", "G")
    same = VariantWindow(v, "ACGTACGTAC", "ACGTACGTAC", 5)
    fwd = VariantWindow(v, "ACGTACGTAC", "ACGTGCGTAC", 5)
    back = VariantWindow(v, "ACGTGCGTAC", "ACGTACGTAC", 5)
    s = zero_shot_llr(lm, [same, fwd, back], batch_size=2)
    assert s[0] == 0 and s[1] != 0
    torch.testing.assert_close(s[1], -s[2])


def _auroc_pairs(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _average_precision(scores, labels):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total, ap = 0, sum(labels), 0.0
    for rank, i in enumerate(order, 1):
        if labels[i] == 1:
            hits += 1
            ap += hits / rank
    return ap / total


def test_metrics_match_pairwise_auroc_and_average_precision():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(40, generator=g)
    labels = (torch.rand(40, generator=g) < 0.4).long()
    kinds = ["SNV" if i % 3 else "indel" for i in range(40)]
    m = variant_metrics(scores, labels, kinds)
    s, y = scores.tolist(), labels.tolist()
    assert m["all/auroc"] == pytest.approx(_auroc_pairs(s, y))
    assert m["all/auprc"] == pytest.approx(_average_precision(s, y))
    idx = [i for i, k in enumerate(kinds) if k == "indel"]
    assert m["indel/n"] == len(idx)
    assert m["indel/auroc"] == pytest.approx(_auroc_pairs([s[i] for i in idx], [y[i] for i in idx]))


def test_brca1_zero_shot_scores_run_end_to_end(shared_data, tmp_path):
    """Real ClinVar windows through an (untrained) LM: one finite score per variant, per-kind counts."""
    d = shared_data / "variants" / "brca1_clinvar"
    variants, _ = read_vcf(d / "clinvar_brca1_GRCh38.vcf.gz")
    variants = variants[::40]
    fasta = open_fasta(d / "ref_brca1.fa", cache_dir=tmp_path)
    windows, rep = variant_windows(fasta, variants, 128, contigs={"17": ["ref_brca1", 43_044_296]})
    assert not rep.skipped
    llr = zero_shot_llr(tiny_lm(), windows, batch_size=32)
    assert llr.shape == (len(windows),) and torch.isfinite(llr).all()
    m = variant_metrics(-llr, torch.tensor([w.variant.label for w in windows]), [w.variant.kind for w in windows])
    assert m["all/n"] == len(windows) == m.get("SNV/n", 0) + m.get("MNV/n", 0) + m.get("indel/n", 0)
    assert 0.0 <= m["all/auroc"] <= 1.0


def test_fine_tuned_task_loads_the_lm_backbone_and_sees_no_difference_without_a_change(tmp_path):
    """task.pretrained copies the LM checkpoint's backbone tensors exactly; a variant whose ALT
    window equals its REF window gives zero difference features."""
    from tasks import CausalLMTask, VariantEffectTask

    config = {"d_model": 16, "n_layer": 1, "vocab_size": 10, "d_state": 4}
    lm = CausalLMTask(config)
    path = tmp_path / "lm.ckpt"
    torch.save({"state_dict": lm.state_dict(), "hyper_parameters": dict(lm.hparams)}, path)
    task = VariantEffectTask(config, pretrained=str(path), feature_radius=3)
    for name, tensor in lm.model.backbone.state_dict().items():
        assert torch.equal(task.backbone.state_dict()[name], tensor), name
    ids = torch.randint(5, 9, (2, 20))
    feats = task.features(ids, ids.clone(), torch.tensor([10, 4]))
    assert feats.shape == (2, 48) and feats[:, :32].abs().max() == 0 and feats[:, 32:].abs().max() > 0
    alt = ids.clone()
    alt[:, 10] = 5 + (alt[:, 10] - 5 + 1) % 4  # a substitution at the centre of row 0
    feats = task.features(ids, alt, torch.tensor([10, 4]))
    assert feats[0, :32].abs().max() > 0


def test_zero_shot_task_names_a_missing_lm_checkpoint(tmp_path):
    import pytest

    from tasks import ZeroShotVariantTask

    missing = tmp_path / "no_such.ckpt"
    with pytest.raises(ValueError, match="task.lm_checkpoint.*no_such.ckpt"):
        ZeroShotVariantTask(str(missing))
