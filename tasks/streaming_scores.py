"""Streaming LM scores: bits per base (and optionally embeddings) along whole FASTA records, in
memory that does not grow with the record's length.

A causal LM checkpoint (`mamba-seq fit experiment=dna_pretrain`) reads each record in consecutive
segments (data_modules.FastaStreamDataModule). The model's recurrent state (conv + SSM states,
InferenceCache) is carried from one segment to the next: `backbone.prefill` runs the parallel
forward over a segment starting from the state the previous one left, so the scores are those of
one forward pass over the whole record (tests/tasks/test_streaming_scores.py checks it).

Per bin of `bin_size` bases (the last bin of a record shorter), one row (predictions.tsv through
the CLI's TSVPredictionWriter, written batch by batch):

    record  start  end  bits_per_base  bases_scored

0-based half-open [start, end). bits_per_base is the mean of -log2 p(x_j | x_<j) over the bases j
of the bin that are scored: every base but the record's first (nothing precedes it), and, with
data.score_n=false, no base that reads as N (a bin inside a gap has bases_scored 0 and
bits_per_base nan). Bins may straddle segments: a partial bin is carried to the next segment.

save_embeddings: also the mean final-norm hidden state over the positions [start, end) of each bin
(the hidden state at position t has read the bases up to t), float32, one row per bin in the same
order as the rows of predictions.tsv, appended to `<output_dir>/embeddings.npy` bin by bin (the
header is written last), so nothing accumulates in memory.

At the end, `<output_dir>/record_scores.tsv`: per record its length, bases scored and mean bits per
base over them (the exact record mean, not a mean of bins), also logged.

Memory: per segment O(segment_len * d_model) activations; across segments the InferenceCache, one
partial bin and two numbers per record. Lightning is told not to keep the rows of predict_step
(predict_loop.return_predictions = False): they go to the writer only.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import struct
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from mamba_seq import MambaConfig, MambaLMHeadModel

from .causal_lm import IGNORE_INDEX, LN2, CausalLMTask

log = logging.getLogger(__name__)

# CausalLMTask's other (training) arguments: in its checkpoints' hyper-parameters, so accepted (and
# unused) when this class is loaded with StreamingLMScores.load_from_checkpoint(<causal-LM checkpoint>)
_CAUSAL_LM_HPARAMS = tuple(p for p in inspect.signature(CausalLMTask.__init__).parameters if p not in ("self", "model"))


class NpyRowWriter:
    """Appends float32 rows of width `dim` to a .npy file without holding them: a fixed-size header
    is reserved first and filled in with the final row count on close(); the file is written
    under `<path>.partial` and renamed then, so a killed run leaves no truncated file behind the name."""

    HEADER_BYTES = 128  # magic (6) + version (2) + header length (2) + the padded dict; a multiple of 64

    def __init__(self, path: str | os.PathLike, dim: int):
        self.path, self.dim, self.rows = Path(path), int(dim), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._tmp, "wb")
        self._file.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, self.dim)
        size = self.HEADER_BYTES - 10
        if len(text) + 1 > size:
            raise ValueError(f"embeddings: shape ({rows}, {self.dim}) does not fit the .npy header")
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", size) + (text.ljust(size - 1) + "\n").encode("latin1")

    def append(self, rows: torch.Tensor):
        # rows: (n, dim) -> appended as float32
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"embeddings: rows of shape {tuple(rows.shape)}, expected (n, {self.dim})")
        self._file.write(rows.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes())
        self.rows += rows.shape[0]

    def close(self):
        if self._file is None:
            return
        self._file.seek(0)
        self._file.write(self._header(self.rows))
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)


class StreamingLMScores(pl.LightningModule):
    """Per-bin bits per base (and embeddings) of whole records under a causal LM; see the module
    docstring. Batches: data_modules.FastaStreamDataModule's.

    lm_checkpoint:   a causal-LM checkpoint (`mamba-seq fit` with task=causal_lm); or
    model:           a MambaConfig (or its dict) for a model with fresh weights (tests, or loading a
                     causal-LM checkpoint with StreamingLMScores.load_from_checkpoint)
    bin_size:        bases per output row
    save_embeddings: write <output_dir>/embeddings.npy (mean hidden state per bin)
    output_dir:      where record_scores.tsv (and embeddings.npy) go; null: the trainer's default_root_dir
    """

    trains = False  # the CLI builds it from the config (lm_checkpoint) instead of loading a checkpoint of its own

    def __init__(self, lm_checkpoint: str | None = None, model: MambaConfig | dict | None = None,
                 bin_size: int = 1000, save_embeddings: bool = False, output_dir: str | None = None,
                 **causal_lm_hparams):
        super().__init__()
        unknown = sorted(set(causal_lm_hparams) - set(_CAUSAL_LM_HPARAMS))
        if unknown:
            raise TypeError(f"StreamingLMScores got unexpected arguments {unknown}")
        if bin_size < 1:
            raise ValueError(f"task.bin_size must be >= 1, got {bin_size}")
        if lm_checkpoint is None and model is None:
            raise ValueError("StreamingLMScores scores with a causal-LM checkpoint: give ckpt_path=<a `mamba-seq fit "
                             "experiment=dna_pretrain` checkpoint> (task.lm_checkpoint)")
        if lm_checkpoint is not None and model is not None:
            raise ValueError("StreamingLMScores: give task.lm_checkpoint or a model config, not both")
        if lm_checkpoint is not None:
            path = Path(lm_checkpoint)
            if not path.is_file():
                raise ValueError(f"task.lm_checkpoint (ckpt_path): causal-LM checkpoint not found: {path}")
            try:
                lm = CausalLMTask.load_from_checkpoint(path, map_location="cpu", weights_only=True).model
            except (KeyError, TypeError, RuntimeError, ValueError) as err:
                raise ValueError(f"task.lm_checkpoint (ckpt_path): {path} does not load as a causal-LM checkpoint "
                                 f"(`mamba-seq fit` with task=causal_lm): {type(err).__name__}: {err}") from None
            config = lm.config
        else:
            config = model if isinstance(model, MambaConfig) else MambaConfig.from_dict(dict(model))
            lm = MambaLMHeadModel(config)
        if config.bidirectional or config.rc_equivariant:
            raise ValueError("streaming scores carry a causal model's state across segments: a bidirectional or "
                             "RC-equivariant model reads bases to the right and has no such state")
        self.save_hyperparameters(ignore=["model", *_CAUSAL_LM_HPARAMS])
        self.hparams["model"] = config.to_dict()
        self.model = lm
        self.bin_size = int(bin_size)
        self.save_embeddings = bool(save_embeddings)
        self.output_dir = output_dir
        self._reset_run()

    # -- state across segments ---------------------------------------------------------------------
    def _reset_run(self):
        self._cache = None  # InferenceCache of the record being read
        self._record: str | None = None
        self._record_length = 0
        self._next_start = 0
        self._carry: dict | None = None  # the open (partial) bin: {"bin", "bits", "count", "emb", "emb_n"}
        self._record_bits = 0.0  # sum of bits over the record's scored bases so far
        self._record_scored = 0
        self._summary: list[tuple] = []  # (record, length, scored, bits_per_base, complete): one per record
        self._embeddings: NpyRowWriter | None = None

    def _out_dir(self) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(self.trainer.default_root_dir) if self._trainer is not None else Path(".")

    def on_predict_start(self):
        trainer = self.trainer
        if trainer.world_size > 1:
            raise RuntimeError("streaming scores read each record's segments in order on one device: run with "
                               "trainer.devices=1 (several records could go to several runs with data.records)")
        # the rows go to the prediction writer batch by batch; Lightning would also keep them all
        trainer.predict_loop.return_predictions = False
        vocab = getattr(trainer.datamodule, "vocab_size", None)
        if vocab is not None and vocab != self.model.config.vocab_size:
            raise ValueError(f"the checkpoint's model has vocab_size {self.model.config.vocab_size}, the data's "
                             f"tokenizer {vocab}: score with a model pretrained on this tokenizer")
        self._reset_run()
        if self.save_embeddings:
            self._embeddings = NpyRowWriter(self._out_dir() / "embeddings.npy", self.model.config.d_model)

    def _finish_record(self, complete: bool):
        if self._record is None:
            return
        bpb = self._record_bits / self._record_scored if self._record_scored else math.nan
        self._summary.append((self._record, self._record_length, self._record_scored, bpb, complete))
        log.info("%s: %.4f bits per base over %d scored bases of %d%s", self._record, bpb, self._record_scored,
                 self._record_length, "" if complete else f" (stopped at position {self._next_start}: incomplete)")
        self._record, self._cache, self._carry = None, None, None

    def on_predict_end(self):
        if self._record is not None:  # e.g. trainer.limit_predict_batches stopped mid-record
            log.warning("%s: prediction stopped at position %d of %d; its open bin is not written",
                        self._record, self._next_start, self._record_length)
            self._finish_record(complete=False)
        if self._embeddings is not None:
            self._embeddings.close()
            log.info("embeddings: %d bins x %d written to %s", self._embeddings.rows, self._embeddings.dim,
                     self._embeddings.path)
            self._embeddings = None
        path = self._out_dir() / "record_scores.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write("record\tlength\tbases_scored\tbits_per_base\tcomplete\n")
            for record, length, scored, bpb, complete in self._summary:
                f.write(f"{record}\t{length}\t{scored}\t{bpb:.6g}\t{str(complete).lower()}\n")
        log.info("per-record bits per base: %s", path)

    # -- one segment ---------------------------------------------------------------------------------
    def _begin_segment(self, record: str, start: int, length: int, first: bool):
        if first:
            if self._record is not None:
                log.warning("%s: a new record began before its last segment; stopped at position %d",
                            self._record, self._next_start)
                self._finish_record(complete=False)
            self._record, self._record_length, self._next_start = record, length, 0
            self._record_bits, self._record_scored = 0.0, 0
            self._cache = self.model.allocate_inference_cache(1, device=self.device)
        if record != self._record or start != self._next_start:
            raise RuntimeError(f"streaming scores need each record's segments in order: got {record}:{start}, "
                               f"expected {self._record}:{self._next_start} (one device, an in-order loader)")

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        ids, labels = batch["input_ids"], batch["labels"]  # (1, L) each
        if ids.shape[0] != 1:
            raise ValueError(f"streaming scores read one segment a batch, got a batch of {ids.shape[0]}")
        record, start = batch["record"][0], int(batch["start"][0])
        n, first, last = int(batch["record_length"][0]), bool(batch["is_first"][0]), bool(batch["is_last"][0])
        L = ids.shape[1]
        self._begin_segment(record, start, n, first)

        hidden = self.model.backbone.prefill(ids, self._cache)[0]  # (L, d_model), continuing the record
        logits = self.model.lm_head(hidden).float()  # (L, padded_vocab)
        bits = F.cross_entropy(logits, labels[0], ignore_index=IGNORE_INDEX, reduction="none") / LN2  # (L,)
        scored = labels[0] != IGNORE_INDEX  # (L,)

        # local bins: b0 = the bin of the segment's first position; the score at position t is that of
        # base start+t+1 (which may be the next segment's first base), the hidden state that of start+t
        B = self.bin_size
        b0, end = start // B, start + L
        nb = end // B - b0 + 1
        t = torch.arange(L, device=ids.device)
        score_bin = (start + 1 + t) // B - b0
        sums = torch.zeros(nb, dtype=torch.float64, device=ids.device)
        sums.index_add_(0, score_bin[scored], bits[scored].double())
        counts = torch.zeros(nb, dtype=torch.int64, device=ids.device)
        counts.index_add_(0, score_bin[scored], torch.ones_like(score_bin[scored]))
        emb = emb_n = None
        if self._embeddings is not None:
            emb_bin = (start + t) // B - b0
            emb = torch.zeros(nb, hidden.shape[1], dtype=torch.float32, device=ids.device)
            emb.index_add_(0, emb_bin, hidden.float())
            emb_n = torch.bincount(emb_bin, minlength=nb)
        if self._carry is not None:  # the partial bin the previous segment left: this segment's first
            if self._carry["bin"] != b0:
                raise RuntimeError(f"{record}: carried bin {self._carry['bin']} is not the segment's first bin {b0}")
            sums[0] += self._carry["bits"]
            counts[0] += self._carry["count"]
            if emb is not None:
                emb[0] += self._carry["emb"]
                emb_n[0] += self._carry["emb_n"]
            self._carry = None

        # bins ending at or before `end` are complete (their scores need bases < end+1, their hidden
        # states positions < end); at the record's end all are. Otherwise the bin holding `end` stays open.
        done = (-(-n // B) - b0) if last else (end // B - b0)
        if not last:
            self._carry = {"bin": b0 + done, "bits": sums[done].clone(), "count": counts[done].clone(),
                           "emb": None if emb is None else emb[done].clone(),
                           "emb_n": None if emb_n is None else emb_n[done].clone()}
        self._record_bits += float(bits[scored].double().sum())
        self._record_scored += int(scored.sum())
        self._next_start = end

        sums, counts = sums[:done].tolist(), counts[:done].tolist()
        starts = [(b0 + i) * B for i in range(done)]
        rows = {
            "record": [record] * done,
            "start": starts,
            "end": [min(s + B, n) for s in starts],
            "bits_per_base": [s / c if c else math.nan for s, c in zip(sums, counts)],
            "bases_scored": counts,
        }
        if emb is not None and done:
            self._embeddings.append(emb[:done] / emb_n[:done, None].clamp_min(1))
        if last:
            self._finish_record(complete=True)
        return rows

    def configure_optimizers(self):
        raise RuntimeError("StreamingLMScores trains nothing: run `mamba-seq predict`")
