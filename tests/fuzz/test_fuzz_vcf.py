"""Fuzzing data_modules.variants: the real ClinVar BRCA1 header and a few of its records (bundled
asset), mutated: random field corruption, missing header, multi-allelic ALTs, bad POS, REF
mismatches, random bytes, gzip then corrupted. read_vcf + variant_windows against the bundled
reference must give windows (with mismatches counted in the report and skipped), or a ValueError
naming the file and line. Also read_variant_table on mutated TSV tables.

ci profile: 50 examples per test (6 property tests -> 300 examples) plus regression tests."""

from __future__ import annotations

import gzip
import tempfile
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from data_modules.fasta import open_fasta
from data_modules.variants import read_variant_table, read_vcf, variant_windows

from .conftest import listing, time_limit

ASSETS = Path(str(resources.files("mamba_seq") / "assets"))
CONTIGS = {"17": ["ref_brca1", 43044296]}
WINDOW = 16


def _clinvar_lines(n_records: int = 8) -> tuple[list[str], list[str]]:
    header, records = [], []
    with gzip.open(ASSETS / "clinvar_brca1_GRCh38.vcf.gz", "rt") as f:
        for line in f:
            (header if line.startswith("#") else records).append(line.rstrip("\n"))
            if len(records) >= n_records:
                break
    return header, records


HEADER, RECORDS = _clinvar_lines()
# labelled records keep the whole path (windows) busy: give each one a label ClinVar maps
RECORDS = [r.replace("CLNSIG=Uncertain_significance", "CLNSIG=Pathogenic") for r in RECORDS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    fa = open_fasta(ASSETS / "ref_brca1.fa", tmp_path_factory.mktemp("cache"))
    yield fa
    fa.close()


def parse(path: Path, reference):
    """read_vcf + variant_windows; -> (windows, report) or None after a ValueError naming the file."""
    before = listing(path.parent)
    try:
        with time_limit():
            variants, report = read_vcf(path)
            windows, report = variant_windows(reference, variants, WINDOW, CONTIGS, report)
    except ValueError as err:
        assert str(path) in str(err), err
        return None
    finally:
        assert listing(path.parent) == before
    for w in windows:
        assert len(w.ref_seq) == len(w.alt_seq) == WINDOW
        v = w.variant
        assert w.ref_seq[WINDOW // 2 : WINDOW // 2 + len(v.ref)].upper() == v.ref.upper()[: WINDOW - WINDOW // 2]
    assert report.kept == len(windows)
    return windows, report


FIELD_VALUES = st.sampled_from(["", ".", "-1", "0", "abc", "1e3", "43044315.5", "99999999999", "A", "N",
                                "ACGTX", "<DEL>", "*", "A,C,G", "A,,C", "T]17:43044400]", "ñ", "\x00",
                                "CLNSIG=Benign", "CLNSIG", "CLNSIG=", ";;", "=", "chr17", "MT", "4_3044315",
                                " 43044315"])


@st.composite
def mutated_vcf(draw):
    header = list(HEADER)
    records = [r.split("\t") for r in draw(st.lists(st.sampled_from(RECORDS), min_size=1, max_size=6))]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["field", "drop_field", "add_field", "multi_allelic", "pos_shift",
                                     "ref_mismatch", "drop_header", "drop_chrom_line", "swap_header",
                                     "bytes"]))
        r = draw(st.integers(0, len(records) - 1))
        if kind == "field":
            records[r][draw(st.integers(0, 7))] = draw(FIELD_VALUES)
        elif kind == "drop_field":
            del records[r][draw(st.integers(0, len(records[r]) - 1))]
        elif kind == "add_field":
            records[r].append(draw(FIELD_VALUES))
        elif kind == "multi_allelic" and len(records[r]) > 4:
            records[r][4] += "," + draw(st.sampled_from(["A", "C", "GT", "<DUP>", "*"]))
        elif kind == "pos_shift" and len(records[r]) > 1 and records[r][1].isdigit():
            records[r][1] = str(int(records[r][1]) + draw(st.integers(-100000, 100000)))
        elif kind == "ref_mismatch" and len(records[r]) > 3:
            records[r][3] = draw(st.text("ACGT", min_size=1, max_size=5))
        elif kind == "drop_header":
            header = [h for h in header if not h.startswith("##")]
        elif kind == "drop_chrom_line":
            header = [h for h in header if not h.startswith("#CHROM")]
        elif kind == "swap_header":
            header = header[-1:] + header[:-1]
        elif kind == "bytes":
            i = draw(st.integers(0, len(records[r]) - 1))
            records[r][i] = records[r][i] + draw(st.text(max_size=3))
    return ("\n".join(header + ["\t".join(f) for f in records]) + "\n").encode("utf-8", "surrogatepass")


