"""Variant readers and ref/alt windows, on the real BRCA1 ClinVar set and on small crafted files."""

from __future__ import annotations

import csv
import gzip
from collections import Counter

import pytest
from Bio import bgzf

from data_modules.fasta import open_fasta
from data_modules.variants import CLNSIG_LABELS, Variant, read_variant_table, read_vcf, variant_windows

BRCA1_FIRST = 43_044_296  # GRCh38 chr17 position of ref_brca1.fa's first base (shared/data/README.md)
HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


@pytest.fixture(scope="module")
def brca1(shared_data):
    return shared_data / "variants" / "brca1_clinvar"


def test_clinvar_vcf_labels_and_every_ref_matches(brca1, tmp_path):
    variants, rep = read_vcf(brca1 / "clinvar_brca1_GRCh38.vcf.gz")
    # an independent count of CLNSIG values straight from the text
    clnsig = Counter()
    with gzip.open(brca1 / "clinvar_brca1_GRCh38.vcf.gz", "rt") as f:
        for line in f:
            if not line.startswith("#"):
                info = dict(kv.split("=", 1) for kv in line.split("\t")[7].strip().split(";") if "=" in kv)
                clnsig[info.get("CLNSIG")] += 1
    n_labelled = sum(n for k, n in clnsig.items() if k in CLNSIG_LABELS)
    assert len(variants) + sum(rep.skipped.values()) == n_labelled
    assert sum(rep.excluded_labels.values()) == sum(clnsig.values()) - n_labelled
    n_pathogenic = sum(n for k, n in clnsig.items() if CLNSIG_LABELS.get(k) == 1)
    assert 0 <= n_pathogenic - Counter(v.label for v in variants)[1] <= sum(rep.skipped.values())

    fasta = open_fasta(brca1 / "ref_brca1.fa", cache_dir=tmp_path)
    windows, wrep = variant_windows(fasta, variants, 64, contigs={"17": ["ref_brca1", BRCA1_FIRST]})
    assert not wrep.skipped, wrep.summary()  # the README: all REF alleles match with this offset
    assert len(windows) == len(variants)


def test_labelled_table_agrees_with_the_vcf(brca1):
    table, _ = read_variant_table(brca1 / "clinvar_brca1_labeled.tsv", pos_column="pos_grch38",
                                  id_column="clinvar_variation_id")
    vcf, _ = read_vcf(brca1 / "clinvar_brca1_GRCh38.vcf.gz")
    by_id = {(v.id, v.ref, v.alt): v for v in vcf}
    matched = [by_id[(t.id, t.ref, t.alt)] for t in table if (t.id, t.ref, t.alt) in by_id]
    assert len(matched) > 0.9 * len(table)
    for t in table:
        v = by_id.get((t.id, t.ref, t.alt))
        if v is not None:
            assert (v.pos, v.label) == (t.pos, t.label), t.id


def test_windows_centre_the_variant(brca1, tmp_path):
    fasta = open_fasta(brca1 / "ref_brca1.fa", cache_dir=tmp_path)
    seq = fasta.fetch("ref_brca1", 0, fasta.lengths["ref_brca1"])
    p = 1000  # 1-based in the record
    snv = Variant("ref_brca1", p, seq[p - 1], "A" if seq[p - 1].upper() != "A" else "C")
    dele = Variant("ref_brca1", p, seq[p - 1:p + 3], seq[p - 1])
    ins = Variant("ref_brca1", p, seq[p - 1], seq[p - 1] + "GGG")
    edge = Variant("ref_brca1", 2, seq[1], "T" if seq[1].upper() != "T" else "G")
    w, rep = variant_windows(fasta, [snv, dele, ins, edge], 21)
    assert not rep.skipped
    s, d, i, e = w
    assert s.ref_seq == seq[p - 11:p + 10] and s.centre == 10
    assert s.alt_seq == s.ref_seq[:10] + snv.alt + s.ref_seq[11:]
    assert d.alt_seq == seq[p - 11:p] + seq[p + 3:p + 13]  # the 3 deleted bases close up
    assert i.alt_seq == (seq[p - 11:p] + "GGG" + seq[p:])[:21]
    assert e.ref_seq == "N" * 9 + seq[:12] and e.alt_seq[10] == edge.alt  # N before the contig start
    assert all(len(x.ref_seq) == len(x.alt_seq) == 21 for x in w)


