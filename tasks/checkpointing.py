"""Checkpoints that survive a kill: atomic writes, `ckpt_path=last` resolution, data-position resume,
and safetensors export.

* AtomicModelCheckpoint: Lightning's ModelCheckpoint, but every file (top-k, step, `last.ckpt`) is
  written to a temporary file in the same directory, fsynced, then os.replace()d over its name, so
  a kill mid-write never leaves a half-written file under a checkpoint name. `last.ckpt` is always a
  real file (save_last="link" copies and replaces, never a symlink that can dangle). It refuses to
  save while a NonFiniteGuard has seen a non-finite value since the last good step, or when a weight
  is not finite, so a NaN checkpoint never replaces a good one.
* resolve_last(checkpoint_dir): the newest checkpoint that loads (torch.load weights_only=True, with
  state_dict and global_step); a truncated or corrupt file is skipped and logged.
* ResumeDataPosition: on a mid-epoch resume, skips the training sampler past the samples the
  interrupted run already consumed in that epoch, so the resumed run sees the same batches as an
  uninterrupted one (Lightning restarts a non-stateful loader at the epoch's first batch).
* ResumeRNGState: the global RNG states (torch, CUDA, numpy, python random) go into every checkpoint
  and are restored when training resumes, so random draws in training steps (dropout, MLM masks)
  continue as in an uninterrupted run (each step starts from the states the previous one ended with).
  With several processes the checkpoint holds every rank's states; a resume on as many processes
  restores each rank's own, on another number none.
* ResumableCSVLogger: Lightning's CSVLogger, but a resumed run keeps the interrupted run's
  metrics.csv (rows up to the checkpoint) and appends to it, so the whole curve survives.
* export_safetensors / load_safetensors: model weights + the MambaConfig (JSON metadata).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(filepath: str) -> str:
    head, tail = os.path.split(filepath)
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}")


def atomic_replace(tmp: str, filepath: str) -> None:
    """fsync `tmp`, then rename it over `filepath` (atomic on POSIX within one filesystem)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, filepath)
    _fsync_dir(os.path.dirname(os.path.abspath(filepath)))


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files appear whole or not at all (see the module docstring).
    Arguments are ModelCheckpoint's, e.g. every_n_train_steps=500 saves (and replaces last.ckpt)
    every 500 optimizer steps."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning 2.6 defers a step save until validation while the monitored metric (val/bpb) is
        # missing, so a run would have no checkpoint before its first validation: save last.ckpt then.
        every = self._every_n_train_steps
        if (pl_module.automatic_optimization and self.monitor is not None and every >= 1
                and trainer.global_step % every == 0 and not self._should_skip_saving_checkpoint(trainer)):
            candidates = self._monitor_candidates(trainer)
            if self.monitor not in candidates:
                self._save_last_checkpoint(trainer, candidates)
                return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _refuse_reason(self, trainer: "pl.Trainer") -> str | None:
        for cb in trainer.callbacks:
            if getattr(cb, "is_nonfinite_guard", False) and cb.unhealthy:
                return (f"{type(cb).__name__} saw a non-finite value at global step {cb.last_bad_step} "
                        "and no good step since")
        module = trainer.lightning_module
        if module is not None:
            for name, p in module.named_parameters():
                if not torch.isfinite(p.detach()).all():
                    return f"weight {name} is not finite"
        return None

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        reason = self._refuse_reason(trainer)
        # every rank must take the same branch: saving runs collectives (ResumeRNGState gathers the
        # ranks' RNG states; FSDP gathers the weights), so one rank refusing alone would hang the others
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            log.warning("not saving checkpoint %s at global step %d: %s", filepath, trainer.global_step,
                        reason or "another rank refused (its log says why)")
            return
        tmp = trainer.strategy.broadcast(_tmp_name(filepath))  # rank 0's name: the file rank 0 writes
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            atomic_replace(tmp, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    @staticmethod
    def _link_checkpoint(trainer: "pl.Trainer", filepath: str, linkpath: str) -> None:
        # save_last="link": a copy renamed into place, not a symlink that dangles once top-k removes its target
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            tmp = _tmp_name(linkpath)
            shutil.copyfile(filepath, tmp)
            if os.path.islink(linkpath):
                os.remove(linkpath)
            atomic_replace(tmp, linkpath)
        trainer.strategy.barrier()


# -- ckpt_path=last --------------------------------------------------------------------------------
def checkpoint_problem(path: str | Path) -> str | None:
    """None if `path` loads with weights_only=True and holds state_dict and global_step; else why not."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...
        return f"does not load ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return "loads but has no state_dict / global_step"
    return None


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict, loaded without unpickling code (weights_only) and with its tensors
    memory-mapped, so reading hyper_parameters or global_step costs no copy of the weights."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def resolve_last(checkpoint_dir: str | Path) -> Path:
    """The newest complete checkpoint (by modification time) in `checkpoint_dir`; incomplete ones are
    skipped and logged. Raises FileNotFoundError naming the directory when there is none."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if checkpoint_dir.is_dir() else []
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                log.warning("ckpt_path=last: skipped %s", "; ".join(skipped))
            log.info("ckpt_path=last: resuming from %s (the newest complete checkpoint)", path)
            return path
        skipped.append(f"{path.name}: {problem}")
    detail = f" (incomplete: {'; '.join(skipped)})" if skipped else ""
    raise FileNotFoundError(f"no complete checkpoint in {checkpoint_dir}{detail}")


# -- data position on resume -----------------------------------------------------------------------
class _SkipFirst(Sampler[int]):
    """Yields the wrapped sampler's indices after the first `skip`, once; then it is the wrapped
    sampler again (len and set_epoch forwarded)."""

    def __init__(self, inner, skip: int):
        self.inner, self.skip = inner, skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i, index in enumerate(self.inner):
            if i >= skip:
                yield index

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int):
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)


