"""Data parallelism end to end from the command line, on the CPU: DDP over 2 gloo processes.

Every multi-process run is a real `python -m mamba_seq.cli ...` subprocess (Lightning's DDP
launcher starts rank 1 by running that command line again), on its own free MASTER_PORT and with
one thread per process. The tiny causal LM trains on the bundled phage lambda genome.

* 2 processes x batch 4 follow the trajectory of 1 process x batch 8: per-step rank-mean training
  loss and the final weights.
* Checkpoints move between process counts: a 2-process checkpoint resumes on 1 process and a
  1-process one on 2, each starting from exactly the saved weights, and both continuations agree.
* val/test metrics are the whole split's on 2 processes (shards of unequal size): the LM's val/bpb,
  the promoter classifier's accuracy/MCC/F1/AUROC/loss and the zero-shot variant AUROC with its
  bootstrap interval equal one process's.
* sequence parallelism from the command line (task.sequence_parallel_size=2 on 2 processes): the
  1-process trajectory, and its val/bpb.
* predict on 2 processes writes the 1-process predictions.tsv (each rank its part, joined in order).
* FSDP does not run on the CPU (Lightning and torch both refuse): the CLI says so before any work.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TWO_PROCESSES = ["trainer=ddp_cpu"]  # accelerator cpu, DDPStrategy over gloo, devices 2, 32-true
ONE_PROCESS = ["trainer=cpu"]
TINY_MODEL = ["model.d_model=16", "model.n_layer=2", "model.d_state=4"]
# 19 val windows of 129 bases: shards of 9 and 10, and an eval batch of 4 leaves unequal last batches
LAMBDA_LM = ["experiment=dna_pretrain", "data.fasta=${asset:lambda_virus.fa}", "data.val_fraction=0.052",
             "data.test_fraction=0.052", "data.seq_len=128", "data.eval_batch_size=4", *TINY_MODEL,
             # warm-up of 1 step: the weights move by ~lr per step from the start, so a wrong batch or
             # gradient shows in them (with the default 50-step warm-up 5 steps barely move anything)
             "task.warmup_steps=1", "trainer.log_every_n_steps=1", "~callbacks.progress_bar"]
GLOBAL_BATCH = 8
FIRST_STEPS, MORE_STEPS = 5, 7


class StepLosses(pl.Callback):
    """Test instrument, added with `+callbacks.step_losses._target_=tests.test_ddp.StepLosses`: the
    rank-mean training loss of every step ({global step: loss} JSON at `path`; Lightning's
    metrics.csv holds rank 0's own loss only) and the weights training starts from, after a
    checkpoint is restored (`path`.start.pt)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.losses: dict[int, float] = {}

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            torch.save(state, self.path.with_suffix(".start.pt"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = trainer.strategy.reduce(outputs["loss"].detach().clone(), reduce_op="mean")
        self.losses[trainer.global_step] = float(loss)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.losses))


class StopAfterValidation(pl.Callback):
    """Test instrument: ends fit after the validation at global step `step`, once its checkpoint is
    written: a run stopped there as if killed, with the max_steps (so the LR schedule) of the
    uninterrupted run it is compared with."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, timeout: int = 300) -> str:
    """Run `python -m mamba_seq.cli ARGS` from the repository (so `tests.test_ddp` imports) on a free
    port, one thread per process. -> its output; a failure shows the output's tail."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "MASTER_PORT", "MAMBA_SEQ_RUN_TIME")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    res = subprocess.run([sys.executable, "-m", "mamba_seq.cli", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    output = res.stdout + res.stderr
    assert res.returncode == 0, f"mamba-seq {' '.join(args)} exited {res.returncode}:\n{output[-20000:]}"
    return output


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def last(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key)]
    assert values, f"no {key} in metrics.csv"
    return values[-1]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def recorded(run_dir: Path) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    losses = {int(k): v for k, v in json.loads((run_dir / "step_losses.json").read_text()).items()}
    return losses, torch.load(run_dir / "step_losses.start.pt", weights_only=True)


