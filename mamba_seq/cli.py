"""`mamba-seq fit|validate|test|predict [key=value ...]`: Hydra-composed runs from the command line.
`mamba-seq generate ckpt_path=... [key=value ...]`: samples from a causal-LM run's checkpoint
(tasks/generate_samples.py; its keys are its own, not config overrides).
`mamba-seq export ckpt_path=... out=model.safetensors`: the model weights + config as safetensors.
`ckpt_path=last` (with `paths.output_dir=<the run dir>`): the run's newest complete checkpoint.

Before any work a run checks (each failure exits naming the config key and what to do): input files
exist (ckpt_path, data.fasta, data.root, ...); a GPU accelerator has a GPU; every place it writes is
writable and inside paths.output_dir, unless that directory key was given on the command line; and
for validate/test/predict, that no `model=`/`model.KEY=` override differs from the checkpoint's
stored model config (the model is built from the checkpoint's; `--model-from-checkpoint` drops
such overrides with a warning instead).

The configs ship inside the installed package (the `configs` package), so the command works
from any directory. Every run writes its resolved config, checkpoints, metrics.csv and
predictions under `paths.output_dir`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

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
        "usage: mamba-seq SUBCOMMAND [key=value ...] [--cfg] [--model-from-checkpoint]",
        "",
        "Mamba models for long DNA and audio sequences. Hydra overrides configure everything;",
        "--cfg prints the composed config and exits.",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<9} {what}" for name, what in SUBCOMMANDS.items()]
    lines += ["", "flags: --cfg (print the composed config), --model-from-checkpoint (validate/test/predict: ignore",
              "       model overrides that differ from the checkpoint's model config, with a warning)"]
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


# -- checks before any work -----------------------------------------------------------------------
# inputs a run reads: config key -> "file" | "dir"; each must exist when set
INPUT_PATHS = {
    "ckpt_path": "file", "data.fasta": "file", "data.path": "file", "data.bed": "file", "data.variants": "file",
    "data.reference": "file", "data.manifest": "file", "data.root": "dir", "task.pretrained": "file",
    "task.lm_checkpoint": "file",
}


def override_keys(overrides: list[str]) -> list[str]:
    """The keys the command line sets (`a.b=1`, `+a.b=1`, `++a.b=1`, group `model=NAME`); not deletions."""
    return [o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o and not o.startswith("~")]


def check_inputs(subcommand: str, cfg: DictConfig) -> None:
    """Every input file/folder the config names exists; else exit naming the key."""
    from omegaconf.errors import OmegaConfBaseException

    for key, kind in INPUT_PATHS.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node.keys():  # `in` is False for ??? values
            continue
        if OmegaConf.is_missing(node, leaf):
            raise SystemExit(f"mamba-seq {subcommand}: {key} is required: give {key}=PATH")
        try:
            value = node[leaf]
        except OmegaConfBaseException as err:  # e.g. ${asset:NAME} of no bundled asset
            raise SystemExit(f"mamba-seq {subcommand}: {key}: {err}") from None
        if value is None or (key == "ckpt_path" and value == "last"):
            continue
        path = Path(str(value))
        if not (path.is_dir() if kind == "dir" else path.is_file()):
            what = "checkpoint" if key == "ckpt_path" else ("folder" if kind == "dir" else "file")
            problem = f"is a folder, not a {what}" if kind == "file" and path.is_dir() else f"{what} not found"
            raise SystemExit(f"mamba-seq {subcommand}: {key}={value}: {problem}; give {key}=PATH of an existing {what}")


def check_accelerator(subcommand: str, cfg: DictConfig) -> None:
    """trainer.accelerator=gpu (trainer=gpu) needs CUDA: say so now, not deep inside Lightning."""
    import torch

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator") or "auto")
    if accelerator not in ("gpu", "cuda"):
        return
    if not torch.cuda.is_available():
        raise SystemExit(
            f"mamba-seq {subcommand}: trainer.accelerator={accelerator} (e.g. from trainer=gpu), but this machine has "
            "no CUDA GPU (torch.cuda.is_available() is False). Run on the CPU with trainer=cpu, or "
            "trainer.accelerator=cpu trainer.precision=32-true; trainer.accelerator=auto picks the GPU where there is one"
        )
    devices = OmegaConf.select(cfg, "trainer.devices")
    if isinstance(devices, int) and devices > torch.cuda.device_count():
        raise SystemExit(f"mamba-seq {subcommand}: trainer.devices={devices}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s); set trainer.devices to at most that")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _unwritable(path: Path) -> str | None:
    """Why a directory cannot be created or written at `path`, or None. Creates nothing."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def check_output_paths(subcommand: str, cfg: DictConfig, overrides: list[str]) -> Path:
    """Every place the run writes is writable, and inside paths.output_dir unless the user gave that
    directory key on the command line: a config-derived `${paths.output_dir}/../x` never writes
    outside the run directory. Names joined under a directory (logger.name, logger.version, a
    checkpoint filename) must be relative without '..', wherever they come from. -> the output dir."""
    given = set(override_keys(overrides))
    out = Path(str(cfg.paths.output_dir)).resolve()
    dirs = [("paths.output_dir", cfg.paths.output_dir),
            ("trainer.default_root_dir", OmegaConf.select(cfg, "trainer.default_root_dir"))]
    names = []
    for name, cb in (cfg.get("callbacks") or {}).items():
        if isinstance(cb, DictConfig):
            dirs.append((f"callbacks.{name}.dirpath", cb.get("dirpath")))
            names.append((f"callbacks.{name}.filename", cb.get("filename")))
    if isinstance(cfg.get("logger"), DictConfig):
        dirs.append(("logger.save_dir", cfg.logger.get("save_dir")))
        names += [("logger.name", cfg.logger.get("name")), ("logger.version", cfg.logger.get("version"))]
    for key, value in names:
        if value is not None and (Path(str(value)).is_absolute() or ".." in Path(str(value)).parts):
            raise SystemExit(f"mamba-seq {subcommand}: {key}={value!r} is a name under its folder: it must be relative "
                             "and contain no '..' (to write elsewhere, set the folder itself on the command line)")
    for key, value in dirs:
        if value is None:
            continue
        path = Path(str(value)).resolve()  # a relative path is read from the working directory, as Lightning does
        if not _inside(path, out) and key not in given:
            raise SystemExit(
                f"mamba-seq {subcommand}: {key}={value} resolves to {path}, outside the run directory "
                f"paths.output_dir={out}. What a config derives stays in the run directory; to write elsewhere, "
                f"give {key}=/absolute/path on the command line"
            )
        reason = _unwritable(path)
        if reason is not None:
            raise SystemExit(f"mamba-seq {subcommand}: cannot write {key}={value}: {reason}; give a writable folder, "
                             f"e.g. paths.output_dir=DIR")
    return out