class ResumeDataPosition(pl.Callback):
    """After a mid-epoch resume, start the training loader where the interrupted run left off.

    Lightning 2 restores the epoch and the number of batches done in it, but restarts a loader
    without state_dict/load_state_dict at its first batch, so the resumed run would see the epoch's
    first batches again. The data modules here draw window k of epoch e from (seed, e, k) (e.g.
    FastaDataModule's EpochSampler), so skipping the sampler past batches_done * batch_size indices
    (no data is read) gives exactly the batches of an uninterrupted run. With sequence-length warm-up
    each stage is an epoch whose loader holds the whole stage, so the same skip applies.
    """

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # on_train_start: after the loader is built and the loops restored, before its first batch is
        # drawn (Lightning skips on_train_epoch_start when it restarts mid-epoch)
        epoch_loop = trainer.fit_loop.epoch_loop
        if not getattr(trainer.fit_loop, "restarted_mid_epoch", epoch_loop.restarting):
            return
        done = epoch_loop.batch_progress.current.processed
        # a checkpoint from the epoch's last batch: Lightning starts the next epoch (its batch count
        # is reset later), so there is nothing to skip; skipping `done` would empty that epoch
        if done <= 0 or epoch_loop.batch_progress.is_last_batch or done >= trainer.num_training_batches:
            return
        loader = trainer.fit_loop._combined_loader
        for dl in loader.flattened if loader is not None else []:
            bs = getattr(dl, "batch_sampler", None)
            if bs is None or not hasattr(bs, "sampler") or not getattr(bs, "batch_size", None):
                log.warning("resume: cannot skip the train loader to batch %d (no batch sampler); "
                            "the epoch restarts at its first batch", done)
                continue
            bs.sampler = _SkipFirst(bs.sampler, done * bs.batch_size)
            log.info("resume: train loader continues at batch %d of epoch %d", done, trainer.current_epoch)