def lm_fit(record_dir: Path, cache: Path, processes: int, steps: int, *extra: str) -> None:
    """Fit the tiny LM with batch GLOBAL_BATCH / processes per process; StepLosses writes into record_dir."""
    trainer = TWO_PROCESSES if processes == 2 else ONE_PROCESS
    record_dir.mkdir(parents=True, exist_ok=True)
    cli("fit", *LAMBDA_LM, *trainer, f"data.batch_size={GLOBAL_BATCH // processes}", f"data.cache_dir={cache}",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        "+callbacks.step_losses._target_=tests.test_ddp.StepLosses",
        f"+callbacks.step_losses.path={record_dir / 'step_losses.json'}", *extra)


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    """5 steps of the tiny LM: on 1 process with batch 8 (paths.output_dir given), and on 2 processes
    with batch 4 each in the default timestamped run directory under paths.root_dir."""
    tmp = tmp_path_factory.mktemp("ddp_lm")
    cache = tmp / "cache"
    one = tmp / "one"
    lm_fit(one, cache, 1, FIRST_STEPS, f"paths.output_dir={one}")
    # the 2-process run's directory comes from ${now:...}: both ranks must land in the same one
    lm_fit(tmp / "record_two", cache, 2, FIRST_STEPS, f"paths.root_dir={tmp / 'outputs'}")
    run_dirs = list((tmp / "outputs" / "dna_pretrain").iterdir())
    two = run_dirs[0]
    for record in (tmp / "record_two").iterdir():
        record.rename(two / record.name)
    return {"tmp": tmp, "cache": cache, "one": one, "two": two, "two_run_dirs": run_dirs}


def test_both_ranks_write_one_run_directory(lm_runs):
    assert len(lm_runs["two_run_dirs"]) == 1, lm_runs["two_run_dirs"]
    two = lm_runs["two"]
    assert {p.name for p in two.iterdir()} >= {"config.yaml", "checkpoints", "logs"}
    assert (two / "checkpoints" / "last.ckpt").is_file()
    assert not list((two / "checkpoints").glob(".*tmp*"))  # no temporary file left by either rank


def test_two_processes_follow_the_one_process_trajectory(lm_runs):
    """DDP averages the two ranks' gradients of their batch-4 mean losses: with the sharded sampler
    (rank r takes the r-th 4 of each global batch of 8) that is the gradient of the batch-8 mean
    loss one process computes, every window having the same 128 targets. Clipping (norm 1.0) and
    AdamW then act on the same gradient. So the runs differ by float32 rounding only: sums taken in
    another order (two half-batch means, the all-reduce) give relative differences of ~1e-7 per
    step, which AdamW's normalised updates (each at most ~lr = 2e-3) carry into the weights at
    ~lr x 1e-6 per step at worst (where a gradient is near 0, m/sqrt(v) is sensitive). 1e-5
    absolute on the weights and 1e-5 relative on the losses leave margin for that; a wrong batch
    split changes the losses by ~1e-3 and the weights by ~1e-3 (about one step's update)."""
    one_losses, one_start = recorded(lm_runs["one"])
    two_losses, two_start = recorded(lm_runs["two"])
    assert sorted(one_losses) == sorted(two_losses) == list(range(1, FIRST_STEPS + 1))
    assert max_difference(one_start, two_start) == 0.0  # the same seed: the same initial weights
    for step in one_losses:
        assert math.isclose(one_losses[step], two_losses[step], rel_tol=1e-5), (step, one_losses, two_losses)
    one_final = weights(lm_runs["one"] / "checkpoints" / "last.ckpt")
    two_final = weights(lm_runs["two"] / "checkpoints" / "last.ckpt")
    assert max_difference(one_final, one_start) > 1e-3  # training moved the weights
    assert max_difference(one_final, two_final) < 1e-5
    # the validation at step 5 covers the whole split on 2 processes too (token-weighted mean)
    assert math.isclose(last(metrics(lm_runs["one"]), "val/bpb"), last(metrics(lm_runs["two"]), "val/bpb"),
                        rel_tol=1e-6)


def test_checkpoints_resume_across_process_counts(lm_runs):
    """A 2-process checkpoint resumes on 1 process and a 1-process one on 2: each run starts from
    exactly the saved weights and reaches step 7; as the two checkpoints hold the same step-5 state
    (up to rounding), the two continuations agree step by step."""
    tmp, cache = lm_runs["tmp"], lm_runs["cache"]
    two_to_one, one_to_two = tmp / "two_to_one", tmp / "one_to_two"
    two_ckpt = lm_runs["two"] / "checkpoints" / "last.ckpt"
    one_ckpt = lm_runs["one"] / "checkpoints" / "last.ckpt"
    lm_fit(two_to_one, cache, 1, MORE_STEPS, f"paths.output_dir={two_to_one}", f"ckpt_path={two_ckpt}")
    lm_fit(one_to_two, cache, 2, MORE_STEPS, f"paths.output_dir={one_to_two}", f"ckpt_path={one_ckpt}")

    for run_dir, ckpt in ((two_to_one, two_ckpt), (one_to_two, one_ckpt)):
        losses, start = recorded(run_dir)
        assert max_difference(start, weights(ckpt)) == 0.0, run_dir.name  # loaded exactly
        assert sorted(losses) == list(range(FIRST_STEPS + 1, MORE_STEPS + 1)), run_dir.name  # continued
        saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert saved["global_step"] == MORE_STEPS
    a_losses, _ = recorded(two_to_one)
    b_losses, _ = recorded(one_to_two)
    for step in a_losses:
        assert math.isclose(a_losses[step], b_losses[step], rel_tol=1e-5), (step, a_losses, b_losses)
    assert max_difference(weights(two_to_one / "checkpoints" / "last.ckpt"),
                          weights(one_to_two / "checkpoints" / "last.ckpt")) < 1e-5


