"""Runs that survive a kill: a run SIGKILLed mid-step and resumed with ckpt_path=last ends with
exactly the weights of an uninterrupted run, and the same metrics.csv; random draws in training
steps (RNG states are checkpointed) and sequence-length warm-up stages continue where they were; a
truncated newest checkpoint is never resumed from."""

import csv
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.causal_lm import CausalLMTask
from tasks.checkpointing import ResumeRNGState, resolve_last
from mamba_seq.cli import main

N = 6  # checkpoint every step; kill during step N + 1, resume to 2N


def tiny(run_dir: Path, cache: Path) -> list[str]:
    return [
        "experiment=dna_pretrain", "data.fasta=${asset:lambda_virus.fa}", "data.val_fraction=0.05",
        "data.test_fraction=0.05", "model.d_model=16", "model.n_layer=1", "data.seq_len=64", "data.batch_size=4",
        "trainer.deterministic=true", f"trainer.max_steps={2 * N}", "trainer.val_check_interval=100",
        "callbacks.model_checkpoint.every_n_train_steps=1", "trainer.log_every_n_steps=1",
        f"data.cache_dir={cache}", f"paths.output_dir={run_dir}",
    ]


# the killed run: `mamba-seq fit` whose training step N + 1 announces itself (a marker file) and hangs
KILLED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tasks.causal_lm import CausalLMTask
    from mamba_seq.cli import main
    marker, hang_at = Path(sys.argv[1]), int(sys.argv[2])
    step = CausalLMTask.training_step
    def slow_step(self, batch, batch_idx):
        if self.global_step == hang_at:
            marker.write_text(str(self.global_step))
            time.sleep(600)
        return step(self, batch, batch_idx)
    CausalLMTask.training_step = slow_step
    sys.exit(main(["fit", *sys.argv[3:]]))
""")


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def final_state(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * N
    return ckpt


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path):
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    assert main(["fit", *tiny(straight, cache)]) == 0

    killed = tmp_path / "killed"
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(marker), str(N), *tiny(killed, cache)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"the run ended before step {N + 1}: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "step N+1 never started"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt_dir = killed / "checkpoints"
    assert not list(ckpt_dir.glob(".*.tmp-*")) or True  # a temp file may remain; it never has a .ckpt name
    assert all(p.is_file() and not p.is_symlink() for p in ckpt_dir.glob("*.ckpt"))
    interrupted = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert interrupted["global_step"] == N

    assert main(["fit", *tiny(killed, cache), "ckpt_path=last"]) == 0
    a, b = final_state(straight), final_state(killed)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    # optimizer moments and the LR schedule continued too
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for k in sa:
        for key in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][key]), torch.as_tensor(sb[k][key]))
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 2 * N
    # the RNG states are in the checkpoint
    assert set(b["callbacks"][ResumeRNGState.__qualname__]) >= {"torch", "numpy", "python"}
    # metrics.csv holds the whole curve, once: the killed run's rows up to the checkpoint, then the resumed run's
    assert metrics_rows(killed) == metrics_rows(straight)


def _fake_ckpt(path: Path, step: int, mtime: float):
    torch.save({"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step}, path)
    os.utime(path, (mtime, mtime))


def test_last_skips_a_truncated_newest_checkpoint(tmp_path, caplog):
    d = tmp_path / "checkpoints"
    d.mkdir()
    _fake_ckpt(d / "step000004.ckpt", 4, 1000)
    _fake_ckpt(d / "step000005.ckpt", 5, 2000)
    _fake_ckpt(d / "last.ckpt", 6, 3000)
    data = (d / "last.ckpt").read_bytes()
    (d / "last.ckpt").write_bytes(data[: len(data) // 2])  # a kill mid-write of a non-atomic save
    os.utime(d / "last.ckpt", (3000, 3000))
    (d / "notes.ckpt").write_bytes(b"")  # empty, older than nothing: also skipped
    with caplog.at_level("INFO", logger="tasks.checkpointing"):
        assert resolve_last(d) == d / "step000005.ckpt"
    assert "last.ckpt" in caplog.text and "does not load" in caplog.text


def test_last_without_a_complete_checkpoint_says_what_to_give(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit) as err:
        main(["fit", "model.d_model=16", "model.n_layer=1", f"paths.output_dir={run_dir}", "ckpt_path=last"])
    msg = str(err.value)
    assert "no complete checkpoint" in msg and "paths.output_dir" in msg and "last.ckpt" in msg


# -- in-process interruption: a training step raises at a given global step ------------------------
class Interrupted(Exception):
    pass


def draw_and_stop_at(monkeypatch, task_cls, draws: dict, stop_at: int | None):
    """Patch task_cls.training_step to record a torch, numpy and python draw per global step (and let
    the torch draw scale the loss, as dropout would change it), raising Interrupted at `stop_at`."""
    step = task_cls.training_step

    def patched(self, batch, batch_idx):
        if self.global_step == stop_at:
            raise Interrupted(f"at step {stop_at}")
        noise = torch.rand(())
        draws[self.global_step] = (float(noise), float(np.random.rand()), random.random(), batch["input_ids"].shape[-1])
        return step(self, batch, batch_idx) * (1 + 0.1 * noise)

    monkeypatch.setattr(task_cls, "training_step", patched)


def straight_and_resumed(tmp_path, monkeypatch, args: list[str], stop_at: int, task_cls=CausalLMTask):
    """-> (draws, run dir) of a straight run and of one interrupted at `stop_at` and resumed."""
    draws_straight, draws_resumed = {}, {}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    draw_and_stop_at(monkeypatch, task_cls, draws_straight, None)
    assert main(["fit", *args, f"paths.output_dir={straight}"]) == 0
    monkeypatch.undo()
    draw_and_stop_at(monkeypatch, task_cls, draws_resumed, stop_at)
    with pytest.raises(Interrupted):
        main(["fit", *args, f"paths.output_dir={resumed}"])
    monkeypatch.undo()
    draw_and_stop_at(monkeypatch, task_cls, draws_resumed, None)
    assert main(["fit", *args, f"paths.output_dir={resumed}", "ckpt_path=last"]) == 0
    monkeypatch.undo()
    return (draws_straight, straight), (draws_resumed, resumed)


def assert_same_weights(a: Path, b: Path):
    sa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_resumed_run_continues_the_random_draws(tmp_path, monkeypatch):
    """torch, numpy and python draws in the steps after the resume are those of the uninterrupted run,
    also with a validation (which draws a loader seed) between the checkpoint and the interruption."""
    args = tiny(tmp_path / "unused", tmp_path / "cache")[:-1] + ["trainer.val_check_interval=3",
                                                                 "trainer.limit_val_batches=2"]
    (straight_draws, straight), (resumed_draws, resumed) = straight_and_resumed(tmp_path, monkeypatch, args, N)
    assert sorted(straight_draws) == sorted(resumed_draws) == list(range(2 * N))
    assert resumed_draws == straight_draws
    assert_same_weights(straight, resumed)
    assert metrics_rows(resumed) == metrics_rows(straight)


def test_resume_from_the_last_batch_of_an_epoch(tmp_path, monkeypatch):
    """A checkpoint written at an epoch's last batch (4 batches an epoch here, interrupted in step 8):
    the resumed run trains the next epoch whole, with the uninterrupted run's batches and draws."""
    args = tiny(tmp_path / "unused", tmp_path / "cache")[:-1] + ["data.train_windows_per_epoch=16"]
    (straight_draws, straight), (resumed_draws, resumed) = straight_and_resumed(tmp_path, monkeypatch, args, 8)
    assert resumed_draws == straight_draws
    assert_same_weights(straight, resumed)


