"""FastaDataModule: fixed-length windows of a genome for causal-LM pretraining.

Splits are sets of intervals that never overlap:
* `region` holds out the end of every contig (train | val | test);
* `contig` holds out whole contigs (`val_contigs`, `test_contigs`);
* `bed` reads the intervals from a BED file, rows `chrom start end [split]` as in the
  HyenaDNA/Mamba human pretraining data (Basenji's sequences.bed): a 4th column train / valid
  (or val) / test places a row, rows without one are train unless their contig is held out.
Then runs of more than `max_n_run` N (assembly gaps) are cut out of every interval, so no window
holds one. Every window lies inside one interval, read from disk by pyfaidx (a genome never
loads whole, windows of 2^20 bases and more are fine). Training windows are drawn at random
(deterministic in seed, epoch and index, optionally reverse-complemented); validation and test
tile their intervals without overlap, so their bits-per-base is the same number every time.
The training windows' length and batch size may change between epochs (sequence-length warm-up:
see data_modules/seq_len_warmup.py); validation and test always use `seq_len` and `batch_size`.
"""

from __future__ import annotations

import gzip
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .fasta import FastaFile
from .sharding import TrainShardSampler, data_parallel_shard, evaluation_sampler
from .tokenizers import DNATokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# the BED split column: HyenaDNA's sequences.bed says "valid"
BED_SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "test": "test"}
# a random window whose N fraction is over max_n_fraction is redrawn; give up after this many draws
MAX_DRAWS = 1000


@dataclass(frozen=True)
class Interval:
    contig: str
    start: int  # 0-based, half-open
    end: int

    def __len__(self) -> int:
        return self.end - self.start


# -- BED intervals ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BedRow:
    contig: str  # the FASTA record's name (a `chr` alias already resolved)
    start: int  # 0-based, half-open (BED convention)
    end: int
    split: str | None  # "train" | "val" | "test"; None where the row has no split column
    line: int  # 1-based line number in the BED file


def _alias_key(name: str) -> str:
    return name.lower().removeprefix("chr")


class ContigResolver:
    """Maps a contig name from a BED file or a config to a FASTA record name: the exact name, else
    the one record that equals it up to case and a `chr` prefix (`chr17` <-> `17`, logged once)."""

    def __init__(self, lengths: dict[str, int], fasta_source: str):
        self.lengths, self.fasta_source = lengths, fasta_source
        self.by_key: dict[str, list[str]] = defaultdict(list)
        for name in lengths:
            self.by_key[_alias_key(name)].append(name)
        self.aliases: dict[str, str] = {}

    def __call__(self, name: str, place: str) -> str:
        if name in self.lengths:
            return name
        if name in self.aliases:
            return self.aliases[name]
        candidates = self.by_key.get(_alias_key(name), [])
        if len(candidates) == 1:
            self.aliases[name] = candidates[0]
            log.info("%s: contig %r read as record %r of %s", place, name, candidates[0], self.fasta_source)
            return candidates[0]
        if candidates:
            raise ValueError(f"{place}: contig {name!r} is not a record of {self.fasta_source} and matches "
                             f"several ({candidates}) up to case and a 'chr' prefix; use the exact record name")
        shown = list(self.lengths)[:20]
        raise ValueError(f"{place}: no record {name!r} in {self.fasta_source} (records: {shown}"
                         f"{' ...' if len(self.lengths) > 20 else ''}); is the file for another assembly?")


