"""FASTA opening and checking on the real genomes and on broken files written here."""

import gzip
import logging
import os
import pickle
import random
import time

import pytest
from pathlib import Path
from Bio import bgzf

import data_modules.fasta as fasta_mod
from data_modules import FastaFile, open_fasta, scan_fasta
from data_modules.fasta import detect_format


def read_fasta_by_hand(path):  # independent oracle: Python's gzip + a plain parse
    opener = gzip.open if str(path).endswith(".gz") else open
    seqs, name = {}, None
    with opener(path, "rt") as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                name = line[1:].split()[0]
                seqs[name] = []
            elif line:
                seqs[name].append(line)
    return {k: "".join(v) for k, v in seqs.items()}


def genome(shared_data, name):
    return shared_data / "genomes" / name


def test_lambda_plain(shared_data, tmp_path):
    path = genome(shared_data, "lambda_virus.fa")
    fa = open_fasta(path, cache_dir=tmp_path)
    truth = read_fasta_by_hand(path)
    assert fa.format == "plain"
    assert fa.lengths == {k: len(v) for k, v in truth.items()} == {"gi|9626243|ref|NC_001416.1|": 48502}
    name = fa.names[0]
    assert fa.fetch(name, 1000, 1100) == truth[name][1000:1100]
    assert fa.fetch(name, 48400, 48502) == truth[name][48400:]
    r = fa.records[name]
    assert (r.n_count, r.iupac_to_n, r.soft_masked) == (0, 0, 0)


def test_shared_data_folder_is_not_written(shared_data, tmp_path):
    # the shared folder is dr-xr-xr-x; as root access(2) would still allow writing, the mode bits don't
    path = genome(shared_data, "MT-human.fa")
    before = sorted(os.listdir(path.parent))
    fa = open_fasta(path, cache_dir=tmp_path)
    assert sorted(os.listdir(path.parent)) == before
    assert fa.path.is_symlink() and fa.path.is_relative_to(tmp_path)
    assert (fa.path.parent / (fa.path.name + ".fai")).is_file()


def test_ecoli_plain_gzip_is_converted_to_bgzf(shared_data, tmp_path, caplog):
    path = genome(shared_data, "ecoli_k12_mg1655_GCF_000005845.2.fna.gz")
    with caplog.at_level(logging.INFO, logger="data_modules.fasta"):
        fa = open_fasta(path, cache_dir=tmp_path)
    assert fa.format == "gzip"
    assert fa.path.is_relative_to(tmp_path) and not fa.path.is_symlink()
    assert any("plain-gzip" in r.message and f"{path} -> " in r.message and str(fa.path) in r.message
               for r in caplog.records)
    # a real BGZF copy: 'BC' subfield, blocks Bio can walk, and the end-of-file marker block
    assert detect_format(fa.path) == "bgzf"
    with open(fa.path, "rb") as f:
        blocks = list(bgzf.BgzfBlocks(f))
    assert len(blocks) > 10 and blocks[-1][3] == 0  # last block is the empty EOF block
    truth = read_fasta_by_hand(path)["NC_000913.3"]
    assert fa.records["NC_000913.3"].length == len(truth) == 4641652
    for start in (0, 123_456, 2_000_017, 4_641_000):
        assert fa.fetch("NC_000913.3", start, start + 500) == truth[start : start + 500]
    assert fa.fetch("NC_000913.3", 4_641_600, 4_641_652) == truth[-52:]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="data_modules.fasta"):
        open_fasta(path, cache_dir=tmp_path)  # second open reuses the cached copy and scan
    assert not any("plain-gzip" in r.message for r in caplog.records)


def test_ecoli_scan_is_fast(shared_data):
    t = time.perf_counter()
    (rec,) = scan_fasta(genome(shared_data, "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"))
    elapsed = time.perf_counter() - t
    assert (rec.name, rec.length, rec.n_count, rec.soft_masked) == ("NC_000913.3", 4641652, 0, 0)
    assert elapsed < 3.0, elapsed


