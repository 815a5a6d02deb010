"""Variants from a VCF or a table, checked against a reference FASTA, as ref/alt windows.

* VCF: plain text, plain gzip or bgzip (gzip reads both: bgzip is multi-member gzip). Multi-allelic
  records are split into one variant per ALT; symbolic (`<DEL>`), spanning-deletion (`*`) and
  breakend alleles have no sequence and are skipped and counted.
* Table (TSV/CSV): columns chrom, pos, ref, alt and optionally label and id (names configurable).
* Labels: from a table column, or from a VCF INFO key mapped to classes (ClinVar CLNSIG by
  default: pathogenic 1, benign 0); other values are excluded and counted by value.
* Positions are VCF-style: 1-based, REF starting at POS. Contig names are matched to the FASTA's
  records directly, through `contigs` (an explicit map, optionally with an offset for a FASTA
  that holds only a region), or through the usual aliases (`17` / `chr17`, `MT` / `chrM`).
* REF is checked against the reference, case-insensitively: a mismatch is counted, reported with
  examples and skipped, never used.

Every parse error is a `ValueError` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# ClinVar CLNSIG -> class; conflicting, uncertain, risk factors etc. are excluded (and counted)
CLNSIG_LABELS = {
    "Pathogenic": 1, "Likely_pathogenic": 1, "Pathogenic/Likely_pathogenic": 1,
    "Benign": 0, "Likely_benign": 0, "Benign/Likely_benign": 0,
}
_ALLELE = re.compile(r"^[ACGTNacgtn]+$")
_IUPAC = re.compile(r"^[ACGTNRYSWKMBDHVacgtnryswkmbdhv]+$")
_DIGITS = re.compile(r"[0-9]{1,15}\Z")  # a position as written in a file (re.match anchors the start)


@dataclass(frozen=True)
class Variant:
    chrom: str
    pos: int  # 1-based position of the first REF base
    ref: str
    alt: str
    label: int | None = None
    id: str = "."
    line: int = 0  # 1-based line in its source file
    info: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def kind(self) -> str:
        if len(self.ref) == len(self.alt) == 1:
            return "SNV"
        if len(self.ref) == len(self.alt):
            return "MNV"
        return "indel"


@dataclass
class VariantReport:
    """What a reader kept and what it left out, and why."""
    source: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    excluded_labels: Counter = field(default_factory=Counter)  # unmapped label value -> count
    examples: dict = field(default_factory=dict)  # reason -> a few "line N: ..." strings

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(example)

    def summary(self) -> str:
        parts = [f"{self.source}: kept {self.kept}"]
        parts += [f"skipped {n} ({reason}; e.g. {'; '.join(self.examples.get(reason, [])[:2])})"
                  for reason, n in self.skipped.most_common()]
        if self.excluded_labels:
            parts.append("excluded labels " + ", ".join(f"{k} {v}" for k, v in self.excluded_labels.most_common()))
        return "; ".join(parts)


def _open_text(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8", errors="strict")


def _parse_info(text: str) -> dict:
    if text in (".", ""):
        return {}
    out = {}
    for item in text.split(";"):
        if not item:
            continue
        k, _, v = item.partition("=")
        out[k] = v if _ else True
    return out


def read_vcf(path: str | Path, label_key: str | None = "CLNSIG", label_map: dict | None = None,
             report: VariantReport | None = None) -> tuple[list[Variant], VariantReport]:
    """Variants of a VCF (one per ALT). With `label_key`, the label is INFO[label_key] mapped by
    `label_map` (default `CLNSIG_LABELS`); records whose value is unmapped are excluded and counted."""
    path = Path(path)
    label_map = CLNSIG_LABELS if label_map is None else label_map
    report = report or VariantReport(str(path))
    out: list[Variant] = []
    seen_header = False
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.startswith("##"):
                    continue
                if line.startswith("#"):
                    cols = line[1:].split("\t")
                    if cols[:5] != ["CHROM", "POS", "ID", "REF", "ALT"]:
                        raise ValueError(f"{path}:{lineno}: the header line must start #CHROM POS ID REF ALT, got "
                                         f"{line[:60]!r}")
                    seen_header = True
                    continue
                if not line.strip():
                    continue
                if not seen_header:
                    raise ValueError(f"{path}:{lineno}: a record before the #CHROM header line (is this a VCF?)")
                fields = line.split("\t")
                if len(fields) < 8:
                    raise ValueError(f"{path}:{lineno}: {len(fields)} tab-separated columns, a VCF record has at "
                                     f"least 8 (CHROM POS ID REF ALT QUAL FILTER INFO)")
                chrom, pos_s, vid, ref, alts = fields[:5]
                # plain ASCII digits only: int() would also take '4_3044315', ' 12' and non-ASCII digits
                if not _DIGITS.match(pos_s):
                    raise ValueError(f"{path}:{lineno}: POS {pos_s!r} is not an integer")
                pos = int(pos_s)
                if pos < 1:
                    raise ValueError(f"{path}:{lineno}: POS {pos} (VCF positions are 1-based)")
                if not _IUPAC.match(ref):
                    raise ValueError(f"{path}:{lineno}: REF {ref[:20]!r} is not a DNA sequence")
                info = _parse_info(fields[7])
                label = None
                if label_key is not None:
                    value = info.get(label_key)
                    if value not in label_map:
                        report.excluded_labels[str(value) if value is not None else f"no {label_key}"] += 1
                        continue
                    label = int(label_map[value])
                for alt in alts.split(","):
                    if not _ALLELE.match(ref) or not _ALLELE.match(alt):
                        why = "symbolic or non-sequence allele" if not _ALLELE.match(alt) else "IUPAC code in REF"
                        report.skip(why, f"line {lineno}: {ref[:10]}>{alt[:20]}")
                        continue
                    out.append(Variant(chrom, pos, ref, alt, label, vid, lineno, info))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable after line {lineno} ({type(e).__name__}: {e}); "
                         f"is the file truncated or not a (b)gzip/plain VCF?") from None
    if not seen_header:
        raise ValueError(f"{path}: no #CHROM header line; not a VCF")
    report.kept += len(out)
    return out, report


def read_variant_table(path: str | Path, chrom_column: str = "chrom", pos_column: str = "pos",
                       ref_column: str = "ref", alt_column: str = "alt", label_column: str | None = "label",
                       id_column: str | None = None, label_map: dict | None = None,
                       report: VariantReport | None = None) -> tuple[list[Variant], VariantReport]:
    """Variants of a TSV/CSV table with a header. Labels: integers, or strings mapped by
    `label_map` (unmapped values are excluded and counted)."""
    path = Path(path)
    report = report or VariantReport(str(path))
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    out: list[Variant] = []
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        used = {c for c in (chrom_column, pos_column, ref_column, alt_column, label_column, id_column) if c}
        for col in used:
            if col not in header:
                raise ValueError(f"{path}:1: no column {col!r}; the header has {header}")
        for row in reader:
            lineno = reader.line_num
            if None in row or any(row[c] is None for c in header):
                raise ValueError(f"{path}:{lineno}: {len([v for v in row.values() if v is not None])} fields, "
                                 f"the header has {len(header)}")
            if not _DIGITS.match(row[pos_column]):  # as in read_vcf: plain ASCII digits only
                raise ValueError(f"{path}:{lineno}: {pos_column} {row[pos_column]!r} is not an integer")
            pos = int(row[pos_column])
            if pos < 1:
                raise ValueError(f"{path}:{lineno}: {pos_column} {pos} (positions are 1-based)")
            ref, alt = row[ref_column], row[alt_column]
            label = None
            if label_column is not None:
                raw = row[label_column].strip()
                if label_map is not None:
                    if raw not in label_map:
                        report.excluded_labels[raw] += 1
                        continue
                    label = int(label_map[raw])
                else:
                    try:
                        label = int(raw)
                    except ValueError:
                        raise ValueError(f"{path}:{lineno}: label {raw!r} is not an integer (give a label_map "
                                         f"for named classes)") from None
            if not _ALLELE.match(ref) or not _ALLELE.match(alt):
                report.skip("non-sequence allele", f"line {lineno}: {ref[:10]}>{alt[:20]}")
                continue
            vid = row[id_column] if id_column else f"{row[chrom_column]}:{pos}:{ref}>{alt}"
            info = {k: v for k, v in row.items() if k not in used}  # the other columns, as a VCF's INFO
            out.append(Variant(row[chrom_column], pos, ref, alt, label, vid, lineno, info))
    report.kept += len(out)
    return out, report


def _aliases(chrom: str) -> list[str]:
    base = chrom[3:] if chrom.lower().startswith("chr") else chrom
    names = [chrom, base, "chr" + base]
    if base.upper() in ("M", "MT"):
        names += ["MT", "M", "chrM", "chrMT"]
    return names


class ReferenceMap:
    """(chrom, 1-based pos) of a variant -> (FASTA record, 0-based offset). `contigs` maps a
    variant contig to a record name, or to [record name, first position], when the record holds a
    region starting at that 1-based position of the contig (e.g. {"17": ["ref_brca1", 43044296]})."""

    def __init__(self, record_lengths: dict[str, int], contigs: dict | None = None):
        self.lengths = dict(record_lengths)
        self.contigs = {}
        for k, v in (contigs or {}).items():
            name, first = (v, 1) if isinstance(v, str) else (str(v[0]), int(v[1]))
            if name not in self.lengths:
                raise ValueError(f"contigs: {k!r} -> record {name!r}, which the reference does not have; "
                                 f"records: {list(self.lengths)[:20]}")
            self.contigs[str(k)] = (name, first)

    def locate(self, chrom: str, pos: int) -> tuple[str, int] | None:
        for alias in _aliases(chrom):
            if alias in self.contigs:
                name, first = self.contigs[alias]
                return name, pos - first
        for alias in _aliases(chrom):
            if alias in self.lengths:
                return alias, pos - 1
        return None


@dataclass(frozen=True)
class VariantWindow:
    variant: Variant
    ref_seq: str
    alt_seq: str
    centre: int  # index of the variant's first base in both windows


def variant_windows(fasta, variants: list[Variant], window: int, contigs: dict | None = None,
                    report: VariantReport | None = None) -> tuple[list[VariantWindow], VariantReport]:
    """Windows of `window` bases for REF and ALT, the variant's first base at index window // 2.
    The ALT window is the same left flank, the ALT allele, then the reference after REF, cut to
    `window`; positions past a contig end are N. `fasta`: a `data_modules.fasta.FastaFile`."""
    if window < 2:
        raise ValueError(f"window={window}: a variant window needs at least 2 bases")
    report = report or VariantReport(str(getattr(fasta, "source", "reference")))
    ref_map = ReferenceMap(fasta.lengths, contigs)
    half = window // 2
    out = []
    for v in variants:
        where = ref_map.locate(v.chrom, v.pos)
        if where is None:
            report.skip("contig not in the reference", f"line {v.line}: {v.chrom}")
            continue
        name, p0 = where
        length = fasta.lengths[name]
        if p0 < 0 or p0 + len(v.ref) > length:
            report.skip("outside the reference", f"line {v.line}: {v.chrom}:{v.pos}")
            continue
        found = fasta.fetch(name, p0, p0 + len(v.ref))
        if found.upper() != v.ref.upper():
            report.skip("REF does not match the reference", f"line {v.line}: {v.chrom}:{v.pos} REF {v.ref[:10]} "
                        f"but the reference has {found[:10]}")
            continue
        start = p0 - half
        left = "N" * max(0, -start) + fasta.fetch(name, max(0, start), p0)
        right_len = window - half  # bases from the variant on, enough for either allele's window
        tail = fasta.fetch(name, p0 + len(v.ref), min(length, p0 + len(v.ref) + right_len))
        ref_seq = (left + v.ref + tail)[:window]
        alt_seq = (left + v.alt + tail)[:window]
        ref_seq += "N" * (window - len(ref_seq))
        alt_seq += "N" * (window - len(alt_seq))
        out.append(VariantWindow(v, ref_seq, alt_seq, half))
    report.kept = len(out)
    if report.skipped:
        log.warning(report.summary())
    return out, report
