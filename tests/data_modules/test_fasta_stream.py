"""FastaStreamDataModule: whole records in consecutive segments, read on demand, in order."""

import numpy as np
import pytest
import torch

from data_modules import DNATokenizer
from data_modules.fasta_stream import IGNORE_INDEX, FastaStreamDataModule

TOK = DNATokenizer()
N_ID = TOK.base_ids["N"]


def write_fasta(path, records: dict[str, str], width: int = 60):
    with open(path, "w") as f:
        for name, seq in records.items():
            f.write(f">{name} some description\n")
            f.write("".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width)))
    return path


@pytest.fixture
def records():
    rng = np.random.default_rng(0)
    return {
        "chr1": "".join(rng.choice(list("ACGT"), 1000)),
        "chr2": "acgtNNNNNRYacgt" * 20 + "ACG",  # soft-masked, a gap, IUPAC codes; 303 bases
        "chrM": "GATTACA",
    }


def make(tmp_path, seqs, **kw):
    fasta = write_fasta(tmp_path / "g.fa", seqs)
    dm = FastaStreamDataModule(str(fasta), cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup("predict")
    return dm


def all_batches(dm):
    return list(dm.predict_dataloader())


@pytest.mark.parametrize("segment_len", [1, 3, 100, 101, 1000, 5000])  # 100 divides 1000, 101 does not
def test_segments_tile_each_record_in_order_with_next_base_labels(tmp_path, records, segment_len):
    dm = make(tmp_path, records, segment_len=segment_len, score_n=True)
    batches = all_batches(dm)
    assert len(batches) == len(dm.predict_set) == sum(-(-len(s) // segment_len) for s in records.values())
    by_record: dict[str, list[dict]] = {}
    for b in batches:
        assert b["input_ids"].shape[0] == 1 and b["input_ids"].dtype == torch.int64
        assert b["labels"].shape == b["input_ids"].shape and b["labels"].dtype == torch.int64
        by_record.setdefault(b["record"][0], []).append(b)
    assert list(by_record) == list(records)  # file order, each record's segments together
    for name, seq in records.items():
        segs = by_record[name]
        whole = torch.from_numpy(TOK.encode(seq))  # the pretraining tokenisation of the record
        assert [int(b["start"]) for b in segs] == list(range(0, len(seq), segment_len))
        assert all(b["input_ids"].shape[1] == segment_len for b in segs[:-1])
        assert [bool(b["is_first"]) for b in segs] == [True] + [False] * (len(segs) - 1)
        assert [bool(b["is_last"]) for b in segs] == [False] * (len(segs) - 1) + [True]
        assert all(int(b["record_length"]) == len(seq) for b in segs)
        ids = torch.cat([b["input_ids"][0] for b in segs])
        labels = torch.cat([b["labels"][0] for b in segs])
        assert torch.equal(ids, whole)
        assert torch.equal(labels[:-1], whole[1:]) and labels[-1] == IGNORE_INDEX


def test_n_targets_are_not_scored_unless_asked(tmp_path, records):
    dm = make(tmp_path, records, segment_len=50, records=["chr2"])
    labels = torch.cat([b["labels"][0] for b in all_batches(dm)])
    whole = torch.from_numpy(TOK.encode(records["chr2"]))
    next_is_n = torch.cat([whole[1:] == N_ID, torch.tensor([True])])
    assert next_is_n[:-1].any()
    assert torch.equal(labels == IGNORE_INDEX, next_is_n)
    assert torch.equal(labels[~next_is_n], whole[1:][~next_is_n[:-1]])


def test_each_segment_is_read_on_demand_never_more_than_segment_len_plus_one(tmp_path, records):
    """Constant memory on the data side: every fetch is one segment and the base after it; each base
    of a record is read once, plus the one base shared by two neighbouring segments."""
    segment_len = 64
    dm = make(tmp_path, records, segment_len=segment_len)
    calls = []
    real_fetch = dm.fasta.fetch

    def spy(name, start, end):
        calls.append((name, start, end))
        return real_fetch(name, start, end)

    dm.fasta.fetch = spy
    assert not calls  # setup read no sequence
    for i, _ in enumerate(dm.predict_dataloader()):
        assert len(calls) == i + 1  # one read per segment, when the segment is asked for
    assert max(e - s for _, s, e in calls) <= segment_len + 1
    for name, seq in records.items():
        reads = [(s, e) for n, s, e in calls if n == name]
        assert sum(e - s for s, e in reads) == len(seq) + len(reads) - 1


def test_records_selects_in_the_given_order_and_resolves_a_chr_prefix(tmp_path, records):
    dm = make(tmp_path, records, segment_len=400, records=["chrM", "1"])
    assert dm.records == ["chrM", "chr1"]
    assert [b["record"][0] for b in all_batches(dm)] == ["chrM", "chr1", "chr1", "chr1"]
    assert dm.record_lengths == {"chrM": 7, "chr1": 1000}
    assert make(tmp_path, records, records="chr2").records == ["chr2"]


def test_missing_records_are_named_with_the_available_ones(tmp_path, records):
    with pytest.raises(ValueError) as err:
        make(tmp_path, records, records=["chr1", "chrX", "chrY"])
    msg = str(err.value)
    assert "chrX" in msg and "chrY" in msg and "g.fa" in msg
    assert all(name in msg for name in records)  # the records the file has
    with pytest.raises(ValueError, match="more than once"):
        make(tmp_path, records, records=["chr1", "chr1"])


def test_bad_arguments_and_other_stages_fail_clearly(tmp_path, records):
    with pytest.raises(ValueError, match="segment_len"):
        FastaStreamDataModule(str(tmp_path / "g.fa"), segment_len=0)
    dm = make(tmp_path, records)
    assert dm.vocab_size == TOK.vocab_size
    with pytest.raises(ValueError, match="mamba-seq predict"):
        dm.test_dataloader()
