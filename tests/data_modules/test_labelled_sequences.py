import csv
import itertools

import numpy as np
import pytest

from data_modules import LabelledSequenceDataModule
from data_modules.labelled_sequences import kmer_groups

RC = str.maketrans("ACGT", "TGCA")


def canonical_kmers(seq, k):
    rc = seq.translate(RC)[::-1]
    return {min(seq[i : i + k], rc[len(seq) - i - k : len(seq) - i]) for i in range(len(seq) - k + 1)}


def test_kmer_groups_match_brute_force():
    rng = np.random.default_rng(0)
    base = "".join(rng.choice(list("ACGT"), 60))
    seqs = ["".join(rng.choice(list("ACGT"), 30)) for _ in range(8)]
    seqs[2] = base[:25] + seqs[2][25:]  # shares a 25-mer with seq 5 ...
    seqs[5] = "TT" + base[:25] + "A"
    seqs[6] = seqs[5][::-1].translate(RC)  # ... and seq 6 is seq 5's reverse complement
    groups = kmer_groups(seqs, 12)
    kmers = [canonical_kmers(s, 12) for s in seqs]
    # oracle: transitive closure of "shares a canonical 12-mer"
    same = {(i, j) for i, j in itertools.product(range(8), repeat=2) if kmers[i] & kmers[j]}
    changed = True
    while changed:
        changed = False
        for (i, j), (k, l) in itertools.product(list(same), repeat=2):
            if j == k and (i, l) not in same:
                same.add((i, l))
                changed = True
    for i, j in itertools.product(range(8), repeat=2):
        assert (groups[i] == groups[j]) == ((i, j) in same)
    assert groups[2] == groups[5] == groups[6]


@pytest.fixture
def promoters(shared_data):
    return shared_data / "sequence_classification" / "promoters_umarov2016" / "promoters_ecoli_bsubtilis.csv"


def test_grouped_split_never_shares_a_20mer_across_splits(promoters):
    dm = LabelledSequenceDataModule(str(promoters), split="grouped", where={"organism": "E_coli_sigma70"})
    dm.setup()
    tok = dm.tokenizer
    kmers = {p: set().union(*(canonical_kmers(tok.decode(t), 20) for t in dm.sets[p].token_ids)) for p in dm.sets}
    assert not kmers["train"] & kmers["test"]
    assert not kmers["train"] & kmers["val"]
    assert sum(len(s) for s in dm.sets.values()) == 839 + 3000
    for p, frac in (("val", 0.1), ("test", 0.1)):
        assert abs(len(dm.sets[p]) / 3839 - frac) < 0.02
        pos = np.mean(dm.sets[p].labels)
        assert abs(pos - 839 / 3839) < 0.05  # both classes present in the right proportion


