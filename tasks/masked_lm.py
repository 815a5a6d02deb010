"""Masked-language-model (BERT-style) pretraining on DNA: the glue between a Mamba LM that sees
both sides of a position (bidirectional and/or reverse-complement equivariant) and the FASTA
data module.

Masking: each A/C/G/T is selected with probability mask_prob (specials, padding and N never are:
N is an unknown base, and scoring it would reward predicting assembly gaps); a selected base
becomes [MASK] with probability mask_token_fraction, a uniformly random A/C/G/T with probability
random_token_fraction, and stays itself otherwise. The loss is the cross-entropy at the selected
positions only. Training draws fresh masks from torch's RNG; validation, test and predict draw
each window's masks from a generator seeded by (mask_seed, split, the window's contig, start and
strand), so a split's loss is the same number every time, on any device, and on any number of
processes (a window gets its masks wherever it is batched). Batches that do not say where their
windows lie (no contig/start/strand) seed by (mask_seed, split, batch index) instead: the same
every time for a given batching.

Reports, over every masked base of the split (never per-batch averages): loss in nats and bits
per masked base (`bpb`, so the default checkpoint monitor val/bpb works) and masked-token
accuracy (`acc`).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from data_modules.tokenizers import DNATokenizer
from mamba_seq import MambaConfig, MambaLMHeadModel

from .causal_lm import adamw_param_groups, adamw_warmup_cosine

LN2 = math.log(2.0)
SPLIT_CODES = {"val": 1, "test": 2, "predict": 3}  # a separate mask stream per evaluation split


def maskable_ids(tokenizer: DNATokenizer) -> torch.Tensor:
    """The ids that may be masked and that random replacement draws from: A, C, G, T. -> (4,) int64."""
    return torch.tensor([tokenizer.base_ids[b] for b in "ACGT"], dtype=torch.long)


def bert_mask(
    ids: torch.Tensor,
    mask_id: int,
    base_ids: torch.Tensor,
    mask_prob: float = 0.15,
    mask_token_fraction: float = 0.8,
    random_token_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ids (batch, L) int64 -> (inputs (batch, L) int64, selected (batch, L) bool).

    Only ids in base_ids (k,) can be selected. The random draws come from `generator` (on its own
    device, then moved to ids') or, when None, from torch's RNG on ids' device."""
    device = ids.device
    draw_device = generator.device if generator is not None else device
    shape = ids.shape
    u_select = torch.rand(shape, generator=generator, device=draw_device).to(device)
    u_action = torch.rand(shape, generator=generator, device=draw_device).to(device)
    random_pick = torch.randint(len(base_ids), shape, generator=generator, device=draw_device).to(device)
    base_ids = base_ids.to(device)
    selected = torch.isin(ids, base_ids) & (u_select < mask_prob)
    to_mask = selected & (u_action < mask_token_fraction)
    to_random = selected & (u_action >= mask_token_fraction) & (u_action < mask_token_fraction + random_token_fraction)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, base_ids[random_pick], inputs)
    return inputs, selected


def masked_token_nll(logits: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor):
    """logits (batch, L, vocab), targets (batch, L) int64, selected (batch, L) bool ->
    (nll in nats (n,) fp32, correct (n,) bool) at the n selected positions only."""
    picked = logits[selected].float()  # (n, vocab)
    labels = targets[selected]
    return F.cross_entropy(picked, labels, reduction="none"), picked.argmax(-1) == labels


