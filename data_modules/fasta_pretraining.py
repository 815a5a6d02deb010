"""FastaDataModule: fixed-length windows of a genome for causal-LM pretraining.

Splits are sets of intervals that never overlap: `region` holds out the end of every contig
(train | val | test), `contig` holds out whole contigs. Every window lies inside one interval.
Training windows are drawn at random (deterministic in seed, epoch and index, optionally
reverse-complemented); validation and test tile their intervals without overlap, so their
bits-per-base is the same number every time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .fasta import FastaFile
from .tokenizers import DNATokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    contig: str
    start: int  # 0-based, half-open
    end: int

    def __len__(self) -> int:
        return self.end - self.start


class _Windows(Dataset):
    """Reads a window of `window` bases and turns it into an LM example."""

    def __init__(self, fasta: FastaFile, tokenizer: DNATokenizer, window: int):
        self.fasta, self.tokenizer, self.window = fasta, tokenizer, window

    def example(self, contig: str, start: int, reverse: bool) -> dict:
        seq = self.fasta.fetch(contig, start, start + self.window)
        ids = self.tokenizer.encode(seq, where=f"{self.fasta.source}, record {contig!r}", offset=start)
        if reverse:
            ids = self.tokenizer.reverse_complement(ids)
        ids = torch.from_numpy(ids)
        return {
            "input_ids": ids[:-1],
            "labels": ids[1:],
            "contig": contig,
            "start": torch.tensor(start, dtype=torch.int64),  # forward-strand start, also when reversed
            "strand": torch.tensor(-1 if reverse else 1, dtype=torch.int8),
        }


class RandomWindows(_Windows):
    """`per_epoch` random windows an epoch; dataset index = epoch * per_epoch + k.

    Window k of epoch e uses np.random.default_rng([seed, e, k]): one uniform draw over the valid
    starts of all intervals (the same as picking an interval in proportion to its number of valid
    starts, then a uniform start in it), then, with rc_augment, a coin for the reverse strand."""

    def __init__(self, fasta, tokenizer, window, intervals: list[Interval], per_epoch: int, seed: int, rc_augment: bool):
        super().__init__(fasta, tokenizer, window)
        self.intervals = [iv for iv in intervals if len(iv) >= window]
        self.cum_starts = np.cumsum([len(iv) - window + 1 for iv in self.intervals])
        self.per_epoch, self.seed, self.rc_augment = per_epoch, seed, rc_augment

    def __len__(self) -> int:
        return self.per_epoch

    def __getitem__(self, index: int) -> dict:
        epoch, k = divmod(int(index), self.per_epoch)
        rng = np.random.default_rng([self.seed, epoch, k])
        r = int(rng.integers(self.cum_starts[-1]))
        i = int(np.searchsorted(self.cum_starts, r, side="right"))
        offset = r - (int(self.cum_starts[i - 1]) if i else 0)
        iv = self.intervals[i]
        reverse = bool(self.rc_augment and rng.random() < 0.5)
        return self.example(iv.contig, iv.start + offset, reverse)


class EpochSampler(Sampler[int]):
    """Yields epoch * n + k for k < n. Lightning calls `set_epoch` on it at every epoch start, so
    each epoch draws new windows, reproducibly, also after a resume."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n