def test_two_process_masked_lm_resume_continues_exactly(lm_runs):
    """Masked-LM training draws its masks from each rank's global RNG. The checkpoint holds every
    rank's RNG states (and each rank's place in its shard), so 2 + 2 steps on 2 processes, resumed
    from the step-2 checkpoint, end in the weights of 4 uninterrupted steps, bit for bit (the same
    operations in the same order), and metrics.csv keeps the first run's rows."""
    tmp, cache = lm_runs["tmp"], lm_runs["cache"]
    mlm = ["experiment=dna_pretrain_mlm", *TINY_MODEL, "data.fasta=${asset:lambda_virus.fa}", "data.seq_len=64",
           "data.batch_size=4", f"data.cache_dir={cache}", "trainer.limit_val_batches=1",
           "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "task.warmup_steps=1",
           "~callbacks.progress_bar", *TWO_PROCESSES]
    whole, resumed = tmp / "mlm_whole", tmp / "mlm_resumed"
    cli("fit", *mlm, f"paths.output_dir={whole}")
    cli("fit", *mlm, f"paths.output_dir={resumed}", "+callbacks.stop._target_=tests.test_ddp.StopAfterValidation",
        "+callbacks.stop.step=2")
    interrupted = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert interrupted["global_step"] == 2
    cli("fit", *mlm, f"paths.output_dir={resumed}", "ckpt_path=last")
    saved = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4 and len(saved["callbacks"]["ResumeRNGState"]["per_rank"]) == 2
    assert max_difference(saved["state_dict"], weights(whole / "checkpoints" / "last.ckpt")) == 0.0
    steps = [int(r["step"]) for r in metrics(resumed) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]  # rows of both runs, none twice


def test_validate_on_two_processes_gives_the_one_process_bpb(lm_runs):
    """The 1-process checkpoint validated on 2 processes (shards of 9 and 10 windows) reproduces the
    val/bpb its 1-process fit logged: every window counted once, token-weighted across ranks."""
    out = lm_runs["tmp"] / "validate_two"
    ckpt = lm_runs["one"] / "checkpoints" / "last.ckpt"
    cli("validate", *LAMBDA_LM, *TWO_PROCESSES, "data.batch_size=4", f"data.cache_dir={lm_runs['cache']}",
        f"ckpt_path={ckpt}", f"paths.output_dir={out}")
    assert math.isclose(last(metrics(out), "val/bpb"), last(metrics(lm_runs["one"]), "val/bpb"), rel_tol=1e-6)


def test_sequence_parallel_fit_and_validate_from_the_command_line(lm_runs):
    """task.sequence_parallel_size=2 on 2 processes: one group, both ranks read the same batch of 8
    windows (one data shard) and each computes half of every window's length, the state passed
    between them. The trajectory is the 1-process batch-8 run's (same tolerances as the DDP test:
    only the order of float32 sums differs), and validating its checkpoint sequence-parallel gives
    the 1-process val/bpb."""
    tmp = lm_runs["tmp"]
    sp = tmp / "sequence_parallel"
    lm_fit(sp, lm_runs["cache"], 2, FIRST_STEPS, f"paths.output_dir={sp}", "task.sequence_parallel_size=2",
           f"data.batch_size={GLOBAL_BATCH}")
    one_losses, one_start = recorded(lm_runs["one"])
    sp_losses, sp_start = recorded(sp)
    assert max_difference(one_start, sp_start) == 0.0
    for step in one_losses:
        assert math.isclose(one_losses[step], sp_losses[step], rel_tol=1e-5), (step, one_losses, sp_losses)
    assert max_difference(weights(lm_runs["one"] / "checkpoints" / "last.ckpt"),
                          weights(sp / "checkpoints" / "last.ckpt")) < 1e-5
    out = tmp / "sequence_parallel_validate"
    cli("validate", *LAMBDA_LM, *TWO_PROCESSES, "task.sequence_parallel_size=2", f"data.cache_dir={lm_runs['cache']}",
        f"ckpt_path={lm_runs['one'] / 'checkpoints' / 'last.ckpt'}", f"paths.output_dir={out}")
    assert math.isclose(last(metrics(out), "val/bpb"), last(metrics(lm_runs["one"]), "val/bpb"), rel_tol=1e-6)


