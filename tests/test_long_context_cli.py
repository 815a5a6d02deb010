"""experiment=dna_pretrain_1m from the command line, shrunk to CPU size: sequence-length warm-up to
the full window, segment-wise training of windows longer than task.segment_len, eval windows of
their own length. (At full size it is a GPU run: benchmarks/long_context_gpu.sh.)"""

import csv

from mamba_seq.cli import main

SMALL = ["trainer=cpu", "model.d_model=16", "model.n_layer=2", "model.d_state=4", "data.seq_len=2048", "trainer.log_every_n_steps=1",
         "data.eval_seq_len=512", "callbacks.seq_len_warmup.min_seq_len=512",
         "callbacks.seq_len_warmup.steps_per_stage=2", "trainer.max_steps=6", "trainer.val_check_interval=3",
         "callbacks.progress_bar.refresh_rate=0"]


def test_dna_pretrain_1m_warms_up_to_segmented_windows(tmp_path):
    out = tmp_path / "run"
    assert main(["fit", "experiment=dna_pretrain_1m", *SMALL, "task.segment_len=512", f"paths.output_dir={out}"]) == 0
    with open(out / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    lengths = [float(r["train/seq_len"]) for r in rows if r.get("train/seq_len")]
    assert lengths[0] == 512 and lengths[-1] == 2048  # the full window (4 segments of 512) after 512, 1024
    val = [float(r["val/bpb"]) for r in rows if r.get("val/bpb")]
    assert len(val) == 2 and all(0 < v < 5 for v in val)
    assert (out / "checkpoints" / "last.ckpt").exists()
