"""FastaStreamDataModule: whole FASTA records, cut into consecutive segments, for streaming inference.

Predict only. Each selected record (all records, or `records` by name) is read in order as
consecutive segments of `segment_len` tokens (the last one shorter); a task carries the model's
recurrent state from one segment to the next (tasks.StreamingLMScores), so a chromosome is scored
in memory that does not grow with its length. Each segment is read from the file when it is
needed (`FastaFile.fetch` of segment_len + 1 bases: the segment and the base after it), never a
whole record.

Under data parallelism each process reads whole consecutive records (data_modules/sharding.py).

Batches (batch size 1, in file order, segments of a record in order):
    input_ids     (1, L) int64   the record's tokens [start, start + L)
    labels        (1, L) int64   the next base of each: tokens [start + 1, start + L + 1); -100
                                 (no target) at the record's last position, and, unless score_n, where
                                 the next base reads as N (an assembly gap is not a base to predict)
    record        list[str]      the record's name
    start         (1,) int64     0-based position of input_ids[0, 0] in the record
    record_length (1,) int64
    is_first, is_last (1,) bool  the record's first / last segment

Tokens as in pretraining (data_modules.FastaDataModule): DNATokenizer, one token per base, lowercase
as uppercase, IUPAC ambiguity codes as N, no special tokens added.
"""

from __future__ import annotations

import bisect
import logging

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .fasta import FastaFile
from .fasta_pretraining import _alias_key
from .sharding import data_parallel_shard, grouped_evaluation_sampler
from .tokenizers import DNATokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # a label that is no target (tasks.causal_lm.IGNORE_INDEX)