def test_predict_on_two_processes_writes_the_one_process_table(lm_runs):
    """Each rank predicts its contiguous part of the test windows and writes its own part file; rank 0
    joins them in rank order: predictions.tsv of 2 processes is the 1-process one, row for row."""
    ckpt = lm_runs["one"] / "checkpoints" / "last.ckpt"
    tables = {}
    for name, trainer in (("one", ONE_PROCESS), ("two", TWO_PROCESSES)):
        out = lm_runs["tmp"] / f"predict_{name}"
        cli("predict", *LAMBDA_LM, *trainer, "data.batch_size=4", f"data.cache_dir={lm_runs['cache']}",
            f"ckpt_path={ckpt}", f"paths.output_dir={out}")
        assert not list(out.glob("*.partial")), name  # the parts are joined and removed
        with open(out / "predictions.tsv") as f:
            tables[name] = list(csv.DictReader(f, delimiter="\t"))
    one, two = tables["one"], tables["two"]
    assert len(one) == 19 and [(r["contig"], r["start"]) for r in one] == [(r["contig"], r["start"]) for r in two]
    for a, b in zip(one, two):
        assert math.isclose(float(a["bits_per_base"]), float(b["bits_per_base"]), rel_tol=1e-5)


def test_masked_lm_validation_is_the_same_on_two_processes(lm_runs):
    """Masked-LM evaluation masks are drawn per window (seeded by where it lies), not per batch index:
    on 2 processes, where batch k holds other windows, val/bpb and val/acc are the 1-process fit's."""
    tmp, cache = lm_runs["tmp"], lm_runs["cache"]
    mlm = ["experiment=dna_pretrain_mlm", *TINY_MODEL, "data.fasta=${asset:lambda_virus.fa}",
           "data.val_fraction=0.052", "data.test_fraction=0.052", "data.seq_len=128", "data.batch_size=4",
           f"data.cache_dir={cache}", "~callbacks.progress_bar"]
    fit_dir, val_dir = tmp / "mlm_fit", tmp / "mlm_validate"
    cli("fit", *mlm, *ONE_PROCESS, f"paths.output_dir={fit_dir}", "trainer.max_steps=2", "trainer.val_check_interval=2")
    cli("validate", *mlm, *TWO_PROCESSES, f"ckpt_path={fit_dir / 'checkpoints' / 'last.ckpt'}",
        f"paths.output_dir={val_dir}")
    for key in ("val/bpb", "val/acc"):
        assert math.isclose(last(metrics(val_dir), key), last(metrics(fit_dir), key), rel_tol=1e-6), key


def test_classification_and_variant_metrics_are_synced(lm_runs):
    """AUROC and the rest need every prediction of the split: 2 processes (shards of 173 and 174 test
    promoters; of 268 and 269 test variants) give one process's numbers. Counts (accuracy, MCC, F1)
    are exact; AUROC, the loss and the zero-shot bootstrap interval agree up to float rounding of
    the scores (batches of another size)."""
    tmp, cache = lm_runs["tmp"], lm_runs["cache"]
    promoter = ["experiment=promoter_classification", *TINY_MODEL, "data.test_fraction=0.09", "data.batch_size=16",
                "~callbacks.progress_bar"]
    fit_dir = tmp / "promoter_fit"
    # 10 steps at lr 0.01 with the positives weighted up: a classifier that predicts both classes
    # (MCC ~0.5), so the counts are a real check; the class weights enter the test loss too
    cli("fit", *promoter, *ONE_PROCESS, f"paths.output_dir={fit_dir}", "trainer.max_steps=10",
        "trainer.val_check_interval=10", "task.warmup_steps=1", "task.lr=0.01", "task.class_weights=[1.0,3.5]")
    ckpt = fit_dir / "checkpoints" / "last.ckpt"
    tested = {}
    for name, trainer in (("one", ONE_PROCESS), ("two", TWO_PROCESSES)):
        cli("test", *promoter, *trainer, f"ckpt_path={ckpt}", f"paths.output_dir={tmp / ('promoter_test_' + name)}")
        tested[name] = metrics(tmp / ("promoter_test_" + name))
    assert last(tested["one"], "test/mcc") > 0.2  # both classes predicted
    for key in ("test/acc", "test/mcc", "test/f1"):
        assert last(tested["one"], key) == last(tested["two"], key), key
    for key in ("test/auroc", "test/loss"):
        assert math.isclose(last(tested["one"], key), last(tested["two"], key), rel_tol=1e-5), key

    lm_ckpt = lm_runs["one"] / "checkpoints" / "last.ckpt"
    zero_shot = ["experiment=brca1_variants_zero_shot", f"task.lm_checkpoint={lm_ckpt}", "data.test_fraction=0.11",
                 "data.batch_size=16", "~callbacks.progress_bar"]
    scored = {}
    for name, trainer in (("one", ONE_PROCESS), ("two", TWO_PROCESSES)):
        cli("test", *zero_shot, *trainer, f"paths.output_dir={tmp / ('zero_shot_' + name)}")
        scored[name] = metrics(tmp / ("zero_shot_" + name))
    assert last(scored["one"], "test/all/n") == last(scored["two"], "test/all/n") == 537  # every variant once
    for key in ("test/all/auroc", "test/all/auprc", "test/all/auroc_low", "test/all/auroc_high", "test/SNV/auroc"):
        assert math.isclose(last(scored["one"], key), last(scored["two"], key), rel_tol=1e-5), key


