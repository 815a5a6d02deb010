"""Which part of a split this process reads under data parallelism (DDP, FSDP), and the samplers that
read it.

Every data module asks `data_parallel_shard(self.trainer)` for (shard index, shard count) and
builds its own samplers from it, so Lightning's DistributedSampler (which pads evaluation splits
with repeated items, and reshuffles training data its own way) is never injected (trainer configs
set use_distributed_sampler: false).

The ranks of one sequence-parallel group (task attribute `sequence_parallel_size`) hold slices of
the same sequences, so they read the same shard: shard = global_rank // group size.

Samplers:
* TrainShardSampler: training. All shards walk one base order (the same on every rank: seeded,
  a function of the epoch); global step s takes its next count x batch_size items, as one process
  with that batch size would, and shard i takes the i-th batch_size of them. Equal batch counts on
  every shard (DDP needs them), and N ranks of batch B follow the trajectory of one process of
  batch N*B. The base orders: fasta_pretraining.EpochSampler (window k of epoch e is dataset index
  e*n + k) and EpochShuffle below (a seeded permutation per epoch).
* ShardRange via evaluation_sampler / grouped_evaluation_sampler: val/test/predict. Contiguous,
  disjoint parts whose union is the split exactly once: no padding, no repeated item, so metrics
  over all ranks count every item once. Concatenated in shard order they are the split's order.
"""

from __future__ import annotations

import bisect

import torch
from torch.utils.data import RandomSampler, Sampler

__all__ = [
    "data_parallel_shard", "EpochShuffle", "TrainShardSampler", "ShardRange", "evaluation_sampler",
    "grouped_evaluation_sampler", "seeded_loader_sampler",
]

SHARD_KEYS = "trainer.devices x trainer.num_nodes / task.sequence_parallel_size"


def data_parallel_shard(trainer) -> tuple[int, int]:
    """-> (index, count): this process reads shard `index` of `count` (0, 1 without a trainer or
    on one process). Ranks of one sequence-parallel group get the same shard."""
    if trainer is None:
        return 0, 1
    world, rank = int(trainer.world_size), int(trainer.global_rank)
    module = getattr(trainer, "lightning_module", None)
    group = int(getattr(module, "sequence_parallel_size", 1) or 1)
    if group < 1 or world % group:
        raise ValueError(f"task.sequence_parallel_size={group} must divide the number of processes "
                         f"({world} = trainer.devices x trainer.num_nodes)")
    # with Lightning's sampler injected too, every shard would be cut again (and evaluation padded)
    connector = getattr(trainer, "_accelerator_connector", None)
    if world > 1 and getattr(connector, "use_distributed_sampler", False) is True:
        raise ValueError("trainer.use_distributed_sampler=true: the data modules shard their splits themselves "
                         "(data_modules/sharding.py); set trainer.use_distributed_sampler=false (configs/trainer/"
                         "default.yaml does)")
    return rank // group, world // group


def _draw_loader_seed(generator: torch.Generator) -> None:
    # what torch's DataLoader draws from its generator at the start of every pass (the workers' base seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)


