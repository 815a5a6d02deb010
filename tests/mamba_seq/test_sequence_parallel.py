"""Sequence parallelism on CPU processes over gloo: each rank holds one slice of the sequence; the
summed loss and the all-reduced gradients equal the single-process one-piece computation, also
with activation checkpointing and under bf16 autocast (the GPU trainer's precision)."""

import contextlib
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
# bf16 autocast: the projections round to 8 mantissa bits (2^-8 = 4e-3 relative) in both runs, and
# one ulp flipped by the slice boundary's different fp32 summation order moves a gradient entry by
# that much: 2e-2 of the largest entry leaves room for a few such flips, while a wrong state
# exchange (a zero state, a missing gradient) changes the gradients by O(1) of it.
RTOL_BF16 = 2e-2


def precision(mode):
    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()


def model_and_data(L):
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=3, vocab_size=12, d_state=4, d_conv=4))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (2, L), generator=g)
    labels = torch.randint(0, 12, (2, L), generator=g)
    labels[1, -3:] = IGNORE_INDEX
    return model, ids, labels


def worker(rank, world, port, L, mode, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, ids, labels = model_and_data(L)
        model.backbone.set_activation_checkpointing(mode == "checkpoint")
        s = slice(rank * L // world, (rank + 1) * L // world)
        with precision(mode):
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


# 3 ranks: the middle one both receives and sends; checkpoint: blocks recomputed in the backward
# pass (the messages must not be re-sent); bf16: autocast returns the conv overlap in bf16, which
# must still match the receiver's buffer (it once aborted gloo with a size mismatch)
@pytest.mark.parametrize("world,L,mode", [(2, 48, "fp32"), (3, 42, "fp32"), (2, 40, "checkpoint"), (2, 40, "bf16")])
def test_sequence_parallel_equals_one_process(tmp_path, world, L, mode):
    out = tmp_path / "rank0.pt"
    mp.spawn(worker, args=(world, free_port(), L, mode, str(out)), nprocs=world, join=True)
    got = torch.load(out)
    model, ids, labels = model_and_data(L)
    with precision(mode):
        logits = model(ids)
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    (nll / 7.0).backward()
    rtol = RTOL_BF16 if mode == "bf16" else RTOL
    torch.testing.assert_close(got["nll"], nll.detach(), rtol=rtol, atol=0)
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert (got["grads"][name] - p.grad).abs().max() <= rtol * scale, name
