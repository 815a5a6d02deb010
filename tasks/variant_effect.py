"""Variant effect prediction: a fine-tuned head on the backbone's ref/alt embeddings, a zero-shot
score from a causal DNA language model, and their evaluation.

Fine-tuned (`VariantEffectTask`): the REF and ALT windows go through the backbone (one batch of
both); the features are the mean of h_alt - h_ref and of |h_alt - h_ref| over the `feature_radius`
positions on each side of the variant, and the mean REF embedding there (the context the variant
sits in), into a small MLP. Trained with cross-entropy; the score is p(pathogenic).

Zero-shot (`ZeroShotVariantTask`, nothing trained): the score of a variant is the log-likelihood ratio of its ALT window to its REF window under the
LM: log p(alt window) - log p(ref window), each the sum of the next-base log-probabilities over
the window (natural log). A damaging variant makes the sequence less likely, so the
pathogenicity score is -LLR. Windows come from `data_modules.variants.variant_windows`, so REF
has been checked against the reference and both windows have the same length and centre.

Evaluation: AUROC and AUPRC over the whole set, split by variant kind (SNV / MNV / indel) and by
region (coding / non-coding) where annotated, on all scores of a split at once (never averaged
per batch); bootstrap intervals of the test AUROC. With several processes every rank's scores are
gathered first (in rank order: the split's order, since evaluation shards are contiguous parts of
it, data_modules/sharding.py), so the numbers, the bootstrap's resamples too, are one process's.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from data_modules.tokenizers import DNATokenizer
from data_modules.variants import VariantWindow
from mamba_seq import MambaConfig

from .causal_lm import CausalLMTask
from .evaluation import (
    SplitCrossEntropy,
    auroc,
    average_precision,
    bootstrap_interval,
    gather_from_ranks,
    log_split_loss,
)
from .sequence_classification import backbone_and_head_optimizers, fine_tuning_backbone


def sequence_log_likelihood(lm: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(batch, W) token ids -> (batch,) sum over t >= 1 of log p(ids[t] | ids[:t]), fp32."""
    logits = lm(ids[:, :-1]).float()
    logp = F.log_softmax(logits, dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(dim=1)


@torch.no_grad()
def zero_shot_llr(lm: torch.nn.Module, windows: list[VariantWindow], batch_size: int = 64,
                  tokenizer: DNATokenizer | None = None) -> torch.Tensor:
    """LLR alt vs ref for each window (same order), on the LM's device."""
    tok = tokenizer or DNATokenizer()
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    out = []
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            ref = torch.stack([torch.as_tensor(tok.encode(w.ref_seq)) for w in chunk]).to(device)
            alt = torch.stack([torch.as_tensor(tok.encode(w.alt_seq)) for w in chunk]).to(device)
            out.append(sequence_log_likelihood(lm, alt) - sequence_log_likelihood(lm, ref))
    finally:
        lm.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, device=device)


def variant_metrics(scores: torch.Tensor, labels: torch.Tensor, kinds: list[str],
                    regions: list[str] | None = None) -> dict[str, float]:
    """AUROC / AUPRC of `scores` (higher = more likely class 1) overall, per variant kind and, where
    given, per region (coding / non-coding; 'unknown' is left out); a group with a single class
    has no AUROC and is left out."""
    scores, labels = scores.detach().float().cpu(), labels.detach().long().cpu()
    groups = {"all": torch.ones(len(labels), dtype=torch.bool)}
    for kind in sorted(set(kinds)):
        groups[kind] = torch.tensor([k == kind for k in kinds], dtype=torch.bool)
    for region in sorted(set(regions or []) - {"unknown"}):
        groups[region] = torch.tensor([r == region for r in regions], dtype=torch.bool)
    out: dict[str, float] = {}
    for name, sel in groups.items():
        y = labels[sel]
        out[f"{name}/n"] = int(sel.sum())
        if y.numel() == 0 or y.min() == y.max():
            continue
        # tasks.evaluation's rank forms: torchmetrics squashes scores outside [0, 1] through a
        # sigmoid, which ties every LLR above ~17 nats in fp32
        out[f"{name}/auroc"] = float(auroc(scores[sel], y))
        out[f"{name}/auprc"] = float(average_precision(scores[sel], y))
    return out


