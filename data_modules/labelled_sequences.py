"""LabelledSequenceDataModule: DNA sequences with class labels, from a CSV/TSV table
(`sequence,label[,id][,split]`) or from a FASTA file plus a label table (`id,label[,split]`).

FASTA plus labels: `fasta=` names the sequences, `path=` the table; an id is a FASTA record name
(the header's first word, as pyfaidx and samtools read it). An id missing from the FASTA or given
twice is an error naming the table's line (and a close record name, if there is one); FASTA records
that the table doesn't label are left out, counted and logged.

Variable lengths are batched with right padding and a boolean mask, so pooling can skip padding.
Splits, when the file has none:
- `stratified`: per-label random fractions with a fixed seed;
- `grouped`: sequences that share any k-mer (default 20 bp, either strand) form one group and a
  group never straddles two splits, so near-duplicates can't leak from train into test.
A `split_column` holding train/val/test is used as it is.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .fasta import open_fasta
from .sharding import seeded_loader_sampler
from .tokenizers import DNATokenizer

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_RC = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def read_table(path: Path, sequence_column: str | None, label_column: str, id_column: str | None,
               split_column: str | None, where: dict | None):
    """-> list of (id, sequence, label string, split or None, 1-based line); errors name file and line.
    sequence_column None: a label table for a FASTA file (sequence None, the id column required)."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","
    rows = []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # utf-8, with or without the BOM that Excel writes
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; save the table "
                         "as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
        for col in (sequence_column, label_column, id_column, split_column, *(where or {})):
            if col is not None and col not in header:
                raise ValueError(f"{path}: no column {col!r}; the header has {header}")
        for row in reader:
            line = reader.line_num
            if where and any(row[k] != str(v) for k, v in where.items()):
                continue
            seq = (row[sequence_column] or "").strip() if sequence_column else None
            label = (row[label_column] or "").strip()
            if sequence_column and not seq:
                raise ValueError(f"{path}, line {line}: empty sequence; fill it or remove the row")
            if not label:
                raise ValueError(f"{path}, line {line}: empty label; fill it or remove the row")
            split = None
            if split_column is not None:
                split = SPLIT_NAMES.get((row[split_column] or "").strip().lower())
                if split is None:
                    raise ValueError(f"{path}, line {line}: split {row[split_column]!r} is not one of train/val/test")
            ident = (row[id_column] or "") if id_column else str(len(rows))  # None: the row has no id cell
            rows.append((ident, seq, label, split, line))
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num}: {err}; fix the row's quoting") from None
    if not rows:
        raise ValueError(f"{path}: no rows" + (f" matching {where}" if where else ""))
    return rows


def _close_record_name(ident: str, names: list[str]) -> str | None:
    """The FASTA record name the user most likely meant by `ident`, or None."""
    first_word = ident.split()[0] if ident.split() else ident
    if first_word != ident and first_word in names:
        return first_word  # the table holds the whole header; records are named by its first word
    folded = {n.lower(): n for n in names}
    if ident.lower() in folded:
        return folded[ident.lower()]
    close = difflib.get_close_matches(ident, names, n=1, cutoff=0.8)
    return close[0] if close else None


def sequences_from_fasta(rows: list, table: Path, fasta_path: Path, cache_dir: str | None,
                         where: dict | None = None) -> tuple[list, list[str]]:
    """Label-table rows (id, None, label, split, line) -> the same rows with the FASTA record's
    sequence, and a `where` string per row for tokenizer errors. Ids must be unique and all in the
    FASTA; FASTA records without a row are counted and logged, never an error."""
    rows = [(ident.strip(), *rest) for ident, *rest in rows]
    first_line: dict[str, int] = {}
    for ident, _, _, _, line in rows:
        if not ident.strip():
            raise ValueError(f"{table}, line {line}: empty id; give the FASTA record name or remove the row")
        if ident in first_line:
            raise ValueError(f"{table}, line {line}: id {ident!r} is already on line {first_line[ident]}; each "
                             "FASTA record takes one label: remove one of the rows")
        first_line[ident] = line
    fasta = open_fasta(fasta_path, cache_dir)
    lengths = fasta.lengths
    missing = [(ident, line) for ident, _, _, _, line in rows if ident not in lengths]
    if missing:
        ident, line = missing[0]
        close = _close_record_name(ident, list(lengths))
        hint = f"; did you mean {close!r}?" if close else ""
        raise ValueError(f"{table}, line {line}: id {ident!r} is not a record of {fasta_path}{hint} "
                         f"({len(missing)} of {len(rows)} ids are missing; ids are matched against the first word "
                         "of each FASTA header): fix the id or remove the row")
    unlabelled = [name for name in lengths if name not in first_line]
    if unlabelled:
        log.warning("%s: %d of %d records have no row in %s%s and are left out (e.g. %s)", fasta_path,
                    len(unlabelled), len(lengths), table, f" matching {where}" if where else "", unlabelled[:5])
    with_sequences = [(ident, fasta.fetch(ident, 0, lengths[ident]), label, split, line)
                      for ident, _, label, split, line in rows]
    fasta.close()
    places = [f"{fasta_path}, record {ident!r} (labelled on {table}, line {line})" for ident, *_, line in rows]
    return with_sequences, places