def read_bed(path: str | Path, resolve: ContigResolver) -> list[BedRow]:
    """Rows `chrom start end [split]` (tab- or space-separated; plain or gzip); blank, `#`, `track` and
    `browser` lines skipped; columns after the 4th ignored. Checks every row against the FASTA and
    raises a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"BED file not found: {path} (data.bed)")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    rows: list[BedRow] = []
    with (gzip.open if gzipped else open)(path, "rt", encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            fields = raw.split()
            if not fields or fields[0].startswith("#") or fields[0] in ("track", "browser"):
                continue
            place = f"{path}, line {lineno}"
            if len(fields) < 3:
                raise ValueError(f"{place}: {len(fields)} column(s); a BED row is `chrom start end [split]`, "
                                 "tab- or space-separated")
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise ValueError(f"{place}: start {fields[1]!r} and end {fields[2]!r} must be integers "
                                 "(0-based start, end exclusive); a header line must start with '#'") from None
            split = None
            if len(fields) >= 4:
                split = BED_SPLIT_NAMES.get(fields[3].lower())
                if split is None:
                    raise ValueError(f"{place}: column 4 is {fields[3]!r}; it must be the split: train, valid "
                                     "(or val) or test. For a BED file with names in column 4 keep the first "
                                     "three columns (`cut -f1-3`)")
            if not 0 <= start < end:
                raise ValueError(f"{place}: start {start}, end {end}: need 0 <= start < end (BED intervals are "
                                 "0-based, half-open)")
            contig = resolve(fields[0], place)
            n = resolve.lengths[contig]
            if end > n:
                raise ValueError(f"{place}: end {end} is past the end of record {contig!r} ({n} bases) in "
                                 f"{resolve.fasta_source}; is the BED file for another assembly?")
            rows.append(BedRow(contig, start, end, split, lineno))
    if not rows:
        raise ValueError(f"{path}: no BED rows (only blank, '#', 'track' or 'browser' lines)")
    return rows


def check_no_leak(rows: list[tuple[str, BedRow]], path) -> None:
    """Raise if a row of one split overlaps a row of another (the same bases in two splits).
    rows: (split, row). One sweep per contig: an earlier row of split s overlaps the current one
    iff the earlier row of s reaching furthest does."""
    reach: dict[tuple[str, str], BedRow] = {}  # (contig, split) -> the row of that split ending last so far
    for split, row in sorted(rows, key=lambda sr: (sr[1].contig, sr[1].start, sr[1].end)):
        for other in SPLITS:
            prev = reach.get((row.contig, other))
            if other != split and prev is not None and prev.end > row.start:
                raise ValueError(
                    f"{path}, lines {prev.line} and {row.line}: the {other} row {prev.contig}:{prev.start}-{prev.end} "
                    f"overlaps the {split} row {row.contig}:{row.start}-{row.end}: the same bases would be in two "
                    "splits (a leak); make the rows of different splits disjoint"
                )
        best = reach.get((row.contig, split))
        if best is None or row.end > best.end:
            reach[(row.contig, split)] = row


def merge_rows(rows: list[BedRow]) -> list[Interval]:
    """Overlapping or touching rows of one split joined into disjoint intervals, in genome order."""
    out: list[Interval] = []
    for row in sorted(rows, key=lambda r: (r.contig, r.start)):
        if out and out[-1].contig == row.contig and row.start <= out[-1].end:
            if row.end > out[-1].end:
                out[-1] = Interval(row.contig, out[-1].start, row.end)
        else:
            out.append(Interval(row.contig, row.start, row.end))
    return out


# -- runs of N -------------------------------------------------------------------------------------
class NRunIndex:
    """Where the bases read as N are (FastaFile.n_runs): counts in any range by binary search, no read."""

    def __init__(self, runs: dict[str, np.ndarray]):
        self.starts = {k: np.ascontiguousarray(a[:, 0]) for k, a in runs.items()}
        self.ends = {k: np.ascontiguousarray(a[:, 1]) for k, a in runs.items()}
        self.cum = {k: np.concatenate([[0], np.cumsum(a[:, 1] - a[:, 0])]) for k, a in runs.items()}

    def count(self, contig: str, start: int, end: int) -> int:
        """Bases read as N in [start, end)."""
        starts, ends = self.starts[contig], self.ends[contig]
        i = int(np.searchsorted(ends, start, side="right"))  # first run ending after start
        j = int(np.searchsorted(starts, end, side="left"))  # runs [i, j) start before end
        if i >= j:
            return 0
        total = int(self.cum[contig][j] - self.cum[contig][i])
        total -= max(0, start - int(starts[i])) + max(0, int(ends[j - 1]) - end)
        return total

    def runs_longer_than(self, contig: str, max_len: int) -> np.ndarray:
        """(R, 2) [start, end) of the runs of more than max_len bases."""
        starts, ends = self.starts[contig], self.ends[contig]
        keep = ends - starts > max_len
        return np.stack([starts[keep], ends[keep]], axis=1)


def cut_long_n_runs(intervals: list[Interval], index: NRunIndex, max_n_run: int) -> tuple[list[Interval], int, int]:
    """Intervals with every run of more than max_n_run N removed (a run's whole length counts, also
    where it reaches outside the interval). -> (pieces, bases removed, runs cut)."""
    pieces, dropped, cut = [], 0, 0
    long_runs = {}
    for iv in intervals:
        if iv.contig not in long_runs:
            long_runs[iv.contig] = index.runs_longer_than(iv.contig, max_n_run)
        runs = long_runs[iv.contig]
        lo = int(np.searchsorted(runs[:, 1], iv.start, side="right"))
        hi = int(np.searchsorted(runs[:, 0], iv.end, side="left"))
        pos = iv.start
        for rs, re_ in runs[lo:hi].tolist():
            rs, re_ = max(rs, iv.start), min(re_, iv.end)
            if rs > pos:
                pieces.append(Interval(iv.contig, pos, rs))
            dropped, cut, pos = dropped + re_ - rs, cut + 1, re_
        if pos < iv.end:
            pieces.append(Interval(iv.contig, pos, iv.end))
    return pieces, dropped, cut


# -- datasets --------------------------------------------------------------------------------------
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
    starts, then a uniform start in it), drawn again while the window holds more than
    max_n_fraction N (if set), then, with rc_augment, a coin for the reverse strand."""

    def __init__(self, fasta, tokenizer, window, intervals: list[Interval], per_epoch: int, seed: int,
                 rc_augment: bool, n_index: NRunIndex | None = None, max_n_fraction: float | None = None):
        super().__init__(fasta, tokenizer, window)
        self.intervals = [iv for iv in intervals if len(iv) >= window]
        self.cum_starts = np.cumsum([len(iv) - window + 1 for iv in self.intervals])
        self.per_epoch, self.seed, self.rc_augment = per_epoch, seed, rc_augment
        self.n_index, self.max_n_fraction = n_index, max_n_fraction

    def __len__(self) -> int:
        return self.per_epoch

    def _too_many_n(self, contig: str, start: int) -> bool:
        if self.max_n_fraction is None:
            return False
        return self.n_index.count(contig, start, start + self.window) > self.max_n_fraction * self.window

    def _draw(self, rng: np.random.Generator) -> tuple[str, int]:
        r = int(rng.integers(self.cum_starts[-1]))
        i = int(np.searchsorted(self.cum_starts, r, side="right"))
        iv = self.intervals[i]
        return iv.contig, iv.start + r - (int(self.cum_starts[i - 1]) if i else 0)

    def __getitem__(self, index: int) -> dict:
        epoch, k = divmod(int(index), self.per_epoch)
        rng = np.random.default_rng([self.seed, epoch, k])
        for _ in range(MAX_DRAWS):
            contig, start = self._draw(rng)
            if not self._too_many_n(contig, start):
                break
        else:
            raise ValueError(f"{self.fasta.source}: {MAX_DRAWS} random train windows of {self.window} bases in a "
                             f"row held more than data.max_n_fraction={self.max_n_fraction} N; raise it, or cut "
                             "gaps with data.max_n_run")
        reverse = bool(self.rc_augment and rng.random() < 0.5)
        return self.example(contig, start, reverse)

    def redraw_rate(self, draws: int = 2000) -> float:
        """The fraction of uniform draws redrawn for their N content (an estimate, for the log)."""
        if self.max_n_fraction is None:
            return 0.0
        rng = np.random.default_rng([self.seed, 2**32 - 1])  # a stream no training window uses
        return sum(self._too_many_n(*self._draw(rng)) for _ in range(draws)) / draws


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
    """Non-overlapping windows covering each interval; the remainder at an interval's end is left out,
    and so are the windows holding more than max_n_fraction N (if set; counted in `skipped`)."""

    def __init__(self, fasta, tokenizer, window, intervals: list[Interval], n_index: NRunIndex | None = None,
                 max_n_fraction: float | None = None):
        super().__init__(fasta, tokenizer, window)
        tiles = [(iv.contig, s) for iv in intervals for s in range(iv.start, iv.end - window + 1, window)]
        if max_n_fraction is not None:
            limit = max_n_fraction * window
            self.starts = [(c, s) for c, s in tiles if n_index.count(c, s, s + window) <= limit]
        else:
            self.starts = tiles
        self.skipped = len(tiles) - len(self.starts)
        self.uncovered = sum(len(iv) for iv in intervals) - window * len(tiles)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        contig, start = self.starts[index]
        return self.example(contig, start, reverse=False)