def eval_generator(mask_seed: int, split: str, batch_idx: int) -> torch.Generator:
    """A CPU generator for one evaluation batch: the same masks for that batch on every run."""
    seed = int(np.random.SeedSequence([mask_seed, SPLIT_CODES[split], batch_idx]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def window_generator(mask_seed: int, split: str, contig: str, start: int, strand: int) -> torch.Generator:
    """A CPU generator for one evaluation window, named by where it lies (contig, 0-based forward
    start, strand +1/-1): the same masks for that window whichever batch or process it is in."""
    entropy = [mask_seed, SPLIT_CODES[split], int.from_bytes(contig.encode(), "little"), int(start), int(strand < 0)]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def full_window(batch: dict) -> torch.Tensor:
    """The FASTA module's batches are built for next-base prediction: input_ids = window[:-1] and
    labels = window[1:]. Masked LM has no shift, so rebuild the whole window of seq_len + 1 bases
    (input_ids' first base, then labels) and let every base be both input and possible target.
    -> (batch, seq_len + 1) int64."""
    return torch.cat([batch["input_ids"][:, :1], batch["labels"]], dim=1)


class MaskedLMTask(pl.LightningModule):
    def __init__(
        self,
        model: MambaConfig | dict,
        mask_prob: float = 0.15,
        mask_token_fraction: float = 0.8,
        random_token_fraction: float = 0.1,
        mask_seed: int = 0,
        lr: float = 2e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        if not 0 < mask_prob <= 1:
            raise ValueError(f"task.mask_prob must be in (0, 1], got {mask_prob}")
        if not (0 <= mask_token_fraction and 0 <= random_token_fraction
                and mask_token_fraction + random_token_fraction <= 1):
            raise ValueError(
                "task.mask_token_fraction and task.random_token_fraction must be >= 0 with a sum <= 1, got "
                f"{mask_token_fraction}, {random_token_fraction}"
            )
        tokenizer = DNATokenizer()
        config = self._model_config(model, tokenizer)
        # hyper-parameters are stored as plain data so checkpoints load without unpickling classes
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = config.to_dict()
        self.hparams["betas"] = [float(b) for b in betas]
        self.model = MambaLMHeadModel(config)
        self.mask_id = tokenizer.mask_id
        self.register_buffer("base_ids", maskable_ids(tokenizer), persistent=False)
        self.val_nll, self.val_acc = MeanMetric(), MeanMetric()
        self.test_nll, self.test_acc = MeanMetric(), MeanMetric()

    @staticmethod
    def _model_config(model: MambaConfig | dict, tokenizer: DNATokenizer) -> MambaConfig:
        """The model config, with the DNA tokenizer's complement map filled in for an RC model
        given as a dict without one; checked against what masked DNA pretraining needs."""
        complement = tokenizer._complement.tolist()
        if isinstance(model, MambaConfig):
            config = model
        else:
            data = dict(model)
            if data.get("rc_equivariant") and data.get("complement_map") is None:
                data["complement_map"] = complement
            config = MambaConfig.from_dict(data)
        if not (config.bidirectional or config.rc_equivariant):
            raise ValueError(
                "masked-LM pretraining predicts a base from both sides, and a causal backbone sees no right "
                "context: set model.bidirectional=true (or model.rc_equivariant=true, whose reverse strand "
                "reads right to left)"
            )
        if config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"masked-LM pretraining uses the DNA tokenizer's {tokenizer.vocab_size} tokens, "
                             f"but model.vocab_size={config.vocab_size}")
        if config.rc_equivariant and config.complement_map != complement:
            raise ValueError(f"model.complement_map={config.complement_map} is not the DNA tokenizer's "
                             f"{complement}; leave it null to take the tokenizer's")
        return config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (batch, L) -> logits (batch, L, padded_vocab)
        return self.model(input_ids)

    def mask_batch(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        # ids: (batch, L) -> (inputs (batch, L), selected (batch, L) bool)
        h = self.hparams
        return bert_mask(ids, self.mask_id, self.base_ids, h.mask_prob, h.mask_token_fraction,
                         h.random_token_fraction, generator)

    def eval_masks(self, ids: torch.Tensor, batch: dict, split: str, batch_idx: int):
        # ids: (batch, L) -> (inputs, selected), the deterministic masks of an evaluation batch: per
        # window where the batch says where its windows lie (see the module docstring), else per batch
        if not all(k in batch for k in ("contig", "start", "strand")):
            return self.mask_batch(ids, eval_generator(self.hparams.mask_seed, split, batch_idx))
        rows = [self.mask_batch(ids[i:i + 1], window_generator(self.hparams.mask_seed, split, contig, int(start),
                                                              int(strand)))
                for i, (contig, start, strand) in enumerate(zip(batch["contig"], batch["start"], batch["strand"]))]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def _masked_nll(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        # ids: (batch, L) -> (nll (n,), correct (n,), selected (batch, L)) over the n masked bases
        inputs, selected = self.mask_batch(ids, generator)
        nll, correct = masked_token_nll(self(inputs), ids, selected)
        return nll, correct, selected

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids = full_window(batch)
        nll, correct, _ = self._masked_nll(ids)
        loss = nll.sum() / max(nll.numel(), 1)  # 0 (with a graph) if nothing was selected
        n = ids.shape[0]
        self.log("train/loss", loss, batch_size=n)
        self.log("train/bpb", loss / LN2, prog_bar=True, batch_size=n)
        self.log("train/acc", correct.float().mean() if correct.numel() else 0.0, batch_size=n)
        return loss

    def _eval_step(self, batch: dict, batch_idx: int, split: str, nll_metric: MeanMetric, acc_metric: MeanMetric):
        ids = full_window(batch)
        inputs, selected = self.eval_masks(ids, batch, split, batch_idx)
        nll, correct = masked_token_nll(self(inputs), ids, selected)
        if nll.numel():  # each masked base counts once: the split's mean, not a mean of batch means
            nll_metric.update(nll)
            acc_metric.update(correct.float())

    def validation_step(self, batch: dict, batch_idx: int):
        self._eval_step(batch, batch_idx, "val", self.val_nll, self.val_acc)

    def test_step(self, batch: dict, batch_idx: int):
        self._eval_step(batch, batch_idx, "test", self.test_nll, self.test_acc)

    def _log_split(self, nll_metric: MeanMetric, acc_metric: MeanMetric, prefix: str):
        # compute() syncs the sums across ranks: every rank logs the whole split's numbers
        nll = nll_metric.compute()
        self.log(f"{prefix}/loss", nll, sync_dist=False)
        self.log(f"{prefix}/bpb", nll / LN2, prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/acc", acc_metric.compute(), prog_bar=True, sync_dist=False)
        nll_metric.reset()
        acc_metric.reset()

    def on_validation_epoch_end(self):
        self._log_split(self.val_nll, self.val_acc, "val")

    def on_test_epoch_end(self):
        self._log_split(self.test_nll, self.test_acc, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per-window scores under the deterministic predict masks: masked bases and their mean bits."""
        ids = full_window(batch)
        inputs, selected = self.eval_masks(ids, batch, "predict", batch_idx)
        logits = self(inputs).float()
        nll = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view_as(ids) * selected
        masked = selected.sum(1)
        bits = (nll.sum(1) / masked.clamp_min(1) / LN2).masked_fill(masked == 0, float("nan"))
        return {
            "contig": list(batch["contig"]),
            "start": batch["start"].tolist(),
            "strand": batch["strand"].tolist(),
            "length": [ids.shape[1]] * ids.shape[0],
            "masked": masked.tolist(),
            "bits_per_masked_base": bits.tolist(),
        }

    def configure_optimizers(self):
        groups = adamw_param_groups(self.model, self.hparams.weight_decay)
        return adamw_warmup_cosine(groups, self.hparams, self.trainer.estimated_stepping_batches)