def model_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The model config keys the command line set: `model.KEY=...`, and every set key of `model=NAME`."""
    keys = []
    for key in override_keys(overrides):
        if key == "model" and isinstance(cfg.get("model"), DictConfig):
            keys += [k for k, v in cfg.model.items() if k != "_target_" and v is not None]
        elif key.startswith("model."):
            keys.append(key.split(".")[1])
    return list(dict.fromkeys(keys))


def model_conflicts(given: dict, stored: dict, keys: list[str]) -> list[tuple[str, object, object]]:
    """(key, command line, checkpoint) where the command line's value differs from the checkpoint's,
    both read as MambaConfig reads them (dt_rank=auto is the number it stands for; a key an older
    checkpoint lacks has its default)."""
    from mamba_seq import MambaConfig

    picked = {k: given[k] for k in keys}
    try:
        stored = MambaConfig.from_dict(stored).to_dict()
        merged = MambaConfig.from_dict({**stored, **picked}).to_dict()
    except (TypeError, ValueError):  # e.g. a key MambaConfig does not know: compare as given
        merged = picked
    unset = "(not set)"
    return [(k, given[k], stored.get(k, unset)) for k in keys if merged.get(k, given[k]) != stored.get(k, unset)]


def use_checkpoint_model(subcommand: str, cfg: DictConfig, overrides: list[str], accept: bool) -> None:
    """validate/test/predict: the checkpoint's stored model config is the model. A model override on
    the command line that differs from it is an error (or, with --model-from-checkpoint, a warning);
    model values the user did not give (defaults, the experiment's) never are. cfg.model becomes
    the checkpoint's, so the run's config.yaml records the model actually evaluated."""
    from tasks.checkpointing import read_checkpoint

    try:
        stored = (read_checkpoint(cfg.ckpt_path).get("hyper_parameters") or {}).get("model")
    except Exception as err:  # not a checkpoint: say so before anything is written
        raise SystemExit(f"mamba-seq {subcommand}: ckpt_path={cfg.ckpt_path} does not load "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(stored, dict) or not isinstance(cfg.get("model"), DictConfig):
        return
    given = OmegaConf.to_container(cfg.model, resolve=True)
    conflicts = model_conflicts(given, stored, model_overrides(cfg, overrides))
    if conflicts:
        lines = "\n".join(f"  model.{k}: command line {a!r}, checkpoint {b!r}" for k, a, b in conflicts)
        if not accept:
            raise SystemExit(
                f"mamba-seq {subcommand}: the model config on the command line differs from the checkpoint's "
                f"(ckpt_path={cfg.ckpt_path}):\n{lines}\nThe model is built from the checkpoint's config: drop these "
                "overrides, or add --model-from-checkpoint to ignore them"
            )
        log.warning("--model-from-checkpoint: using the checkpoint's model config, not the command line's:\n%s", lines)
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": cfg.model.get("_target_"), **stored})


def run(subcommand: str, cfg: DictConfig, overrides: list[str] | None = None,
        model_from_checkpoint: bool = False) -> dict:
    """Instantiate data, task, trainer from `cfg` and run `subcommand`. Returns the final metrics.
    `overrides`: the command line's key=value list (which keys the user gave explicitly)."""
    import lightning.pytorch as pl
    import torch
    from hydra.utils import get_class, instantiate

    from tasks.checkpointing import ResumableCSVLogger, ResumeRNGState, read_checkpoint
    from tasks.prediction_writer import TSVPredictionWriter

    overrides = list(overrides or [])
    if cfg.get("ckpt_path") == "last":
        cfg.ckpt_path = str(resolve_last_or_exit(subcommand, Path(cfg.paths.output_dir)))
    trains = getattr(get_class(cfg.task._target_), "trains", True)  # False: a zero-shot task, built from its config
    if subcommand == "fit" and not trains:
        raise SystemExit(f"mamba-seq fit: {cfg.task._target_} trains nothing; run `mamba-seq test` or `predict`")
    # fail before anything is written
    if subcommand != "fit" and trains and not cfg.ckpt_path:
        raise SystemExit(f"mamba-seq {subcommand}: give the checkpoint to load: ckpt_path=PATH")
    check_inputs(subcommand, cfg)
    check_accelerator(subcommand, cfg)
    out = check_output_paths(subcommand, cfg, overrides)
    from_checkpoint = subcommand != "fit" and trains
    if from_checkpoint:
        use_checkpoint_model(subcommand, cfg, overrides, model_from_checkpoint)
    pl.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    # plain lists/dicts, not ListConfig: a data module's save_hyperparameters() goes into every
    # checkpoint, which must load with weights_only=True (e.g. AudioDataModule's val_speakers)
    datamodule = instantiate(cfg.data, _convert_="all")
    # a task without a Mamba LM (e.g. tasks.AudioClassifierTask) has model: null
    if cfg.get("model") is not None:
        vocab = datamodule.vocab_size
        if cfg.model.get("vocab_size") is None:
            cfg.model.vocab_size = vocab
        elif cfg.model.vocab_size != vocab:
            whose = "the checkpoint's model has" if from_checkpoint else "model.vocab_size is"
            raise SystemExit(f"mamba-seq {subcommand}: {whose} vocab_size {cfg.model.vocab_size}, but the data's "
                             f"tokenizer has {vocab} tokens")
    # task arguments left null are the data's: num_classes, and for audio tasks sample_rate, class_names
    for key in ("num_classes", "sample_rate", "class_names"):
        if key in cfg.task and cfg.task[key] is None:
            value = getattr(datamodule, key)
            cfg.task[key] = list(value) if key == "class_names" else value

    OmegaConf.resolve(cfg)
    try:  # the early check cannot see everything (e.g. a read-only mount, as root)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml")
    except OSError as err:
        raise SystemExit(f"mamba-seq {subcommand}: cannot write paths.output_dir={out}: {err}; give a writable "
                         "folder, e.g. paths.output_dir=DIR") from None
    log.info("run directory: %s", out)

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if subcommand == "predict":
        callbacks.append(TSVPredictionWriter(out / "predictions.tsv"))
    if subcommand == "fit" and not any(isinstance(c, ResumeRNGState) for c in callbacks):
        callbacks.append(ResumeRNGState())  # exact resume needs it whatever the callbacks config lists
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if subcommand == "fit" and cfg.ckpt_path and isinstance(logger, ResumableCSVLogger):
        # keep the interrupted run's metrics.csv up to the checkpoint (Lightning's CSVLogger deletes it)
        logger.resume_from(int(read_checkpoint(cfg.ckpt_path).get("global_step", 0)))
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
    model_from_checkpoint = "--model-from-checkpoint" in overrides
    overrides = [o for o in overrides if o not in ("--cfg", "--model-from-checkpoint")]
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = compose(overrides)
    if show_cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from tasks.numeric_guard import NonFiniteError

    try:
        run(subcommand, cfg, overrides, model_from_checkpoint)
    except NonFiniteError as err:
        raise SystemExit(f"mamba-seq {subcommand}: stopped: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