def test_celegans_multi_record(shared_data, tmp_path):
    path = genome(shared_data, "C.elegans_first1pct.fa.gz")
    fa = open_fasta(path, cache_dir=tmp_path)
    truth = read_fasta_by_hand(path)
    assert fa.names == ["I", "II", "III", "IV", "V", "X", "MtDNA"] == list(truth)
    assert fa.lengths == {k: len(v) for k, v in truth.items()}
    assert sum(fa.lengths.values()) == 1_002_861
    assert fa.records["I"].length == 150724  # the header says 1..150725: it is off by one
    for name in fa.names:
        n = fa.lengths[name]
        assert fa.fetch(name, n // 2, n) == truth[name][n // 2 :]
        assert fa.records[name].soft_masked == sum(c.islower() for c in truth[name])


def test_mt_human(shared_data, tmp_path):
    path = genome(shared_data, "MT-human.fa")
    fa = open_fasta(path, cache_dir=tmp_path)
    truth = read_fasta_by_hand(path)["MT_human"]
    assert fa.records["MT_human"].length == len(truth) == 16569
    assert fa.fetch("MT_human", 3000, 3200) == truth[3000:3200]
    # 1-based 3107 (where some references put N) is the file's one lowercase base: "a"
    assert fa.fetch("MT_human", 3106, 3107) == "a" and fa.records["MT_human"].soft_masked == 1


def test_users_folder_is_never_written(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "g.fa").write_text(">g\nACGTACGT\nAC\n")
    fa = open_fasta(src / "g.fa", cache_dir=tmp_path / "cache")
    assert sorted(os.listdir(src)) == ["g.fa"]
    assert fa.path.is_symlink() and fa.path.is_relative_to(tmp_path / "cache")
    assert fa.fetch("g", 6, 10) == "GTAC"


def test_an_up_to_date_index_beside_the_file_is_reused(tmp_path):
    import pyfaidx

    (tmp_path / "g.fa").write_text(">g\nACGTACGT\nAC\n")
    pyfaidx.Fasta(str(tmp_path / "g.fa"))  # as `samtools faidx` would leave it
    fa = open_fasta(tmp_path / "g.fa", cache_dir=tmp_path / "cache")
    assert fa.path == tmp_path / "g.fa" and fa.fetch("g", 6, 10) == "GTAC"


def test_read_only_folder_is_indexed_through_a_link(tmp_path, caplog):
    src = tmp_path / "ro"
    src.mkdir()
    (src / "g.fa").write_text(">g\nACGTACGT\nAC\n")
    os.chmod(src, 0o555)
    try:
        with caplog.at_level(logging.INFO, logger="data_modules.fasta"):
            fa = open_fasta(src / "g.fa", cache_dir=tmp_path / "cache")
        assert sorted(os.listdir(src)) == ["g.fa"]
        assert fa.path.is_symlink() and fa.path.is_relative_to(tmp_path / "cache")
        assert any("through a link" in r.message for r in caplog.records)
        assert fa.fetch("g", 6, 10) == "GTAC"
    finally:
        os.chmod(src, 0o755)


def test_bgzf_source_read_in_place_with_soft_masking_and_iupac(tmp_path):
    seq = "ACGTacgtNNRYswACGT" * 50
    path = tmp_path / "m.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as w:
        w.write((">m desc\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n").encode())
    fa = open_fasta(path, cache_dir=tmp_path / "cache")
    assert fa.format == "bgzf" and fa.path.resolve() == path and Path(f"{fa.path}.gzi").is_file()
    r = fa.records["m"]
    assert (r.length, r.n_count, r.iupac_to_n, r.soft_masked) == (900, 100, 200, 300)
    assert fa.fetch("m", 100, 260) == seq[100:260]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "w.fa"
    path.write_bytes(b">w\r\nACGTACGT\r\nACGTACGT\r\nAC\r\n>v\r\nACGTACGT\r\nACGTACGT\r\n\r\n>u\r\nA")
    fa = open_fasta(path, cache_dir=tmp_path / "cache")
    assert fa.lengths == {"w": 18, "v": 16, "u": 1} and fa.fetch("w", 6, 12) == "GTACGT"
    assert fa.fetch("v", 4, 16) == "ACGTACGTACGT" and fa.fetch("u", 0, 1) == "A"


def test_changed_source_is_converted_again(tmp_path, caplog):
    path = tmp_path / "p.fa.gz"
    path.write_bytes(gzip.compress(b">p\nACGTACGT\n"))
    assert open_fasta(path, cache_dir=tmp_path / "c").fetch("p", 0, 4) == "ACGT"
    path.write_bytes(gzip.compress(b">p\nTTTTACGTAA\n"))
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on coarse clocks
    with caplog.at_level(logging.INFO, logger="data_modules.fasta"):
        fa = open_fasta(path, cache_dir=tmp_path / "c")
    assert fa.lengths == {"p": 10} and fa.fetch("p", 0, 4) == "TTTT"
    assert any("plain-gzip" in r.message for r in caplog.records)


def test_scan_result_is_cached(tmp_path, monkeypatch):
    path = tmp_path / "s.fa"
    path.write_text(">s\nACGT\n")
    open_fasta(path, cache_dir=tmp_path / "c")

    def boom(_):
        raise AssertionError("scanned twice")

    monkeypatch.setattr(fasta_mod, "scan_fasta", boom)
    assert open_fasta(path, cache_dir=tmp_path / "c").lengths == {"s": 4}


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_SEQ_CACHE", str(tmp_path / "envcache"))
    path = tmp_path / "e.fa.gz"
    path.write_bytes(gzip.compress(b">e\nACGT\n"))
    assert open_fasta(path).path.is_relative_to(tmp_path / "envcache")


def test_worker_copies_reopen_their_own_handle(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a\nACGTACGTAC\nGGCC\n")
    fa = open_fasta(path, cache_dir=tmp_path / "c")
    clone = pickle.loads(pickle.dumps(fa))
    assert clone._handle is None
    assert clone.fetch("a", 8, 12) == "ACGG"


def test_fetch_checks_name_and_bounds(tmp_path):
    path = tmp_path / "b.fa"
    path.write_text(">a\nACGT\n")
    fa = open_fasta(path, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="no record 'z'"):
        fa.fetch("z", 0, 1)
    with pytest.raises(ValueError, match="outside the record"):
        fa.fetch("a", 2, 5)


BAD_FILES = {
    "no_header.fa": (b"ACGT\nACGT\n", ["line 1", "before the first '>'"]),
    "blank_then_no_header.fa": (b"\n\nACGT\n", ["line 3", "before the first '>'"]),
    "empty_record.fa": (b">a\nACGT\n>b\n>c\nACGT\n", ["record 'b'", "line 3", "empty record", "fix or remove"]),
    "empty_last_record.fa": (b">a\nACGT\n>b\n", ["record 'b'", "line 3", "empty record"]),
    "digit.fa": (b">chr1\nACGT\nAC7T\n", ["record 'chr1'", "line 3", "column 3", "'7'", "fix or remove"]),
    "dash.fa": (b">chr1\nACGT\nA-GT\n", ["record 'chr1'", "line 3", "column 2", "'-'"]),
    "star.fa": (b">x\nACGT*\n", ["record 'x'", "line 2", "column 5", "'*'"]),
    "uracil.fa": (b">x\nACGU\n", ["record 'x'", "line 2", "'U'"]),
    "space.fa": (b">x\nAC GT\n", ["record 'x'", "column 3", "' '"]),
    "non_ascii.fa": (">x\nACGTé\n".encode(), ["record 'x'", "column 5", "non-ASCII byte 0xc3"]),
    "duplicate.fa": (b">a\nACGT\n>b\nAC\n>a\nACGT\n", ["record 'a'", "line 5", "duplicate"]),
    "no_name.fa": (b">a\nAC\n> \nACGT\n", ["line 3", "no name"]),
    "ragged.fa": (b">r\nACGT\nAC\nACGT\n", ["record 'r'", "line 3", "re-wrap"]),
    "longer.fa": (b">r\nACGT\nACGTA\n", ["record 'r'", "line 3", "re-wrap"]),
    "mixed_eol.fa": (b">r\nACGT\r\nACGT\nAC\n", ["record 'r'", "line 3", "line ending"]),
    "blank_inside.fa": (b">r\nACGT\n\nACGT\n", ["record 'r'", "line 3", "blank line"]),
    "two_blanks.fa": (b">r\nACGT\n\n\n>s\nAC\n", ["record 'r'", "line 3", "blank lines"]),
    "crlf_blank.fa": (b">r\r\nACGT\r\nAC\r\n\r\n>s\r\nAC\r\n", ["record 'r'", "line 4", "dos2unix"]),
    "empty.fa": (b"", ["no FASTA records"]),
    "blank_only.fa": (b"\n\n", ["no FASTA records"]),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_fasta_fails_naming_file_and_place(tmp_path, name):
    data, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        open_fasta(path, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


@pytest.mark.parametrize("name", ["digit.fa", "duplicate.fa", "empty_record.fa"])
def test_bad_fasta_also_caught_when_gzipped(tmp_path, name):
    data, expected = BAD_FILES[name]
    path = tmp_path / (name + ".gz")
    path.write_bytes(gzip.compress(data))
    with pytest.raises(ValueError) as err:
        open_fasta(path, cache_dir=tmp_path / "cache")
    assert str(path) in str(err.value) and all(p in str(err.value) for p in expected)


def _fasta_text(n_records=3, length=20000):
    rnd = random.Random(0)
    out = []
    for i in range(n_records):
        seq = "".join(rnd.choice("ACGT") for _ in range(length))
        out.append(f">rec{i}\n" + "\n".join(seq[j : j + 60] for j in range(0, length, 60)) + "\n")
    return "".join(out).encode()


@pytest.mark.parametrize("kind", ["bgzf", "gzip"])
def test_truncated_compressed_fasta(tmp_path, kind):
    full = tmp_path / f"full.{kind}.fa.gz"
    if kind == "bgzf":
        with bgzf.BgzfWriter(str(full), "wb") as w:
            w.write(_fasta_text())
    else:
        full.write_bytes(gzip.compress(_fasta_text()))
    assert detect_format(full) == kind
    cut = tmp_path / f"cut.{kind}.fa.gz"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError) as err:
        open_fasta(cut, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert str(cut) in msg and "truncated or corrupt after line" in msg and "record 'rec" in msg


def test_bgzf_cut_at_a_block_boundary(tmp_path):
    # gzip reads such a file without complaint; only the missing end-of-file block tells
    full = tmp_path / "full.fa.gz"
    with bgzf.BgzfWriter(str(full), "wb") as w:
        w.write(_fasta_text(10))
    with open(full, "rb") as f:
        blocks = list(bgzf.BgzfBlocks(f))
    assert len(blocks) >= 4
    start, raw_len = blocks[len(blocks) // 2][:2]
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(full.read_bytes()[: start + raw_len])
    with pytest.raises(ValueError, match=r"cut\.fa\.gz: BGZF file has no end-of-file marker.*record 'rec"):
        open_fasta(cut, cache_dir=tmp_path / "cache")


def test_corrupt_gzip_payload(tmp_path):
    data = bytearray(gzip.compress(_fasta_text(1, 5000)))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flip.fa.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flip\.fa\.gz: compressed stream is truncated or corrupt"):
        open_fasta(path, cache_dir=tmp_path / "cache")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        FastaFile(tmp_path / "nope.fa", cache_dir=tmp_path)
