"""Causal (next-token) language-model pretraining: the glue between a Mamba LM and a data module
whose batches carry `input_ids` and `labels` of shape (batch, L).

Reports loss in nats and bits per token, logged as `*/bpb`: for DNA bits per base, for audio
(data_modules.AudioDataModule, one token per quantised sample) bits per sample. Every mean is over
the real targets of the whole split, never per batch: a label of -100 (IGNORE_INDEX, where an
audio clip shorter than the window was padded) is no target and counts nowhere, neither in the
training loss nor in the val/test/predict NLL. FASTA windows are never padded, so for DNA every
position is a target.

Sequence (context) parallelism (`sequence_parallel_size` S > 1, mamba_seq/sequence_parallel.py):
consecutive global ranks [g*S, (g+1)*S) form group g; they read the same batch (data modules
shard by group: data_modules/sharding.py) and rank i of the group computes positions
[i*L//S, (i+1)*L//S) of every window, the scan state and conv overlap handed along the group in
the forward pass and their gradients handed back in the backward. The objective is unchanged by S:
each group's loss is the token-weighted mean NLL over the real targets of its whole windows (the
target count is summed over the group), and the strategy's gradient average over all G*S
processes is turned into the mean over groups of those group losses' gradients by scaling each
rank's share by S. That is what plain DDP over G processes, each given its group's batch,
computes (the mean of per-process means); it equals one process on the whole global batch
whenever the groups hold equally many targets (always for FASTA windows).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics import MeanMetric

from mamba_seq import MambaConfig, MambaLMHeadModel, no_weight_decay_param_names
from mamba_seq.long_sequence import IGNORE_INDEX, chunked_lm_nll, segmented_lm_nll
from mamba_seq.sequence_parallel import sequence_parallel_lm_nll

LN2 = math.log(2.0)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up from 0 to 1 over warmup_steps, then cosine to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and everything marked or shaped as no-decay."""
    no_decay = no_weight_decay_param_names(model)
    decay, keep = [], []
    seen = set()
    for name, p in model.named_parameters():  # tied weights appear once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (keep if name in no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]