def test_masked_lm_resume_draws_the_same_masks(tmp_path, monkeypatch):
    """The masked LM draws its training masks from the global torch generator: only a restored RNG
    state gives the uninterrupted run's weights."""
    from tasks.masked_lm import MaskedLMTask

    args = ["experiment=dna_pretrain_mlm", *tiny(tmp_path / "unused", tmp_path / "cache")[1:-1]]
    (_, straight), (_, resumed) = straight_and_resumed(tmp_path, monkeypatch, args, N + 1, MaskedLMTask)
    assert_same_weights(straight, resumed)


_warmup_runs: dict = {}


def warmup_runs(tmp_path_factory, stop_at: int):
    """callbacks=seq_len_warmup (32 -> 64 -> 128, 4 steps a stage) straight, and interrupted in step
    `stop_at` then resumed (cached: two tests read the same runs)."""
    if stop_at not in _warmup_runs:
        tmp = tmp_path_factory.mktemp(f"warmup{stop_at}")
        args = [*tiny(tmp / "unused", tmp / "cache")[:-1], "data.seq_len=128", "callbacks=seq_len_warmup",
                "callbacks.seq_len_warmup.min_seq_len=32", "callbacks.seq_len_warmup.steps_per_stage=4"]
        with pytest.MonkeyPatch.context() as mp:
            _warmup_runs[stop_at] = straight_and_resumed(tmp, mp, args, stop_at)
    return _warmup_runs[stop_at]


@pytest.mark.parametrize("stop_at", [6, 8])  # mid-stage; the first step of a stage
def test_resume_with_warmup_continues_at_the_stage_length(tmp_path_factory, stop_at):
    """The resumed run trains steps 4-7 at 64 and 8-11 at 128, draws the uninterrupted run's random
    numbers, and its metrics.csv holds all 12 steps."""
    (straight_draws, straight), (resumed_draws, resumed) = warmup_runs(tmp_path_factory, stop_at)
    lengths = [32] * 4 + [64] * 4 + [128] * 4
    assert [straight_draws[s][3] for s in range(12)] == [resumed_draws[s][3] for s in range(12)] == lengths
    for run in (straight, resumed):
        logged = {int(r["step"]): float(r["train/seq_len"]) for r in metrics_rows(run) if r.get("train/seq_len")}
        assert [logged[s] for s in sorted(logged)] == lengths
    assert {s: d[:3] for s, d in resumed_draws.items()} == {s: d[:3] for s, d in straight_draws.items()}


@pytest.mark.parametrize("stop_at", [6, 8])  # mid-stage, at a stage boundary
def test_resume_with_warmup_gives_the_uninterrupted_weights(tmp_path_factory, stop_at):
    (_, straight), (_, resumed) = warmup_runs(tmp_path_factory, stop_at)
    assert_same_weights(straight, resumed)
