"""Sequence parallelism on CPU processes over gloo: each rank holds one slice of the sequence; the
summed loss and the all-reduced gradients equal the single-process one-piece computation."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mamba_seq import MambaConfig, MambaLMHeadModel
from mamba_seq.long_sequence import IGNORE_INDEX
from mamba_seq.sequence_parallel import all_reduce_gradients, sequence_parallel_lm_nll

# fp32 on CPU: the ranks sum the same terms as one process, in a different order (per-rank partial
# sums, scan chunks starting at the slice boundaries): 1e-5 of the largest gradient entry is ample.
RTOL = 1e-5


def model_and_data(L):
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=3, vocab_size=12, d_state=4, d_conv=4))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (2, L), generator=g)
    labels = torch.randint(0, 12, (2, L), generator=g)
    labels[1, -3:] = IGNORE_INDEX
    return model, ids, labels


def worker(rank, world, port, L, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, ids, labels = model_and_data(L)
        s = slice(rank * L // world, (rank + 1) * L // world)
        nll = sequence_parallel_lm_nll(model, ids[:, s], labels[:, s])
        (nll / 7.0).backward()  # any common scale: every rank must use the same
        all_reduce_gradients(model)
        total = nll.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            torch.save({"nll": total, "grads": {n: p.grad for n, p in model.named_parameters()}}, out)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world,L", [(2, 48), (3, 42)])  # 3 ranks: the middle one both receives and sends
def test_sequence_parallel_equals_one_process(tmp_path, world, L):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(world, free_port(), L, str(out)), nprocs=world, join=True)
    got = torch.load(out)
    model, ids, labels = model_and_data(L)
    nll = F.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    (nll / 7.0).backward()
    torch.testing.assert_close(got["nll"], nll.detach(), rtol=RTOL, atol=0)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert (got["grads"][name] - p.grad).abs().max() <= RTOL * scale, name
