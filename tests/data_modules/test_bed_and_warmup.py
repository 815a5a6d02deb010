"""BED intervals, runs of N and the sequence-length warm-up of FastaDataModule."""

import logging
import re

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from data_modules import FastaDataModule, FastaFile, SeqLenWarmup
from data_modules.fasta_pretraining import Interval

N_LIKE = re.compile("[NnRYSWKMBDHVryswkmbdhv]+")  # written out again: an independent scan


def write_fasta(path, records: dict[str, str], width: int = 60):
    path.write_text("".join(f">{name}\n" + "\n".join(seq[i : i + width] for i in range(0, len(seq), width)) + "\n"
                            for name, seq in records.items()))
    return path


def random_dna(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def make(fasta, tmp_path, **kw):
    args = dict(seq_len=63, batch_size=4, seed=0, cache_dir=str(tmp_path / "cache"))
    args.update(kw)
    dm = FastaDataModule(str(fasta), **args)
    dm.setup("fit")
    return dm


def windows(loader, n_batches=None, epoch=None):
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    out = []
    for i, b in enumerate(loader):
        if n_batches is not None and i >= n_batches:
            break
        out += [(c, int(s), int(b["input_ids"].shape[1]) + 1) for c, s in zip(b["contig"], b["start"])]
    return out


def inside(intervals, contig, start, length):
    return any(iv.contig == contig and iv.start <= start and start + length <= iv.end for iv in intervals)


# -- BED ---------------------------------------------------------------------------------------------
@pytest.fixture
def celegans(shared_data):
    return shared_data / "genomes" / "C.elegans_first1pct.fa.gz"  # records I II III IV V X MtDNA


def test_bed_rows_give_the_splits_on_a_real_genome(celegans, tmp_path, caplog):
    bed = tmp_path / "regions.bed"
    bed.write_text(
        "# HyenaDNA-style: chrom start end split\n"
        "track name=pretraining\n"
        "browser position chrI:1-1000\n"
        "\n"
        "chrI\t0\t60000\ttrain\n"
        "chrI\t50000\t90000\ttrain\n"  # overlaps the row above: merged, not counted twice
        "chrI 90000 100000 train\n"  # touches it: merged too; space-separated
        "chrI\t100000\t120000\tvalid\n"  # touches a train row: allowed, no base is shared
        "chrII\t0\t30000\ttest\n"
        "chrIII\t1000\t41000\n"  # no split column: train
        "chrX\t0\t20000\n"  # no split column, but X is held out by val_contigs
    )
    with caplog.at_level(logging.INFO, logger="data_modules"):
        dm = make(celegans, tmp_path, split="bed", bed=str(bed), val_contigs=["X"], seq_len=1023)
    assert dm.intervals == {
        "train": [Interval("I", 0, 100000), Interval("III", 1000, 41000)],
        "val": [Interval("I", 100000, 120000), Interval("X", 0, 20000)],
        "test": [Interval("II", 0, 30000)],
    }
    text = "\n".join(r.message for r in caplog.records)
    assert "contig 'chrI' read as record 'I'" in text and "4 train rows merged into 2 disjoint intervals" in text
    seen = {}
    for part, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        seen[part] = windows(loader, 8)
        assert seen[part], part
        for contig, start, length in seen[part]:
            assert length == dm.window and inside(dm.intervals[part], contig, start, length), (part, contig, start)
    assert {c for c, _, _ in seen["val"]} == {"I", "X"}
    # a window of one split never shares a base with another split's interval
    for part in seen:
        for other in set(seen) - {part}:
            for contig, start, length in seen[part]:
                assert not any(iv.contig == contig and iv.start < start + length and start < iv.end
                               for iv in dm.intervals[other])


@pytest.fixture
def small_genome(tmp_path):
    return write_fasta(tmp_path / "g.fa", {"1": random_dna(3000, 1), "chrX": random_dna(2000, 2),
                                          "chr7": random_dna(500, 3), "7": random_dna(500, 4)})


@pytest.mark.parametrize("rows, where, message", [
    ("1\t0\t1000\ttrain\nchrY\t0\t100\n", "line 2", r"no record 'chrY' in .*g.fa \(records: \['1', 'chrX', 'chr7', '7'\]"),
    ("1\t0\t3001\n", "line 1", r"end 3001 is past the end of record '1' \(3000 bases\)"),
    ("1\t500\t500\n", "line 1", r"start 500, end 500: need 0 <= start < end"),
    ("1\t-5\t100\n", "line 1", r"need 0 <= start < end"),
    ("1\t0\t1,000\n", "line 1", r"start '0' and end '1,000' must be integers"),
    ("chrom start end split\n", "line 1", r"must be integers .* a header line must start with '#'"),
    ("1\t0\n", "line 1", r"2 column\(s\)"),
    ("1\t0\t100\tgene_name\n", "line 1", r"column 4 is 'gene_name'; it must be the split: train, valid \(or val\)"),
    ("Chr7\t0\t100\n", "line 1", r"contig 'Chr7' .* matches several \(\['chr7', '7'\]\)"),
    ("# header\n1\t0\t1000\ttrain\nX\t0\t500\ttest\n1\t900\t1500\tvalid\n", "lines 2 and 4",
     r"the train row 1:0-1000 overlaps the val row 1:900-1500: .* \(a leak\)"),
])
def test_bad_bed_rows_fail_naming_file_and_line(small_genome, tmp_path, rows, where, message):
    bed = tmp_path / "bad.bed"
    bed.write_text(rows)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bed))}, {where}: .*{message}"):
        make(small_genome, tmp_path, split="bed", bed=str(bed))