def kmer_groups(seqs: list[str], k: int) -> np.ndarray:
    """Connected components of 'shares a k-mer on either strand' (union-find). -> group id per sequence."""
    parent = list(range(len(seqs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, s in enumerate(seqs):
        s = s.upper()
        rc = s.translate(_RC)[::-1]
        n = len(s)
        for j in range(n - k + 1):
            kmer = s[j : j + k]
            kmer = min(kmer, rc[n - j - k : n - j])  # canonical: the smaller of the two strands
            o = owner.setdefault(kmer, i)
            if o != i:
                a, b = find(o), find(i)
                if a != b:
                    parent[b] = a
    return np.array([find(i) for i in range(len(seqs))])


def assign_splits(labels: np.ndarray, groups: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> np.ndarray:
    """Whole groups to train/val/test, in a seeded random order, each to the split furthest below
    its target share; labels are balanced by doing this per majority label of the group."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    target = {"val": val_fraction, "test": test_fraction, "train": 1 - val_fraction - test_fraction}
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    major = {g: Counter(labels[m]).most_common(1)[0][0] for g, m in members.items()}
    for lab in np.unique(labels):
        gs = [g for g in uniq if major[g] == lab]
        rng.shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        filled = {s: 0 for s in target}
        for g in gs:
            s = max(target, key=lambda s: target[s] * total - filled[s])
            split[members[g]] = s
            filled[s] += len(members[g])
    return split


class SequenceDataset(Dataset):
    def __init__(self, ids, token_ids, labels):
        self.ids, self.token_ids, self.labels = ids, token_ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], self.token_ids[i], self.labels[i]


def pad_collate(pad_id: int):
    def collate(items):
        ids, toks, labels = zip(*items)
        L = max(len(t) for t in toks)
        input_ids = torch.full((len(toks), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(toks), L), dtype=torch.bool)
        for i, t in enumerate(toks):
            input_ids[i, : len(t)] = torch.from_numpy(t)
            mask[i, : len(t)] = True
        return {"input_ids": input_ids, "mask": mask, "labels": torch.tensor(labels), "id": list(ids)}

    return collate


class LabelledSequenceDataModule(pl.LightningDataModule):
    def __init__(
        self,
        path: str,
        sequence_column: str = "sequence",
        label_column: str = "label",
        id_column: str | None = None,
        where: dict | None = None,
        split: str = "stratified",
        split_column: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        group_kmer: int = 20,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        fasta: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if split not in ("stratified", "grouped", "column"):
            raise ValueError(f"data.split must be stratified, grouped or column, got {split!r}")
        if split == "column" and not split_column:
            raise ValueError("data.split=column needs data.split_column")
        self.path = Path(path).expanduser()
        # FASTA mode: `path` is the label table, sequences come from the FASTA by id (column "id" by default)
        self.fasta = Path(fasta).expanduser() if fasta else None
        self.cache_dir = cache_dir
        if self.fasta is not None:
            sequence_column, id_column = None, id_column or "id"
        self.columns = (sequence_column, label_column, id_column, split_column)
        self.where = dict(where) if where else None
        self.split, self.val_fraction, self.test_fraction, self.group_kmer = split, val_fraction, test_fraction, group_kmer
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.tokenizer = DNATokenizer()
        self.class_names: list[str] | None = None
        self.sets: dict[str, SequenceDataset] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.class_names)

    def setup(self, stage: str | None = None):
        if self.sets:
            return
        if not self.path.is_file():
            what = "label table" if self.fasta else "labelled sequence table"
            raise ValueError(f"{what} not found: {self.path}")
        seq_col, label_col, id_col, split_col = self.columns
        rows = read_table(self.path, seq_col, label_col, id_col, split_col if self.split == "column" else None, self.where)
        if self.fasta is not None:
            rows, places = sequences_from_fasta(rows, self.path, self.fasta, self.cache_dir, self.where)
        else:
            places = [f"{self.path}, line {r[4]}" for r in rows]
        ids = [r[0] for r in rows]
        toks = [self.tokenizer.encode(r[1], where=place) for r, place in zip(rows, places)]
        raw_labels = [r[2] for r in rows]
        try:
            names = sorted(set(raw_labels), key=int)
        except ValueError:
            names = sorted(set(raw_labels))
        self.class_names = names
        labels = np.array([names.index(x) for x in raw_labels])
        if self.split == "column":
            split = np.array([r[3] for r in rows], dtype=object)
        else:
            groups = kmer_groups([r[1] for r in rows], self.group_kmer) if self.split == "grouped" else np.arange(len(rows))
            split = assign_splits(labels, groups, self.val_fraction, self.test_fraction, self.seed)
            if self.split == "grouped":
                log.info("%s: %d sequences in %d groups sharing %d-mers (largest %d)", self.path, len(rows),
                         len(np.unique(groups)), self.group_kmer, np.bincount(groups).max())
        for part in ("train", "val", "test"):
            idx = np.flatnonzero(split == part)
            if len(idx) == 0:
                raise ValueError(f"{self.path}: the {part} split is empty; change the split fractions or column")
            self.sets[part] = SequenceDataset([ids[i] for i in idx], [toks[i] for i in idx], labels[idx].tolist())
            counts = Counter(labels[idx].tolist())
            log.info("%s split: %d sequences, per class %s", part, len(idx),
                     {names[c]: counts.get(c, 0) for c in range(len(names))})

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        dataset = self.sets[part]
        sampler, generator = seeded_loader_sampler(self.trainer, len(dataset), self.batch_size, self.seed, part,
                                                   shuffle)  # this process's shard (data_modules/sharding.py)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, generator=generator,
                          num_workers=self.num_workers, collate_fn=pad_collate(self.tokenizer.pad_id))

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)
