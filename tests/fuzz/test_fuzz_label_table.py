"""Fuzzing data_modules.labelled_sequences: CSV/TSV `sequence,label` tables (random quoting, BOMs,
CRLF, missing columns and cells, empty labels, non-ACGT characters, random bytes) and FASTA + label
tables. A table parses as an independent oracle (the csv module over the same rows) says, or fails
with a ValueError naming the file (and the line, for a fault in a row).

ci profile: 50 examples per test (4 property tests -> 200 examples) plus regression tests."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from data_modules.labelled_sequences import LabelledSequenceDataModule, read_table

from .conftest import listing, time_limit

DNA = st.text("ACGTNacgtnRY", min_size=1, max_size=30)
LABELS = st.sampled_from(["0", "1", "pos", "neg", " 1 ", "x y"])
QUOTING = [csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]


def table_text(rows, delimiter, quoting, eol, header=("sequence", "label")) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, quoting=quoting, lineterminator=eol)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def parse_or_valueerror(path: Path, **kw):
    """Full setup (table, tokenizer, split). -> the data module, or None after a ValueError naming the file."""
    dm = LabelledSequenceDataModule(str(path), split="stratified", val_fraction=0.34, test_fraction=0.33, **kw)
    before = listing(path.parent)
    try:
        with time_limit():
            dm.setup()
    except ValueError as err:
        assert str(path) in str(err), err
        dm = None
    assert listing(path.parent) == before
    return dm


@given(st.lists(st.tuples(DNA, LABELS), min_size=1, max_size=12), st.sampled_from([",", "\t"]),
       st.sampled_from(QUOTING), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_valid_table_matches_oracle(rows, delimiter, quoting, eol, bom):
    suffix = ".csv" if delimiter == "," else ".tsv"
    text = table_text(rows, delimiter, quoting, eol)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"t{suffix}"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        with time_limit():
            got = read_table(path, "sequence", "label", None, None, None)
        assert [(s, lab, line) for _, s, lab, _, line in got] == [
            (s.strip(), lab.strip(), i + 2) for i, (s, lab) in enumerate(rows)]


@st.composite
def mutated_table(draw):
    rows = [list(r) for r in draw(st.lists(st.tuples(DNA, LABELS), min_size=1, max_size=10))]
    header = ["sequence", "label"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop_cell", "empty_label", "empty_seq", "bad_char", "extra_cell",
                                     "drop_header_col", "rename_header", "quote", "blank_row"]))
        i = draw(st.integers(0, len(rows) - 1))
        if kind == "drop_cell":
            rows[i] = rows[i][:1]
        elif kind == "empty_label" and len(rows[i]) > 1:
            rows[i][1] = draw(st.sampled_from(["", "  "]))
        elif kind == "empty_seq" and rows[i]:
            rows[i][0] = ""
        elif kind == "bad_char" and rows[i]:
            rows[i][0] += draw(st.sampled_from(["X", "-", "*", "é", "\x00", " ", "\u2603"]))
        elif kind == "extra_cell":
            rows[i].append("extra")
        elif kind == "drop_header_col":
            header = header[:1]
        elif kind == "rename_header":
            header = [draw(st.sampled_from(["Sequence", "seq", "label", "sequence "])), header[-1]]
        elif kind == "quote" and rows[i]:
            rows[i][0] = '"' + rows[i][0]
        elif kind == "blank_row":
            rows.insert(i, [])
    return header, rows


@given(mutated_table(), st.sampled_from([",", "\t"]), st.sampled_from(QUOTING), st.booleans())
def test_mutated_table_parses_or_valueerror(spec, delimiter, quoting, bom):
    header, rows = spec
    text = table_text(rows, delimiter, quoting, "\n", header=header)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("t.csv" if delimiter == "," else "t.tsv")
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        parse_or_valueerror(path)


@given(st.binary(max_size=200), st.sampled_from([".csv", ".tsv"]))
def test_random_bytes_table(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"t{suffix}"
        path.write_bytes(data)
        parse_or_valueerror(path)


@given(st.lists(st.sampled_from(["r1", "r2", "r3", "r4", "", "R1", "r1 x", "zz"]), min_size=1, max_size=6),
       st.booleans())
def test_fasta_label_table(ids, drop_cell):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fa = tmp / "s.fa"
        fa.write_text(">r1\nACGT\n>r2\nAACC\n>r3\nGGTT\n>r4\nTTAA\n")
        lines = ["id,label"] + [f"{i},{n % 2}" for n, i in enumerate(ids)]
        if drop_cell:
            lines[-1] = lines[-1].split(",")[0] if lines[-1].split(",")[0] else ""  # a row without its label
        table = tmp / "labels.csv"
        table.write_text("\n".join(lines) + "\n")
        before = listing(tmp)
        dm = LabelledSequenceDataModule(str(table), fasta=str(fa), cache_dir=str(tmp / "cache"),
                                        val_fraction=0.34, test_fraction=0.33)
        try:
            with time_limit():
                dm.setup()
        except ValueError as err:
            assert str(table) in str(err) or str(fa) in str(err), err
        assert {p for p in listing(tmp) - before if not p.startswith("cache")} == set()


# -- regression tests: failing examples the fuzzing found ----------------------------------------


def test_regression_bom_csv_header(tmp_path):
    """Excel writes a UTF-8 BOM: the first column was read as '\\ufeffsequence' ("no column 'sequence'")."""
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfsequence,label\nACGT,1\n")
    assert [(s, lab, line) for _, s, lab, _, line in read_table(path, "sequence", "label", None, None, None)] == [
        ("ACGT", "1", 2)]


def test_regression_non_utf8_table(tmp_path):
    """A Latin-1 byte raised a bare UnicodeDecodeError naming neither file nor line."""
    path = tmp_path / "t.csv"
    path.write_bytes(b"sequence,label\nACGT,1\nACGT,caf\xe9\n")
    with pytest.raises(ValueError, match=rf"{path}.*line 3"):
        read_table(path, "sequence", "label", None, None, None)


def test_regression_fasta_table_row_without_id(tmp_path):
    """FASTA mode, a row whose id cell is missing: AttributeError ('NoneType' object has no attribute 'strip')."""
    fa = tmp_path / "s.fa"
    fa.write_text(">r1\nACGT\n")
    table = tmp_path / "labels.csv"
    table.write_text("label,id\n1,r1\n0\n")
    dm = LabelledSequenceDataModule(str(table), fasta=str(fa), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=rf"{table}, line 3"):
        dm.setup()
