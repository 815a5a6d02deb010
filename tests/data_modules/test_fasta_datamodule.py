"""FastaDataModule: splits, determinism, augmentation, workers, on real genomes."""

import logging

import lightning.pytorch as pl
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
    assert b["input_ids"].shape == b["labels"].shape == (4, 255)
    assert b["input_ids"].dtype == b["labels"].dtype == torch.int64
    assert b["start"].dtype == torch.int64 and b["start"].shape == (4,)
    assert b["strand"].dtype == torch.int8 and b["strand"].tolist() == [1, 1, 1, 1]
    assert isinstance(b["contig"], list) and b["contig"][0] == "gi|9626243|ref|NC_001416.1|"
    seq = dm.fasta.fetch(b["contig"][0], int(b["start"][0]), int(b["start"][0]) + 256).upper()
    assert dm.tokenizer.decode(torch.cat([b["input_ids"][0], b["labels"][0, -1:]])) == seq


def test_reverse_complement_augmentation_gives_the_other_strand(lambda_fa, tmp_path):
    lines = lambda_fa.read_text().splitlines()
    genome = "".join(line.strip() for line in lines[1:]).upper()  # independent of pyfaidx
    dm = make(lambda_fa, tmp_path, rc_augment=True)
    found = 0
    for b in batches(dm.train_dataloader()):
        for i in range(len(b["contig"])):
            start = int(b["start"][i])
            fwd = genome[start : start + dm.window]
            tokens = dm.tokenizer.decode(torch.cat([b["input_ids"][i], b["labels"][i, -1:]]))
            if int(b["strand"][i]) == -1:
                assert tokens == fwd.translate(RC)[::-1]
                found += 1
            else:
                assert tokens == fwd
    assert 0 < found < sum(len(b["contig"]) for b in batches(dm.train_dataloader()))


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
    train = windows_of(batches(dm.train_dataloader(), 20))
    assert {c for c, _ in train} <= {"I", "III", "IV", "V"}  # MtDNA (137 bp) holds no window
    assert all(inside(dm.intervals["train"], c, s, dm.window) for c, s in train)
    assert {c for c, _ in windows_of(batches(dm.val_dataloader()))} == {"II"}
    test = windows_of(batches(dm.test_dataloader()))
    assert {c for c, _ in test} == {"X"} and len(test) == dm.fasta.lengths["X"] // dm.window


def test_unknown_contig_lists_the_available_ones(shared_data, tmp_path):
    with pytest.raises(ValueError, match=r"data.val_contigs: no record 'chr2' in .*C.elegans.*'I', 'II'"):
        make(shared_data / "genomes" / "C.elegans_first1pct.fa.gz", tmp_path, split="contig", val_contigs=["chr2"])


def test_a_chr_prefixed_contig_name_is_read_as_the_record_and_logged(shared_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="data_modules"):
        dm = make(shared_data / "genomes" / "C.elegans_first1pct.fa.gz", tmp_path, split="contig",
                  val_contigs=["chrII"], seq_len=1023)
    assert [iv.contig for iv in dm.intervals["val"]] == ["II"]
    assert any("contig 'chrII' read as record 'II'" in r.message for r in caplog.records)


def same_batches(xs, ys):
    assert len(xs) == len(ys) > 0
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys() and x["contig"] == y["contig"]
        for k in ("input_ids", "labels", "start", "strand"):
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def test_workers_give_the_same_batches(lambda_fa, tmp_path):
    dm0 = make(lambda_fa, tmp_path, num_workers=0)
    dm2 = make(lambda_fa, tmp_path, num_workers=2)
    same_batches(batches(dm0.train_dataloader(), 6), batches(dm2.train_dataloader(), 6))
    same_batches(batches(dm0.val_dataloader()), batches(dm2.val_dataloader()))
    loader0, loader2 = dm0.train_dataloader(), dm2.train_dataloader()
    loader0.sampler.set_epoch(3)
    loader2.sampler.set_epoch(3)
    same_batches(batches(loader0, 3), batches(loader2, 3))


def test_workers_on_a_bgzf_copy(shared_data, tmp_path):
    fa = shared_data / "genomes" / "C.elegans_first1pct.fa.gz"
    kw = dict(split="contig", val_contigs=["II"], test_contigs=["X"], seq_len=511)
    dm0, dm2 = make(fa, tmp_path, num_workers=0, **kw), make(fa, tmp_path, num_workers=2, **kw)
    same_batches(batches(dm0.train_dataloader(), 4), batches(dm2.train_dataloader(), 4))


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, tuple(windows_of([batch]))))
        return self.w.sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_and_record(lambda_fa, tmp_path):
    dm = FastaDataModule(str(lambda_fa), seq_len=127, batch_size=4, seed=5, cache_dir=str(tmp_path / "cache"))
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False, accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    return model.seen


def test_lightning_sets_the_epoch_new_windows_each_epoch_reproducibly(lambda_fa, tmp_path):
    seen = _fit_and_record(lambda_fa, tmp_path)
    assert [e for e, _ in seen] == [0, 0, 0, 1, 1, 1]
    epoch0 = {w for e, ws in seen if e == 0 for w in ws}
    epoch1 = {w for e, ws in seen if e == 1 for w in ws}
    assert epoch0 != epoch1
    assert _fit_and_record(lambda_fa, tmp_path) == seen


