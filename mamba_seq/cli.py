"""`mamba-seq fit|validate|test|predict [key=value ...]`: Hydra-composed runs from the command line.
`mamba-seq generate ckpt_path=... [key=value ...]`: samples from a causal-LM run's checkpoint
(tasks/generate_samples.py; its keys are its own, not config overrides).
`mamba-seq export ckpt_path=... out=model.safetensors`: the model weights + config as safetensors.
`ckpt_path=last` (with `paths.output_dir=<the run dir>`): the run's newest complete checkpoint.

The configs ship inside the installed package (the `configs` package), so the command works
from any directory. Every run writes its resolved config, checkpoints, metrics.csv and
predictions under `paths.output_dir`.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SUBCOMMANDS = {
    "fit": "train (resume: ckpt_path=last paths.output_dir=<the run dir>, or ckpt_path=FILE)",
    "validate": "evaluate a checkpoint (ckpt_path=...) on the validation split",
    "test": "evaluate a checkpoint (ckpt_path=...) on the test split",
    "predict": "score the predict split with a checkpoint (ckpt_path=...), write predictions.tsv",
    "generate": "sample clips / sequences from a causal-LM checkpoint (ckpt_path=...; `generate --help`)",
    "export": "write a checkpoint's model weights + config as safetensors (ckpt_path=... out=FILE)",
}

log = logging.getLogger("mamba_seq")


def config_dir() -> Path:
    return Path(str(resources.files("configs")))


def asset_path(name: str) -> str:
    """`${asset:NAME}` in a config: a file bundled in mamba_seq/assets."""
    path = Path(str(resources.files("mamba_seq") / "assets" / name))
    if not path.exists():
        available = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("."))
        raise ValueError(f"no bundled asset {name!r}; bundled: {available}")
    return str(path)


def _register_resolvers():
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", asset_path)
    if not OmegaConf.has_resolver("now"):
        OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt), use_cache=True)


def help_text() -> str:
    root = config_dir()
    lines = [
        "usage: mamba-seq SUBCOMMAND [key=value ...] [--cfg]",
        "",
        "Mamba models for long DNA and audio sequences. Hydra overrides configure everything;",
        "--cfg prints the composed config and exits.",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<9} {what}" for name, what in SUBCOMMANDS.items()]
    lines += ["", "experiments (experiment=NAME):"]
    for p in sorted((root / "experiment").glob("*.yaml")):
        first = next((ln[1:].strip() for ln in p.read_text().splitlines()[1:] if ln.startswith("#")), "")
        lines.append(f"  {p.stem:<24} {first}")
    lines += ["", "config groups (GROUP=OPTION, then GROUP.key=value):"]
    for group in sorted(d for d in root.iterdir() if d.is_dir() and d.name not in ("experiment", "__pycache__")):
        options = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
        lines.append(f"  {group.name:<10} {options}")
    lines += [
        "",
        "examples:",
        "  mamba-seq fit",
        "  mamba-seq fit experiment=dna_pretrain data.fasta=genome.fa.gz trainer.max_steps=2000 model.d_model=128",
        "  mamba-seq fit ckpt_path=last paths.output_dir=outputs/dna_pretrain/<run>   # resume a killed run",
        "  mamba-seq validate ckpt_path=outputs/dna_pretrain/<run>/checkpoints/last.ckpt",
        "  mamba-seq generate ckpt_path=outputs/speech_digits/<run>/checkpoints/last.ckpt n=16 seconds=1 out_dir=samples",
    ]
    return "\n".join(lines)


def compose(overrides: list[str]) -> DictConfig:
    """Compose the root config with overrides; a Hydra error (e.g. a mistyped key) exits with its message."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="mamba_seq"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        # Hydra's grammar errors ("no viable alternative at input '['") and its ValueError for an
        # empty key name no override: say which ones were given
        msg = str(err)
        keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
        if not any(k and k in msg for k in keys):
            msg += f" (in the overrides {overrides})"
        raise SystemExit(f"mamba-seq: config error: {msg}") from None


def resolve_last_or_exit(subcommand: str, run_dir: Path) -> Path:
    """`ckpt_path=last`: the newest complete checkpoint in RUN_DIR/checkpoints, or exit saying what to give."""
    from tasks.checkpointing import resolve_last

    try:
        return resolve_last(run_dir / "checkpoints")
    except FileNotFoundError as err:
        raise SystemExit(
            f"mamba-seq {subcommand}: ckpt_path=last: {err}. Give the directory of the run to resume: "
            "ckpt_path=last paths.output_dir=outputs/<run_name>/<date> (the default output_dir is a new, "
            "timestamped directory), or ckpt_path=FILE"
        ) from None