# -- RNG states on resume --------------------------------------------------------------------------
def rng_states() -> dict:
    """This process's global RNG states as tensors and plain numbers (they load with weights_only=True)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ResumeRNGState(pl.Callback):
    """Saves the global RNG states with every checkpoint and restores them on resume, so the random
    draws of the training steps (dropout, masked-LM masks) after a resume are the uninterrupted run's.

    Lightning 2 saves no RNG state. And between two training steps Lightning itself draws from the
    global torch generator (each new DataLoader iterator takes a seed; validation may draw), at
    points that differ between a resumed and an uninterrupted run. So each training step starts
    from the RNG states at the end of the previous step: those are what a checkpoint holds, and a
    resumed run's first step starts from them.

    Several processes: Lightning builds the checkpoint on every rank and rank 0 writes it, so
    state_dict gathers all ranks' states ({"per_rank": [rank 0's, rank 1's, ...]}; one process
    stores its states as they are). A resume on as many processes restores each rank's own; on
    another number of processes it restores none and says so (that run cannot repeat the
    interrupted one's draws anyway: its batches are split differently)."""

    def __init__(self):
        self._after_step: dict | None = None  # this rank's RNG states at the end of the last training step
        self._loaded: dict | None = None  # what the checkpoint held, until on_train_start picks this rank's

    def state_dict(self) -> dict:
        # Lightning runs checkpoint callbacks after all others, so a save at a step's end finds
        # on_train_batch_end below already run for that step
        own = self._after_step if self._after_step is not None else rng_states()
        if _world_size() == 1:
            return own
        gathered: list = [None] * _world_size()
        torch.distributed.all_gather_object(gathered, own)  # every rank builds the checkpoint: all call this
        return {"per_rank": gathered}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._loaded is None:
            return
        per_rank = self._loaded["per_rank"] if "per_rank" in self._loaded else [self._loaded]
        self._loaded = None
        if len(per_rank) != trainer.world_size:
            log.warning("resume: RNG states not restored: the checkpoint holds those of %d process(es), this run "
                        "has %d", len(per_rank), trainer.world_size)
            return
        self._after_step = per_rank[trainer.global_rank]
        if trainer.is_global_zero:
            log.info("resume: the first step starts from the checkpoint's RNG states")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._after_step is not None:
            set_rng_states(self._after_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._after_step = rng_states()


# -- metrics.csv on resume -------------------------------------------------------------------------
class _ResumedExperimentWriter(ExperimentWriter):
    """Keeps metrics.csv (Lightning's writer deletes it): rows logged at steps below `first_step`
    stay, later ones (logged by the interrupted run after its checkpoint, and logged again by the
    resumed run) go, and its columns are carried over so appended rows line up."""

    def __init__(self, log_dir: str, first_step: int):
        self._first_step = first_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) < self._first_step]
        tmp = _tmp_name(path)
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        atomic_replace(tmp, path)
        self.metrics_keys = sorted(columns)
        log.info("resume: %s keeps %d rows of the interrupted run (steps below %d)", path, len(rows), self._first_step)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a resume: call resume_from(step) before training (the
    CLI does for `fit ckpt_path=...`); otherwise it is Lightning's CSVLogger."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_step: int | None = None

    def resume_from(self, first_step: int) -> None:
        """Keep the rows of metrics.csv logged before `first_step` (the first step the resumed run logs)."""
        self._resume_step = first_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self._resume_step is not None and rank_zero_only.rank == 0:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedExperimentWriter(self.log_dir, self._resume_step)
        return super().experiment


# -- safetensors -----------------------------------------------------------------------------------
MODEL_PREFIX = "model."


def export_safetensors(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """The backbone/LM weights of a task checkpoint (the `model.` submodule) as safetensors, with the
    MambaConfig as JSON in the metadata key `mamba_config`. Written atomically."""
    from safetensors.torch import save_file

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise ValueError(f"{ckpt_path}: no model config in hyper_parameters; is it a mamba-seq task checkpoint?")
    state = {k[len(MODEL_PREFIX):]: v.contiguous() for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    if not state:
        raise ValueError(f"{ckpt_path}: no `model.` weights in the state_dict")
    # tied weights share storage: safetensors refuses shared tensors, so store clones
    state = {k: v.clone() for k, v in state.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(str(out_path))
    save_file(state, tmp, metadata={"mamba_config": json.dumps(dict(hparams["model"])),
                                    "global_step": str(ckpt.get("global_step", ""))})
    atomic_replace(tmp, str(out_path))
    return out_path


def load_safetensors(path: str | Path):
    """-> (MambaConfig, state_dict) from a file written by export_safetensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mamba_seq import MambaConfig

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "mamba_config" not in meta:
        raise ValueError(f"{path}: no mamba_config metadata; not written by mamba-seq export")
    return MambaConfig.from_dict(json.loads(meta["mamba_config"])), load_file(str(path))


def export_main(args: list[str]) -> int:
    """`mamba-seq export ckpt_path=RUN/checkpoints/last.ckpt out=model.safetensors`"""
    usage = "usage: mamba-seq export ckpt_path=PATH out=FILE.safetensors"
    if any(a in ("-h", "--help") for a in args):
        print(usage + "\n  writes the model weights and its config (JSON metadata `mamba_config`)")
        return 0
    kv = {}
    for a in args:
        if "=" not in a:
            raise SystemExit(f"mamba-seq export: expected key=value, got {a!r}\n{usage}")
        k, v = a.split("=", 1)
        if k not in ("ckpt_path", "out"):
            raise SystemExit(f"mamba-seq export: unknown key {k!r}\n{usage}")
        kv[k] = v
    if "ckpt_path" not in kv or "out" not in kv:
        raise SystemExit(f"mamba-seq export: give ckpt_path= and out=\n{usage}")
    if not Path(kv["ckpt_path"]).is_file():
        raise SystemExit(f"mamba-seq export: checkpoint not found: {kv['ckpt_path']}")
    out = export_safetensors(kv["ckpt_path"], kv["out"])
    print(f"wrote {out}")
    return 0