class _VariantScoring(pl.LightningModule):
    """Collects (score, label, kind, region) over a whole split and logs AUROC/AUPRC at its end:
    overall, per kind and per region; on the test split also 95% bootstrap intervals of the
    overall and SNV AUROC."""

    def __init__(self):
        super().__init__()
        self._collected: dict[str, dict] = {}  # per split prefix: scores, labels, kinds, regions

    def _reset(self, prefix: str):
        self._collected[prefix] = {"scores": [], "labels": [], "kinds": [], "regions": []}

    def _collect(self, prefix: str, scores: torch.Tensor, batch: dict):
        c = self._collected[prefix]
        c["scores"].append(scores.detach().float().cpu())
        c["labels"].append(batch["labels"].cpu())
        c["kinds"] += batch["kind"]
        c["regions"] += batch["region"]

    def _whole_split(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
        """(scores, labels, kinds, regions) of the whole split: every rank's shard (all ranks call
        this), concatenated in rank order, which is the split's order (see the module docstring)."""
        c = self._collected[prefix]
        shard = {"scores": torch.cat(c["scores"]) if c["scores"] else torch.zeros(0),
                 "labels": torch.cat(c["labels"]) if c["labels"] else torch.zeros(0, dtype=torch.long),
                 "kinds": c["kinds"], "regions": c["regions"]}
        shards = gather_from_ranks(shard)
        return (torch.cat([s["scores"] for s in shards]), torch.cat([s["labels"] for s in shards]),
                [k for s in shards for k in s["kinds"]], [r for s in shards for r in s["regions"]])

    def _log_metrics(self, prefix: str):
        scores, labels, kinds, regions = self._whole_split(prefix)
        if not len(labels):
            return
        metrics = variant_metrics(scores, labels, kinds, regions)
        if prefix == "test":
            for group in ("all", "SNV"):
                sel = torch.ones(len(labels), dtype=torch.bool) if group == "all" else torch.tensor(
                    [k == group for k in kinds])
                y = labels[sel]
                if y.numel() and y.min() != y.max():
                    lo, hi = bootstrap_interval(auroc, scores[sel], y, n_boot=1000, seed=0)
                    metrics[f"{group}/auroc_low"], metrics[f"{group}/auroc_high"] = lo, hi
        # every rank computed these from the whole split: nothing left to reduce
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in metrics.items()}, sync_dist=False)

    def _rows(self, batch: dict, scores: torch.Tensor, **extra) -> dict:
        out = {k: list(batch[k]) for k in ("id", "chrom", "pos", "ref", "alt", "kind", "region")}
        out["label"] = batch["labels"].tolist()
        out["score"] = scores.float().tolist()
        out.update({k: v.float().tolist() for k, v in extra.items()})
        return out

    def on_validation_epoch_start(self):
        self._reset("val")

    def on_test_epoch_start(self):
        self._reset("test")

    def on_validation_epoch_end(self):
        self._log_metrics("val")

    def on_test_epoch_end(self):
        self._log_metrics("test")


