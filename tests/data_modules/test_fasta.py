"""FASTA opening and checking on the real genomes and on broken files written here."""

import gzip
import logging

import pytest
from Bio import bgzf

from data_modules import FastaFile
from data_modules.fasta import detect_format


def read_fasta_by_hand(path):  # independent oracle: plain Python parse
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


def test_lambda_plain(shared_data, tmp_path):
    path = shared_data / "genomes" / "lambda_virus.fa"
    fa = FastaFile(path, cache_dir=tmp_path)
    truth = read_fasta_by_hand(path)
    assert fa.format == "plain"
    assert {k: r.length for k, r in fa.records.items()} == {k: len(v) for k, v in truth.items()} == {"gi|9626243|ref|NC_001416.1|": 48502}
    name = next(iter(truth))
    assert fa.fetch(name, 1000, 1100) == truth[name][1000:1100]


def test_ecoli_plain_gzip_is_converted_to_bgzf(shared_data, tmp_path, caplog):
    path = shared_data / "genomes" / "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"
    with caplog.at_level(logging.INFO):
        fa = FastaFile(path, cache_dir=tmp_path)
    assert fa.format == "gzip"
    assert detect_format(fa.path) == "bgzf" and fa.path.is_relative_to(tmp_path)
    assert any("converted to a bgzip copy" in r.message and str(path) in r.message for r in caplog.records)
    truth = read_fasta_by_hand(path)["NC_000913.3"]
    assert fa.records["NC_000913.3"].length == len(truth) == 4641652
    for start in (0, 123_456, 4_641_000):
        assert fa.fetch("NC_000913.3", start, start + 500) == truth[start : start + 500]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        FastaFile(path, cache_dir=tmp_path)  # second open reuses the cached copy and scan
    assert not any("converted" in r.message for r in caplog.records)


def test_celegans_multi_record(shared_data, tmp_path):
    path = shared_data / "genomes" / "C.elegans_first1pct.fa.gz"
    fa = FastaFile(path, cache_dir=tmp_path)
    truth = read_fasta_by_hand(path)
    assert list(fa.records) == ["I", "II", "III", "IV", "V", "X", "MtDNA"] == list(truth)
    assert {k: r.length for k, r in fa.records.items()} == {k: len(v) for k, v in truth.items()}
    assert fa.records["I"].length == 150724  # the header says 1..150725: it is off by one
    assert fa.fetch("X", 5000, 5080) == truth["X"][5000:5080]


def test_mt_human(shared_data, tmp_path):
    path = shared_data / "genomes" / "MT-human.fa"
    fa = FastaFile(path, cache_dir=tmp_path)
    truth = read_fasta_by_hand(path)["MT_human"]
    assert fa.records["MT_human"].length == len(truth) == 16569
    assert fa.fetch("MT_human", 3000, 3200) == truth[3000:3200]  # case preserved (soft-masking kept)


def test_the_users_folder_is_never_written(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "g.fa").write_text(">g\nACGTACGT\n")
    fa = FastaFile(src / "g.fa", cache_dir=tmp_path / "cache")
    assert fa.fetch("g", 2, 6) == "GTAC"
    assert sorted(p.name for p in src.iterdir()) == ["g.fa"]  # the .fai lives beside a link in the cache
    assert fa.path.is_relative_to(tmp_path / "cache")


def test_worker_copies_reopen_their_own_handle(tmp_path):
    import pickle

    path = tmp_path / "x.fa"
    path.write_text(">a\nACGTACGTAC\nGGCC\n")
    fa = FastaFile(path, cache_dir=tmp_path / "c")
    clone = pickle.loads(pickle.dumps(fa))
    assert clone._handle is None
    assert clone.fetch("a", 8, 12) == "ACGG"


BAD_FILES = {
    "no_header.fa": ("ACGT\nACGT\n", ["line 1", "before the first '>'"]),
    "empty_record.fa": (">a\nACGT\n>b\n>c\nACGT\n", ["record 'b'", "empty record"]),
    "empty_last_record.fa": (">a\nACGT\n>b\n", ["record 'b'", "empty record"]),
    "digit.fa": (">chr1\nACGT\nAC7T\n", ["record 'chr1'", "line 3", "column 3", "'7'"]),
    "dash.fa": (">chr1\nACGT\nA-GT\n", ["record 'chr1'", "line 3", "'-'"]),
    "star.fa": (">x\nACGT*\n", ["record 'x'", "'*'"]),
    "duplicate.fa": (">a\nACGT\n>a\nACGT\n", ["record 'a'", "duplicate"]),
    "no_name.fa": (">\nACGT\n", ["line 1", "no name"]),
    "ragged.fa": (">r\nACGT\nAC\nACGT\n", ["record 'r'", "line 3"]),
    "blank_inside.fa": (">r\nACGT\n\nACGT\n", ["record 'r'", "blank line"]),
    "empty.fa": ("", ["no FASTA records"]),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_fasta_fails_naming_file_and_place(tmp_path, name):
    text, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        FastaFile(path, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert name in msg
    for part in expected:
        assert part in msg, msg


def _fasta_text(n_records=3, length=20000):
    import random

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
    cut = tmp_path / f"cut.{kind}.fa.gz"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError) as err:
        FastaFile(cut, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert cut.name in msg and "truncated or corrupt" in msg and "record 'rec" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        FastaFile(tmp_path / "nope.fa", cache_dir=tmp_path)
