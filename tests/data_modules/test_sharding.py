"""Data-parallel sharding (data_modules/sharding.py) in every data module, on the bundled data.

A fake trainer puts a data module on rank r of a world of N processes. Evaluation: the shards,
concatenated in rank order, are the one-process split exactly once (disjoint, nothing padded or
left out). Training: every shard has the same number of full batches, and the shards' batches of
step k together are the batch k of one process with batch size N x B (same seed, same epoch).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from data_modules import (AudioDataModule, FastaDataModule, LabelledSequenceDataModule, SeqLenWarmup,
                          VariantDataModule)
from data_modules.fasta_pretraining import EpochSampler
from data_modules.fasta_stream import FastaStreamDataModule
from data_modules.sharding import (EpochShuffle, TrainShardSampler, data_parallel_shard, evaluation_sampler,
                                   grouped_evaluation_sampler)
from mamba_seq.cli import asset_path

WORLDS = (2, 3)


def fake_trainer(world: int, rank: int, group: int = 1, **extra) -> SimpleNamespace:
    return SimpleNamespace(world_size=world, global_rank=rank,
                           lightning_module=SimpleNamespace(sequence_parallel_size=group), **extra)


@contextlib.contextmanager
def on_rank(dm, world: int, rank: int, group: int = 1, batch_size: int | None = None):
    """dm as seen by rank `rank` of `world` processes (and with another batch size), restored after."""
    saved = dm.trainer, getattr(dm, "batch_size", None)
    dm.trainer = fake_trainer(world, rank, group)
    if batch_size is not None:
        dm.batch_size = batch_size
    try:
        yield dm
    finally:
        dm.trainer = saved[0]
        if batch_size is not None:
            dm.batch_size = saved[1]


# identities of a batch's items
def fasta_windows(b):
    return [(c, int(s), int(st)) for c, s, st in zip(b["contig"], b["start"], b["strand"])]


def clip_paths(b):
    return list(b["path"])


def sequence_ids(b):
    return list(b["id"])


def variant_ids(b):
    return list(zip(b["id"], b["chrom"], b["pos"], b["ref"], b["alt"]))


def stream_segments(b):
    return [(b["record"][0], int(b["start"]))]


def loader_items(loader, key, epoch: int | None = None) -> list[list]:
    """The loader's batches as lists of item identities."""
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    return [key(b) for b in loader]


def check_evaluation_shards(dm, hook: str, key, batch_size: int):
    """val/test/predict: every world's shards, in rank order, are the one-process split once."""
    whole = sum(loader_items(getattr(dm, hook)(), key), [])
    assert whole and len(set(whole)) == len(whole), "identities must name items uniquely"
    for world in WORLDS:
        parts = []
        for rank in range(world):
            with on_rank(dm, world, rank):
                batches = loader_items(getattr(dm, hook)(), key)
            assert batches, (hook, world, rank)  # every rank has a batch: none skips the epoch-end syncs
            parts.append(sum(batches, []))
        assert sum(parts, []) == whole, (hook, world)  # disjoint, nothing padded or left out, in order
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= batch_size, sizes


def check_training_shards(dm, key, batch_size: int, epochs=(0, 1)):
    """train: equal batch counts, disjoint indices, and step k's shards == the 1-process batch k of size N x B."""
    for world in WORLDS:
        for epoch in epochs:
            with on_rank(dm, 1, 0, batch_size=world * batch_size):
                one = loader_items(dm.train_dataloader(), key, epoch)
            shards, indices = [], []
            for rank in range(world):
                with on_rank(dm, world, rank, batch_size=batch_size):
                    loader = dm.train_dataloader()
                shards.append(loader_items(loader, key, epoch))
                indices.append(list(loader.sampler))
            steps = len(shards[0])
            assert steps > 0 and all(len(s) == steps for s in shards), [len(s) for s in shards]
            assert all(len(b) == batch_size for s in shards for b in s)
            flat = sum(indices, [])
            assert len(set(flat)) == len(flat)  # no item on two shards
            # only the incomplete last global batch is dropped (one process keeps it as a short batch)
            assert steps == len(one) - (len(one[-1]) < world * batch_size)
            for k in range(steps):
                assert sum((s[k] for s in shards), []) == one[k], (world, epoch, k)
        # a new epoch reads other items
        with on_rank(dm, world, 0, batch_size=batch_size):
            assert loader_items(dm.train_dataloader(), key, 0) != loader_items(dm.train_dataloader(), key, 1)


