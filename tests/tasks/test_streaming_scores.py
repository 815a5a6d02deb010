"""StreamingLMScores: segment-by-segment scores with the recurrent state carried equal one forward
pass over the whole record; memory does not grow with the record; the CLI end to end.

Tolerance of the equality (fp32, CPU). The streamed and the whole-record passes compute the same
sums in different orders (the scan restarted from a carried state at each segment; the conv fed
its carried prefix), so they differ by fp32 rounding only: tests/mamba_seq/test_inference.py bounds
that for logits by 1e-4 * max|logit| per logit (its derivation: ~10 roundings of 6e-8 per step per
layer, accumulated over the channels' memory). The NLL of a base is 2-Lipschitz in the max-norm of
the logits (its gradient, softmax - onehot, has L1 norm <= 2), so a base's bits, and any mean of
them over a bin, differ by at most 2 * 1e-4 * max|logit| / ln 2; that is the bound used (seen:
~1e-6 bits). Embeddings (mean hidden state per bin) are compared with the same relative bound.
Dropping the carried state (a fresh state per segment) moves the scores far past this bound, which
the test also checks, so the comparison has teeth.
"""

import csv
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_modules import DNATokenizer
from data_modules.fasta_stream import FastaStreamDataModule
from mamba_seq.cli import main
from tasks.prediction_writer import TSVPredictionWriter
from tasks.streaming_scores import NpyRowWriter, StreamingLMScores
from tests.data_modules.test_fasta_stream import write_fasta