def test_stratified_split_is_seeded_and_disjoint(promoters):
    a = LabelledSequenceDataModule(str(promoters), split="stratified", seed=1)  # ids: row numbers (headers repeat)
    b = LabelledSequenceDataModule(str(promoters), split="stratified", seed=1)  # ids: row numbers (headers repeat)
    c = LabelledSequenceDataModule(str(promoters), split="stratified", seed=2)  # ids: row numbers (headers repeat)
    for dm in (a, b, c):
        dm.setup()
    assert a.sets["test"].ids == b.sets["test"].ids != c.sets["test"].ids
    parts = [set(a.sets[p].ids) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert a.sets["val"].ids != a.sets["test"].ids  # a real validation split, not the test set


def test_padding_mask_marks_true_lengths(tmp_path):
    f = tmp_path / "s.tsv"
    f.write_text("sequence\tlabel\nACGTAC\t0\nAC\t1\nACGTACGTAC\t0\nAAA\t1\nCCCC\t0\nGGGG\t1\n")
    dm = LabelledSequenceDataModule(str(f), split="stratified", val_fraction=0.34, test_fraction=0.34, batch_size=8)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    lengths = [len(t) for t in dm.sets["train"].token_ids]
    assert sorted(b["mask"].sum(1).tolist()) == sorted(lengths)
    assert (b["input_ids"][~b["mask"]] == dm.tokenizer.pad_id).all()


@pytest.mark.parametrize(
    "text,match",
    [
        ("sequence,label\nACGT,1\n,0\n", r"line 3: empty sequence"),
        ("sequence,label\nACGT,1\nAC7T,0\n", r"line 3.*'7' at position 2"),
        ("sequence,label\nACGT,\n", r"line 2: empty label"),
        ("seq,label\nACGT,1\n", r"no column 'sequence'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        LabelledSequenceDataModule(str(f)).setup()
    assert "bad.csv" in str(err.value)


# -- FASTA plus a label table ---------------------------------------------------------------
def test_fasta_with_label_table_reads_the_records_sequences(shared_data, tmp_path, caplog):
    """Real multi-line FASTA (Ecoli_prom.fa): each labelled record's sequence equals the CSV's
    copy of it; records the table leaves out are counted in the log, not an error."""
    folder = shared_data / "sequence_classification" / "promoters_umarov2016"
    with open(folder / "promoters_ecoli_bsubtilis.csv", newline="") as f:
        csv_seq = {r["fasta_header"]: r["sequence"] for r in csv.DictReader(f) if r["source_file"] == "Ecoli_prom.fa"}
    ids = sorted(csv_seq)[:800]  # 39 of the 839 records stay unlabelled
    table = tmp_path / "labels.tsv"
    # a real, label-like property of each record: the strand its header names
    table.write_text("id\tlabel\n" + "".join(f"{i}\t{int('__forward__' in i)}\n" for i in ids))
    dm = LabelledSequenceDataModule(str(table), fasta=str(folder / "Ecoli_prom.fa"), cache_dir=str(tmp_path / "cache"),
                                    split="stratified")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert "39 of 839 records have no row" in caplog.text
    seen = []
    for part in dm.sets.values():
        for ident, toks, label in zip(part.ids, part.token_ids, part.labels):
            assert dm.tokenizer.decode(toks) == csv_seq[ident]
            assert label == int("__forward__" in ident)
            seen.append(ident)
    assert sorted(seen) == ids


def write_fasta(path, records):
    path.write_text("".join(f">{name} some description\n{seq}\n" for name, seq in records))
    return path


@pytest.mark.parametrize(
    "table,match",
    [
        ("id,label\nseq_1,0\nseq_2,1\nseq_3,0\n", r"labels.csv, line 4: id 'seq_3' is not a record of .*"
                                                  r"did you mean 'Seq_3'\?.*1 of 3 ids are missing"),
        ("id,label\nseq_1 some description,0\n", r"line 2: id 'seq_1 some description'.*did you mean 'seq_1'"),
        ("id,label\nseq_1,0\nseq_2,1\nseq_1,1\n", r"labels.csv, line 4: id 'seq_1' is already on line 2"),
        ("id,label\nseq_1,0\n,1\n", r"labels.csv, line 3: empty id"),
        ("name,label\nseq_1,0\n", r"labels.csv: no column 'id'"),
    ],
)
def test_label_table_errors_name_file_line_and_id(tmp_path, table, match):
    fasta = write_fasta(tmp_path / "s.fa", [("seq_1", "ACGTACGT"), ("seq_2", "ACCA"), ("Seq_3", "GGGT")])
    (tmp_path / "labels.csv").write_text(table)
    dm = LabelledSequenceDataModule(str(tmp_path / "labels.csv"), fasta=str(fasta), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=match):
        dm.setup()


def test_fasta_labels_with_a_split_column(tmp_path):
    records = [(f"r{i}", "ACGT" * (i + 1)) for i in range(6)]
    fasta = write_fasta(tmp_path / "s.fa", records)
    table = tmp_path / "labels.tsv"
    folds = ["train", "train", "val", "val", "test", "test"]
    table.write_text("id\tlabel\tfold\n" + "".join(f"r{i}\t{i % 2}\t{folds[i]}\n" for i in range(6)))
    dm = LabelledSequenceDataModule(str(table), fasta=str(fasta), cache_dir=str(tmp_path / "cache"), split="column",
                                    split_column="fold")
    dm.setup()
    assert {p: dm.sets[p].ids for p in dm.sets} == {"train": ["r0", "r1"], "val": ["r2", "r3"], "test": ["r4", "r5"]}
    assert dm.tokenizer.decode(dm.sets["test"].token_ids[1]) == "ACGT" * 6