def test_ref_mismatch_is_counted_and_skipped(brca1, tmp_path):
    fasta = open_fasta(brca1 / "ref_brca1.fa", cache_dir=tmp_path)
    base = fasta.fetch("ref_brca1", 99, 100)
    wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}[base.upper()]
    good = Variant("17", BRCA1_FIRST + 99, base, wrong, line=3)
    bad = Variant("17", BRCA1_FIRST + 99, wrong, base, line=4)
    missing = Variant("chr5", 10, "A", "C", line=5)
    w, rep = variant_windows(fasta, [good, bad, missing], 16, contigs={"chr17": ["ref_brca1", BRCA1_FIRST]})
    assert [x.variant for x in w] == [good]  # "17" found through the chr17 alias
    assert rep.skipped == Counter({"REF does not match the reference": 1, "contig not in the reference": 1})
    assert "line 4" in rep.examples["REF does not match the reference"][0]


@pytest.mark.parametrize("compression", ["plain", "gzip", "bgzip"])
def test_vcf_compressions_and_multiallelic(tmp_path, compression):
    body = HEADER + ("chr1\t5\trs1\tA\tC,<DEL>,G\t.\t.\tCLNSIG=Pathogenic\n"
                     "chr1\t9\t.\tAT\tA\t.\t.\tCLNSIG=Uncertain_significance\n"
                     "chr1\t12\t.\tG\tGTT\t.\tPASS\tCLNSIG=Benign;FLAG\n")
    path = tmp_path / ("x.vcf" + ("" if compression == "plain" else ".gz"))
    if compression == "plain":
        path.write_text(body)
    elif compression == "gzip":
        with gzip.open(path, "wt") as f:
            f.write(body)
    else:
        with bgzf.BgzfWriter(str(path), "wb") as f:
            f.write(body.encode())
    vs, rep = read_vcf(path)
    assert [(v.pos, v.ref, v.alt, v.label, v.kind) for v in vs] == [
        (5, "A", "C", 1, "SNV"), (5, "A", "G", 1, "SNV"), (12, "G", "GTT", 0, "indel")]
    assert rep.skipped["symbolic or non-sequence allele"] == 1
    assert rep.excluded_labels == Counter({"Uncertain_significance": 1})


@pytest.mark.parametrize("text,where", [
    ("chr1\t5\t.\tA\n", ":3:"),  # too few columns
    ("chr1\tfive\t.\tA\tC\t.\t.\t.\n", ":3:"),  # POS not a number
    ("chr1\t0\t.\tA\tC\t.\t.\t.\n", ":3:"),  # 0-based POS
    ("chr1\t5\t.\tA?\tC\t.\t.\t.\n", ":3:"),  # REF not DNA
])
def test_malformed_vcf_names_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.vcf"
    path.write_text(HEADER + text)
    with pytest.raises(ValueError, match="bad.vcf" + where):
        read_vcf(path, label_key=None)


def test_truncated_gzip_vcf_is_a_clear_error(tmp_path):
    path = tmp_path / "t.vcf.gz"
    with gzip.open(path, "wt") as f:
        f.write(HEADER + "".join(f"chr1\t{i}\t.\tA\tC\t.\t.\t.\n" for i in range(1, 5000)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.vcf.gz: unreadable after line"):
        read_vcf(path, label_key=None)


def test_table_errors_and_named_labels(tmp_path):
    path = tmp_path / "v.tsv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerows([["chrom", "pos", "ref", "alt", "label"], ["1", "3", "A", "C", "pathogenic"],
                     ["1", "4", "G", "T", "benign"], ["1", "5", "G", "T", "VUS"]])
    vs, rep = read_variant_table(path, label_map={"pathogenic": 1, "benign": 0})
    assert [(v.pos, v.label) for v in vs] == [(3, 1), (4, 0)] and rep.excluded_labels == Counter({"VUS": 1})
    with pytest.raises(ValueError, match="v.tsv:2: label 'pathogenic' is not an integer"):
        read_variant_table(path)
    with pytest.raises(ValueError, match="v.tsv:1: no column 'position'"):
        read_variant_table(path, pos_column="position")
