"""LabelledSequenceDataModule: DNA sequences with class labels from a CSV/TSV table.

Variable lengths are batched with right padding and a boolean mask, so pooling can skip padding.
Splits, when the file has none:
- `stratified`: per-label random fractions with a fixed seed;
- `grouped`: sequences that share any k-mer (default 20 bp, either strand) form one group and a
  group never straddles two splits, so near-duplicates can't leak from train into test.
A `split_column` holding train/val/test is used as it is.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .tokenizers import DNATokenizer

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_RC = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def read_table(path: Path, sequence_column: str, label_column: str, id_column: str | None,
               split_column: str | None, where: dict | None):
    """-> list of (id, sequence, label string, split or None, 1-based line); errors name file and line."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        for col in (sequence_column, label_column, id_column, split_column, *(where or {})):
            if col is not None and col not in header:
                raise ValueError(f"{path}: no column {col!r}; the header has {header}")
        for row in reader:
            line = reader.line_num
            if where and any(row[k] != str(v) for k, v in where.items()):
                continue
            seq, label = (row[sequence_column] or "").strip(), (row[label_column] or "").strip()
            if not seq:
                raise ValueError(f"{path}, line {line}: empty sequence; fill it or remove the row")
            if not label:
                raise ValueError(f"{path}, line {line}: empty label; fill it or remove the row")
            split = None
            if split_column is not None:
                split = SPLIT_NAMES.get(row[split_column].strip().lower())
                if split is None:
                    raise ValueError(f"{path}, line {line}: split {row[split_column]!r} is not one of train/val/test")
            ident = row[id_column] if id_column else str(len(rows))
            rows.append((ident, seq, label, split, line))
    if not rows:
        raise ValueError(f"{path}: no rows" + (f" matching {where}" if where else ""))
    return rows


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
    ):
        super().__init__()
        if split not in ("stratified", "grouped", "column"):
            raise ValueError(f"data.split must be stratified, grouped or column, got {split!r}")
        if split == "column" and not split_column:
            raise ValueError("data.split=column needs data.split_column")
        self.path = Path(path).expanduser()
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
            raise ValueError(f"labelled sequence table not found: {self.path}")
        seq_col, label_col, id_col, split_col = self.columns
        rows = read_table(self.path, seq_col, label_col, id_col, split_col if self.split == "column" else None, self.where)
        ids = [r[0] for r in rows]
        toks = [self.tokenizer.encode(r[1], where=f"{self.path}, line {r[4]}") for r in rows]
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
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.sets[part], batch_size=self.batch_size, shuffle=shuffle, generator=g,
                          num_workers=self.num_workers, collate_fn=pad_collate(self.tokenizer.pad_id))

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)
