"""Sequence classification: a Mamba backbone (optionally pretrained by `mamba-seq fit`), pooling
over the valid positions only, and a linear head. Metrics are computed over the whole split: with
several processes the torchmetrics states (confusion counts, AUROC's scores) and the loss sums are
synced across ranks, so every rank logs the numbers one process would.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score

from mamba_seq import MambaBackbone, MambaConfig

from .causal_lm import adamw_param_groups, adamw_warmup_cosine
from .evaluation import BinaryMCC, MulticlassMCC, SplitCrossEntropy, log_split_loss

POOLINGS = ("mean", "max", "last")


def masked_pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden: (batch, L, d); mask: (batch, L) bool, True at real tokens -> (batch, d).
    Padding never contributes: mean divides by the true length, max ignores padded positions,
    last takes each sequence's own final token."""
    m = mask.unsqueeze(-1)
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
    if mode == "max":
        return hidden.masked_fill(~m, torch.finfo(hidden.dtype).min).amax(1)
    if mode == "last":
        last = mask.long().sum(1).clamp_min(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")


def load_pretrained_backbone(backbone: MambaBackbone, path: str | Path) -> None:
    """Copy the backbone weights of a `mamba-seq fit` checkpoint; a different model config fails
    with a message naming both."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    theirs = MambaConfig.from_dict(ckpt["hyper_parameters"]["model"])
    ours = backbone.config
    keys = ("d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank", "vocab_size", "bidirectional",
            "rc_equivariant")
    diff = {k: (getattr(theirs, k), getattr(ours, k)) for k in keys if getattr(theirs, k) != getattr(ours, k)}
    if diff:
        raise ValueError(
            f"pretrained checkpoint {path} has a different model: "
            + ", ".join(f"{k}={a} in the checkpoint vs {b} requested" for k, (a, b) in diff.items())
            + "; set model.* to the checkpoint's values"
        )
    prefix = "model.backbone."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    backbone.load_state_dict(state, strict=True)


def fine_tuning_backbone(model: MambaConfig | dict, pretrained: str | None, freeze: bool) -> MambaBackbone:
    """The backbone of a fine-tuning task: from `pretrained` (a `mamba-seq fit` checkpoint) when
    given, frozen when asked."""
    config = model if isinstance(model, MambaConfig) else MambaConfig.from_dict(dict(model))
    backbone = MambaBackbone(config)
    if pretrained:
        load_pretrained_backbone(backbone, pretrained)
    if freeze:
        backbone.requires_grad_(False)
    return backbone


def backbone_and_head_optimizers(task: pl.LightningModule) -> dict:
    """AdamW + warm-up/cosine over the task's backbone and head (a frozen backbone left out)."""
    modules = [m for m in (task.backbone, task.head) if any(p.requires_grad for p in m.parameters())]
    groups = [g for m in modules for g in adamw_param_groups(m, task.hparams.weight_decay)]
    return adamw_warmup_cosine(groups, task.hparams, task.trainer.estimated_stepping_batches)


class SequenceClassificationTask(pl.LightningModule):
    def __init__(
        self,
        model: MambaConfig | dict,
        num_classes: int,
        pooling: str = "mean",
        pretrained: str | None = None,
        freeze_backbone: bool = False,
        class_weights: list[float] | None = None,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"task.pooling must be one of {POOLINGS}, got {pooling!r}")
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        self.backbone = fine_tuning_backbone(model, pretrained, freeze_backbone)
        config = self.backbone.config
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = config.to_dict()
        self.hparams["betas"] = [float(b) for b in betas]
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(config.d_model, num_classes))
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.register_buffer("class_weight", weight, persistent=False)
        task = "binary" if num_classes == 2 else "multiclass"
        kw = {"task": task} if task == "binary" else {"task": task, "num_classes": num_classes}
        metrics = MetricCollection({
            "acc": Accuracy(**kw), "mcc": BinaryMCC() if task == "binary" else MulticlassMCC(num_classes), "f1": F1Score(**kw), "auroc": AUROC(**kw),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_loss, self.test_loss = SplitCrossEntropy(), SplitCrossEntropy()

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # input_ids, mask: (batch, L) -> logits (batch, num_classes)
        return self.head(masked_pool(self.backbone(input_ids, mask), mask, self.hparams.pooling))

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(-1)
        return probs[:, 1] if self.hparams.num_classes == 2 else probs

    def training_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"], weight=self.class_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval(self, batch, metrics: MetricCollection, loss: SplitCrossEntropy):
        logits = self(batch["input_ids"], batch["mask"])
        metrics.update(self._scores(logits), batch["labels"])  # accumulated over the whole split
        loss.update(logits, batch["labels"], self.class_weight)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, self.val_metrics, self.val_loss)

    def test_step(self, batch, batch_idx):
        self._eval(batch, self.test_metrics, self.test_loss)

    def on_validation_epoch_end(self):
        # compute() syncs the states across ranks: these are the whole split's numbers on every rank
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=False)
        self.val_metrics.reset()
        log_split_loss(self, self.val_loss, "val")

    def on_test_epoch_end(self):
        self.log_dict(self.test_metrics.compute(), sync_dist=False)
        self.test_metrics.reset()
        log_split_loss(self, self.test_loss, "test")

    def predict_step(self, batch, batch_idx) -> dict:
        probs = self(batch["input_ids"], batch["mask"]).float().softmax(-1)
        out = {"id": batch["id"], "label": batch["labels"].tolist(), "predicted": probs.argmax(-1).tolist()}
        for c in range(probs.shape[1]):
            out[f"p_{c}"] = probs[:, c].tolist()
        return out

    def configure_optimizers(self):
        return backbone_and_head_optimizers(self)