def test_bed_split_column_contradicting_a_held_out_contig(small_genome, tmp_path):
    bed = tmp_path / "r.bed"
    bed.write_text("1\t0\t1000\ttrain\nX\t0\t500\ttrain\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bed))}, line 2: .*says train, but data.test_contigs "
                                         r"holds out 'chrX'"):
        make(small_genome, tmp_path, split="bed", bed=str(bed), test_contigs=["X"])


def test_bed_and_split_go_together(small_genome, tmp_path):
    with pytest.raises(ValueError, match="data.split=bed reads its intervals from data.bed"):
        FastaDataModule(str(small_genome), bed=str(tmp_path / "r.bed"))
    with pytest.raises(ValueError, match="BED file not found: .*nope.bed"):
        make(small_genome, tmp_path, split="bed", bed=str(tmp_path / "nope.bed"))


# -- runs of N ---------------------------------------------------------------------------------------
def genome_with_gaps() -> dict[str, str]:
    a = (random_dna(400, 5) + "N" + random_dna(300, 6) + "n" * 7 + random_dna(300, 7) + "N" * 50
         + random_dna(300, 8) + "NNRNN" * 11 + random_dna(900, 9) + "N" * 120 + random_dna(700, 10)
         + "N" * 3000 + random_dna(500, 11) + "N" * 80 + random_dna(300, 12))
    b = "N" * 200 + random_dna(1500, 13) + "yN" * 40 + random_dna(600, 14)
    return {"a": a, "b": b}


def test_n_run_scan_matches_an_independent_scan_across_chunk_boundaries(tmp_path):
    records = genome_with_gaps()
    path = write_fasta(tmp_path / "gaps.fa", records)
    runs = FastaFile(path, tmp_path / "cache").n_runs(chunk=37)  # runs cross many chunk boundaries
    for name, seq in records.items():
        assert runs[name].tolist() == [[m.start(), m.end()] for m in N_LIKE.finditer(seq)]
    # cached per FASTA: a second open never reads the sequence for it
    again = FastaFile(path, tmp_path / "cache")
    again.fetch = None
    assert {k: v.tolist() for k, v in again.n_runs().items()} == {k: v.tolist() for k, v in runs.items()}


