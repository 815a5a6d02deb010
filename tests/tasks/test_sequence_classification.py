import math

import pytest
import torch

from tasks import CausalLMTask, SequenceClassificationTask
from tasks.sequence_classification import masked_pool

CFG = {"d_model": 16, "n_layer": 2, "vocab_size": 10, "d_state": 4}


@pytest.mark.parametrize("mode", ["mean", "max", "last"])
def test_pooling_never_sees_padding(mode):
    torch.manual_seed(0)
    lengths = [5, 9, 1]
    hidden = torch.randn(3, 9, 4)
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    pooled = masked_pool(hidden, mask, mode)
    garbage = hidden.masked_fill(~mask[..., None], 1e6)
    assert torch.equal(masked_pool(garbage, mask, mode), pooled)
    for i, n in enumerate(lengths):  # oracle: each sequence alone, no padding
        h = hidden[i, :n]
        ref = {"mean": h.mean(0), "max": h.amax(0), "last": h[-1]}[mode]
        assert torch.allclose(pooled[i], ref, atol=1e-6)


def assert_padding_ignored(task, lengths):
    """Logits of a right-padded batch equal each sequence scored alone, without padding."""
    seqs = [torch.randint(5, 10, (n,)) for n in lengths]
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    mask = torch.zeros(len(seqs), max(lengths), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, True
    batched = task(ids, mask)
    for i, s in enumerate(seqs):
        alone = task(s[None], torch.ones(1, len(s), dtype=torch.bool))
        assert torch.allclose(batched[i], alone[0], atol=1e-5)


def test_padded_batch_gives_the_same_logits_as_each_sequence_alone():
    torch.manual_seed(1)
    assert_padding_ignored(SequenceClassificationTask(CFG, num_classes=3, dropout=0.0).eval(), (7, 12, 3))


def test_pretrained_backbone_is_loaded_and_mismatch_names_both(tmp_path):
    lm = CausalLMTask(CFG)
    ckpt = tmp_path / "lm.ckpt"
    torch.save({"hyper_parameters": dict(lm.hparams), "state_dict": lm.state_dict()}, ckpt)
    clf = SequenceClassificationTask(CFG, num_classes=2, pretrained=str(ckpt))
    for (k, a), b in zip(clf.backbone.state_dict().items(), lm.model.backbone.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match=r"d_model=16 in the checkpoint vs 32 requested"):
        SequenceClassificationTask({**CFG, "d_model": 32}, num_classes=2, pretrained=str(ckpt))


def test_metrics_cover_the_whole_split_not_a_batch_average():
    """MCC accumulated over batches equals MCC of all predictions at once (computed here by
    its formula), which differs from the mean of per-batch MCCs."""
    torch.manual_seed(2)
    task = SequenceClassificationTask(CFG, num_classes=2)
    scores = torch.rand(64)
    labels = (torch.rand(64) < 0.3).long()
    for i in range(0, 64, 8):
        task.val_metrics.update(scores[i : i + 8], labels[i : i + 8])
    got = task.val_metrics.compute()["val/mcc"].item()
    pred = (scores > 0.5).long()
    tp = ((pred == 1) & (labels == 1)).sum().item()
    tn = ((pred == 0) & (labels == 0)).sum().item()
    fp = ((pred == 1) & (labels == 0)).sum().item()
    fn = ((pred == 0) & (labels == 1)).sum().item()
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert abs(got - mcc) < 1e-6


def test_frozen_backbone_gets_no_gradient():
    task = SequenceClassificationTask(CFG, num_classes=2, freeze_backbone=True)
    ids = torch.randint(5, 10, (2, 6))
    loss = task(ids, torch.ones(2, 6, dtype=torch.bool)).sum()
    loss.backward()
    assert all(p.grad is None for p in task.backbone.parameters())
    assert task.head[1].weight.grad is not None


def test_bidirectional_classifier_ignores_padding():
    torch.manual_seed(3)
    task = SequenceClassificationTask({**CFG, "bidirectional": True}, num_classes=2, dropout=0.0).eval()
    assert_padding_ignored(task, (9, 4))


def test_causal_lm_refuses_a_bidirectional_backbone():
    with pytest.raises(ValueError, match="bidirectional"):
        CausalLMTask({**CFG, "bidirectional": True})
