"""NonFiniteGuard: a Lightning callback that catches a NaN/inf loss or gradient before it reaches the
weights.

It runs in on_before_optimizer_step (after backward, before gradient clipping and the update) and
checks the gradients' total norm (a non-finite loss gives non-finite gradients); on_train_batch_end
also checks the returned loss. Then:
* action="stop": raises NonFiniteError naming the global step and batch index (no update is made,
  no checkpoint is written: mamba-seq exits with the message);
* action="skip": drops every gradient (set to None, so AdamW updates nothing: no step, no weight
  decay), counts the skip (`skipped`, logged as train/nonfinite_skipped) and goes on.
While `unhealthy` (a non-finite value since the last good step) tasks.checkpointing's
AtomicModelCheckpoint refuses to save.
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


class NonFiniteGuard(pl.Callback):
    is_nonfinite_guard = True

    def __init__(self, action: str = "stop"):
        if action not in ("stop", "skip"):
            raise ValueError(f"callbacks.nonfinite_guard.action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.skipped = 0
        self.unhealthy = False
        self.last_bad_step: int | None = None
        self._batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_idx = batch_idx

    def _bad(self, trainer, what: str) -> None:
        self.unhealthy, self.last_bad_step = True, trainer.global_step
        msg = f"non-finite {what} at global step {trainer.global_step}, batch index {self._batch_idx}"
        if self.action == "stop":
            raise NonFiniteError(msg + " (callbacks.nonfinite_guard.action=skip skips such steps instead)")
        self.skipped += 1
        log.warning("%s: optimizer step skipped (%d so far)", msg, self.skipped)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))
        if torch.isfinite(norm):
            self.unhealthy = False
            return
        self._bad(trainer, f"gradient (norm {norm.item()})")
        for g in optimizer.param_groups:  # skip: no parameter has a gradient, so the optimizer changes nothing
            for p in g["params"]:
                p.grad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not math.isfinite(loss.detach().float().item()):
            if not self.unhealthy or self.last_bad_step != trainer.global_step - 1:
                self._bad(trainer, f"loss ({loss.item()})")
        if self.action == "skip" and self.skipped:
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