class RecordSegments(Dataset):
    """Segment k of the concatenated records -> one example (see the module docstring)."""

    def __init__(self, fasta: FastaFile, tokenizer: DNATokenizer, records: list[str], segment_len: int,
                 score_n: bool):
        self.fasta, self.tokenizer, self.segment_len, self.score_n = fasta, tokenizer, segment_len, score_n
        self.records = records
        self.lengths = [fasta.lengths[r] for r in records]
        self.first_index = [0]  # first segment index of each record (then the total)
        for n in self.lengths:
            self.first_index.append(self.first_index[-1] + -(-n // segment_len))

    def __len__(self) -> int:
        return self.first_index[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """Segment index -> (record number, segment start)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        r = bisect.bisect_right(self.first_index, index) - 1
        return r, (index - self.first_index[r]) * self.segment_len

    def __getitem__(self, index: int) -> dict:
        r, start = self.locate(int(index))
        name, n = self.records[r], self.lengths[r]
        end = min(start + self.segment_len, n)
        seq = self.fasta.fetch(name, start, min(end + 1, n))  # the segment and the base after it
        ids = torch.from_numpy(self.tokenizer.encode(seq, where=f"{self.fasta.source}, record {name!r}",
                                                     offset=start))
        length = end - start
        labels = torch.full((length,), IGNORE_INDEX, dtype=torch.int64)
        labels[: len(ids) - 1] = ids[1:]
        if not self.score_n:
            labels[labels == self.tokenizer.base_ids["N"]] = IGNORE_INDEX
        return {
            "input_ids": ids[:length],
            "labels": labels,
            "record": name,
            "start": torch.tensor(start, dtype=torch.int64),
            "record_length": torch.tensor(n, dtype=torch.int64),
            "is_first": torch.tensor(start == 0),
            "is_last": torch.tensor(end == n),
        }


class FastaStreamDataModule(pl.LightningDataModule):
    """Whole records of `fasta` (plain, bgzip or gzip) in consecutive segments; predict only.

    fasta:       the FASTA file
    records:     record names to read, in this order (a `chr` prefix / case difference is
                 resolved when it matches one record); null: every record, in file order
    segment_len: tokens per segment (the model's parallel forward length; memory grows with it,
                 not with the record)
    score_n:     false: a next base that reads as N is no target (label -100)
    """

    def __init__(self, fasta: str, records: list[str] | str | None = None, segment_len: int = 65536,
                 score_n: bool = False, num_workers: int = 0, cache_dir: str | None = None,
                 pin_memory: bool = False):
        super().__init__()
        if segment_len < 1:
            raise ValueError(f"data.segment_len must be >= 1, got {segment_len}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.fasta_path, self.segment_len, self.score_n = fasta, int(segment_len), bool(score_n)
        self.requested = [records] if isinstance(records, str) else (None if records is None else list(records))
        self.num_workers, self.cache_dir, self.pin_memory = num_workers, cache_dir, pin_memory
        self.tokenizer = DNATokenizer()
        self.fasta: FastaFile | None = None
        self.records: list[str] = []
        self.predict_set: RecordSegments | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def record_lengths(self) -> dict[str, int]:
        """{name: length} of the selected records, in reading order (after setup)."""
        return {r: self.fasta.lengths[r] for r in self.records}

    def prepare_data(self):
        FastaFile(self.fasta_path, self.cache_dir).close()  # scan, convert and index once

    def resolve_records(self, lengths: dict[str, int]) -> list[str]:
        """The requested names as record names; a ValueError naming every missing one."""
        if self.requested is None:
            return list(lengths)
        by_key: dict[str, list[str]] = {}
        for name in lengths:
            by_key.setdefault(_alias_key(name), []).append(name)
        out, missing = [], []
        for name in self.requested:
            name = str(name)
            candidates = [name] if name in lengths else by_key.get(_alias_key(name), [])
            if len(candidates) == 1:
                if candidates[0] != name:
                    log.info("data.records: %r read as record %r", name, candidates[0])
                out.append(candidates[0])
            else:
                missing.append(name if not candidates else f"{name} (ambiguous: {candidates})")
        if missing:
            shown = list(lengths)[:50]
            raise ValueError(f"{self.fasta_path}: data.records names {len(missing)} record(s) not in the file: "
                             f"{missing}; records in the file: {shown}{' ...' if len(lengths) > 50 else ''} "
                             f"({len(lengths)} in all). Use these names, or data.records=null for every record")
        duplicates = sorted({r for r in out if out.count(r) > 1})
        if duplicates:
            raise ValueError(f"{self.fasta_path}: data.records names {duplicates} more than once; list each record once")
        return out

    def setup(self, stage: str | None = None):
        if self.fasta is not None:
            return
        self.fasta = FastaFile(self.fasta_path, self.cache_dir)
        self.records = self.resolve_records(self.fasta.lengths)
        if not self.records:
            raise ValueError(f"{self.fasta.source}: data.records is empty: nothing to read")
        self.predict_set = RecordSegments(self.fasta, self.tokenizer, self.records, self.segment_len, self.score_n)
        total = sum(self.predict_set.lengths)
        log.info("%s: %d of %d records, %d bases, read as %d segments of up to %d tokens%s",
                 self.fasta.source, len(self.records), len(self.fasta.lengths), total, len(self.predict_set),
                 self.segment_len, "" if self.score_n else "; next bases read as N are not scored")

    def predict_dataloader(self) -> DataLoader:
        # in order (several workers still deliver in order), one segment a batch. Under data parallelism
        # each process reads whole consecutive records (about the same number of segments each): a
        # record's state goes from one segment to the next, so a record is never split between processes
        index, count = data_parallel_shard(self.trainer)
        sampler = grouped_evaluation_sampler(self.predict_set.first_index, index, count, "predict",
                                             what="records (data.records)")
        return DataLoader(self.predict_set, batch_size=1, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=False)

    def _predict_only(self, *_):
        raise ValueError("FastaStreamDataModule reads whole records for streaming inference: run `mamba-seq "
                         "predict` (it has no train/val/test split)")

    train_dataloader = val_dataloader = test_dataloader = _predict_only