def check_sequence_parallel_groups(dm, hooks, key, batch_size: int):
    """world 4 in groups of 2: 2 shards; ranks 0, 1 read shard 0, ranks 2, 3 shard 1 (those of world 2)."""
    for hook in hooks:
        got = []
        for rank in range(4):
            with on_rank(dm, 4, rank, group=2, batch_size=batch_size):
                got.append(loader_items(getattr(dm, hook)(), key, 0 if hook == "train_dataloader" else None))
        for rank in range(2):
            with on_rank(dm, 2, rank, batch_size=batch_size):
                expected = loader_items(getattr(dm, hook)(), key, 0 if hook == "train_dataloader" else None)
            assert got[2 * rank] == got[2 * rank + 1] == expected, (hook, rank)
        assert got[0] != got[2]


# -- the samplers ------------------------------------------------------------------------------------
def test_data_parallel_shard_groups_sequence_parallel_ranks():
    assert data_parallel_shard(None) == (0, 1)
    assert [data_parallel_shard(fake_trainer(3, r)) for r in range(3)] == [(0, 3), (1, 3), (2, 3)]
    assert [data_parallel_shard(fake_trainer(4, r, group=2)) for r in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    with pytest.raises(ValueError, match="sequence_parallel_size=3 must divide"):
        data_parallel_shard(fake_trainer(4, 0, group=3))
    injected = fake_trainer(2, 0, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(ValueError, match="trainer.use_distributed_sampler=false"):
        data_parallel_shard(injected)


@pytest.mark.parametrize("n", [1, 7, 24, 25, 100])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_train_shards_split_every_global_batch(n, batch_size):
    base = EpochSampler(n)
    assert list(TrainShardSampler(base, batch_size, 0, 1)) == list(range(n))  # one shard: the base order, tail kept
    for count in WORLDS:
        if n < count * batch_size:
            with pytest.raises(ValueError, match=rf"train split has {n} items.*{count} data-parallel shards"):
                TrainShardSampler(base, batch_size, 0, count)
            continue
        one = [list(b) for b in BatchSampler(base, batch_size * count, drop_last=False)]
        shards = [[list(b) for b in BatchSampler(TrainShardSampler(base, batch_size, i, count), batch_size, False)]
                  for i in range(count)]
        assert all(len(s) == n // (count * batch_size) for s in shards)
        for k in range(len(shards[0])):
            assert sum((s[k] for s in shards), []) == one[k]
        assert n - sum(len(s) for s in shards) * batch_size < count * batch_size  # at most the incomplete tail


def test_epoch_shuffle_is_the_shuffling_loaders_order_and_survives_a_resume():
    """One process: epoch e's order and the workers' base seed are those of the e-th pass of
    DataLoader(shuffle=True, generator=Generator().manual_seed(seed)); a new sampler set to epoch 3
    (a resumed run) gives epoch 3's order."""
    data = list(range(37))
    old = DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(11))
    order = EpochShuffle(len(data), 11)
    new = DataLoader(data, batch_size=5, sampler=TrainShardSampler(order, 5, 0, 1), generator=order.loader_generator)
    seen = {}
    for epoch in range(4):
        old_it = iter(old)
        new.sampler.set_epoch(epoch)
        new_it = iter(new)
        assert new_it._base_seed == old_it._base_seed  # the workers' seeds
        seen[epoch] = [b.tolist() for b in new_it]
        assert seen[epoch] == [b.tolist() for b in old_it]
    assert seen[0] != seen[1]
    resumed = EpochShuffle(len(data), 11)
    resumed.set_epoch(3)
    assert list(resumed) == sum(seen[3], [])
    resumed.set_epoch(1)  # back to an earlier epoch: replayed from the seed
    assert list(resumed) == sum(seen[1], [])


@pytest.mark.parametrize("size", [0, 3, 10, 11, 101])
def test_evaluation_shards_are_contiguous_disjoint_and_whole(size):
    for count in (1, *WORLDS, 4):
        if 0 < size < count:
            with pytest.raises(ValueError, match=rf"the val split has {size} items, fewer than the {count}"):
                evaluation_sampler(size, 0, count, "val")
            continue
        parts = [list(evaluation_sampler(size, i, count, "val")) for i in range(count)]
        assert sum(parts, []) == list(range(size))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_grouped_evaluation_shards_keep_groups_whole():
    group_sizes = [40, 3, 3, 1, 25, 2, 30]
    starts = [0]
    for g in group_sizes:
        starts.append(starts[-1] + g)
    for count in (1, 2, 3, 4, 7):
        parts = [list(grouped_evaluation_sampler(starts, i, count, "predict")) for i in range(count)]
        assert sum(parts, []) == list(range(starts[-1]))
        assert all(parts), count
        for p in parts:  # each part starts and ends at a group boundary
            assert p[0] in starts and p[-1] + 1 in starts
    parts = [list(grouped_evaluation_sampler(starts, i, 2, "predict")) for i in range(2)]
    assert [len(p) for p in parts] == [47, 57]  # the boundary nearest the even cut (52)
    with pytest.raises(ValueError, match="the predict split has 7 records, fewer than the 8"):
        grouped_evaluation_sampler(starts, 0, 8, "predict")


# -- FastaDataModule ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lambda_dm(shared_data, tmp_path_factory):
    dm = FastaDataModule(str(shared_data / "genomes" / "lambda_virus.fa"), seq_len=256, batch_size=4, seed=0,
                         val_fraction=0.1, test_fraction=0.1, cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.setup("fit")
    return dm


def test_fasta_evaluation_shards(lambda_dm):
    for hook in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        check_evaluation_shards(lambda_dm, hook, fasta_windows, lambda_dm.eval_batch_size)


def test_fasta_training_shards(lambda_dm):
    check_training_shards(lambda_dm, fasta_windows, batch_size=4)


def test_fasta_sequence_parallel_groups_share_a_shard(lambda_dm):
    check_sequence_parallel_groups(lambda_dm, ("train_dataloader", "val_dataloader"), fasta_windows, 4)


def test_fasta_one_process_is_unchanged(lambda_dm):
    dm = lambda_dm
    old_train = DataLoader(dm.train_set, batch_size=4, sampler=EpochSampler(len(dm.train_set)))
    for epoch in (0, 2):
        old_train.sampler.set_epoch(epoch)
        assert loader_items(dm.train_dataloader(), fasta_windows, epoch) == loader_items(old_train, fasta_windows)
    old_val = DataLoader(dm.val_set, batch_size=dm.eval_batch_size)
    assert loader_items(dm.val_dataloader(), fasta_windows) == loader_items(old_val, fasta_windows)


def test_warmup_stages_give_every_shard_the_stage_steps(lambda_dm):
    """A warm-up stage holds steps x accumulate x shards x batch windows: each shard exactly the
    stage's steps of batches (sequence-parallel ranks share windows), and the shards of a step are
    the batch of one process with shards x batch."""
    dm, steps, accumulate = lambda_dm, 3, 2

    def stage_loader(world, rank, group, batch_size, global_step):
        warmup = SeqLenWarmup(min_seq_len=64, steps_per_stage=steps)
        warmup.stages = warmup.plan(dm.seq_len, batch_size)
        trainer = fake_trainer(world, rank, group, global_step=global_step, accumulate_grad_batches=accumulate)
        with on_rank(dm, world, rank, group, batch_size=batch_size):
            dm.trainer = trainer
            dm.train_stage_fn = partial(warmup._next_train_stage, trainer)
            try:
                return dm.train_dataloader()
            finally:
                dm.train_stage_fn = None

    for world, group, global_step in ((3, 1, 0), (4, 2, 4)):  # stage 1 (64 x 16), stage 2 (128 x 8)
        shards = world // group
        stage_batch = 4 * (4 >> (global_step // steps))
        one = loader_items(stage_loader(1, 0, 1, 4 * shards, global_step), fasta_windows, 0)
        per_rank = [loader_items(stage_loader(world, r, group, 4, global_step), fasta_windows, 0) for r in range(world)]
        assert all(len(b) == steps * accumulate for b in per_rank)
        assert all(len(x) == stage_batch for b in per_rank for x in b)
        for k in range(steps * accumulate):
            assert sum((per_rank[s * group][k] for s in range(shards)), []) == one[k]
        assert all(per_rank[r] == per_rank[r - r % group] for r in range(world))


# -- AudioDataModule ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_dm(shared_data):
    dm = AudioDataModule(root=str(shared_data / "audio" / "fsdd"), max_files=120, split="random", num_samples=400,
                         batch_size=4, seed=1)
    dm.setup()
    return dm


def test_audio_shards(audio_dm):
    for hook in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        check_evaluation_shards(audio_dm, hook, clip_paths, 4)
    check_training_shards(audio_dm, clip_paths, batch_size=4)
    check_sequence_parallel_groups(audio_dm, ("train_dataloader", "test_dataloader"), clip_paths, 4)


def test_audio_one_process_is_unchanged(audio_dm):
    dm = audio_dm
    old = DataLoader(dm.sets["train"], batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1),
                     collate_fn=lambda items: [it["path"] for it in items])
    new = dm.train_dataloader()
    for epoch in (0, 1):
        assert loader_items(new, clip_paths, epoch) == list(old)
    old_val = [[c.path for c in dm.sets["val"].clips[i : i + 4]] for i in range(0, len(dm.sets["val"]), 4)]
    assert loader_items(dm.val_dataloader(), clip_paths) == old_val


# -- LabelledSequenceDataModule ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def promoters_dm(shared_data):
    path = shared_data / "sequence_classification" / "promoters_umarov2016" / "promoters_ecoli_bsubtilis.csv"
    dm = LabelledSequenceDataModule(str(path), where={"organism": "E_coli_sigma70"}, batch_size=16, seed=2)
    dm.setup()
    return dm


def test_labelled_sequence_shards(promoters_dm):
    for hook in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        check_evaluation_shards(promoters_dm, hook, sequence_ids, 16)
    check_training_shards(promoters_dm, sequence_ids, batch_size=16)
    check_sequence_parallel_groups(promoters_dm, ("train_dataloader", "val_dataloader"), sequence_ids, 16)


def test_labelled_sequences_one_process_is_unchanged(promoters_dm):
    dm = promoters_dm
    new = dm.train_dataloader()
    old = DataLoader(dm.sets["train"], batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2),
                     collate_fn=new.collate_fn)
    for epoch in (0, 1):
        assert loader_items(new, sequence_ids, epoch) == loader_items(old, sequence_ids)


def test_a_split_smaller_than_the_shards_fails_naming_it(tmp_path):
    table = tmp_path / "s.tsv"
    table.write_text("sequence\tlabel\tsplit\n" + "".join(f"{'ACGT' * (i + 1)}\t{i % 2}\t{s}\n" for i, s in
                                                        enumerate(["train"] * 8 + ["val"] * 2 + ["test"] * 3)))
    dm = LabelledSequenceDataModule(str(table), split="column", split_column="split", batch_size=2)
    dm.setup()
    with on_rank(dm, 3, 0):
        assert len(dm.test_dataloader()) == 1
        with pytest.raises(ValueError, match=r"the val split has 2 items, fewer than the 3 data-parallel shards"):
            dm.val_dataloader()
        with pytest.raises(ValueError, match=r"the train split has 8 items per epoch, fewer than one global batch"):
            with on_rank(dm, 3, 0, batch_size=4):
                dm.train_dataloader()


# -- VariantDataModule -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def variants_dm():
    dm = VariantDataModule(variants=asset_path("clinvar_brca1_GRCh38.vcf.gz"), reference=asset_path("ref_brca1.fa"),
                           contigs={"17": ["ref_brca1", 43044296]}, window=16, batch_size=64, predict_split="all")
    dm.setup()
    return dm


def test_variant_shards(variants_dm):
    for hook in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        check_evaluation_shards(variants_dm, hook, variant_ids, 64)
    check_training_shards(variants_dm, variant_ids, batch_size=64, epochs=(1,))
    check_sequence_parallel_groups(variants_dm, ("val_dataloader",), variant_ids, 64)


# -- FastaStreamDataModule ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stream_dm(shared_data, tmp_path_factory):
    dm = FastaStreamDataModule(str(shared_data / "genomes" / "C.elegans_first1pct.fa.gz"), segment_len=16384,
                               cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.setup("predict")
    return dm


def test_stream_shards_by_whole_records_in_order(stream_dm):
    dm = stream_dm
    check_evaluation_shards(dm, "predict_dataloader", stream_segments, 64)  # rank order: the file order
    whole = sum(loader_items(dm.predict_dataloader(), stream_segments), [])
    assert whole == sorted(whole, key=lambda rs: (dm.records.index(rs[0]), rs[1]))
    for world in (*WORLDS, 7):
        owners = {}
        for rank in range(world):
            with on_rank(dm, world, rank):
                batches = list(dm.predict_dataloader())
            assert batches and bool(batches[0]["is_first"]) and bool(batches[-1]["is_last"])  # whole records
            for b in batches:
                assert owners.setdefault(b["record"][0], rank) == rank  # a record never on two ranks
        assert set(owners) == set(dm.records)
    with on_rank(dm, 8, 0), pytest.raises(ValueError, match=r"the predict split has 7 records \(data.records\), "
                                                            r"fewer than the 8"):
        dm.predict_dataloader()
    with on_rank(dm, 4, 3, group=2):  # sequence-parallel ranks read the same records
        shard_b = loader_items(dm.predict_dataloader(), stream_segments)
    with on_rank(dm, 2, 1):
        assert shard_b == loader_items(dm.predict_dataloader(), stream_segments)


def test_stream_one_process_is_unchanged(stream_dm):
    old = DataLoader(stream_dm.predict_set, batch_size=1, sampler=SequentialSampler(stream_dm.predict_set))
    assert list(stream_dm.predict_dataloader().sampler) == list(old.sampler)


# -- a real two-process DDP run (gloo, CPU) ----------------------------------------------------------
class RecordingModule(pl.LightningModule):
    """Records the ids of every batch it is given; one weight so DDP has a gradient to all-reduce."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(list(batch["id"]))
        return (self.weight * batch["labels"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(list(batch["id"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def ddp_worker(rank: int, port: int, table: str, out: str, steps: int):
    # as a launcher (torchrun, SLURM) starts each process: Lightning then starts none itself
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from hydra.utils import instantiate

    from mamba_seq.cli import compose

    cfg = compose(["trainer=ddp_cpu"]).trainer
    trainer = instantiate(cfg, default_root_dir=out, max_steps=steps, limit_val_batches=0, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    dm = LabelledSequenceDataModule(table, where={"organism": "E_coli_sigma70"}, batch_size=16, seed=2)
    module = RecordingModule()
    trainer.fit(module, datamodule=dm)
    trainer.limit_val_batches = 1.0  # the whole split (not during fit: its steps are what is compared)
    trainer.validate(module, datamodule=dm, verbose=False)
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"world": trainer.world_size, **module.seen}, f)


def test_two_process_ddp_reads_the_one_process_batches(shared_data, tmp_path):
    """trainer=ddp_cpu, two gloo processes: the shards of each step are the one-process batch of
    2 x 16, and validation reads every sequence of the split once."""
    table = shared_data / "sequence_classification" / "promoters_umarov2016" / "promoters_ecoli_bsubtilis.csv"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 3
    mp.spawn(ddp_worker, args=(port, str(table), str(tmp_path), steps), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["world"] for s in seen] == [2, 2]
    dm = LabelledSequenceDataModule(str(table), where={"organism": "E_coli_sigma70"}, batch_size=32, seed=2)
    dm.setup()
    one = loader_items(dm.train_dataloader(), sequence_ids, 0)[:steps]
    assert [len(s["train"]) for s in seen] == [steps, steps]
    assert [seen[0]["train"][k] + seen[1]["train"][k] for k in range(steps)] == one
    val = sum(loader_items(dm.val_dataloader(), sequence_ids), [])
    assert sum(seen[0]["val"], []) + sum(seen[1]["val"], []) == val
