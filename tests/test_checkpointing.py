"""Checkpoint I/O: safetensors export/import round trip (weights + MambaConfig), `mamba-seq export`,
and atomic saves (no temp file left, last.ckpt a real file)."""

import torch

from mamba_seq import MambaConfig, MambaLMHeadModel
from tasks.checkpointing import export_safetensors, load_safetensors, resolve_last
from mamba_seq.cli import main
from tasks.causal_lm import CausalLMTask


def task_checkpoint(path):
    torch.manual_seed(0)
    task = CausalLMTask(model={"d_model": 16, "n_layer": 1, "vocab_size": 12})
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "global_step": 7}, path)
    return task


def test_safetensors_round_trip(tmp_path):
    task = task_checkpoint(tmp_path / "a.ckpt")
    out = export_safetensors(tmp_path / "a.ckpt", tmp_path / "m.safetensors")
    config, state = load_safetensors(out)
    assert config == MambaConfig.from_dict(task.hparams["model"])
    model = MambaLMHeadModel(config)
    model.load_state_dict(state)
    for name, value in task.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = torch.randint(0, 12, (2, 9))
    assert torch.equal(model(x), task.model(x))


def test_export_subcommand(tmp_path, capsys):
    task_checkpoint(tmp_path / "a.ckpt")
    assert main(["export", f"ckpt_path={tmp_path / 'a.ckpt'}", f"out={tmp_path / 'x.safetensors'}"]) == 0
    config, _ = load_safetensors(tmp_path / "x.safetensors")
    assert config.d_model == 16
    assert not list(tmp_path.glob(".*tmp*"))


def test_fit_writes_whole_checkpoints_only(tmp_path):
    run = tmp_path / "run"
    assert main(["fit", "data.fasta=${asset:lambda_virus.fa}", "data.val_fraction=0.05", "data.test_fraction=0.05",
                 "model.d_model=16", "model.n_layer=1", "data.seq_len=64", "data.batch_size=4",
                 "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
                 "callbacks.model_checkpoint.every_n_train_steps=1", f"data.cache_dir={tmp_path / 'cache'}",
                 f"paths.output_dir={run}"]) == 0
    ckpts = run / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert "last.ckpt" in names and not [n for n in names if "tmp" in n], names
    assert not (ckpts / "last.ckpt").is_symlink()
    assert resolve_last(ckpts) == ckpts / "last.ckpt"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 4