class EpochShuffle(Sampler[int]):
    """range(n) in a new seeded order each epoch, a function of (seed, epoch) alone.

    Epoch e's order is the one DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))
    gives in its e-th pass when every pass before it was read to the end (each pass draws the
    workers' base seed from the generator, then torch's RandomSampler draws from it), so one process
    trains on the batches such a loader gave; unlike that loader a resumed run (set_epoch) gets the
    uninterrupted run's order.

    `loader_generator`: pass it to the DataLoader (generator=): set_epoch(e) puts it in the state the
    shuffling loader's generator had when pass e began, so the workers' base seeds match too.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0
        self.loader_generator = torch.Generator().manual_seed(self.seed)
        self._cached = (0, self.loader_generator.get_state())  # (epoch, generator state when it begins)

    def _pass(self, generator: torch.Generator) -> list[int]:
        # one pass of a shuffling DataLoader, drawing from `generator` what it draws
        _draw_loader_seed(generator)
        return list(RandomSampler(range(self.n), generator=generator))

    def _state_at(self, epoch: int) -> torch.Tensor:
        cached_epoch, state = self._cached
        if epoch < cached_epoch:
            cached_epoch, state = 0, torch.Generator().manual_seed(self.seed).get_state()
        g = torch.Generator()
        g.set_state(state)
        for _ in range(epoch - cached_epoch):  # replay the passes before it (a permutation each: cheap)
            self._pass(g)
        self._cached = (epoch, g.get_state())
        return self._cached[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.loader_generator.set_state(self._state_at(self.epoch))

    def __iter__(self):
        g = torch.Generator()
        g.set_state(self._state_at(self.epoch))
        return iter(self._pass(g))

    def __len__(self) -> int:
        return self.n


class TrainShardSampler(Sampler[int]):
    """Shard `index` of `count` of a training base order, batch by batch.

    Global step s takes items [s*count*B, (s+1)*count*B) of the base order (what one process with
    batch size count*B takes at step s); shard i takes the i-th B of them. So every shard yields the
    same number of full batches, the shards are disjoint, and the shards' batches of one step are
    together the one-process batch (in shard order).

    count > 1: the incomplete last global batch (fewer than count*B items) is dropped, on every shard
    alike: a partial one would leave shards with different numbers or sizes of batches. count == 1:
    exactly the base order, the last partial batch kept (as without sharding).
    set_epoch is forwarded to the base order (e.g. fasta_pretraining.EpochSampler, EpochShuffle), so
    each epoch is reproducible, also after a resume.
    """

    def __init__(self, base: Sampler[int], batch_size: int, index: int, count: int, split: str = "train"):
        if not 0 <= index < count or batch_size < 1:
            raise ValueError(f"shard {index} of {count} with batch size {batch_size}: need 0 <= index < count "
                             "and batch size >= 1")
        self.base, self.batch_size, self.index, self.count = base, int(batch_size), int(index), int(count)
        n = len(base)
        if count > 1 and n < count * batch_size:
            raise ValueError(f"the {split} split has {n} items per epoch, fewer than one global batch of "
                             f"{count} data-parallel shards ({SHARD_KEYS}) x batch size {batch_size}: every shard "
                             "would get no batch. Lower data.batch_size, use fewer devices, or give more "
                             f"{split} data")

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _global_batch(self) -> int:
        return self.count * self.batch_size

    def __len__(self) -> int:
        if self.count == 1:
            return len(self.base)
        return len(self.base) // self._global_batch() * self.batch_size

    def __iter__(self):
        if self.count == 1:
            yield from self.base
            return
        per_step = self._global_batch()
        kept = len(self.base) // per_step * per_step
        lo, hi = self.index * self.batch_size, (self.index + 1) * self.batch_size
        for position, item in enumerate(self.base):
            if position >= kept:
                break
            if lo <= position % per_step < hi:
                yield item


class ShardRange(Sampler[int]):
    """Dataset indices [start, stop) in order: one shard's contiguous part of an evaluation split."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"ShardRange({self.start}, {self.stop})"


def _too_few(split: str, n: int, what: str, count: int) -> ValueError:
    return ValueError(f"the {split} split has {n} {what}, fewer than the {count} data-parallel shards ({SHARD_KEYS}): "
                      "a shard without any would skip the epoch-end synchronisation and hang the others. Use at "
                      f"most {n} shards (fewer devices) or a larger {split} split")


def evaluation_sampler(size: int, index: int, count: int, split: str) -> ShardRange:
    """Shard `index` of `count` of an evaluation split of `size` items: contiguous, sizes differing by
    at most one item (so batch counts by at most one), no padding. An empty split stays empty on
    every shard (all skip it alike); 0 < size < count is an error naming the split."""
    if 0 < size < count:
        raise _too_few(split, size, "items", count)
    return ShardRange(index * size // count, (index + 1) * size // count)


def grouped_evaluation_sampler(group_starts: list[int], index: int, count: int, split: str,
                               what: str = "records") -> ShardRange:
    """Like evaluation_sampler, but items come in groups that never straddle two shards (e.g. the
    segments of one FASTA record, whose state is carried from one to the next); each shard takes
    whole consecutive groups, about size / count items. group_starts: the first item of every group,
    then the total (len = groups + 1, increasing)."""
    group_starts = sorted(set(group_starts))  # an empty group (a record of no items) joins its neighbour
    n_groups, total = len(group_starts) - 1, group_starts[-1]
    if count == 1:
        return ShardRange(0, total)
    if n_groups < count:
        raise _too_few(split, n_groups, what, count)
    bounds = [0]  # group numbers where each shard starts, then n_groups
    for shard in range(1, count):
        target = shard * total / count
        # the group boundary nearest the even cut, leaving every shard at least one group
        low, high = bounds[-1] + 1, n_groups - (count - shard)
        b = min(max(bisect.bisect_left(group_starts, target), low), high)
        if b > low and target - group_starts[b - 1] <= group_starts[b] - target:
            b -= 1
        bounds.append(b)
    bounds.append(n_groups)
    return ShardRange(group_starts[bounds[index]], group_starts[bounds[index + 1]])


def seeded_loader_sampler(trainer, size: int, batch_size: int, seed: int, split: str,
                          shuffle: bool) -> tuple[Sampler[int], torch.Generator]:
    """(sampler, generator) for this process's DataLoader over a split of `size` items, in place of
    DataLoader(shuffle=shuffle, generator=torch.Generator().manual_seed(seed)): training (shuffle) a
    TrainShardSampler over an EpochShuffle, evaluation an evaluation_sampler. On one process the
    batches, their order and the workers' seeds are that loader's."""
    index, count = data_parallel_shard(trainer)
    if shuffle:
        order = EpochShuffle(size, seed)
        return TrainShardSampler(order, batch_size, index, count, split), order.loader_generator
    return evaluation_sampler(size, index, count, split), torch.Generator().manual_seed(seed)
