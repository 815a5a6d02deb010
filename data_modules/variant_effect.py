"""VariantDataModule: labelled variants (VCF or table) as REF/ALT windows of a reference, split
into train/val/test by genomic block.

Split: `block` (default) puts whole blocks of `block_size` bases (by the variant's position) on one
side, so no test variant shares a position, or its neighbourhood, with a training variant
(on a random split of the BRCA1 ClinVar set nearly half the test variants share a position with
a training one); `random` splits variants one by one, for comparison. Both balance the labels per
split with a fixed seed (`labelled_sequences.assign_splits`).

Annotation for evaluation only (never a feature: ClinVar's consequence leaks the label): with
`annotation_key` (a VCF INFO key such as ClinVar's MC) or `annotation_column` (a table column)
each variant is `coding` when any of its Sequence Ontology consequences changes a codon (missense,
synonymous, nonsense, frameshift, in-frame, start/stop), else `non-coding`.

Batches: {"ref_ids", "alt_ids": (B, window) int64, "labels": (B,) int64, "centre": index of the
variant's first base, "kind": SNV/MNV/indel, "region": coding/non-coding/unknown, "id", "chrom",
"pos", "ref", "alt": lists}.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .fasta import open_fasta
from .labelled_sequences import assign_splits
from .sharding import seeded_loader_sampler
from .tokenizers import DNATokenizer
from .variants import CLNSIG_LABELS, VariantWindow, read_variant_table, read_vcf, variant_windows

log = logging.getLogger(__name__)

CODING_CONSEQUENCES = {
    "missense_variant", "synonymous_variant", "nonsense", "stop_gained", "stop_lost", "stop_retained_variant",
    "frameshift_variant", "inframe_indel", "inframe_deletion", "inframe_insertion", "initiator_codon_variant",
    "start_lost", "coding_sequence_variant", "protein_altering_variant",
}
SPLITS = ("block", "random")


def coding_region(annotation: str | None) -> str:
    """'coding' / 'non-coding' from a consequence list such as ClinVar's MC
    (`SO:0001583|missense_variant,SO:0001627|intron_variant`); 'unknown' when there is none."""
    if not annotation or annotation == ".":
        return "unknown"
    terms = {part.split("|")[-1].strip() for part in annotation.split(",")}
    return "coding" if terms & CODING_CONSEQUENCES else "non-coding"


class VariantWindows(Dataset):
    def __init__(self, windows: list[VariantWindow], regions: list[str], tokenizer: DNATokenizer, source: str):
        self.windows, self.regions, self.tokenizer, self.source = windows, regions, tokenizer, source

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        w = self.windows[i]
        v = w.variant
        where = f"{self.source}, line {v.line}"
        return {
            "ref_ids": torch.from_numpy(self.tokenizer.encode(w.ref_seq, where=where)),
            "alt_ids": torch.from_numpy(self.tokenizer.encode(w.alt_seq, where=where)),
            "labels": v.label, "centre": w.centre, "kind": v.kind, "region": self.regions[i],
            "id": v.id, "chrom": v.chrom, "pos": v.pos, "ref": v.ref, "alt": v.alt,
        }


def collate_variants(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in ("ref_ids", "alt_ids")}
    out["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
    out["centre"] = torch.tensor([it["centre"] for it in items], dtype=torch.long)
    for k in ("kind", "region", "id", "chrom", "pos", "ref", "alt"):
        out[k] = [it[k] for it in items]
    return out


class VariantDataModule(pl.LightningDataModule):
    def __init__(
        self,
        variants: str,
        reference: str,
        window: int = 1024,
        contigs: dict | None = None,
        label_key: str = "CLNSIG",
        label_map: dict | None = None,
        label_column: str = "label",
        chrom_column: str = "chrom",
        pos_column: str = "pos",
        ref_column: str = "ref",
        alt_column: str = "alt",
        id_column: str | None = None,
        annotation_key: str | None = "MC",
        annotation_column: str | None = None,
        kinds: list[str] | None = None,
        split: str = "block",
        block_size: int = 1000,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        predict_split: str = "test",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {split!r}")
        if predict_split not in ("train", "val", "test", "all"):
            raise ValueError(f"data.predict_split must be train, val, test or all, got {predict_split!r}")
        unknown_kinds = set(kinds or []) - {"SNV", "MNV", "indel"}
        if unknown_kinds:
            raise ValueError(f"data.kinds takes SNV, MNV, indel; got {sorted(unknown_kinds)}")
        if block_size < 1 or window < 2:
            raise ValueError(f"data.block_size must be >= 1 and data.window >= 2, got {block_size}, {window}")
        self.variants_path, self.reference_path = Path(variants).expanduser(), Path(reference).expanduser()
        self.window, self.contigs = window, dict(contigs) if contigs else None
        self.label_key, self.label_map = label_key, dict(label_map) if label_map else None
        self.table_columns = dict(chrom_column=chrom_column, pos_column=pos_column, ref_column=ref_column,
                                  alt_column=alt_column, label_column=label_column, id_column=id_column)
        self.annotation_key, self.annotation_column = annotation_key, annotation_column
        self.kinds = list(kinds) if kinds else None
        self.split, self.block_size = split, block_size
        self.val_fraction, self.test_fraction, self.predict_split = val_fraction, test_fraction, predict_split
        self.batch_size, self.num_workers, self.seed, self.cache_dir = batch_size, num_workers, seed, cache_dir
        self.tokenizer = DNATokenizer()
        self.sets: dict[str, VariantWindows] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def num_classes(self) -> int:
        return 2

    def _read(self):
        path = self.variants_path
        if not path.is_file():
            raise ValueError(f"variant file not found: {path}")
        name = path.name.lower()
        if name.endswith((".vcf", ".vcf.gz", ".vcf.bgz")):
            label_map = self.label_map if self.label_map is not None else CLNSIG_LABELS
            variants, report = read_vcf(path, label_key=self.label_key, label_map=label_map)
            key = self.annotation_key
        else:
            variants, report = read_variant_table(path, label_map=self.label_map, **self.table_columns)
            key = self.annotation_column
            if key and variants and key not in variants[0].info:
                raise ValueError(f"{path}: no column {key!r} (data.annotation_column); other columns: "
                                 f"{sorted(variants[0].info)}")
        annotations = [v.info.get(key) if key else None for v in variants]  # INFO key or table column
        return variants, annotations, report

    def setup(self, stage: str | None = None):
        if self.sets:
            return
        variants, annotations, report = self._read()
        region_of = {id(v): coding_region(a) for v, a in zip(variants, annotations)}
        unlabelled = sum(v.label is None for v in variants)
        variants = [v for v in variants if v.label is not None]
        if self.kinds:
            dropped = Counter(v.kind for v in variants if v.kind not in self.kinds)
            variants = [v for v in variants if v.kind in self.kinds]
            log.info("data.kinds=%s: left out %s", self.kinds, dict(dropped))
        fasta = open_fasta(self.reference_path, self.cache_dir)
        windows, report = variant_windows(fasta, variants, self.window, self.contigs, report)
        if unlabelled:
            log.info("%s: %d variants without a label left out", self.variants_path, unlabelled)
        if not report.skipped:  # variant_windows has logged it otherwise
            log.info(report.summary())
        if not windows:
            raise ValueError(f"{self.variants_path}: no labelled variant matched the reference {self.reference_path}")
        labels = np.array([w.variant.label for w in windows])
        if set(labels.tolist()) - {0, 1}:
            raise ValueError(f"{self.variants_path}: labels must be 0/1, got {sorted(set(labels.tolist()))}")
        if self.split == "block":
            blocks = [(w.variant.chrom, (w.variant.pos - 1) // self.block_size) for w in windows]
            index = {b: i for i, b in enumerate(dict.fromkeys(blocks))}
            groups = np.array([index[b] for b in blocks])
        else:
            groups = np.arange(len(windows))
        split = assign_splits(labels, groups, self.val_fraction, self.test_fraction, self.seed)
        source = str(self.variants_path)
        for part in ("train", "val", "test"):
            idx = np.flatnonzero(split == part)
            if len(idx) == 0 or len(set(labels[idx].tolist())) < 2:
                raise ValueError(f"{source}: the {part} split has {len(idx)} variants and not both labels; "
                                 f"change data.val_fraction/test_fraction or data.block_size")
            ws = [windows[i] for i in idx]
            self.sets[part] = VariantWindows(ws, [region_of[id(w.variant)] for w in ws], self.tokenizer, source)
            log.info("%s split: %d variants (%s), kinds %s, regions %s", part, len(ws),
                     dict(Counter("pathogenic" if w.variant.label else "benign" for w in ws)),
                     dict(Counter(w.variant.kind for w in ws)), dict(Counter(self.sets[part].regions)))

    def _loader(self, dataset, split: str, shuffle: bool) -> DataLoader:
        sampler, generator = seeded_loader_sampler(self.trainer, len(dataset), self.batch_size, self.seed, split,
                                                   shuffle)  # this process's shard (data_modules/sharding.py)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, generator=generator,
                          num_workers=self.num_workers, collate_fn=collate_variants)

    def train_dataloader(self):
        return self._loader(self.sets["train"], "train", True)

    def val_dataloader(self):
        return self._loader(self.sets["val"], "val", False)

    def test_dataloader(self):
        return self._loader(self.sets["test"], "test", False)

    def predict_dataloader(self):
        if self.predict_split == "all":
            parts = [self.sets[p] for p in ("train", "val", "test")]
            dataset = torch.utils.data.ConcatDataset(parts)
        else:
            dataset = self.sets[self.predict_split]
        return self._loader(dataset, f"{self.predict_split} (data.predict_split)", False)