def run(subcommand: str, cfg: DictConfig) -> dict:
    """Instantiate data, task, trainer from `cfg` and run `subcommand`. Returns the final metrics."""
    import lightning.pytorch as pl
    import torch
    from hydra.utils import get_class, instantiate

    from tasks.prediction_writer import TSVPredictionWriter

    if cfg.get("ckpt_path") == "last":
        cfg.ckpt_path = str(resolve_last_or_exit(subcommand, Path(cfg.paths.output_dir)))
    trains = getattr(get_class(cfg.task._target_), "trains", True)  # False: a zero-shot task, built from its config
    if subcommand == "fit" and not trains:
        raise SystemExit(f"mamba-seq fit: {cfg.task._target_} trains nothing; run `mamba-seq test` or `predict`")
    if subcommand != "fit" and trains:  # fail before anything is written
        if not cfg.ckpt_path:
            raise SystemExit(f"mamba-seq {subcommand}: give the checkpoint to load: ckpt_path=PATH")
        if not Path(cfg.ckpt_path).is_file():
            raise SystemExit(f"mamba-seq {subcommand}: checkpoint not found: {cfg.ckpt_path}")
    pl.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    # plain lists/dicts, not ListConfig: a data module's save_hyperparameters() goes into every
    # checkpoint, which must load with weights_only=True (e.g. AudioDataModule's val_speakers)
    datamodule = instantiate(cfg.data, _convert_="all")
    # a task without a Mamba LM (e.g. tasks.AudioClassifierTask) has model: null
    vocab = None
    if cfg.get("model") is not None:
        vocab = datamodule.vocab_size
        if cfg.model.get("vocab_size") is None:
            cfg.model.vocab_size = vocab
        elif cfg.model.vocab_size != vocab:
            raise SystemExit(f"mamba-seq: model.vocab_size={cfg.model.vocab_size} but the data's tokenizer has {vocab} tokens")
    # task arguments left null are the data's: num_classes, and for audio tasks sample_rate, class_names
    for key in ("num_classes", "sample_rate", "class_names"):
        if key in cfg.task and cfg.task[key] is None:
            value = getattr(datamodule, key)
            cfg.task[key] = list(value) if key == "class_names" else value

    OmegaConf.resolve(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    log.info("run directory: %s", out)

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if subcommand == "predict":
        callbacks.append(TSVPredictionWriter(out / "predictions.tsv"))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)

    start = time.perf_counter()
    if subcommand == "fit":
        task = instantiate(cfg.task, _convert_="all")
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    else:
        if trains:
            ckpt = Path(cfg.ckpt_path)
            task = get_class(cfg.task._target_).load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
        else:
            task = instantiate(cfg.task, _convert_="all")
        ckpt_vocab = task.hparams["model"]["vocab_size"] if "model" in task.hparams else None
        if vocab is not None and ckpt_vocab is not None and ckpt_vocab != vocab:
            raise SystemExit(
                f"mamba-seq {subcommand}: the checkpoint's model has vocab_size {ckpt_vocab}, the data's tokenizer {vocab}"
            )
        getattr(trainer, subcommand)(task, datamodule=datamodule)
    elapsed = time.perf_counter() - start

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = [f"mamba-seq {subcommand} finished in {elapsed:.1f} s; outputs in {out}"]
    summary += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items())]
    if subcommand == "fit" and trainer.checkpoint_callback is not None:
        summary.append(f"  best checkpoint: {trainer.checkpoint_callback.best_model_path}")
        summary.append(f"  last checkpoint: {trainer.checkpoint_callback.last_model_path}")
    print("\n".join(summary), flush=True)
    return {"elapsed_s": elapsed, "output_dir": str(out), **metrics}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    subcommand, overrides = argv[0], argv[1:]
    if subcommand == "generate":  # its own key=value arguments, no config composition
        from tasks.generate_samples import main as generate_main

        return generate_main(overrides)
    if subcommand == "export":
        from tasks.checkpointing import export_main

        return export_main(overrides)
    if subcommand not in SUBCOMMANDS:
        print(f"mamba-seq: unknown subcommand {subcommand!r}\n\n{help_text()}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in overrides):
        print(help_text())
        return 0
    show_cfg = "--cfg" in overrides
    overrides = [o for o in overrides if o != "--cfg"]
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = compose(overrides)
    if show_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from tasks.numeric_guard import NonFiniteError

    try:
        run(subcommand, cfg)
    except NonFiniteError as err:
        raise SystemExit(f"mamba-seq {subcommand}: stopped: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