def test_fsdp_on_the_cpu_stops_before_any_work(tmp_path):
    """Lightning's FSDPStrategy refuses accelerator=cpu ("The strategy `fsdp` requires a GPU
    accelerator"), and torch 2.13's FSDP itself raises "FSDP needs a non-CPU accelerator device"
    when Lightning's check is bypassed: the CLI says so before anything is written."""
    from mamba_seq.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["fit", *TINY_MODEL, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
              f"paths.output_dir={out}"])
    assert "trainer.strategy=FSDPStrategy" in str(err.value) and "trainer=ddp_cpu" in str(err.value)
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=(
    "FSDP needs 2 CUDA GPUs: it does not run on the CPU with gloo (torch 2.13 CPU build): Lightning raises "
    "\"The strategy `fsdp` requires a GPU accelerator, but received `accelerator='cpu'`\", and with that check "
    "bypassed torch's FullyShardedDataParallel raises \"FSDP needs a non-CPU accelerator device, but no "
    "accelerator device is detected\""))
def test_fsdp_checkpoint_loads_on_one_process(tmp_path):
    """trainer=fsdp on 2 GPUs writes one full checkpoint (state_dict_type: full) that validates on 1
    process to the val/bpb the FSDP run logged."""
    lm = [arg for arg in LAMBDA_LM if arg != "trainer.log_every_n_steps=1"]
    fit_dir = tmp_path / "fsdp"
    cli("fit", *lm, "trainer=fsdp", "trainer.devices=2", "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.max_steps=3", "trainer.val_check_interval=3", f"paths.output_dir={fit_dir}")
    val_dir = tmp_path / "validate"
    cli("validate", *lm, "trainer=gpu", "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}",
        f"ckpt_path={fit_dir / 'checkpoints' / 'last.ckpt'}", f"paths.output_dir={val_dir}")
    assert math.isclose(last(metrics(val_dir), "val/bpb"), last(metrics(fit_dir), "val/bpb"), rel_tol=1e-3)


def test_multi_process_run_from_python_says_to_use_the_command(tmp_path):
    """Lightning starts the other ranks by running sys.argv again: from Python (here pytest's argv)
    that is not this run, so the CLI stops and says how to start it."""
    from mamba_seq.cli import main

    with pytest.raises(SystemExit) as err:
        main(["fit", *TINY_MODEL, *TWO_PROCESSES, "data.fasta=${asset:lambda_virus.fa}", "data.seq_len=64",
              f"data.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}"])
    assert "command line" in str(err.value) and "mamba-seq fit" in str(err.value)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_external_launcher_needs_an_explicit_run_directory(tmp_path, monkeypatch):
    """Under torchrun (WORLD_SIZE set, ranks composing independently) the default ${now:...} run
    directory could differ between ranks: the CLI asks for paths.output_dir."""
    from mamba_seq.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MAMBA_SEQ_RUN_TIME", raising=False)
    with pytest.raises(SystemExit) as err:
        main(["fit", *TINY_MODEL, f"paths.root_dir={tmp_path}"])
    assert "paths.output_dir" in str(err.value) and "WORLD_SIZE=2" in str(err.value)
    assert not any(tmp_path.iterdir())