# -- the data module -------------------------------------------------------------------------------
class FastaDataModule(pl.LightningDataModule):
    """Windows of seq_len + 1 bases from one FASTA: input_ids = window[:-1], labels = window[1:].

    Batches: {"input_ids": (B, seq_len) int64, "labels": (B, seq_len) int64, "contig": list[str],
    "start": (B,) int64 0-based forward-strand start, "strand": (B,) int8 +1 / -1 (reverse complement)}.

    batch_size is per process. Under data parallelism every process reads its own shard
    (data_modules/sharding.py): each training step's count x batch_size windows split between the
    shards, the val/test tiles in contiguous, disjoint parts.

    `train_stage_fn`, when set (by data_modules.SeqLenWarmup), is called each time the training
    loader is built and returns the stage to build it for: .seq_len, .batch_size and
    .windows_per_epoch (None: the usual epoch).
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
        bed: str | None = None,
        max_n_run: int | None = 50,
        max_n_fraction: float | None = None,
        train_windows_per_epoch: int | None = None,
        rc_augment: bool = True,
        seed: int = 0,
        cache_dir: str | None = None,
        pin_memory: bool = False,
        eval_seq_len: int | None = None,
        eval_batch_size: int | None = None,
    ):
        """eval_seq_len, eval_batch_size: val/test/predict windows and batches of their own (default
        seq_len, batch_size), e.g. to train at 2^20 on a genome whose held-out ends are shorter."""
        super().__init__()
        if split not in ("region", "contig", "bed"):
            raise ValueError(f"data.split must be 'region', 'contig' or 'bed', got {split!r}")
        if (split == "bed") != (bed is not None):
            raise ValueError("data.split=bed reads its intervals from data.bed=PATH: give both, or neither "
                             f"(got split={split!r}, bed={bed!r})")
        if split == "region" and (val_contigs or test_contigs):
            raise ValueError("data.val_contigs/test_contigs hold out whole contigs with data.split=contig or bed; "
                             f"split=region holds out the end of every contig (got val_contigs={val_contigs}, "
                             f"test_contigs={test_contigs})")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1, got {seq_len}, {batch_size}")
        if (eval_seq_len is not None and eval_seq_len < 1) or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"data.eval_seq_len and data.eval_batch_size must be >= 1 or null, got {eval_seq_len}, "
                             f"{eval_batch_size}")
        if split == "region" and not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}")
        if train_windows_per_epoch is not None and train_windows_per_epoch < 1:
            raise ValueError(f"data.train_windows_per_epoch must be >= 1 or null, got {train_windows_per_epoch}")
        if max_n_run is not None and max_n_run < 0:
            raise ValueError(f"data.max_n_run must be >= 0 or null (keep every base), got {max_n_run}")
        if max_n_fraction is not None and not 0 <= max_n_fraction < 1:
            raise ValueError(f"data.max_n_fraction must be in [0, 1) or null (no limit), got {max_n_fraction}")
        self.fasta_path, self.seq_len, self.batch_size = fasta, seq_len, batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.val_contigs, self.test_contigs = list(val_contigs or []), list(test_contigs or [])
        self.bed, self.max_n_run, self.max_n_fraction = bed, max_n_run, max_n_fraction
        self.train_windows_per_epoch, self.rc_augment, self.cache_dir = train_windows_per_epoch, rc_augment, cache_dir
        self.tokenizer = DNATokenizer()
        self.window = seq_len + 1  # inputs plus the next base of the last one
        self.eval_seq_len = seq_len if eval_seq_len is None else eval_seq_len
        self.eval_window, self.eval_batch_size = self.eval_seq_len + 1, eval_batch_size or batch_size
        self.fasta: FastaFile | None = None
        self.n_index: NRunIndex | None = None
        self.intervals: dict[str, list[Interval]] = {}
        self.train_stage_fn: Callable[[], object] | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split_intervals(self, lengths: dict[str, int]) -> dict[str, list[Interval]]:
        """{"train"|"val"|"test": [Interval]}: disjoint, each inside one contig; empty ones dropped.
        Before N-runs are cut out (setup does that)."""
        out = {"train": [], "val": [], "test": []}
        source = str(self.fasta.source) if self.fasta is not None else str(self.fasta_path)
        if self.split in ("contig", "bed"):
            resolve = ContigResolver(lengths, source)
            held = {part: [resolve(c, f"data.{part}_contigs") for c in names]
                    for part, names in (("val", self.val_contigs), ("test", self.test_contigs))}
            both = set(held["val"]) & set(held["test"])
            if both:
                raise ValueError(f"contigs {sorted(both)} are in both val_contigs and test_contigs")
            held_out = {c: part for part, names in held.items() for c in names}
        if self.split == "contig":
            for name, n in lengths.items():
                out[held_out.get(name, "train")].append(Interval(name, 0, n))
        elif self.split == "bed":
            placed = []
            for row in read_bed(self.bed, resolve):
                part = held_out.get(row.contig)
                if row.split is not None and part is not None and part != row.split:
                    raise ValueError(f"{self.bed}, line {row.line}: the row's split column says {row.split}, but "
                                     f"data.{part}_contigs holds out {row.contig!r}; drop one of the two")
                placed.append((row.split or part or "train", row))
            check_no_leak(placed, self.bed)
            for part in SPLITS:
                rows = [r for p, r in placed if p == part]
                out[part] = merge_rows(rows)
                if len(out[part]) < len(rows):
                    log.info("%s: %d %s rows merged into %d disjoint intervals (overlapping or touching rows joined)",
                             self.bed, len(rows), part, len(out[part]))
        else:  # region: train | val | test along every contig, the held-out parts at its end
            for name, n in lengths.items():
                n_val, n_test = round(n * self.val_fraction), round(n * self.test_fraction)
                cut1, cut2 = n - n_val - n_test, n - n_test
                out["train"].append(Interval(name, 0, cut1))
                out["val"].append(Interval(name, cut1, cut2))
                out["test"].append(Interval(name, cut2, n))
        return {k: [iv for iv in v if len(iv) > 0] for k, v in out.items()}

    def _requested(self, part: str, split_ivs: list[Interval]) -> bool:
        """Whether the config asks for this split (then it must hold a window); an unrequested one stays empty."""
        if part == "train":
            return True
        if self.split == "region":
            return (self.val_fraction if part == "val" else self.test_fraction) > 0
        return bool(split_ivs)  # contig: contigs listed; bed: rows placed in it

    def prepare_data(self):
        # once per node, before setup on every rank: scan, convert and index into the cache
        fasta = FastaFile(self.fasta_path, self.cache_dir)
        if self.max_n_run is not None or self.max_n_fraction is not None:
            fasta.n_runs()  # the chunked N-run scan, cached
        fasta.close()

    def _split_stats(self, intervals: dict[str, list[Interval]]) -> dict[str, dict[str, int]]:
        """Per split: bases, N, IUPAC codes read as N, soft-masked bases."""
        keys = ("bases", "n_count", "iupac_to_n", "soft_masked")
        totals = {p: dict.fromkeys(keys, 0) for p in intervals}
        recs = self.fasta.records

        def whole(contig: str) -> dict:
            return {"bases": recs[contig].length, **{k: getattr(recs[contig], k) for k in keys[1:]}}

        if self.split == "bed":  # arbitrary intervals: counted from the file (cached)
            for part, ivs in intervals.items():
                for c in self.fasta.region_stats([(iv.contig, iv.start, iv.end) for iv in ivs]):
                    for k in keys:
                        totals[part][k] += c[k]
            return totals
        held_out = [(p, iv) for p in ("val", "test") for iv in intervals[p]]
        if self.split == "region":  # count the held-out ends from the file; train = record - those
            counted = self.fasta.region_stats([(iv.contig, iv.start, iv.end) for _, iv in held_out])
        else:  # whole contigs: the scan's per-record counts
            counted = [whole(iv.contig) for _, iv in held_out]
        per_contig_train = {iv.contig: whole(iv.contig) for iv in intervals["train"]}
        for (part, iv), c in zip(held_out, counted):
            for k in keys:
                totals[part][k] += c[k]
                if iv.contig in per_contig_train:
                    per_contig_train[iv.contig][k] -= c[k]
        for c in per_contig_train.values():
            for k in keys:
                totals["train"][k] += c[k]
        return totals

    def _no_window_error(self, part: str, ivs: list[Interval], longest_contig: int) -> ValueError:
        key = "eval_seq_len" if part != "train" and self.eval_window != self.window else "seq_len"
        hint = {"region": f"lower data.{key} or data.val_fraction/test_fraction",
                "contig": f"lower data.{key} or choose other val_contigs/test_contigs",
                "bed": f"lower data.{key} or give longer {part} rows in {self.bed}"}[self.split]
        if self.max_n_run is not None:
            hint += f" (or raise data.max_n_run={self.max_n_run}: longer runs of N cut intervals)"
        return ValueError(
            f"{self.fasta.source}: the {part} split has no interval of {key}+1 = {self._window(part)} bases "
            f"(data.{key}={self._window(part) - 1}; longest {part} interval: {max((len(iv) for iv in ivs), default=0)}, "
            f"longest contig: {longest_contig}); {hint}"
        )

    def _window(self, part: str) -> int:
        return self.window if part == "train" else self.eval_window

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
        regions = self.split_intervals(self.fasta.lengths)
        stats = self._split_stats(regions)
        if self.max_n_run is not None or self.max_n_fraction is not None:
            self.n_index = NRunIndex(self.fasta.n_runs())
        self.intervals = {}
        longest = max(r.length for r in recs)
        for part, split_ivs in regions.items():
            ivs, dropped, runs_cut = split_ivs, 0, 0
            if self.max_n_run is not None:
                ivs, dropped, runs_cut = cut_long_n_runs(split_ivs, self.n_index, self.max_n_run)
            self.intervals[part] = ivs
            window = self._window(part)
            usable = [iv for iv in ivs if len(iv) >= window]
            st = stats[part]
            gaps = ("" if self.max_n_run is None else
                    f"; {dropped} bases in {runs_cut} runs of more than {self.max_n_run} N cut out")
            log.info(
                "%s split: %d bases in %d intervals (%d N, %d IUPAC codes read as N, %d soft-masked)%s; "
                "%d intervals shorter than one window of %d bases left out (%d bases)",
                part, st["bases"], len(split_ivs), st["n_count"], st["iupac_to_n"], st["soft_masked"], gaps,
                len(ivs) - len(usable), window, sum(len(iv) for iv in ivs) - sum(len(iv) for iv in usable),
            )
            if not usable and self._requested(part, split_ivs):
                raise self._no_window_error(part, ivs, longest)
        self.train_set = self._train_windows(self.window, self.train_windows_per_epoch)
        kw = dict(n_index=self.n_index, max_n_fraction=self.max_n_fraction)
        self.val_set = TiledWindows(self.fasta, self.tokenizer, self.eval_window, self.intervals["val"], **kw)
        self.test_set = TiledWindows(self.fasta, self.tokenizer, self.eval_window, self.intervals["test"], **kw)
        redrawn = ("" if self.max_n_fraction is None else
                   f"; about {100 * self.train_set.redraw_rate():.1f}% of draws hold more than "
                   f"max_n_fraction={self.max_n_fraction} N and are drawn again")
        log.info("train: %d random windows of %d bases per epoch (reverse-complement augmentation %s)%s",
                 len(self.train_set), self.window, "on" if self.rc_augment else "off", redrawn)
        for part, ds in (("val", self.val_set), ("test", self.test_set)):
            skipped = "" if self.max_n_fraction is None else f"; {ds.skipped} windows over max_n_fraction N left out"
            log.info("%s: %d windows; %d bases at interval ends not covered%s", part, len(ds), ds.uncovered, skipped)

    def _train_windows(self, window: int, per_epoch: int | None) -> RandomWindows:
        if per_epoch is None:  # about one pass over the training bases
            per_epoch = max(1, sum(len(iv) for iv in self.intervals["train"]) // (window - 1))
        return RandomWindows(self.fasta, self.tokenizer, window, self.intervals["train"], per_epoch, self.seed,
                             self.rc_augment, self.n_index, self.max_n_fraction)

    def _loader(self, dataset, sampler=None, batch_size: int | None = None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size or self.batch_size, sampler=sampler, shuffle=False,
            num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def _train_loader(self, dataset: RandomWindows, batch_size: int) -> DataLoader:
        # window k of epoch e is dataset index e*n + k on every shard; each shard takes its part of every step
        index, count = data_parallel_shard(self.trainer)
        sampler = TrainShardSampler(EpochSampler(len(dataset)), batch_size, index, count)
        return self._loader(dataset, sampler, batch_size=batch_size)

    def _eval_loader(self, dataset: TiledWindows, split: str) -> DataLoader:
        index, count = data_parallel_shard(self.trainer)
        sampler = evaluation_sampler(len(dataset), index, count, split)
        return self._loader(dataset, sampler, batch_size=self.eval_batch_size)

    def train_dataloader(self) -> DataLoader:
        if self.train_stage_fn is None:
            return self._train_loader(self.train_set, self.batch_size)
        stage = self.train_stage_fn()
        if stage.seq_len == self.seq_len and stage.windows_per_epoch is None:
            dataset = self.train_set
        else:  # a warm-up stage: shorter windows (they fit wherever seq_len's do), its own epoch length
            dataset = self._train_windows(stage.seq_len + 1, stage.windows_per_epoch or len(self.train_set))
        return self._train_loader(dataset, stage.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set, "test (predict)")
