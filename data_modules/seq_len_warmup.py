"""SeqLenWarmup: sequence-length warm-up (HyenaDNA-style) as a Lightning 2 callback.

Training starts on windows of `min_seq_len` tokens and doubles their length at step boundaries
until the data module's `seq_len`, while batch_size * seq_len stays fixed: the batch size halves
as the length doubles, so every optimizer step sees the same number of tokens. Validation and
test always use the data module's own `seq_len` and `batch_size`, so val/bpb is comparable
across stages.

How it reloads data (Lightning 2.6): a train DataLoader is only rebuilt between epochs, and only
with `trainer.reload_dataloaders_every_n_epochs` > 0 (the fit loop reads it each epoch; there is
no public way to swap a loader mid-epoch). So every warm-up stage is made an epoch of its own:
the callback sets `reload_dataloaders_every_n_epochs = 1` and hands the data module a function
(`datamodule.train_stage_fn`) that its `train_dataloader()` calls. That function reads
`trainer.global_step` at the moment the loader is built (after a checkpoint's step is restored)
and returns the stage: the window length, the batch size, and as many windows as there are
steps left until the next boundary (times accumulate_grad_batches and the number of data-parallel
shards, data_modules/sharding.py: every shard then gets exactly the stage's steps of batches).
The epoch then ends exactly at the boundary and the next loader is built for the next stage.
After the last boundary the data module's usual epochs follow.

Because stages are epochs, limit training with `trainer.max_steps` (not max_epochs), and with an
integer `trainer.val_check_interval` set `trainer.check_val_every_n_epoch=null`, so validation
counts global steps rather than batches of a (short) stage epoch. Both are checked at set-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import lightning.pytorch as pl

from .sharding import data_parallel_shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainStage:
    seq_len: int  # tokens per training example
    batch_size: int  # examples per batch (per process)
    windows_per_epoch: int | None  # examples in this epoch (all shards); None: the data module's usual epoch
    first_step: int  # the global step the stage starts at
    end_step: int | None  # the global step the next stage starts at; None for the last stage


class SeqLenWarmup(pl.Callback):
    """Double the training sequence length from `min_seq_len` to the data module's `seq_len`,
    halving the batch size each time (tokens per step fixed).

    min_seq_len:     the first stage's length; data.seq_len / min_seq_len must be a power of two
    steps_per_stage: every stage but the last lasts this many optimizer steps, or
    stage_steps:     the global steps at which the length doubles (one per doubling, increasing)
    Give one of steps_per_stage and stage_steps. The data module needs `seq_len`, `batch_size` and
    a `train_stage_fn` attribute (data_modules.FastaDataModule has them).
    """

    def __init__(self, min_seq_len: int, steps_per_stage: int | None = None, stage_steps: list[int] | None = None):
        super().__init__()
        if min_seq_len < 1:
            raise ValueError(f"seq_len_warmup.min_seq_len must be >= 1, got {min_seq_len}")
        if (steps_per_stage is None) == (stage_steps is None):
            raise ValueError("seq_len_warmup: give one of steps_per_stage (every stage that many steps) and "
                             f"stage_steps (the steps at which the length doubles); got {steps_per_stage}, {stage_steps}")
        if steps_per_stage is not None and steps_per_stage < 1:
            raise ValueError(f"seq_len_warmup.steps_per_stage must be >= 1, got {steps_per_stage}")
        self.min_seq_len, self.steps_per_stage = min_seq_len, steps_per_stage
        self.stage_steps = None if stage_steps is None else [int(s) for s in stage_steps]
        self.stages: list[TrainStage] = []

    def plan(self, seq_len: int, batch_size: int) -> list[TrainStage]:
        """The stages for a data module of `seq_len` and `batch_size` (the last stage's)."""
        ratio = seq_len // self.min_seq_len
        if seq_len % self.min_seq_len or ratio & (ratio - 1):
            raise ValueError(f"seq_len_warmup: data.seq_len={seq_len} must be min_seq_len={self.min_seq_len} times a "
                             "power of two (the length doubles each stage)")
        n_doublings = ratio.bit_length() - 1
        if self.stage_steps is None:
            bounds = [self.steps_per_stage * (i + 1) for i in range(n_doublings)]
        else:
            bounds = self.stage_steps
            if len(bounds) != n_doublings:
                raise ValueError(f"seq_len_warmup.stage_steps has {len(bounds)} steps, but going from min_seq_len="
                                 f"{self.min_seq_len} to data.seq_len={seq_len} takes {n_doublings} doublings")
            if any(b <= a for a, b in zip([0] + bounds, bounds)):
                raise ValueError(f"seq_len_warmup.stage_steps must be positive and increasing, got {bounds}")
        starts = [0] + bounds
        return [TrainStage(self.min_seq_len << i, batch_size * (ratio >> i), None, starts[i],
                           starts[i + 1] if i < n_doublings else None) for i in range(n_doublings + 1)]

    def stage_at(self, step: int) -> TrainStage:
        return next(s for s in reversed(self.stages) if s.first_step <= step)

    def _next_train_stage(self, trainer: pl.Trainer) -> TrainStage:
        """Called by the data module's train_dataloader(): the stage for the epoch about to start."""
        stage = self.stage_at(trainer.global_step)
        if stage.end_step is None:
            return stage
        # the whole stage's windows even when resuming mid-stage: the epoch (its sampler's draws) is
        # then the one an uninterrupted run had, and ResumeDataPosition skips the batches already done
        steps = stage.end_step - stage.first_step
        # the data-parallel shards, not the processes: ranks of a sequence-parallel group share windows
        _, shards = data_parallel_shard(trainer)
        windows = steps * trainer.accumulate_grad_batches * shards * stage.batch_size
        log.info("seq-len warm-up: steps %d-%d: seq_len %d, batch size %d (%d windows)", stage.first_step,
                 stage.end_step - 1, stage.seq_len, stage.batch_size, windows)
        return TrainStage(stage.seq_len, stage.batch_size, windows, stage.first_step, stage.end_step)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not all(hasattr(dm, a) for a in ("seq_len", "batch_size", "train_stage_fn")):
            raise ValueError("seq_len_warmup needs a data module with seq_len, batch_size and train_stage_fn "
                             f"(e.g. data_modules.FastaDataModule); got {type(dm).__name__}")
        self.stages = self.plan(dm.seq_len, dm.batch_size)
        if trainer.max_steps is None or trainer.max_steps < 0:
            raise ValueError("seq_len_warmup counts optimizer steps: set trainer.max_steps (every stage is an epoch "
                             "of its own, so max_epochs would stop the run at a stage boundary)")
        if trainer.max_epochs not in (None, -1):
            raise ValueError(f"seq_len_warmup makes every stage an epoch of its own, so trainer.max_epochs="
                             f"{trainer.max_epochs} would count stages: set trainer.max_epochs=-1 and limit the run "
                             "with trainer.max_steps")
        if isinstance(trainer.val_check_interval, int) and trainer.check_val_every_n_epoch is not None:
            raise ValueError("seq_len_warmup makes every stage an epoch of its own: with an integer "
                             "trainer.val_check_interval set trainer.check_val_every_n_epoch=null, so validation "
                             "counts global steps, not batches of a stage")
        last_bound = self.stages[-1].first_step
        if trainer.max_steps <= last_bound:
            log.warning("seq-len warm-up: trainer.max_steps=%d ends before the last stage (step %d): training never "
                        "reaches data.seq_len=%d", trainer.max_steps, last_bound, dm.seq_len)
        trainer.reload_dataloaders_every_n_epochs = 1  # the fit loop asks for a new train loader each epoch
        dm.train_stage_fn = partial(self._next_train_stage, trainer)
        log.info("seq-len warm-up, %d tokens per step: %s", dm.seq_len * dm.batch_size, "; ".join(
            f"from step {s.first_step}: seq_len {s.seq_len} x batch {s.batch_size}" for s in self.stages))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.datamodule is not None and hasattr(trainer.datamodule, "train_stage_fn"):
            trainer.datamodule.train_stage_fn = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        # fail loudly, not train silently on the wrong length, if the loader was not rebuilt for the stage
        want = self.stage_at(trainer.global_step).seq_len
        got = batch["input_ids"].shape[-1]  # (batch, seq_len)
        if got != want:
            raise RuntimeError(f"seq-len warm-up: step {trainer.global_step} got a batch of length {got}, the stage "
                               f"has {want}: the train loader was not rebuilt at the stage boundary (was "
                               "trainer.reload_dataloaders_every_n_epochs set back to 0?)")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        pl_module.log("train/seq_len", float(batch["input_ids"].shape[-1]), on_step=True, on_epoch=False)
