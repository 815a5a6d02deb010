"""Masked-LM pretraining: BERT masking, loss at the masked bases only, deterministic evaluation
masks, a short Lightning fit on the bundled genome, and fine-tuning from its checkpoint."""

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from data_modules import FastaDataModule
from data_modules.tokenizers import DNATokenizer
from mamba_seq.cli import asset_path, main
from tasks import MaskedLMTask, SequenceClassificationTask
from tasks.masked_lm import bert_mask, eval_generator, full_window, masked_token_nll, maskable_ids

TOK = DNATokenizer()
ACGT = maskable_ids(TOK)
CFG = {"d_model": 16, "n_layer": 2, "vocab_size": 10, "d_state": 4, "bidirectional": True}
CADUCEUS = {**CFG, "rc_equivariant": True}  # complement_map taken from the tokenizer


def mixed_tokens(shape, seed: int) -> torch.Tensor:
    """Mostly bases, with N, specials and padding mixed in."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, shape, generator=g)


def test_masking_statistics_and_only_acgt_are_ever_selected():
    ids = mixed_tokens((64, 512), seed=0)
    inputs, selected = bert_mask(ids, TOK.mask_id, ACGT, generator=torch.Generator().manual_seed(1))
    is_acgt = torch.isin(ids, ACGT)
    assert not selected[~is_acgt].any()  # [PAD] [CLS] [SEP] [MASK] [UNK] and N never
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions shown as they are
    n_sel = int(selected.sum())
    assert abs(n_sel / int(is_acgt.sum()) - 0.15) < 0.01
    shown = inputs[selected]
    as_mask = (shown == TOK.mask_id).float().mean().item()
    changed_base = (torch.isin(shown, ACGT) & (shown != ids[selected])).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02
    assert abs(changed_base - 0.1 * 3 / 4) < 0.015  # a random base differs from the true one 3 times in 4
    assert torch.isin(shown, torch.cat([ACGT, torch.tensor([TOK.mask_id])])).all()


def test_random_replacements_are_uniform_over_acgt():
    ids = torch.full((64, 512), TOK.base_ids["A"])
    inputs, selected = bert_mask(ids, TOK.mask_id, ACGT, mask_prob=0.5, mask_token_fraction=0.0,
                                 random_token_fraction=1.0, generator=torch.Generator().manual_seed(2))
    counts = torch.bincount(inputs[selected], minlength=10)[ACGT].float()
    assert torch.allclose(counts / counts.sum(), torch.full((4,), 0.25), atol=0.02)


def test_loss_sees_only_the_masked_positions():
    """Property: changing the logits anywhere outside the selected positions leaves the loss (and
    accuracy) unchanged, and its gradient there is exactly zero."""
    g = torch.Generator().manual_seed(3)
    targets = mixed_tokens((4, 50), seed=4)
    _, selected = bert_mask(targets, TOK.mask_id, ACGT, generator=g)
    logits = torch.randn(4, 50, 16, generator=g, requires_grad=True)
    nll, correct = masked_token_nll(logits, targets, selected)
    assert nll.shape == (int(selected.sum()),)
    other = logits.detach() + 10 * torch.randn(4, 50, 16, generator=g) * (~selected)[..., None]
    nll2, correct2 = masked_token_nll(other, targets, selected)
    assert torch.equal(nll, nll2) and torch.equal(correct, correct2)
    nll.sum().backward()
    assert logits.grad[~selected].abs().max() == 0 and logits.grad[selected].abs().max() > 0


def test_evaluation_masks_are_seeded_per_batch_and_training_masks_are_fresh():
    task = MaskedLMTask(CFG)
    ids = mixed_tokens((4, 65), seed=5)
    a = task.mask_batch(ids, eval_generator(0, "val", 7))
    b = task.mask_batch(ids, eval_generator(0, "val", 7))
    c = task.mask_batch(ids, eval_generator(0, "val", 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(task.mask_batch(ids)[1], task.mask_batch(ids)[1])


def test_model_must_see_both_sides_and_use_the_dna_vocabulary():
    with pytest.raises(ValueError, match="model.bidirectional=true"):
        MaskedLMTask({**CFG, "bidirectional": False})
    with pytest.raises(ValueError, match="vocab_size=12"):
        MaskedLMTask({**CFG, "vocab_size": 12})
    with pytest.raises(ValueError, match="not the DNA tokenizer's"):
        MaskedLMTask({**CADUCEUS, "complement_map": list(range(10))})
    task = MaskedLMTask(CADUCEUS)  # the tokenizer's complement map is filled in
    assert task.hparams["model"]["complement_map"] == TOK._complement.tolist()
    MaskedLMTask({**CFG, "bidirectional": False, "rc_equivariant": True})  # its reverse strand reads the right


def fasta_data(tmp_path: Path) -> FastaDataModule:
    return FastaDataModule(asset_path("lambda_virus.fa"), seq_len=64, batch_size=4, cache_dir=str(tmp_path / "cache"))


def test_full_window_rebuilds_the_fasta_window(tmp_path):
    dm = fasta_data(tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    window = full_window(batch)
    assert window.shape == (4, 65)
    contig, start = batch["contig"][0], int(batch["start"][0])
    expected = TOK.encode(dm.fasta.fetch(contig, start, start + 65))
    assert torch.equal(window[0], torch.from_numpy(expected))


def test_short_fit_gives_a_stable_validation_loss_and_a_backbone_to_fine_tune(tmp_path):
    """Three steps through Lightning with a Caduceus-style model; validating twice gives the same
    number; a classification task loads the checkpoint's backbone tensor for tensor."""
    pl.seed_everything(0)
    dm = fasta_data(tmp_path)
    task = MaskedLMTask(CADUCEUS, warmup_steps=1)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=3,
                         limit_predict_batches=2, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    first = trainer.validate(task, datamodule=dm, verbose=False)[0]
    second = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert first["val/bpb"] == second["val/bpb"] and first["val/acc"] == second["val/acc"]
    assert 0.5 < first["val/bpb"] < 6.0 and 0.0 <= first["val/acc"] <= 1.0
    assert math.isclose(first["val/bpb"], first["val/loss"] / math.log(2), rel_tol=1e-6)
    predictions = trainer.predict(task, datamodule=dm)
    assert predictions == trainer.predict(task, datamodule=dm)  # the same masks every time
    rows = predictions[0]
    assert rows["length"] == [65] * 4 and all(m > 0 for m in rows["masked"])
    assert all(0 < b < 10 for b in rows["bits_per_masked_base"])

    ckpt = tmp_path / "mlm.ckpt"
    trainer.save_checkpoint(ckpt)
    clf = SequenceClassificationTask(task.hparams["model"], num_classes=2, pretrained=str(ckpt))
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    loaded = clf.backbone.state_dict()
    assert loaded.keys() == {k[len("model.backbone."):] for k in saved if k.startswith("model.backbone.")}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, saved["model.backbone." + name]), name


def test_cli_fit_then_validate_reproduces_the_validation_loss(tmp_path):
    common = ["experiment=dna_pretrain_mlm", "model.d_model=16", "model.n_layer=2", "model.d_state=4",
              "data.seq_len=64", "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}",
              "trainer.limit_val_batches=2", "trainer.accelerator=cpu"]
    run_dir = tmp_path / "fit"
    assert main(["fit", *common, f"paths.output_dir={run_dir}", "trainer.max_steps=2",
                 "trainer.val_check_interval=2"]) == 0
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    fit_bpb = [float(r["val/bpb"]) for r in rows if r.get("val/bpb")][-1]
    assert any(r.get("val/acc") for r in rows)
    val_dir = tmp_path / "val"
    assert main(["validate", *common, f"paths.output_dir={val_dir}",
                 f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]) == 0
    with open(val_dir / "logs" / "metrics.csv") as f:
        val_bpb = [float(r["val/bpb"]) for r in csv.DictReader(f) if r.get("val/bpb")][-1]
    assert math.isclose(val_bpb, fit_bpb, rel_tol=1e-6)