class VariantEffectTask(_VariantScoring):
    """Fine-tuned variant classification from the backbone's REF/ALT embeddings (see the module
    docstring). `pretrained`: a `mamba-seq fit` checkpoint (causal or masked LM) for the backbone."""

    def __init__(
        self,
        model: MambaConfig | dict,
        pretrained: str | None = None,
        freeze_backbone: bool = False,
        feature_radius: int = 32,
        hidden: int = 128,
        dropout: float = 0.1,
        class_weights: list[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        if feature_radius < 0:
            raise ValueError(f"task.feature_radius must be >= 0, got {feature_radius}")
        if class_weights is not None and len(class_weights) != 2:
            raise ValueError(f"task.class_weights needs 2 entries (benign, pathogenic), got {class_weights}")
        self.backbone = fine_tuning_backbone(model, pretrained, freeze_backbone)
        config = self.backbone.config
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = config.to_dict()
        self.hparams["betas"] = [float(b) for b in betas]
        d = config.d_model
        self.head = nn.Sequential(nn.Linear(3 * d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 2))
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.val_loss, self.test_loss = SplitCrossEntropy(), SplitCrossEntropy()

    def features(self, ref_ids: torch.Tensor, alt_ids: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """ref_ids, alt_ids: (batch, W); centre: (batch,) index of the variant -> (batch, 3 d_model)."""
        hidden = self.backbone(torch.cat([ref_ids, alt_ids])).float()
        h_ref, h_alt = hidden.chunk(2)
        t = torch.arange(ref_ids.shape[1], device=ref_ids.device)
        near = ((t[None, :] - centre[:, None]).abs() <= self.hparams.feature_radius).unsqueeze(-1)  # (batch, W, 1)
        n = near.sum(1).clamp_min(1)
        diff = (h_alt - h_ref) * near
        return torch.cat([diff.sum(1) / n, diff.abs().sum(1) / n, (h_ref * near).sum(1) / n], dim=-1)

    def forward(self, batch: dict) -> torch.Tensor:
        # -> logits (batch, 2)
        return self.head(self.features(batch["ref_ids"], batch["alt_ids"], batch["centre"]))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch).float(), batch["labels"], weight=self.class_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval(self, batch, prefix: str):
        logits = self(batch).float()
        getattr(self, f"{prefix}_loss").update(logits, batch["labels"], self.class_weight)
        self._collect(prefix, logits.softmax(-1)[:, 1], batch)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def on_validation_epoch_end(self):
        log_split_loss(self, self.val_loss, "val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self):
        log_split_loss(self, self.test_loss, "test")
        super().on_test_epoch_end()

    def predict_step(self, batch, batch_idx) -> dict:
        return self._rows(batch, self(batch).float().softmax(-1)[:, 1])

    def configure_optimizers(self):
        return backbone_and_head_optimizers(self)


class ZeroShotVariantTask(_VariantScoring):
    """Scores variants with a causal LM checkpoint (`mamba-seq fit` with task=causal_lm), trained
    on no variant: score = -LLR (alt vs ref). Nothing to fit: run `mamba-seq test` / `predict`."""

    trains = False  # the CLI builds it from the config instead of loading a checkpoint of its own

    def __init__(self, lm_checkpoint: str):
        super().__init__()
        path = Path(lm_checkpoint)
        if not path.is_file():
            raise ValueError(f"task.lm_checkpoint: causal-LM checkpoint not found: {path}")
        lm_task = CausalLMTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        self.save_hyperparameters()
        self.hparams["model"] = dict(lm_task.hparams["model"])
        self.lm = lm_task.model

    def llr(self, batch: dict) -> torch.Tensor:
        # -> (batch,) log p(alt window) - log p(ref window), nats
        return sequence_log_likelihood(self.lm, batch["alt_ids"]) - sequence_log_likelihood(self.lm, batch["ref_ids"])

    def validation_step(self, batch, batch_idx):
        self._collect("val", -self.llr(batch), batch)

    def test_step(self, batch, batch_idx):
        self._collect("test", -self.llr(batch), batch)

    def predict_step(self, batch, batch_idx) -> dict:
        llr = self.llr(batch)
        return self._rows(batch, -llr, llr=llr)

    def configure_optimizers(self):
        raise RuntimeError("ZeroShotVariantTask trains nothing: run `mamba-seq test` or `mamba-seq predict`")