def adamw_warmup_cosine(param_groups: list[dict], h, total_steps: int) -> dict:
    """AdamW over `param_groups` with the linear warm-up + cosine schedule stepped every batch;
    `h` holds lr, betas, warmup_steps, min_lr_ratio (and optionally eps). -> Lightning's dict."""
    optimizer = torch.optim.AdamW(param_groups, lr=h["lr"], betas=tuple(h["betas"]), eps=h.get("eps", 1e-8))
    total = max(1, int(total_steps))
    warmup = min(h["warmup_steps"], total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, h["min_lr_ratio"])
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CausalLMTask(pl.LightningModule):
    def __init__(
        self,
        model: MambaConfig | dict,
        lr: float = 2e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        activation_checkpointing: bool = False,
        loss_chunk_tokens: int = 65536,
        segment_len: int | None = None,
        sequence_parallel_size: int = 1,
    ):
        """activation_checkpointing: recompute each block in the backward pass (memory for long
        sequences); loss_chunk_tokens: the LM head and loss run this many positions at a time (no
        full (L, vocab) logits); segment_len: process longer sequences in segments of this many
        positions with the exact state and its gradient carried across (mamba_seq/long_sequence.py):
        memory of one segment, the same gradients as one piece; sequence_parallel_size: split every
        window along L over groups of this many consecutive processes (module docstring), the
        result equal to one process's; it must divide the number of processes."""
        super().__init__()
        if loss_chunk_tokens < 1 or (segment_len is not None and segment_len < 1):
            raise ValueError(f"task.loss_chunk_tokens and task.segment_len must be >= 1, got {loss_chunk_tokens}, "
                             f"{segment_len}")
        if sequence_parallel_size < 1:
            raise ValueError(f"task.sequence_parallel_size must be >= 1, got {sequence_parallel_size}")
        if sequence_parallel_size > 1 and segment_len is not None:
            # the segmented loss starts every window from a zero state; it would need the state
            # received from the previous rank (not implemented): split across more ranks instead
            raise ValueError(f"task.segment_len={segment_len} cannot be combined with "
                             f"task.sequence_parallel_size={sequence_parallel_size}: set task.segment_len=null "
                             "(use task.activation_checkpointing=true and more ranks per group for memory)")
        config = model if isinstance(model, MambaConfig) else MambaConfig.from_dict(dict(model))
        if config.bidirectional or config.rc_equivariant:
            # an RC-equivariant model's reverse strand reads every position from the right, so
            # position t has seen x[t+1], the label (tests/mamba_seq/test_rc_equivariant.py)
            raise ValueError("a bidirectional or RC-equivariant backbone sees the next base: causal-LM "
                             "pretraining needs model.bidirectional=false and model.rc_equivariant=false "
                             "(pretrain those with task=masked_lm)")
        # hyper-parameters are stored as plain data so checkpoints load without unpickling classes.
        # sequence_parallel_size is how a run is laid out over processes, not part of the model: a
        # checkpoint trained on S processes per window loads (validate, test, predict) on one.
        self.save_hyperparameters(ignore=["model", "sequence_parallel_size"])
        self.hparams["model"] = config.to_dict()
        self.hparams["betas"] = [float(b) for b in betas]
        self.model = MambaLMHeadModel(config)
        self.model.backbone.set_activation_checkpointing(activation_checkpointing)
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        # read by data_modules.sharding.data_parallel_shard: the ranks of a group share a data shard
        self.sequence_parallel_size = int(sequence_parallel_size)
        self._sequence_parallel_group = None  # this rank's group, made in setup()

    def setup(self, stage: str) -> None:
        if self.sequence_parallel_size > 1 and self._sequence_parallel_group is None:
            self._sequence_parallel_group = self._new_sequence_parallel_group()

    def _new_sequence_parallel_group(self):
        S = self.sequence_parallel_size
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world % S:
            raise ValueError(f"task.sequence_parallel_size={S} needs a multiple of {S} processes, got {world} "
                             "(e.g. trainer=ddp trainer.devices=" + str(S) + ")")
        # every rank creates every group, in the same order (torch.distributed requires it). The
        # group's own communicator carries the state exchange, so it never interleaves with the
        # strategy's gradient all-reduce, which runs on the default group during the backward
        # pass while this rank blocks receiving a state gradient.
        mine, rank = None, dist.get_rank()
        for first in range(0, world, S):
            group = dist.new_group(list(range(first, first + S)))
            if first <= rank < first + S:
                mine = group
        return mine

    def _slice_nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # sequence parallel: -> (summed NLL of this rank's slice of every window (its share of the
        #    group's; differentiable), the number of real targets in the slice)
        group = self._sequence_parallel_group
        if group is None:
            raise RuntimeError("task.sequence_parallel_size > 1: the process groups are made in setup(); "
                               "run the task through a Trainer (or call setup) first")
        ids, labels = batch["input_ids"], batch["labels"]
        S, i, L = self.sequence_parallel_size, dist.get_rank(group), ids.shape[1]
        if L < S:
            raise ValueError(f"windows of L={L} positions cannot be split over task.sequence_parallel_size={S} "
                             "ranks: every rank needs at least one position")
        part = slice(i * L // S, (i + 1) * L // S)  # uneven L: slices differ by at most one position
        labels = labels[:, part]
        nll = sequence_parallel_lm_nll(self.model, ids[:, part], labels, group, self.hparams.loss_chunk_tokens)
        return nll, (labels != IGNORE_INDEX).sum()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (batch, L) -> logits (batch, L, padded_vocab)
        return self.model(input_ids)

    def _token_nll(self, batch: dict) -> torch.Tensor:
        # -> per-token negative log-likelihood in nats, (batch, L) fp32; 0 where the label is
        #    IGNORE_INDEX (use _real_mean / _targets to average over the real targets only)
        logits = self(batch["input_ids"])
        labels = batch["labels"]
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none",
                              ignore_index=IGNORE_INDEX)
        return nll.view_as(labels)

    @staticmethod
    def _targets(batch: dict) -> torch.Tensor:
        # -> (batch, L) bool, True at real targets
        return batch["labels"] != IGNORE_INDEX

    def _real_mean(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # -> (mean NLL in nats over the batch's real targets (0 if there is none), their number);
        #    both 0-dim tensors (no host sync). Never materialises more than loss_chunk_tokens
        #    positions of logits; over segment_len, one segment's activations at a time.
        ids, labels = batch["input_ids"], batch["labels"]
        seg, chunk = self.hparams.segment_len, self.hparams.loss_chunk_tokens
        if seg is not None and ids.shape[1] > seg:
            nll = segmented_lm_nll(self.model, ids, labels, seg, chunk)
        else:
            nll = chunked_lm_nll(self.model.backbone(ids), self.model.lm_head.weight, labels, chunk)
        count = self._targets(batch).sum()
        return nll / count.clamp_min(1), count

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.sequence_parallel_size > 1:
            loss, logged = self._sequence_parallel_loss(batch)
        else:
            loss, _ = self._real_mean(batch)
            logged = loss.detach()
        self.log("train/loss", logged, prog_bar=False, batch_size=len(batch["labels"]))
        self.log("train/bpb", logged / LN2, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _sequence_parallel_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # -> (what this rank back-propagates, the group's mean NLL to log). The group's target
        #    count and NLL are summed in one all-reduce (float64: counts past 2^24 stay exact).
        #    Scaled by S / count: the strategy's average over the G*S processes of these shares'
        #    gradients is the mean over groups of each group's mean-NLL gradient (module docstring).
        nll, count = self._slice_nll(batch)
        totals = torch.stack([nll.detach().double(), count.double()])
        dist.all_reduce(totals, group=self._sequence_parallel_group)
        group_count = totals[1].clamp_min(1)
        loss = nll * (self.sequence_parallel_size / group_count).float()
        return loss, (totals[0] / group_count).float()

    def _update(self, metric: MeanMetric, batch: dict):
        if self.sequence_parallel_size > 1:
            # each rank adds its own slice's targets: the group's slices are disjoint, so the
            # metric's sum over all processes counts every target of every window once
            nll, count = self._slice_nll(batch)
            mean = nll / count.clamp_min(1)
        else:
            mean, count = self._real_mean(batch)
        metric.update(mean, weight=count.float())  # token-weighted over real targets: the exact split mean

    def validation_step(self, batch: dict, batch_idx: int):
        self._update(self.val_nll, batch)

    def test_step(self, batch: dict, batch_idx: int):
        self._update(self.test_nll, batch)

    def _log_split(self, metric: MeanMetric, prefix: str):
        nll = metric.compute()  # synchronised across ranks
        self.log(f"{prefix}/loss", nll, sync_dist=False)
        self.log(f"{prefix}/bpb", nll / LN2, prog_bar=True, sync_dist=False)  # bits per base / per sample
        metric.reset()

    def on_validation_epoch_end(self):
        self._log_split(self.val_nll, "val")

    def on_test_epoch_end(self):
        self._log_split(self.test_nll, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per-window scores: mean bits per token of the next-token predictions in each window,
        over its real targets only (whole windows, also under sequence parallelism: there are no
        gradients to hold, and the ranks of a group score the same windows). FASTA windows: contig,
        start, strand, length, bits_per_base; audio clips: path, speaker, class_label, length (real
        targets), bits_per_sample."""
        nll = self._token_nll(batch)
        count = self._targets(batch).sum(dim=1)
        bits = (nll.sum(dim=1) / count.clamp_min(1) / LN2).tolist()
        if "contig" in batch:
            return {
                "contig": list(batch["contig"]),
                "start": batch["start"].tolist(),
                "strand": batch["strand"].tolist(),
                "length": count.tolist(),
                "bits_per_base": bits,
            }
        out = {}
        for key in ("path", "speaker"):
            if key in batch:
                out[key] = list(batch[key])
        if "class_label" in batch:
            out["class_label"] = batch["class_label"].tolist()
        out["length"] = count.tolist()
        out["bits_per_sample"] = bits
        return out

    def configure_optimizers(self):
        groups = adamw_param_groups(self.model, self.hparams.weight_decay)
        return adamw_warmup_cosine(groups, self.hparams, self.trainer.estimated_stepping_batches)