class TiledWindows(_Windows):
    """Non-overlapping windows covering each interval; the remainder at an interval's end is left out."""

    def __init__(self, fasta, tokenizer, window, intervals: list[Interval]):
        super().__init__(fasta, tokenizer, window)
        self.starts = [(iv.contig, s) for iv in intervals for s in range(iv.start, iv.end - window + 1, window)]
        self.uncovered = sum(len(iv) for iv in intervals) - window * len(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        contig, start = self.starts[index]
        return self.example(contig, start, reverse=False)


class FastaDataModule(pl.LightningDataModule):
    """Windows of seq_len + 1 bases from one FASTA: input_ids = window[:-1], labels = window[1:].

    Batches: {"input_ids": (B, seq_len) int64, "labels": (B, seq_len) int64, "contig": list[str],
    "start": (B,) int64 0-based forward-strand start, "strand": (B,) int8 +1 / -1 (reverse complement)}.
    """

    def __init__(
        self,
        fasta: str,
        seq_len: int = 1024,
        batch_size: int = 16,
        num_workers: int = 0,
        split: str = "region",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        val_contigs: list[str] | None = None,
        test_contigs: list[str] | None = None,
        train_windows_per_epoch: int | None = None,
        rc_augment: bool = True,
        seed: int = 0,
        cache_dir: str | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        if split not in ("region", "contig"):
            raise ValueError(f"data.split must be 'region' or 'contig', got {split!r}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len}, {batch_size}")
        if split == "region" and not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}")
        if train_windows_per_epoch is not None and train_windows_per_epoch < 1:
            raise ValueError(f"data.train_windows_per_epoch must be >= 1 or null, got {train_windows_per_epoch}")
        self.fasta_path, self.seq_len, self.batch_size = fasta, seq_len, batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.val_contigs, self.test_contigs = list(val_contigs or []), list(test_contigs or [])
        self.train_windows_per_epoch, self.rc_augment, self.cache_dir = train_windows_per_epoch, rc_augment, cache_dir
        self.tokenizer = DNATokenizer()
        self.window = seq_len + 1  # inputs plus the next base of the last one
        self.fasta: FastaFile | None = None
        self.intervals: dict[str, list[Interval]] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split_intervals(self, lengths: dict[str, int]) -> dict[str, list[Interval]]:
        """{"train"|"val"|"test": [Interval]}: disjoint, each inside one contig; empty ones dropped."""
        out = {"train": [], "val": [], "test": []}
        if self.split == "contig":
            unknown = [c for c in self.val_contigs + self.test_contigs if c not in lengths]
            if unknown:
                raise ValueError(f"{self.fasta_path}: no contig named {unknown}; the file has {list(lengths)}")
            both = set(self.val_contigs) & set(self.test_contigs)
            if both:
                raise ValueError(f"contigs {sorted(both)} are in both val_contigs and test_contigs")
            for name, n in lengths.items():
                part = "val" if name in self.val_contigs else "test" if name in self.test_contigs else "train"
                out[part].append(Interval(name, 0, n))
        else:  # region: train | val | test along every contig, the held-out parts at its end
            for name, n in lengths.items():
                n_val, n_test = round(n * self.val_fraction), round(n * self.test_fraction)
                cut1, cut2 = n - n_val - n_test, n - n_test
                out["train"].append(Interval(name, 0, cut1))
                out["val"].append(Interval(name, cut1, cut2))
                out["test"].append(Interval(name, cut2, n))
        return {k: [iv for iv in v if len(iv) > 0] for k, v in out.items()}

    def _requested(self, part: str) -> bool:
        if self.split == "contig":
            return part == "train" or bool(self.val_contigs if part == "val" else self.test_contigs)
        return part == "train" or (self.val_fraction if part == "val" else self.test_fraction) > 0

    def prepare_data(self):
        # once per node, before setup on every rank: scan, convert and index into the cache
        FastaFile(self.fasta_path, self.cache_dir).close()

    def _split_stats(self) -> dict[str, dict[str, int]]:
        """Per split: bases, N, IUPAC codes read as N, soft-masked bases."""
        keys = ("bases", "n_count", "iupac_to_n", "soft_masked")
        totals = {p: dict.fromkeys(keys, 0) for p in self.intervals}
        recs = self.fasta.records
        held_out = [(p, iv) for p in ("val", "test") for iv in self.intervals[p]]
        if self.split == "region":  # count the held-out ends from the file; train = record - those
            counted = self.fasta.region_stats([(iv.contig, iv.start, iv.end) for _, iv in held_out])
        else:  # whole contigs: the scan's per-record counts
            counted = [{"bases": recs[iv.contig].length, **{k: getattr(recs[iv.contig], k) for k in keys[1:]}}
                       for _, iv in held_out]
        per_contig_train = {iv.contig: {"bases": recs[iv.contig].length, **{k: getattr(recs[iv.contig], k)
                            for k in keys[1:]}} for iv in self.intervals["train"]}
        for (part, iv), c in zip(held_out, counted):
            for k in keys:
                totals[part][k] += c[k]
                if iv.contig in per_contig_train:
                    per_contig_train[iv.contig][k] -= c[k]
        for c in per_contig_train.values():
            for k in keys:
                totals["train"][k] += c[k]
        return totals

    def setup(self, stage: str | None = None):
        if self.fasta is not None:
            return
        self.fasta = FastaFile(self.fasta_path, self.cache_dir)
        src, recs = self.fasta.source, list(self.fasta.records.values())
        log.info(
            "%s: %d records, %d bases (%d N, %d IUPAC codes read as N, %d soft-masked lowercase)",
            src, len(recs), sum(r.length for r in recs), sum(r.n_count for r in recs),
            sum(r.iupac_to_n for r in recs), sum(r.soft_masked for r in recs),
        )
        self.intervals = self.split_intervals(self.fasta.lengths)
        stats = self._split_stats()
        for part, ivs in self.intervals.items():
            usable = [iv for iv in ivs if len(iv) >= self.window]
            st = stats[part]
            log.info(
                "%s split: %d bases in %d intervals (%d N, %d IUPAC codes read as N, %d soft-masked); "
                "%d intervals shorter than one window of %d bases left out (%d bases)",
                part, st["bases"], len(ivs), st["n_count"], st["iupac_to_n"], st["soft_masked"],
                len(ivs) - len(usable), self.window, sum(len(iv) for iv in ivs) - sum(len(iv) for iv in usable),
            )
            if usable or not self._requested(part):
                continue
            longest = max(r.length for r in recs)
            hint = ("lower data.seq_len or data.val_fraction/test_fraction" if self.split == "region"
                    else "lower data.seq_len or choose other val_contigs/test_contigs")
            raise ValueError(
                f"{src}: the {part} split has no interval of seq_len+1 = {self.window} bases "
                f"(data.seq_len={self.seq_len}; longest {part} interval: {max((len(iv) for iv in ivs), default=0)}, "
                f"longest contig: {longest}); {hint}"
            )
        train_bases = sum(len(iv) for iv in self.intervals["train"])
        per_epoch = self.train_windows_per_epoch or max(1, train_bases // self.seq_len)
        self.train_set = RandomWindows(self.fasta, self.tokenizer, self.window, self.intervals["train"], per_epoch,
                                       self.seed, self.rc_augment)
        self.val_set = TiledWindows(self.fasta, self.tokenizer, self.window, self.intervals["val"])
        self.test_set = TiledWindows(self.fasta, self.tokenizer, self.window, self.intervals["test"])
        log.info("train: %d random windows of %d bases per epoch (reverse-complement augmentation %s)",
                 per_epoch, self.window, "on" if self.rc_augment else "off")
        for part, ds in (("val", self.val_set), ("test", self.test_set)):
            log.info("%s: %d windows; %d bases at interval ends not covered", part, len(ds), ds.uncovered)

    def _loader(self, dataset, sampler=None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, EpochSampler(len(self.train_set)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