@given(mutated_vcf(), st.sampled_from(["plain", "gzip"]))
def test_mutated_vcf(data, how):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.vcf" if how == "plain" else "x.vcf.gz")
        path.write_bytes(data if how == "plain" else gzip.compress(data))
        parse(path, pytest.reference)


@pytest.fixture(autouse=True)
def _ref(reference):
    pytest.reference = reference  # hypothesis-wrapped tests take no fixtures here
    yield


@given(st.lists(st.sampled_from(RECORDS), min_size=1, max_size=6), st.lists(st.text("ACGT", min_size=1, max_size=4),
                                                                             min_size=1, max_size=6))
def test_ref_mismatches_are_counted_not_fatal(records, refs):
    """Valid records with a random REF: parse; each mismatch is counted and skipped, never used."""
    rows = []
    for rec, ref in zip(records, refs):
        f = rec.split("\t")
        f[3] = ref
        rows.append("\t".join(f))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.vcf"
        path.write_text("\n".join(HEADER + rows) + "\n")
        windows, report = parse(path, pytest.reference)
        variants, _ = read_vcf(path)
        assert len(windows) + report.skipped["REF does not match the reference"] == len(variants)


@given(mutated_vcf(), st.data())
def test_corrupted_gzip_vcf(data, draw):
    raw = bytearray(gzip.compress(data))
    if draw.draw(st.booleans(), label="truncate"):
        raw = raw[: draw.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        i = draw.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i] ^= draw.draw(st.integers(1, 255), label="xor")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.vcf.gz"
        path.write_bytes(bytes(raw))
        parse(path, pytest.reference)


@given(st.binary(max_size=300))
def test_random_bytes_vcf(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.vcf"
        path.write_bytes(data)
        parse(path, pytest.reference)


@given(st.lists(st.lists(FIELD_VALUES, min_size=0, max_size=6), max_size=5),
       st.sampled_from(["chrom\tpos\tref\talt\tlabel", "chrom\tpos\tref\talt", "pos\tref\talt\tlabel", ""]))
def test_mutated_variant_table(rows, header):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.tsv"
        path.write_text("\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
        try:
            with time_limit():
                variants, report = read_variant_table(path)
                variant_windows(pytest.reference, variants, WINDOW, CONTIGS, report)
        except ValueError as err:
            assert str(path) in str(err), err


@given(st.sampled_from(RECORDS), st.one_of(FIELD_VALUES, st.text(max_size=12)))
def test_bad_pos_names_file_and_line(record, pos):
    """Any POS: an integer >= 1 written in plain digits parses as that number; anything else is a
    ValueError naming the file and the line."""
    f = record.split("\t")
    f[1] = pos
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.vcf"
        path.write_bytes(("\n".join(HEADER + ["\t".join(f)]) + "\n").encode("utf-8", "surrogatepass"))
        line = len(HEADER) + 1
        try:
            variants, _ = read_vcf(path, label_key=None)
        except ValueError as err:
            shifted = any(c in pos for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # a line break in POS
            assert f"{path}:{line}" in str(err) or (shifted and f"{path}:" in str(err)), err
            return
        if variants:
            assert pos.isascii() and pos.isdigit() and int(pos) >= 1, pos
            assert variants[0].pos == int(pos)


# -- regression tests: failing examples the fuzzing found ----------------------------------------


@pytest.mark.parametrize("pos", ["4_3044315", " 43044315", "43044315 ", "\u0664\u0663"])
def test_regression_pos_not_plain_digits(tmp_path, pos):
    """int() accepts '4_3044315', surrounding spaces and non-ASCII digits: such a POS was silently
    read as a number instead of failing with the file and line."""
    f = RECORDS[0].split("\t")
    f[1] = pos
    path = tmp_path / "x.vcf"
    path.write_text("\n".join(HEADER + ["\t".join(f)]) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:{len(HEADER) + 1}: POS"):
        read_vcf(path)
