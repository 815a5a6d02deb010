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

Several processes (trainer.devices=N with DDP, e.g. trainer=ddp_cpu): Lightning starts ranks
1..N-1 by running this command line again. Every rank composes the same config, in one run
directory: the `${now:...}` of the default paths.output_dir is the time rank 0 composed at, handed
to the ranks it starts (MAMBA_SEQ_RUN_TIME). Only rank 0 writes config.yaml and prints the summary.
Under an external launcher (torchrun: WORLD_SIZE set) the ranks compose independently, so
paths.output_dir must then be given.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
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

FLAGS = ("--cfg", "--model-from-checkpoint")

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


# the time `${now:FMT}` formats (set by compose); rank 0 hands it to the ranks Lightning starts
RUN_TIME_ENV = "MAMBA_SEQ_RUN_TIME"
_run_time: datetime | None = None


def _now(fmt: str) -> str:
    return (_run_time or datetime.now()).strftime(fmt)


def _register_resolvers():
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", asset_path)
    # replace Hydra's own `now` (datetime.now() at resolution), which Hydra registers again whenever it
    # initialises: so this runs inside initialize_config_dir
    OmegaConf.register_new_resolver("now", _now, use_cache=True, replace=True)


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

    global _run_time
    # a rank Lightning started composes with its rank 0's time, so both name the same run directory
    inherited = os.environ.get(RUN_TIME_ENV)
    _run_time = datetime.fromisoformat(inherited) if inherited else datetime.now()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="mamba_seq"):
            _register_resolvers()
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


def _strategy_name(strategy) -> str:
    """trainer.strategy as a name: the string itself ("ddp", "fsdp", ...), or the class of `_target_`."""
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_") or "").rpartition(".")[2]
    return str(strategy or "auto")


def check_accelerator(subcommand: str, cfg: DictConfig) -> None:
    """trainer.accelerator=gpu (trainer=gpu) needs CUDA, and so does FSDP: say so now, not deep inside
    Lightning (after config.yaml is written)."""
    import torch

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator") or "auto")
    strategy = _strategy_name(OmegaConf.select(cfg, "trainer.strategy"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and (strategy.lower().startswith("fsdp") or strategy == "FSDPStrategy"):
        # Lightning refuses FSDP without a CUDA accelerator, and torch's FSDP itself raises "FSDP needs
        # a non-CPU accelerator device" (torch 2.13 CPU build)
        raise SystemExit(
            f"mamba-seq {subcommand}: trainer.strategy={strategy} needs CUDA GPUs (FSDP does not run on the CPU), "
            f"but trainer.accelerator={accelerator}{'' if accelerator == 'cpu' else ' finds no CUDA GPU'}. On the CPU "
            "use DDP: trainer.strategy=ddp trainer.devices=N (trainer=ddp_cpu)"
        )
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


def check_shared_run_dir(subcommand: str, cfg: DictConfig, overrides: list[str]) -> None:
    """Under an external launcher (torchrun sets WORLD_SIZE in every process) each rank composes its
    own config: a paths.output_dir holding ${now:...} could name a different directory on each (the
    ranks start within the same second only mostly). Ranks Lightning starts inherit rank 0's time."""
    world = os.environ.get("WORLD_SIZE", "1")
    if not world.isdigit() or int(world) <= 1 or os.environ.get(RUN_TIME_ENV):
        return
    raw = OmegaConf.to_container(cfg.paths, resolve=False).get("output_dir")
    if "paths.output_dir" not in override_keys(overrides) and "${now:" in str(raw):
        raise SystemExit(
            f"mamba-seq {subcommand}: launched as one of WORLD_SIZE={world} processes, each composing its own config; "
            f"paths.output_dir={raw} holds the time of composing, which can differ between them. Give "
            "paths.output_dir=DIR, the same for every process"
        )


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
    from lightning.pytorch.utilities import rank_zero_only

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
    check_shared_run_dir(subcommand, cfg, overrides)
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
    check_relaunch(subcommand, overrides, trainer)

    # rank_zero_only.rank: set by Lightning from the launcher's environment (0 in the process the user
    # started); the ranks it starts compose the same config and must not write the shared files again
    is_rank_zero = rank_zero_only.rank == 0
    try:  # the early check cannot see everything (e.g. a read-only mount, as root)
        out.mkdir(parents=True, exist_ok=True)
        if is_rank_zero:
            OmegaConf.save(cfg, out / "config.yaml")
    except OSError as err:
        raise SystemExit(f"mamba-seq {subcommand}: cannot write paths.output_dir={out}: {err}; give a writable "
                         "folder, e.g. paths.output_dir=DIR") from None
    if is_rank_zero:
        log.info("run directory: %s", out)

    start = time.perf_counter()
    with ranks_inherit_run_time():
        if subcommand == "fit":
            task = instantiate(cfg.task, _convert_="all")
            trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        else:
            if trains:
                ckpt = Path(cfg.ckpt_path)
                # how the run is laid out over processes is the command line's, not the checkpoint's
                group = int(cfg.task.get("sequence_parallel_size") or 1)
                layout = {"sequence_parallel_size": group} if group > 1 else {}
                task = get_class(cfg.task._target_).load_from_checkpoint(ckpt, map_location="cpu", weights_only=True,
                                                                         **layout)
            else:
                task = instantiate(cfg.task, _convert_="all")
            getattr(trainer, subcommand)(task, datamodule=datamodule)
    elapsed = time.perf_counter() - start

    # val/test metrics are the whole split's on every rank (the tasks sync them); train/* are rank 0's
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        summary = [f"mamba-seq {subcommand} finished in {elapsed:.1f} s; outputs in {out}"]
        if trainer.world_size > 1:
            summary[0] += f" ({trainer.world_size} processes)"
        summary += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items())]
        if subcommand == "fit" and trainer.checkpoint_callback is not None:
            summary.append(f"  best checkpoint: {trainer.checkpoint_callback.best_model_path}")
            summary.append(f"  last checkpoint: {trainer.checkpoint_callback.last_model_path}")
        print("\n".join(summary), flush=True)
    return {"elapsed_s": elapsed, "output_dir": str(out), **metrics}


