"""CausalLMTask(sequence_parallel_size=S) driven by Lightning's DDP on CPU processes over gloo: the
gradients of the training step (after DDP's average), the logged train loss and the validation NLL
equal those of one process running the plain task on the whole windows.

Each process is started by torch.multiprocessing and joins as LOCAL_RANK of a one-node job, so
Lightning's DDPStrategy launches nothing itself. The data are an in-test DataModule whose loaders
shard by `data_parallel_shard` (the ranks of a group read the same windows), with
use_distributed_sampler=False, so what every rank sees is fixed by the test alone.
"""

import os
import socket
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from data_modules.sharding import data_parallel_shard
from mamba_seq.long_sequence import IGNORE_INDEX
from tasks.causal_lm import CausalLMTask

MODEL = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4, "d_conv": 4}
TRAIN_BATCH, VAL_BATCH = 2, 2  # windows per group per step
# fp32 on CPU: the slices sum the same terms as one process, in another order (per-rank partial
# sums, scans restarted at the slice boundary from the received state, DDP's sum over processes):
# differences are a few fp32 ulps (measured below 1e-6 of the largest entry); 1e-5 of a parameter's
# largest gradient entry is ample, while a mis-scaled or mis-counted loss is off by 10% or more.
RTOL = 1e-5


def windows(n: int, L: int, seed: int) -> list[dict]:
    """n random windows; labels -100 at an unequal number of positions per window (as padded audio
    clips), so per-rank, per-group and global target counts all differ."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MODEL["vocab_size"], (n, L), generator=g)
    labels = torch.randint(0, MODEL["vocab_size"], (n, L), generator=g)
    for i in range(n):
        labels[i, L - 3 * i:] = IGNORE_INDEX  # window 0 keeps every target
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def stack(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class ShardedWindows(pl.LightningDataModule):
    """Each data-parallel shard (one sequence-parallel group) reads a contiguous block of windows."""

    def __init__(self, train: list[dict], val: list[dict]):
        super().__init__()
        self.train, self.val = train, val

    def _loader(self, items: list[dict], batch_size: int) -> DataLoader:
        index, count = data_parallel_shard(self.trainer)
        per = len(items) // count
        return DataLoader(items[index * per:(index + 1) * per], batch_size=batch_size, shuffle=False)

    def train_dataloader(self):
        return self._loader(self.train, TRAIN_BATCH)

    def val_dataloader(self):
        return self._loader(self.val, VAL_BATCH)


class Record(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # after backward, so after DDP's all-reduce: what the optimizer is about to apply
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_loss = trainer.callback_metrics["train/loss"].clone()


def data(groups: int, L_train: int, L_val: int):
    # 2 validation batches per group; L_val odd: uneven slices when S = 2
    return windows(groups * TRAIN_BATCH, L_train, seed=1), windows(groups * 2 * VAL_BATCH, L_val, seed=2)


def worker(rank, world, port, S, checkpointing, L_train, L_val, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0",
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = CausalLMTask(MODEL, sequence_parallel_size=S, activation_checkpointing=checkpointing, warmup_steps=1)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=1, check_val_every_n_epoch=2,  # fit runs no validation: it is measured before the step
        num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[record], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out_dir,
    )
    train, val = data(world // S, L_train, L_val)
    dm = ShardedWindows(train, val)
    val_loss = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/loss"]
    trainer.fit(task, datamodule=dm)
    too_short = None
    try:  # checked before any message is exchanged, so it cannot leave a peer waiting
        task._slice_nll({"input_ids": torch.zeros(1, S - 1, dtype=torch.long),
                         "labels": torch.zeros(1, S - 1, dtype=torch.long)})
    except ValueError as err:
        too_short = str(err)
    torch.save({"grads": record.grads, "train_loss": record.train_loss, "val_loss": val_loss,
                "too_short": too_short}, os.path.join(out_dir, f"rank{rank}.pt"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_grads(checkpointing: bool, batches: list[dict]) -> dict:
    """One process, the plain task: gradients of the mean over `batches` of each one's
    token-weighted mean NLL (plain DDP's objective when each process holds one of them)."""
    torch.manual_seed(0)
    task = CausalLMTask(MODEL, activation_checkpointing=checkpointing)
    loss = sum(task._real_mean(b)[0] for b in batches) / len(batches)
    loss.backward()
    return {n: p.grad for n, p in task.model.named_parameters()}


def assert_grads_close(got: dict, want: dict):
    assert got.keys() == want.keys()
    for name, g in want.items():
        scale = g.abs().max().clamp_min(1e-12)
        assert (got[name] - g).abs().max() <= RTOL * scale, name


@pytest.mark.parametrize("world,S,checkpointing", [
    (2, 2, False),  # (a) one group of two: the whole job is one sequence split in two
    (4, 2, True),   # (b) two groups of two under DDP, blocks recomputed in the backward pass
])
def test_sequence_parallel_training_and_validation_equal_one_process(tmp_path, world, S, checkpointing):
    L_train, L_val = 24, 21
    mp.spawn(worker, args=(world, free_port(), S, checkpointing, L_train, L_val, str(tmp_path)),
             nprocs=world, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    groups = world // S
    train, val = data(groups, L_train, L_val)
    group_batches = [stack(train[g * TRAIN_BATCH:(g + 1) * TRAIN_BATCH]) for g in range(groups)]

    # train: every rank applies the same gradients, the single process's
    want = reference_grads(checkpointing, group_batches)
    for r in range(world):
        assert_grads_close(got[r]["grads"], want)
    if groups > 1:
        # the groups hold unequal numbers of targets, so the mean of group means (documented in
        # tasks/causal_lm.py) differs from one token-weighted mean over the global batch: the
        # comparison above would catch the group count being summed over the wrong ranks
        pooled = reference_grads(checkpointing, [stack(train)])["backbone.embedding.weight"]  # tied LM head
        head = want["backbone.embedding.weight"]
        assert (pooled - head).abs().max() > 100 * RTOL * head.abs().max()

    # the logged train loss: each rank logs its group's token-weighted mean NLL
    torch.manual_seed(0)
    plain = CausalLMTask(MODEL)
    with torch.no_grad():
        group_means = [plain._real_mean(b)[0] for b in group_batches]
        # val: one token-weighted mean over every target of every validation window
        for i in range(0, len(val), VAL_BATCH):
            plain._update(plain.val_nll, stack(val[i:i + VAL_BATCH]))
        val_nll = plain.val_nll.compute().item()
    for r in range(world):
        torch.testing.assert_close(got[r]["train_loss"], group_means[r // S], rtol=RTOL, atol=0)
        assert got[r]["val_loss"] == pytest.approx(val_nll, rel=RTOL)
        assert "task.sequence_parallel_size=2" in got[r]["too_short"] and "L=1" in got[r]["too_short"]


def test_sequence_parallel_options_are_checked_and_exposed():
    with pytest.raises(ValueError, match=r"task.segment_len=8 cannot be combined with task.sequence_parallel_size=2"):
        CausalLMTask(MODEL, sequence_parallel_size=2, segment_len=8)
    with pytest.raises(ValueError, match=r"task.sequence_parallel_size must be >= 1, got 0"):
        CausalLMTask(MODEL, sequence_parallel_size=0)
    task = CausalLMTask(MODEL, sequence_parallel_size=2)
    with pytest.raises(ValueError, match=r"task.sequence_parallel_size=2 needs a multiple of 2 processes, got 1"):
        task.setup("fit")  # one process, no process group
    # the data modules read the group size from the task: ranks 2, 3 of 4 form group 1 of 2
    trainer = SimpleNamespace(world_size=4, global_rank=3, lightning_module=task)
    assert data_parallel_shard(trainer) == (1, 2)
    # a layout choice, not part of the model: a checkpoint loads on one process
    assert "sequence_parallel_size" not in task.hparams
