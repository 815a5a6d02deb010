"""What a run checks before any work: the checkpoint's model config against the command line's,
where it writes (never outside the run directory unless the user says so, and writable), a GPU for
trainer=gpu, input files, and FASTA windows that fit the genome. Each failure names the config key."""

import os

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from mamba_seq.cli import compose, main, run

LAMBDA = ["data.fasta=${asset:lambda_virus.fa}", "data.val_fraction=0.05", "data.test_fraction=0.05"]
MODEL = ["model.d_model=16", "model.n_layer=1", "model.d_state=4"]
SMALL = [*LAMBDA, "data.seq_len=64", "data.batch_size=4", "trainer.limit_val_batches=2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 1-step causal-LM checkpoint of a model unlike the default (mamba_small: d_model 64, 4 layers)."""
    tmp = tmp_path_factory.mktemp("fit")
    assert main(["fit", *SMALL, *MODEL, f"data.cache_dir={tmp / 'cache'}", f"paths.output_dir={tmp / 'run'}",
                 "trainer.max_steps=1", "trainer.val_check_interval=1"]) == 0
    return tmp / "run" / "checkpoints" / "last.ckpt"


def fails(*args) -> str:
    with pytest.raises(SystemExit) as err:
        main(list(args))
    return str(err.value)


# -- 1. validate/test/predict: the checkpoint's model config is the model ---------------------------
def test_a_model_override_that_differs_from_the_checkpoint_fails_naming_both_values(ckpt, tmp_path):
    out = tmp_path / "val"
    msg = fails("validate", *SMALL, "model.d_model=32", "model.n_layer=1", "model.d_state=4", f"ckpt_path={ckpt}",
                f"paths.output_dir={out}")
    assert "model.d_model: command line 32, checkpoint 16" in msg
    assert "n_layer" not in msg and "d_state" not in msg  # given, but equal to the checkpoint's
    assert "drop these overrides" in msg and "--model-from-checkpoint" in msg
    assert not out.exists()  # before any work

    msg = fails("test", *SMALL, "model=mamba_7m", f"ckpt_path={ckpt}", f"paths.output_dir={out}")
    assert "model.d_model: command line 256, checkpoint 16" in msg or "model.d_model: command line" in msg
    assert "model.n_layer" in msg
    assert not out.exists()


def test_without_model_overrides_the_checkpoint_config_builds_the_model(ckpt, tmp_path):
    """The default model group (mamba_small) differs from the checkpoint's, but the user gave no model
    override: no error, the checkpoint's config is used and recorded in the run's config.yaml."""
    out = tmp_path / "val"
    assert main(["validate", *SMALL, f"ckpt_path={ckpt}", f"paths.output_dir={out}"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["model"]["d_model"], saved["model"]["n_layer"], saved["model"]["d_state"]) == (16, 1, 4)
    # an override equal to the checkpoint's value is fine; dt_rank=auto is the number it stands for
    assert main(["validate", *SMALL, "model.d_model=16", "model.dt_rank=auto", f"ckpt_path={ckpt}",
                 f"paths.output_dir={tmp_path / 'val2'}"]) == 0


def test_model_from_checkpoint_flag_drops_the_differing_overrides(ckpt, tmp_path, caplog):
    out = tmp_path / "val"
    with caplog.at_level("WARNING", logger="mamba_seq"):
        assert main(["validate", *SMALL, "model.d_model=32", "--model-from-checkpoint", f"ckpt_path={ckpt}",
                     f"paths.output_dir={out}"]) == 0
    assert "model.d_model: command line 32, checkpoint 16" in caplog.text
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["d_model"] == 16


# -- 2. outputs stay in the run directory ----------------------------------------------------------
def test_a_config_derived_path_outside_the_run_directory_is_refused(tmp_path):
    """As an experiment file could set it: `${paths.output_dir}/../..` escapes the run directory."""
    out = tmp_path / "a" / "b" / "run"
    overrides = [*SMALL, *MODEL, f"paths.output_dir={out}"]
    cfg = compose(overrides)
    cfg.callbacks.model_checkpoint.dirpath = "${paths.output_dir}/../../escaped"
    with pytest.raises(SystemExit) as err:
        run("fit", cfg, overrides)
    msg = str(err.value)
    assert "callbacks.model_checkpoint.dirpath" in msg and "outside the run directory" in msg
    assert "on the command line" in msg
    cfg = compose(overrides)
    cfg.logger.save_dir = str(tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match="logger.save_dir"):
        run("fit", cfg, overrides)
    assert not (tmp_path / "a").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("override", ["logger.name=../../x", "logger.version=/tmp/x",
                                      "callbacks.model_checkpoint.filename=../../x"])
def test_names_under_a_folder_never_leave_it(tmp_path, override):
    msg = fails("fit", *SMALL, *MODEL, override, f"paths.output_dir={tmp_path / 'run'}")
    assert override.split("=")[0] in msg and "'..'" in msg
    assert not (tmp_path / "run").exists()


def test_a_folder_given_on_the_command_line_may_be_anywhere(tmp_path):
    """The user's own choice: an absolute checkpoint folder outside the run directory is written."""
    elsewhere = tmp_path / "ckpts"
    assert main(["fit", *SMALL, *MODEL, f"data.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'run'}",
                 f"callbacks.model_checkpoint.dirpath={elsewhere}", "trainer.max_steps=1",
                 "trainer.val_check_interval=1"]) == 0
    assert (elsewhere / "last.ckpt").is_file()


# -- 3. resources, before any work -----------------------------------------------------------------
def test_an_output_dir_under_a_file_fails_naming_the_key(tmp_path):
    (tmp_path / "file").write_text("x")
    msg = fails("fit", *SMALL, *MODEL, f"paths.output_dir={tmp_path / 'file' / 'run'}")
    assert "paths.output_dir" in msg and "is a file, not a folder" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_output_dir_fails_naming_the_key(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    msg = fails("fit", *SMALL, *MODEL, f"paths.output_dir={locked / 'run'}")
    assert "paths.output_dir" in msg and "not writable" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_trainer_gpu_without_cuda_says_how_to_run_on_the_cpu(tmp_path):
    msg = fails("fit", *SMALL, *MODEL, "trainer=gpu", f"paths.output_dir={tmp_path / 'run'}")
    assert "trainer.accelerator=gpu" in msg and "no CUDA GPU" in msg and "trainer=cpu" in msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, key, what", [
    (["data.fasta=/nonexistent/genome.fa"], "data.fasta=/nonexistent/genome.fa", "file not found"),
    (["experiment=speech_digits", "data.root=/nonexistent/fsdd"], "data.root=/nonexistent/fsdd", "folder not found"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt", "checkpoint not found"),
    (["data=labelled_fasta", "task=sequence_classification"], "data.path is required", ""),  # ??? in the config
])
def test_a_missing_input_fails_naming_the_config_key(tmp_path, args, key, what):
    msg = fails("fit", *args, f"paths.output_dir={tmp_path / 'run'}")
    assert key in msg and what in msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seq_len, split", [(100_000, "train"), (4096, "val")])
def test_a_fasta_window_longer_than_the_split_fails_before_training(tmp_path, seq_len, split):
    """FastaDataModule.setup (data_modules/fasta_pretraining.py) checks every requested split holds
    a window of data.seq_len + 1 bases: lambda is 48.5 kb, its 5% held-out regions 2.4 kb."""
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        main(["fit", *LAMBDA, *MODEL, f"data.seq_len={seq_len}", f"data.cache_dir={tmp_path / 'cache'}",
              f"paths.output_dir={run_dir}"])
    msg = str(err.value)
    assert f"data.seq_len={seq_len}" in msg and f"the {split} split has no interval" in msg
    assert not (run_dir / "checkpoints").exists()  # no training step ran