def test_no_window_holds_a_run_of_more_than_max_n_run(tmp_path, caplog):
    records = genome_with_gaps()
    path = write_fasta(tmp_path / "gaps.fa", records)
    with caplog.at_level(logging.INFO, logger="data_modules"):
        dm = make(path, tmp_path, max_n_run=50, val_fraction=0.15, test_fraction=0.15)
    long_runs = {name: [(m.start(), m.end()) for m in N_LIKE.finditer(seq) if m.end() - m.start() > 50]
                 for name, seq in records.items()}
    assert sum(map(len, long_runs.values())) == 6  # a: the 55-long NNRNN run, 120, 3000, 80; b: 200, the 80-long yN
    fifty = next(m.start() for m in N_LIKE.finditer(records["a"]) if m.end() - m.start() == 50)
    assert inside(dm.intervals["train"], "a", fifty, 50)  # a run of exactly max_n_run stays
    got = []
    for epoch in range(3):
        got += windows(dm.train_dataloader(), epoch=epoch)
    got += windows(dm.val_dataloader()) + windows(dm.test_dataloader())
    for contig, start, length in got:
        assert not any(s < start + length and start < e for s, e in long_runs[contig]), (contig, start)
    # shorter runs stay: some windows hold N
    assert any("N" in records[c][s : s + n].upper() for c, s, n in got)
    # the log says how many bases each split lost, counted here from the sequence and the split points
    lines = {r.message.split(" split:")[0]: r.message for r in caplog.records if " split:" in r.message}
    for part in ("train", "val", "test"):
        bounds = {}
        for name, seq in records.items():
            n = len(seq)
            cut1, cut2 = n - round(n * 0.15) - round(n * 0.15), n - round(n * 0.15)
            bounds[name] = {"train": (0, cut1), "val": (cut1, cut2), "test": (cut2, n)}[part]
        dropped = sum(max(0, min(e, bounds[c][1]) - max(s, bounds[c][0])) for c in long_runs for s, e in long_runs[c])
        assert f"; {dropped} bases in " in lines[part], (part, lines[part])
    # deterministic in the seed
    again = make(path, tmp_path, max_n_run=50, val_fraction=0.15, test_fraction=0.15)
    assert windows(again.train_dataloader()) == windows(dm.train_dataloader(), epoch=0)


def test_max_n_fraction_redraws_train_windows_and_leaves_out_eval_tiles(tmp_path):
    records = genome_with_gaps()
    path = write_fasta(tmp_path / "gaps.fa", records)
    dm = make(path, tmp_path, max_n_run=None, max_n_fraction=0.1, val_fraction=0.15, test_fraction=0.15)
    n_count = {name: np.cumsum([0] + [c in "NnRYSWKMBDHVryswkmbdhv" for c in seq]) for name, seq in records.items()}
    got = windows(dm.train_dataloader()) + windows(dm.val_dataloader()) + windows(dm.test_dataloader())
    assert got
    for contig, start, length in got:
        assert n_count[contig][start + length] - n_count[contig][start] <= 0.1 * length
    tiles = sum(len(range(iv.start, iv.end - dm.window + 1, dm.window)) for iv in dm.intervals["val"])
    assert dm.val_set.skipped > 0 and len(dm.val_set) == tiles - dm.val_set.skipped
    again = make(path, tmp_path, max_n_run=None, max_n_fraction=0.1, val_fraction=0.15, test_fraction=0.15)
    assert windows(again.train_dataloader()) == windows(dm.train_dataloader())


# -- sequence-length warm-up -------------------------------------------------------------------------
def test_warmup_plan_keeps_tokens_per_step_and_checks_its_arguments():
    stages = SeqLenWarmup(min_seq_len=64, steps_per_stage=50).plan(seq_len=512, batch_size=8)
    assert [(s.seq_len, s.batch_size, s.first_step, s.end_step) for s in stages] == [
        (64, 64, 0, 50), (128, 32, 50, 100), (256, 16, 100, 150), (512, 8, 150, None)]
    stages = SeqLenWarmup(min_seq_len=256, stage_steps=[10, 40]).plan(seq_len=1024, batch_size=1)
    assert [(s.seq_len, s.batch_size, s.first_step) for s in stages] == [(256, 4, 0), (512, 2, 10), (1024, 1, 40)]
    with pytest.raises(ValueError, match="data.seq_len=768 must be min_seq_len=64 times a power of two"):
        SeqLenWarmup(min_seq_len=64, steps_per_stage=5).plan(768, 2)
    with pytest.raises(ValueError, match="stage_steps has 1 steps, but .* takes 2 doublings"):
        SeqLenWarmup(min_seq_len=256, stage_steps=[10]).plan(1024, 1)
    with pytest.raises(ValueError, match="positive and increasing"):
        SeqLenWarmup(min_seq_len=256, stage_steps=[10, 10]).plan(1024, 1)
    with pytest.raises(ValueError, match="give one of steps_per_stage"):
        SeqLenWarmup(min_seq_len=64)


class ShapeRecorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_seen, self.val_shapes = [], []

    def training_step(self, batch, batch_idx):
        self.train_seen.append((self.global_step, tuple(batch["input_ids"].shape),
                                [(c, int(s)) for c, s in zip(batch["contig"], batch["start"])]))
        return (self.w * batch["input_ids"].float().mean()).sum() * 0.0

    def validation_step(self, batch, batch_idx):
        self.val_shapes.append(tuple(batch["input_ids"].shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def warmup_fit(fasta, tmp_path, max_steps, model=None, ckpt_path=None, **trainer_kw):
    dm = FastaDataModule(str(fasta), seq_len=64, batch_size=2, seed=1, cache_dir=str(tmp_path / "cache"))
    model = model or ShapeRecorder()
    trainer = pl.Trainer(
        max_steps=max_steps, max_epochs=-1, val_check_interval=3, check_val_every_n_epoch=None, limit_val_batches=2,
        callbacks=[SeqLenWarmup(min_seq_len=16, steps_per_stage=2)], logger=False, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, dm, trainer


# stages: steps 0-1 length 16 x batch 8, steps 2-3 32 x 4, from step 4 64 x 2
EXPECTED_SHAPE = {0: (8, 16), 1: (8, 16), 2: (4, 32), 3: (4, 32)}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_warmup_doubles_the_length_in_a_real_fit(shared_data, tmp_path, accumulate):
    fasta = shared_data / "genomes" / "lambda_virus.fa"
    model, dm, trainer = warmup_fit(fasta, tmp_path, max_steps=7, accumulate_grad_batches=accumulate)
    assert trainer.global_step == 7
    steps = [s for s, _, _ in model.train_seen]
    assert steps == [s for s in range(7) for _ in range(accumulate)]
    for step, shape, wins in model.train_seen:
        assert shape == EXPECTED_SHAPE.get(step, (2, 64)), (step, shape)
        assert shape[0] * shape[1] == 128  # tokens per batch fixed
        assert all(inside(dm.intervals["train"], c, s, shape[1] + 1) for c, s in wins)
    # validation (steps 3 and 6) always at the data module's seq_len and batch size
    assert model.val_shapes and set(model.val_shapes) == {(2, 64)}
    assert dm.train_stage_fn is None  # handed back after fit


def test_warmup_resumes_mid_stage_from_a_checkpoint(shared_data, tmp_path):
    fasta = shared_data / "genomes" / "lambda_virus.fa"
    full, _, _ = warmup_fit(fasta, tmp_path, max_steps=6)
    first, _, trainer = warmup_fit(fasta, tmp_path, max_steps=3)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, _, _ = warmup_fit(fasta, tmp_path, max_steps=6, ckpt_path=str(ckpt))
    got = [(s, shape) for s, shape, _ in first.train_seen + resumed.train_seen]
    assert got == [(s, shape) for s, shape, _ in full.train_seen]


def test_warmup_refuses_settings_that_count_epochs(shared_data, tmp_path):
    fasta = shared_data / "genomes" / "lambda_virus.fa"
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    for trainer_kw, message in (
        (dict(max_steps=7, max_epochs=3), "trainer.max_epochs=3 would count stages"),
        (dict(max_steps=7, val_check_interval=3), "set trainer.check_val_every_n_epoch=null"),
        (dict(max_epochs=2), "set trainer.max_steps"),
    ):
        dm = FastaDataModule(str(fasta), seq_len=64, batch_size=2, cache_dir=str(tmp_path / "cache"))
        trainer = pl.Trainer(callbacks=[SeqLenWarmup(16, steps_per_stage=2)], **trainer_kw, **quiet)
        with pytest.raises(ValueError, match=re.escape(message)):
            trainer.fit(ShapeRecorder(), datamodule=dm)
