"""Fuzzing data_modules.fasta (scan_fasta + FastaFile): valid multi-record FASTA (random names, IUPAC
and lowercase, line widths, one blank line between records, LF/CRLF, plain/gzip/BGZF) must parse
exactly as an independent oracle says (sequences returned case-preserved, as fasta.py documents);
mutated bytes must parse or fail with a ValueError naming the file, and never leave an index
(.fai/.gzi) or anything else beside the input.

ci profile: 50 examples per test (4 property tests -> 200 examples) plus a regression test."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from data_modules.fasta import open_fasta, scan_fasta

from .conftest import listing, time_limit

ALPHABET = "ACGTNRYSWKMBDHVacgtnryswkmbdhv"
names = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=">"),
                min_size=1, max_size=12)


@st.composite
def fasta_records(draw):
    recs = draw(st.lists(st.tuples(names, st.text(ALPHABET, min_size=1, max_size=200)), min_size=1, max_size=5,
                         unique_by=lambda r: r[0]))
    descriptions = [draw(st.sampled_from(["", " desc", " a b\tc"])) for _ in recs]
    widths = [draw(st.integers(1, 80)) for _ in recs]
    blanks = [draw(st.booleans()) for _ in recs]
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return recs, descriptions, widths, blanks, eol


def render(recs, descriptions, widths, blanks, eol) -> bytes:
    out = []
    for (name, seq), desc, w, blank in zip(recs, descriptions, widths, blanks):
        out.append(f">{name}{desc}{eol}")
        lines = [seq[i : i + w] for i in range(0, len(seq), w)]
        out += [ln + eol for ln in lines]
        short_last = len(lines[-1]) < w
        if blank and not (eol == "\r\n" and short_last):  # pyfaidx can't index that (documented in scan_fasta)
            out.append(eol)
    return "".join(out).encode()


def oracle(data: bytes) -> dict[str, str]:
    """Independent simple FASTA reader: name = header's first word, sequence = the lines joined."""
    recs, name = {}, None
    for line in data.decode().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            recs[name] = ""
        elif line.strip():
            recs[name] += line.strip()
    return recs


def write(folder: Path, data: bytes, how: str) -> Path:
    if how == "plain":
        path = folder / "in.fa"
        path.write_bytes(data)
    elif how == "gzip":
        path = folder / "in.fa.gz"
        path.write_bytes(gzip.compress(data))
    else:
        from Bio import bgzf

        path = folder / "in.fa.bgz"
        with bgzf.BgzfWriter(str(path), "wb") as fh:
            fh.write(data)
    return path


def check_parse_or_valueerror(path: Path, cache: Path):
    """-> the FastaFile, or None after a ValueError naming the file; nothing new beside the input."""
    before = listing(path.parent)
    try:
        with time_limit():
            fa = open_fasta(path, cache)
    except ValueError as err:
        assert str(path) in str(err), err
        fa = None
    assert listing(path.parent) == before, "files written beside the input"
    return fa


@given(fasta_records(), st.sampled_from(["plain", "gzip", "bgzf"]))
def test_valid_fasta_matches_oracle(spec, how):
    data = render(*spec)
    want = oracle(data)
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "in", Path(tmp) / "cache"
        folder.mkdir()
        path = write(folder, data, how)
        fa = check_parse_or_valueerror(path, cache)
        assert fa is not None, "a valid FASTA was rejected"
        assert fa.names == list(want)
        assert fa.lengths == {k: len(v) for k, v in want.items()}
        for name, seq in want.items():
            assert fa.fetch(name, 0, len(seq)) == seq  # case preserved
            assert fa.fetch(name, len(seq) // 3, len(seq) // 2) == seq[len(seq) // 3 : len(seq) // 2]
            st_ = fa.records[name]
            assert st_.n_count == seq.count("N") + seq.count("n")
            assert st_.soft_masked == sum(c.islower() for c in seq)
            assert st_.iupac_to_n == sum(c in "RYSWKMBDHVryswkmbdhv" for c in seq)
        fa.close()


@st.composite
def mutated(draw):
    data = bytearray(render(*draw(fasta_records())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "nul", "gt", "insert", "delete", "empty_record",
                                     "dup_header", "crlf_mix"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            data = data[:pos]
        elif kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "nul":
            data[pos:pos] = b"\x00"
        elif kind == "gt":
            data[pos:pos] = b">"
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "empty_record":
            data[pos:pos] = b"\n>empty\n"
        elif kind == "dup_header":
            data += b">" + bytes(data[1:data.find(b"\n")] if b"\n" in data else b"x") + b"\nACGT\n"
        elif kind == "crlf_mix":
            data[pos:pos] = b"\r\n"
    return bytes(data)


@given(mutated(), st.sampled_from(["plain", "gzip", "bgzf"]))
def test_mutated_fasta_parses_or_valueerror(data, how):
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "in", Path(tmp) / "cache"
        folder.mkdir()
        path = write(folder, data, how)
        fa = check_parse_or_valueerror(path, cache)
        if fa is not None:  # accepted: every record reads back as the scan counted it
            for name, length in fa.lengths.items():
                assert len(fa.fetch(name, 0, length)) == length
            fa.close()


@given(fasta_records(), st.sampled_from(["gzip", "bgzf"]), st.data())
def test_corrupted_compressed_fasta(spec, how, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "in", Path(tmp) / "cache"
        folder.mkdir()
        path = write(folder, render(*spec), how)
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="truncate"):
            raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
        else:
            for _ in range(data.draw(st.integers(1, 3), label="n_flips")):
                i = data.draw(st.integers(0, len(raw) - 1), label="at")
                raw[i] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
        fa = check_parse_or_valueerror(path, cache)
        if fa is not None:
            for name, length in fa.lengths.items():
                assert len(fa.fetch(name, 0, length)) == length
            fa.close()


@given(st.binary(max_size=300))
def test_random_bytes_scan(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.fa"
        path.write_bytes(data)
        try:
            with time_limit():
                scan_fasta(path)
        except ValueError as err:
            assert str(path) in str(err)
        assert listing(Path(tmp)) == {"x.fa"}


# -- regression tests: failing examples the fuzzing found ----------------------------------------


def test_regression_bgzf_corrupt_block_size(tmp_path):
    """BGZF of '>0\\nA\\n' with byte 16 (the block's BSIZE) xor 64: the gzip scan passes (gzip ignores
    BSIZE) but pyfaidx's Bio.bgzf reader raised a bare struct.error ('unpack requires a buffer of 4
    bytes') from open_fasta."""
    folder = tmp_path / "in"
    folder.mkdir()
    path = write(folder, b">0\nA\n", "bgzf")
    raw = bytearray(path.read_bytes())
    raw[16] ^= 64
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=str(path)):
        open_fasta(path, tmp_path / "cache")
    assert listing(folder) == {"in.fa.bgz"}
