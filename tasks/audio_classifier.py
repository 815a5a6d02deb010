"""A small log-mel CNN that classifies clips (spoken digits, keywords), trained on the audio data
module's `waveform` / `length` / `class_label`. It is the judge of generated speech: the
inception score and class histogram of `mamba-seq generate ... classifier=CKPT`
(tasks/generation_scoring.py) come from it.

    waveform (B, T), length (B,)
      -> zero past each clip's end -> log-mel spectrogram (B, n_mels, F), F = T // hop + 1
      -> per clip: each mel bin's mean over the real frames removed, one overall scale to unit
         variance (cepstral mean normalisation) -> frames past the end set to 0
      -> conv blocks (3x3 conv, per-position channel LayerNorm, GELU, pooling over mel bins only)
      -> per frame: (channels x mel bins) -> linear -> GELU (B, F, hidden)
      -> mean and max over the clip's real frames -> dropout -> linear

Padding never counts: the waveform is zeroed past `length` and the STFT pads with zeros, so the
frames a shorter, unpadded clip has are the same numbers in the padded one; the frames past its
end are set to 0 before every conv (what the conv's own zero padding gives the unpadded clip),
the layers never mix positions otherwise (no time pooling, no batch or instance statistics), and
the final pooling runs over real frames only. A clip zero-padded at the end therefore gets the
same logits as the clip itself (tests/tasks/test_audio_classifier.py). Clips with
class_label -1 (no label) are left out of the loss and the metrics.

Metrics are computed over the whole split: accuracy, macro F1 (torchmetrics) and the loss; with
several processes their states are synced across ranks, so every rank logs the whole split's.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .causal_lm import adamw_param_groups, adamw_warmup_cosine
from .evaluation import SplitCrossEntropy, log_split_loss

UNLABELLED = -1


def real_frames(length: torch.Tensor, hop_length: int) -> torch.Tensor:
    """length: (B,) samples -> (B,) STFT frames (center=True) that a clip of that many samples has."""
    return torch.div(length, hop_length, rounding_mode="floor") + 1


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at each (mel, frame) position: x (B, C, M, F) -> (B, C, M, F).
    Position-local, so padded frames cannot leak into real ones."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool_mels: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.norm = ChannelNorm(c_out)
        self.pool = nn.MaxPool2d(kernel_size=(2, 1)) if pool_mels else nn.Identity()

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # x: (B, C, M, F); frame_mask: (B, 1, 1, F) float, 1 at real frames -> (B, C', M', F)
        x = x * frame_mask  # padded frames read as the conv's zero padding
        return self.pool(F.gelu(self.norm(self.conv(x))))


class AudioClassifierTask(pl.LightningModule):
    trains = True

    def __init__(
        self,
        num_classes: int,
        sample_rate: int,
        class_names: list[str] | None = None,
        n_mels: int = 64,
        n_fft: int | None = None,
        hop_length: int | None = None,
        f_max: float | None = None,
        log_floor: float = 1e-6,
        channels: tuple[int, ...] = (32, 64, 128),
        hidden: int = 128,
        dropout: float = 0.2,
        label_smoothing: float = 0.0,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.05,
    ):
        """n_fft / hop_length default to 25 ms / 10 ms at sample_rate; f_max to sample_rate / 2."""
        super().__init__()
        num_classes, sample_rate = int(num_classes), int(sample_rate)
        if num_classes < 2:
            raise ValueError(f"task.num_classes must be at least 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"task.class_names has {len(class_names)} names for {num_classes} classes")
        if not channels:
            raise ValueError("task.channels needs at least one conv block")
        n_fft = int(n_fft or round(0.025 * sample_rate))
        hop_length = int(hop_length or round(0.010 * sample_rate))
        # plain data only, so the checkpoint loads with weights_only=True
        self.save_hyperparameters()
        self.hparams.update(
            num_classes=num_classes, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
            class_names=[str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)],
            channels=[int(c) for c in channels], betas=[float(b) for b in betas],
            f_max=float(f_max) if f_max is not None else None,
        )
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_max=f_max,
            center=True, pad_mode="constant", power=2.0,
        )
        blocks, c_in, mels = [], 1, n_mels
        for c in self.hparams.channels:
            pool = mels >= 2
            blocks.append(ConvBlock(c_in, c, pool_mels=pool))
            c_in, mels = c, mels // 2 if pool else mels
        self.blocks = nn.ModuleList(blocks)
        # per frame: channels x remaining mel bins -> hidden (keeps where in frequency things are)
        self.frame_proj = nn.Sequential(nn.Linear(c_in * mels, hidden), nn.GELU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, num_classes))
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_loss, self.test_loss = SplitCrossEntropy(), SplitCrossEntropy()

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @property
    def sample_rate(self) -> int:
        return int(self.hparams.sample_rate)

    def features(self, waveform: torch.Tensor, length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform: (B, T) float; length: (B,) real samples (None: all T) ->
        (standardised log-mel (B, 1, n_mels, F) with 0 past each clip's end, frame mask (B, F) bool)."""
        B, T = waveform.shape
        if length is None:
            length = torch.full((B,), T, dtype=torch.long, device=waveform.device)
        length = length.to(waveform.device).long().clamp(1, T)
        sample_mask = torch.arange(T, device=waveform.device)[None, :] < length[:, None]
        mel = self.mel(waveform.float() * sample_mask)  # (B, n_mels, F)
        logmel = mel.clamp_min(self.hparams.log_floor).log()
        frames = mel.shape[-1]
        mask = torch.arange(frames, device=mel.device)[None, :] < real_frames(length, self.hparams.hop_length)[:, None]
        m = mask[:, None, :].float()  # (B, 1, F)
        n_real = m.sum(-1, keepdim=True)  # (B, 1, 1)
        # per-clip, per-mel-bin mean over the real frames removed (cepstral mean normalisation:
        # a fixed channel / microphone colouring is a per-bin offset in log power), then one scale
        mean = (logmel * m).sum(-1, keepdim=True) / n_real
        centred = (logmel - mean) * m
        var = centred.pow(2).sum((1, 2), keepdim=True) / (n_real * logmel.shape[1])
        x = centred * torch.rsqrt(var + 1e-5)
        return x[:, None], mask

    def forward(self, waveform: torch.Tensor, length: torch.Tensor | None = None) -> torch.Tensor:
        # waveform: (B, T) float; length: (B,) -> logits (B, num_classes)
        x, mask = self.features(waveform, length)
        fm = mask[:, None, None, :].to(x.dtype)  # (B, 1, 1, F)
        for block in self.blocks:
            x = block(x, fm)
        h = self.frame_proj(x.flatten(1, 2).transpose(1, 2))  # (B, F, hidden)
        m = mask[:, :, None]
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1)
        peak = h.masked_fill(~m, torch.finfo(h.dtype).min).amax(1)
        return self.head(torch.cat([mean, peak], dim=-1))

    def _labelled(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # -> (logits of the labelled clips (n, C), their labels (n,))
        labels = batch["class_label"]
        keep = labels != UNLABELLED
        logits = self(batch["waveform"][keep], batch["length"][keep])
        return logits, labels[keep]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, labels = self._labelled(batch)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=max(len(labels), 1))
        return loss

    def _eval(self, batch: dict, metrics: MetricCollection, loss: SplitCrossEntropy):
        logits, labels = self._labelled(batch)
        if len(labels):
            metrics.update(logits.float().softmax(-1), labels)  # accumulated over the whole split
            loss.update(logits, labels)

    def validation_step(self, batch: dict, batch_idx: int):
        self._eval(batch, self.val_metrics, self.val_loss)

    def test_step(self, batch: dict, batch_idx: int):
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

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch["waveform"], batch["length"]).float().softmax(-1)
        names = self.class_names
        out = {"path": list(batch["path"]), "label": [names[i] if i >= 0 else "" for i in batch["class_label"].tolist()],
               "predicted": [names[i] for i in probs.argmax(-1).tolist()]}
        for c, name in enumerate(names):
            out[f"p_{name}"] = probs[:, c].tolist()
        return out

    def configure_optimizers(self):
        modules = nn.ModuleList([self.blocks, self.frame_proj, self.head])
        groups = adamw_param_groups(modules, self.hparams.weight_decay)
        return adamw_warmup_cosine(groups, self.hparams, self.trainer.estimated_stepping_batches)