def test_window_longer_than_every_interval_fails_before_training(lambda_fa, tmp_path):
    with pytest.raises(ValueError, match=r"lambda_virus.fa: the val split has no interval of seq_len\+1 = 4001 bases"):
        make(lambda_fa, tmp_path, seq_len=4000)
    with pytest.raises(ValueError) as err:
        make(lambda_fa, tmp_path, seq_len=60000)
    msg = str(err.value)
    assert str(lambda_fa) in msg and "train split" in msg and "seq_len=60000" in msg and "longest contig: 48502" in msg


def test_no_held_out_split_is_allowed(lambda_fa, tmp_path):
    dm = make(lambda_fa, tmp_path, val_fraction=0.0, test_fraction=0.1)
    assert dm.intervals["val"] == [] and len(dm.val_set) == 0
    assert dm.intervals["train"][0].end == dm.intervals["test"][0].start


def test_predict_uses_the_test_split(lambda_fa, tmp_path):
    dm = make(lambda_fa, tmp_path)
    same_batches(batches(dm.predict_dataloader()), batches(dm.test_dataloader()))


def test_setup_logs_per_split_counts(tmp_path, caplog):
    path = tmp_path / "soft.fa"
    seq = "ACGT" * 200 + "acgtRN" * 50 + "ACGT" * 25 + "yyNN" * 25  # 1300 bases; the held-out 10% + 10% at the end
    path.write_text(">s\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    with caplog.at_level(logging.INFO, logger="data_modules"):
        # max_n_run=None: the 100 N-like bases at the end would otherwise be cut out as a gap
        make(path, tmp_path, seq_len=63, val_fraction=0.1, test_fraction=0.1, max_n_run=None)
    lines = {r.message.split(" split:")[0]: r.message for r in caplog.records if " split:" in r.message}
    val, test = seq[1040:1170], seq[1170:1300]  # 130 bases each at the end of the contig

    def expect(s):
        n = s.count("N") + s.count("n")
        iupac = sum(c in "RYSWKMBDHVryswkmbdhv" for c in s)
        lower = sum(c.islower() for c in s)
        return f"{len(s)} bases in 1 intervals ({n} N, {iupac} IUPAC codes read as N, {lower} soft-masked)"

    assert expect(val) in lines["val"] and expect(test) in lines["test"]
    assert expect(seq[:1040]) in lines["train"]


def test_short_contigs_are_left_out_of_a_split_and_counted(shared_data, tmp_path, caplog):
    fa = shared_data / "genomes" / "C.elegans_first1pct.fa.gz"
    with caplog.at_level(logging.INFO, logger="data_modules"):
        dm = make(fa, tmp_path, seq_len=1023)  # region split: MtDNA (137 bp) is too short anywhere
    train_line = next(r.message for r in caplog.records if r.message.startswith("train split:"))
    assert "1 intervals shorter than one window of 1024 bases left out" in train_line
    w = dm.window
    for part, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        got = windows_of(batches(loader, 30))
        assert got and all(inside(dm.intervals[part], c, s, w) for c, s in got)
        assert "MtDNA" not in {c for c, _ in got}


@pytest.mark.filterwarnings("ignore:Index file .* is older than FASTA file")
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


def test_windows_of_a_million_bases_read_from_disk(shared_data, tmp_path):
    fa = shared_data / "genomes" / "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"  # 4.6 Mb, plain gzip
    dm = make(fa, tmp_path, seq_len=2**20, batch_size=1, val_fraction=0.25, test_fraction=0.25)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        b = next(iter(loader))
        assert b["input_ids"].shape == (1, 2**20)
        start = int(b["start"][0])
        window = dm.tokenizer.decode(torch.cat([b["input_ids"][0], b["labels"][0, -1:]]))
        if int(b["strand"][0]) == -1:
            window = window.translate(RC)[::-1]
        assert window == dm.fasta.fetch("NC_000913.3", start, start + 2**20 + 1)


def test_val_contigs_with_a_region_split_is_an_error(lambda_fa):
    with pytest.raises(ValueError, match="hold out whole contigs with data.split=contig or bed"):
        FastaDataModule(str(lambda_fa), val_contigs=["x"])


def test_interval_length():
    assert len(Interval("a", 10, 25)) == 15


def test_eval_windows_of_their_own_length(lambda_fa, tmp_path):
    # train at 4095 while the 2,425-base held-out ends only fit 1023-base windows
    dm = make(lambda_fa, tmp_path, seq_len=4095, batch_size=2, eval_seq_len=1023, eval_batch_size=1)
    (train,) = batches(dm.train_dataloader(), 1)
    assert train["input_ids"].shape == (2, 4095)
    val = batches(dm.val_dataloader())
    assert [b["input_ids"].shape for b in val] == [(1, 1023)] * (2425 // 1024)
    for contig, start in windows_of(val):
        assert inside(dm.intervals["val"], contig, start, 1024)
    # an eval window too long for the held-out ends names eval_seq_len, not seq_len
    with pytest.raises(ValueError, match=r"val split has no interval of eval_seq_len\+1 = 3001 bases"):
        make(lambda_fa, tmp_path, seq_len=4095, eval_seq_len=3000)
