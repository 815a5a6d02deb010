"""Runs that survive a kill: a run SIGKILLed mid-step and resumed with ckpt_path=last ends with
exactly the weights of an uninterrupted run; a truncated newest checkpoint is never resumed from."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tasks.checkpointing import resolve_last
from mamba_seq.cli import main

N = 6  # checkpoint every step; kill during step N + 1, resume to 2N


def tiny(run_dir: Path, cache: Path) -> list[str]:
    return [
        "experiment=dna_pretrain", "data.fasta=${asset:lambda_virus.fa}", "data.val_fraction=0.05",
        "data.test_fraction=0.05", "model.d_model=16", "model.n_layer=1", "data.seq_len=64", "data.batch_size=4",
        "trainer.deterministic=true", f"trainer.max_steps={2 * N}", "trainer.val_check_interval=100",
        "callbacks.model_checkpoint.every_n_train_steps=1",
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
