"""FastaDataModule: splits, determinism, augmentation, workers, on real genomes."""

import pytest
import torch

from data_modules import FastaDataModule
from data_modules.fasta_pretraining import Interval

RC = str.maketrans("ACGTN", "TGCAN")


def make(fasta, tmp_path, **kw):
    args = dict(seq_len=255, batch_size=4, seed=0, cache_dir=str(tmp_path / "cache"))
    args.update(kw)
    dm = FastaDataModule(str(fasta), **args)
    dm.setup("fit")
    return dm


@pytest.fixture
def lambda_fa(shared_data):
    return shared_data / "genomes" / "lambda_virus.fa"


def batches(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        if n is not None and i >= n:
            break
        out.append(b)
    return out


def windows_of(batch_list):
    return [(c, int(s)) for b in batch_list for c, s in zip(b["contig"], b["start"])]


def inside(intervals, contig, start, length):
    return any(iv.contig == contig and iv.start <= start and start + length <= iv.end for iv in intervals)


def test_region_split_windows_stay_inside_their_split(lambda_fa, tmp_path):
    dm = make(lambda_fa, tmp_path, val_fraction=0.1, test_fraction=0.1)
    iv = dm.intervals
    # the three parts tile the contig without overlap
    (tr,), (va,), (te,) = iv["train"], iv["val"], iv["test"]
    assert tr.start == 0 and tr.end == va.start and va.end == te.start and te.end == 48502
    assert len(va) == len(te) == round(48502 * 0.1)
    w = dm.window
    for part, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        got = windows_of(batches(loader))
        assert got, part
        for contig, start in got:
            assert inside(iv[part], contig, start, w), (part, start)
            for other in {"train", "val", "test"} - {part}:
                assert not any(x.contig == contig and x.start < start + w and start < x.end for x in iv[other])


def test_labels_are_inputs_shifted_and_match_the_genome(lambda_fa, tmp_path):
    dm = make(lambda_fa, tmp_path, rc_augment=False)
    b = next(iter(dm.train_dataloader()))
    assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    assert b["input_ids"].shape == (4, 255) and b["input_ids"].dtype == torch.int64
    seq = dm.fasta.fetch(b["contig"][0], int(b["start"][0]), int(b["start"][0]) + 256).upper()
    assert dm.tokenizer.decode(torch.cat([b["input_ids"][0], b["labels"][0, -1:]])) == seq


def test_reverse_complement_augmentation_gives_the_other_strand(lambda_fa, tmp_path):
    dm = make(lambda_fa, tmp_path, rc_augment=True)
    found = 0
    for b in batches(dm.train_dataloader()):
        for i in range(len(b["contig"])):
            start = int(b["start"][i])
            fwd = dm.fasta.fetch(b["contig"][i], start, start + dm.window).upper()
            tokens = dm.tokenizer.decode(torch.cat([b["input_ids"][i], b["labels"][i, -1:]]))
            if int(b["strand"][i]) == -1:
                assert tokens == fwd.translate(RC)[::-1]
                found += 1
            else:
                assert tokens == fwd
    assert found > 0


def test_same_seed_same_batches_new_epoch_new_windows(lambda_fa, tmp_path):
    a = windows_of(batches(make(lambda_fa, tmp_path, seed=3).train_dataloader(), 5))
    b = windows_of(batches(make(lambda_fa, tmp_path, seed=3).train_dataloader(), 5))
    c = windows_of(batches(make(lambda_fa, tmp_path, seed=4).train_dataloader(), 5))
    assert a == b and a != c
    loader = make(lambda_fa, tmp_path, seed=3).train_dataloader()
    loader.sampler.set_epoch(1)
    assert windows_of(batches(loader, 5)) != a
    loader.sampler.set_epoch(0)
    assert windows_of(batches(loader, 5)) == a


def test_evaluation_tiles_are_fixed_and_disjoint(lambda_fa, tmp_path):
    dm = make(lambda_fa, tmp_path, val_fraction=0.2)
    starts = [s for _, s in windows_of(batches(dm.val_dataloader()))]
    assert starts == sorted(starts)
    assert all(b - a == dm.window for a, b in zip(starts, starts[1:]))
    assert starts == [s for _, s in windows_of(batches(dm.val_dataloader()))]


def test_contig_split_on_celegans(shared_data, tmp_path):
    dm = make(shared_data / "genomes" / "C.elegans_first1pct.fa.gz", tmp_path, val_contigs=["II"],
              test_contigs=["X"], split="contig", seq_len=1023)
    assert [iv.contig for iv in dm.intervals["val"]] == ["II"]
    assert [iv.contig for iv in dm.intervals["test"]] == ["X"]
    assert {iv.contig for iv in dm.intervals["train"]} == {"I", "III", "IV", "V", "MtDNA"}
    assert {c for c, _ in windows_of(batches(dm.train_dataloader(), 20))} <= {"I", "III", "IV", "V", "MtDNA"}
    assert {c for c, _ in windows_of(batches(dm.val_dataloader()))} == {"II"}


def test_unknown_contig_lists_the_available_ones(shared_data, tmp_path):
    with pytest.raises(ValueError, match=r"no contig named \['chrII'\].*'II'"):
        make(shared_data / "genomes" / "C.elegans_first1pct.fa.gz", tmp_path, split="contig", val_contigs=["chrII"])


def test_workers_give_the_same_batches(lambda_fa, tmp_path):
    dm0 = make(lambda_fa, tmp_path, num_workers=0)
    dm2 = make(lambda_fa, tmp_path, num_workers=2)
    b0, b2 = batches(dm0.train_dataloader(), 4), batches(dm2.train_dataloader(), 4)
    for x, y in zip(b0, b2):
        assert torch.equal(x["input_ids"], y["input_ids"]) and x["contig"] == y["contig"]


def test_window_longer_than_every_interval_fails_before_training(lambda_fa, tmp_path):
    with pytest.raises(ValueError, match=r"lambda_virus.fa: the val split has no interval of seq_len\+1 = 4001 bases"):
        make(lambda_fa, tmp_path, seq_len=4000)
    with pytest.raises(ValueError, match="train split"):
        make(lambda_fa, tmp_path, seq_len=60000)


def test_bad_character_inside_a_window_names_file_record_and_position(tmp_path):
    fa = tmp_path / "g.fa"
    seq = "ACGT" * 300
    fa.write_text(">g\n" + seq + "\n")
    dm = make(fa, tmp_path, seq_len=63, val_fraction=0.1, test_fraction=0.1)
    # corrupt the file after the scan: the tokenizer is the last line of defence
    fa.write_text(">g\n" + seq[:100] + "7" + seq[101:] + "\n")
    dm.fasta._handle = None
    with pytest.raises(ValueError, match=r"g.fa, record 'g'.*'7' at position 100"):
        dm.train_set.example("g", 80, False)


def test_interval_length():
    assert len(Interval("a", 10, 25)) == 15