TOK = DNATokenizer()
CONFIG = dict(d_model=16, n_layer=2, d_state=4, vocab_size=TOK.vocab_size)
LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hundreds of small forwards: intra-op threads only add overhead (and stall on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    rng = np.random.default_rng(1)
    # a Markov-ish record (repeats, so a model's state matters) and one with soft-masking, a gap, IUPAC codes
    motif = "".join(rng.choice(list("ACGT"), 37))
    a = "".join(motif if rng.random() < 0.5 else "".join(rng.choice(list("ACGT"), 37)) for _ in range(40))[:1500]
    b = "ACGTTGCA" * 30 + "N" * 130 + "acgtRYacgtTTGA" * 15 + "G"  # 581 bases
    root = tmp_path_factory.mktemp("stream")
    return write_fasta(root / "g.fa", {"a": a, "b": b}), {"a": a, "b": b}, root / "cache"


def tiny_task(**kw) -> StreamingLMScores:
    torch.manual_seed(0)
    task = StreamingLMScores(model=CONFIG, **kw).eval()
    return task


def stream(task, fasta, cache, segment_len, emb_path=None) -> list[dict]:
    """predict_step over every segment (no Trainer: fast); rows as dicts, embeddings to emb_path."""
    dm = FastaStreamDataModule(str(fasta), segment_len=segment_len, cache_dir=str(cache))
    dm.setup("predict")
    task._reset_run()
    if emb_path is not None:
        task._embeddings = NpyRowWriter(emb_path, task.model.config.d_model)
    rows = []
    for batch in dm.predict_dataloader():
        out = task.predict_step(batch, 0)
        rows += [dict(zip(out, vals)) for vals in zip(*out.values())]
    if emb_path is not None:
        task._embeddings.close()
    return rows


@torch.no_grad()
def whole_record_reference(model, seq: str, bin_size: int):
    """One forward over the whole record: per-bin (start, end, mean bits, scored bases, mean hidden),
    with the bits of base j = -log2 p(x_j | x_<j) from logits at j-1; N targets not scored."""
    ids = torch.from_numpy(TOK.encode(seq))[None]
    hidden = model.backbone(ids)[0]
    logits = model.lm_head(hidden).float()
    targets = ids[0, 1:]
    bits = F.cross_entropy(logits[:-1], targets, reduction="none").double() / LN2
    scored = targets != TOK.base_ids["N"]
    n, out = len(seq), []
    for s in range(0, n, bin_size):
        e = min(s + bin_size, n)
        j = torch.arange(max(s, 1), e)  # bases in the bin that have a prediction
        sel = j[scored[j - 1]]
        mean = bits[sel - 1].mean().item() if len(sel) else math.nan
        out.append((s, e, mean, len(sel), hidden[s:e].mean(0)))
    return out, logits.abs().max().item()


def max_bits_error(rows, reference) -> float:
    err = 0.0
    for row, (s, e, mean, count, _) in zip(rows, reference):
        assert (row["start"], row["end"], row["bases_scored"]) == (s, e, count)
        if count:
            err = max(err, abs(row["bits_per_base"] - mean))
        else:
            assert math.isnan(row["bits_per_base"])
    return err


@pytest.mark.parametrize("segment_len,bin_size", [
    (2000, 100),  # one segment a record
    (500, 300),   # 500 divides 1500; bins of 300 straddle segments
    (333, 300),   # divides neither record; bins straddle
    (333, 1),     # one base a bin
    (64, 1000),   # many segments a bin
    (3, 37),      # segments shorter than the conv (d_conv = 4): its state spans segments
])
def test_streamed_scores_equal_one_forward_over_the_record(genome, tmp_path, segment_len, bin_size):
    fasta, seqs, cache = genome
    task = tiny_task(bin_size=bin_size)
    emb_path = tmp_path / "emb.npy"
    rows = stream(task, fasta, cache, segment_len, emb_path)
    emb = np.load(emb_path)
    assert emb.shape == (len(rows), CONFIG["d_model"]) and emb.dtype == np.float32
    i = 0
    for name, seq in seqs.items():
        reference, max_logit = whole_record_reference(task.model, seq, bin_size)
        mine = rows[i:i + len(reference)]
        assert [r["record"] for r in mine] == [name] * len(reference)
        assert mine[0]["start"] == 0 and mine[-1]["end"] == len(seq)
        tol = 2 * 1e-4 * max_logit / LN2
        assert max_bits_error(mine, reference) < tol
        ref_emb = torch.stack([h for *_, h in reference]).numpy()
        assert np.abs(emb[i:i + len(reference)] - ref_emb).max() < 1e-4 * np.abs(ref_emb).max()
        # the per-record mean is over bases, not bins
        scored = [(r["bits_per_base"], r["bases_scored"]) for r in mine if r["bases_scored"]]
        want = sum(b * c for b, c in scored) / sum(c for _, c in scored)
        summary = [s for s in task._summary if s[0] == name][0]
        assert summary[1] == len(seq) and summary[2] == sum(c for _, c in scored) and summary[4] is True
        assert abs(summary[3] - want) < 1e-9
        i += len(reference)
    assert i == len(rows)


def test_dropping_the_carried_state_is_caught(genome, tmp_path):
    """The comparison above has teeth: a fresh state per segment moves scores far past its bound."""
    fasta, seqs, cache = genome
    task = tiny_task(bin_size=50)
    reference, max_logit = whole_record_reference(task.model, seqs["a"], 50)
    real_begin = task._begin_segment

    def forgetful(record, start, length, first):
        real_begin(record, start, length, first)
        task._cache = task.model.allocate_inference_cache(1)

    task._begin_segment = forgetful
    rows = [r for r in stream(task, fasta, cache, 100) if r["record"] == "a"]
    assert max_bits_error(rows, reference) > 10 * (2 * 1e-4 * max_logit / LN2)


def retained(obj, seen=None) -> tuple[int, int]:
    """(tensor elements, container items) reachable from a task's own state (not its modules)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel(), 0
    if isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif isinstance(obj, dict):
        items = list(obj.values())
    elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, pl.Trainer, type)):
        items = list(vars(obj).values())
    else:
        return 0, 0
    numel, count = 0, len(items)
    for item in items:
        a, b = retained(item, seen)
        numel, count = numel + a, count + b
    return numel, count


def peak_retained(task, fasta, cache, segment_len) -> tuple[int, int]:
    skip = {"_modules", "_parameters", "_buffers", "_trainer", "_hparams", "_hparams_initial"}
    dm = FastaStreamDataModule(str(fasta), segment_len=segment_len, cache_dir=str(cache))
    dm.setup("predict")
    task._reset_run()
    peak = (0, 0)
    for batch in dm.predict_dataloader():
        task.predict_step(batch, 0)
        own = {k: v for k, v in vars(task).items() if k not in skip}
        peak = max(peak, retained(own))
    return peak


def test_state_between_segments_does_not_grow_with_the_record(tmp_path):
    """Between segments the task keeps the InferenceCache, one partial bin and per-record totals:
    the same amount for a record 8x longer."""
    rng = np.random.default_rng(2)
    task = tiny_task(bin_size=70)
    peaks = []
    for n in (1000, 8000):
        fasta = write_fasta(tmp_path / f"r{n}.fa", {"r": "".join(rng.choice(list("ACGT"), n))})
        peaks.append(peak_retained(task, fasta, tmp_path / "cache", 256))
    assert peaks[0] == peaks[1]
    cache = task.model.allocate_inference_cache(1)
    assert peaks[0][0] <= sum(t.numel() for t in (*cache.conv_states, *cache.ssm_states)) + 2


def test_through_a_trainer_rows_are_written_not_kept(genome, tmp_path):
    """With Lightning: predict.tsv rows written per batch, predictions not accumulated by the loop,
    record_scores.tsv and embeddings.npy written."""
    fasta, seqs, cache = genome

    class NothingKept(pl.Callback):
        def on_predict_batch_start(self, trainer, *args):
            assert all(len(p) == 0 for p in trainer.predict_loop._predictions)

    task = tiny_task(bin_size=200, save_embeddings=True, output_dir=str(tmp_path / "out"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         callbacks=[TSVPredictionWriter(tmp_path / "out" / "predictions.tsv"), NothingKept()])
    dm = FastaStreamDataModule(str(fasta), segment_len=256, cache_dir=str(cache))
    assert trainer.predict(task, datamodule=dm) is None
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.tsv"), delimiter="\t"))
    assert list(rows[0]) == ["record", "start", "end", "bits_per_base", "bases_scored"]
    assert len(rows) == sum(-(-len(s) // 200) for s in seqs.values())
    assert np.load(tmp_path / "out" / "embeddings.npy").shape == (len(rows), CONFIG["d_model"])
    summary = list(csv.DictReader(open(tmp_path / "out" / "record_scores.tsv"), delimiter="\t"))
    assert [(r["record"], int(r["length"]), r["complete"]) for r in summary] == \
        [(k, len(v), "true") for k, v in seqs.items()]


def test_npy_row_writer_round_trips(tmp_path):
    w = NpyRowWriter(tmp_path / "x.npy", 3)
    w.append(torch.arange(6.0).view(2, 3))
    w.append(torch.ones(1, 3, dtype=torch.float64))
    assert not (tmp_path / "x.npy").exists()  # only once complete
    w.close()
    got = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert got.dtype == np.float32 and np.array_equal(got, [[0, 1, 2], [3, 4, 5], [1, 1, 1]])
    empty = NpyRowWriter(tmp_path / "e.npy", 5)
    empty.close()
    assert np.load(tmp_path / "e.npy").shape == (0, 5)


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="ckpt_path"):
        StreamingLMScores()
    with pytest.raises(ValueError, match="not found"):
        StreamingLMScores(lm_checkpoint=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="causal"):
        StreamingLMScores(model={**CONFIG, "bidirectional": True})
    with pytest.raises(ValueError, match="bin_size"):
        StreamingLMScores(model=CONFIG, bin_size=0)


def test_cli_fit_then_stream_scores_a_whole_record(tmp_path):
    """`mamba-seq fit experiment=dna_pretrain` for 2 steps, then `mamba-seq predict
    experiment=dna_stream_scores`: bins tile the whole phage lambda record."""
    tiny = ["model.d_model=16", "model.n_layer=2", "model.d_state=4", f"data.cache_dir={tmp_path / 'cache'}",
            "data.fasta=${asset:lambda_virus.fa}"]
    fit_dir = tmp_path / "fit"
    assert main(["fit", "experiment=dna_pretrain", *tiny, "data.seq_len=64", "data.batch_size=4",
                 "data.val_fraction=0.05", "data.test_fraction=0.05", "trainer.max_steps=2",
                 "trainer.val_check_interval=2", "trainer.limit_val_batches=2", f"paths.output_dir={fit_dir}"]) == 0
    ckpt = fit_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "scores"
    assert main(["predict", "experiment=dna_stream_scores", f"ckpt_path={ckpt}", *tiny[3:], "data.segment_len=8192",
                 "data.records=['gi|9626243|ref|NC_001416.1|']", "task.bin_size=5000", "task.save_embeddings=true",
                 f"paths.output_dir={out}"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.tsv"), delimiter="\t"))
    n = 48502
    assert [(int(r["start"]), int(r["end"])) for r in rows] == [(s, min(s + 5000, n)) for s in range(0, n, 5000)]
    assert sum(int(r["bases_scored"]) for r in rows) == n - 1
    assert all(0.5 < float(r["bits_per_base"]) < 5 for r in rows)
    (summary,) = csv.DictReader(open(out / "record_scores.tsv"), delimiter="\t")
    assert summary["record"] == "gi|9626243|ref|NC_001416.1|" and int(summary["length"]) == n and summary["complete"] == "true"
    mean = sum(float(r["bits_per_base"]) * int(r["bases_scored"]) for r in rows) / (n - 1)
    assert math.isclose(float(summary["bits_per_base"]), mean, rel_tol=1e-5)
    assert np.load(out / "embeddings.npy").shape == (len(rows), 16)
    with pytest.raises(SystemExit, match="trains nothing"):
        main(["fit", "experiment=dna_stream_scores", f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'x'}"])
    with pytest.raises(Exception, match="give ckpt_path"):  # hydra's InstantiationException around the ValueError
        main(["predict", "experiment=dna_stream_scores", f"paths.output_dir={tmp_path / 'y'}"])
    # the causal-LM checkpoint also loads into this class directly (its hyper-parameters accepted)
    loaded = StreamingLMScores.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    lm_state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, lm_state[k]) for k, v in loaded.state_dict().items())