@contextmanager
def ranks_inherit_run_time():
    """While Lightning runs: the ranks its DDP launcher starts (copies of this environment) compose
    with this process's `${now:...}` time, so every rank uses the same run directory."""
    previous = os.environ.get(RUN_TIME_ENV)
    if _run_time is not None:
        os.environ[RUN_TIME_ENV] = _run_time.isoformat()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_TIME_ENV, None)
        else:
            os.environ[RUN_TIME_ENV] = previous


def check_relaunch(subcommand: str, overrides: list[str], trainer) -> None:
    """Lightning's DDP launcher starts ranks 1..N-1 by running this process's command line (sys.argv)
    again. A run started from Python (main([...]), run()) has another command line there, e.g.
    pytest's: stop, rather than launch that N-1 times."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if (not isinstance(launcher, _SubprocessScriptLauncher) or launcher.num_processes <= 1
            or launcher.cluster_environment.creates_processes_externally):
        return
    command_line = [a for a in sys.argv[1:] if a not in FLAGS]
    if command_line != [subcommand, *overrides]:
        raise SystemExit(
            f"mamba-seq {subcommand}: trainer.devices={launcher.num_processes} with the "
            f"{type(trainer.strategy).__name__} starts the other processes by running this process's command line "
            f"again, but that is {sys.argv!r}, not this run's. Start several processes from the shell: "
            f"`mamba-seq {subcommand} ...` (or python -m mamba_seq.cli), or use trainer.devices=1 from Python"
        )


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
    overrides = [o for o in overrides if o not in FLAGS]
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    # the ranks Lightning starts run this same command: their info lines would repeat rank 0's
    logging.basicConfig(level=logging.INFO if rank_zero_only.rank == 0 else logging.WARNING,
                        format="[%(name)s] %(message)s")
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
