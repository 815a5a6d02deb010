"""Sequence (context) parallelism: one sequence split along L across the ranks of a process group.

Rank r holds positions [r*L/R, (r+1)*L/R) of every sequence in the batch. Each block needs, at
its first position, the recurrent state after the same block on rank r-1: the conv inputs of the
d_conv - 1 positions before (the conv's overlap) and the fp32 SSM state (the scan's initial
state). So in the forward pass rank r receives that state from rank r-1 for block l, runs block l
on its slice (MambaMixer.forward_segment) and sends its final state on to rank r+1. In the
backward pass the gradient of that state travels the other way: rank r+1 sends d(state) back
for every block, and it enters rank r's backward as the gradient of the state it sent. Ranks run
as a wavefront: rank r works on block l while rank r+1 works on block l-1.

The result equals the single-process computation (tests/mamba_seq/test_sequence_parallel.py runs
2 and 3 CPU processes over gloo): each rank's loss and parameter gradients are its slice's share,
and summing them over the group (`all_reduce_gradients`) gives the one-piece gradients.

    nll = sequence_parallel_lm_nll(model, ids_slice, labels_slice, group)   # this rank's share
    (nll / n_targets_of_the_whole_sequence).backward()   # the same scale on every rank
    all_reduce_gradients(model, group)

Training uses it through `tasks.CausalLMTask(sequence_parallel_size=S)`: groups of S consecutive
processes each split one batch along L, DDP (or any strategy that averages gradients over all
processes) across the groups; the task scales each rank's share so that DDP's average is the
single-process gradient, so all_reduce_gradients is not needed there (tasks/causal_lm.py,
tests/tasks/test_sequence_parallel_task.py). Activation checkpointing recomputes each block with
the messages kept outside it; under autocast the conv overlap is sent in the dtype of the model's
weights, the dtype every receiver expects.

Messages are tagged by block (and direction), so the order in which a rank's autograd engine
reaches them does not matter.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from .long_sequence import chunked_lm_nll
from .model import MambaLMHeadModel

__all__ = ["sequence_parallel_lm_nll", "all_reduce_gradients"]

_BACKWARD_TAG = 1 << 16  # backward messages use tags above every forward tag


def _peer(group, offset: int) -> int:
    # the global rank of this rank's neighbour `offset` places along the group
    return dist.get_global_rank(group, dist.get_rank(group) + offset) if group is not None else dist.get_rank() + offset


class _ReceiveState(torch.autograd.Function):
    """Forward: the state from the previous rank. Backward: its gradient sent back there."""

    @staticmethod
    def forward(ctx, anchor, prefix_like, ssm_like, src, tag, group):
        # anchor: any tensor of this rank's graph (so the returned state is part of it)
        prefix, ssm = torch.empty_like(prefix_like), torch.empty_like(ssm_like)
        dist.recv(prefix, src, group=group, tag=2 * tag)
        dist.recv(ssm, src, group=group, tag=2 * tag + 1)
        ctx.src, ctx.tag, ctx.group = src, tag, group
        return prefix, ssm

    @staticmethod
    def backward(ctx, d_prefix, d_ssm):
        tag = _BACKWARD_TAG + ctx.tag
        dist.send(d_prefix.contiguous(), ctx.src, group=ctx.group, tag=2 * tag)
        dist.send(d_ssm.contiguous(), ctx.src, group=ctx.group, tag=2 * tag + 1)
        return None, None, None, None, None, None


class _SendState(torch.autograd.Function):
    """Forward: the state sent to the next rank; returns a zero scalar to add to the loss, so the
    backward runs. Backward: the state's gradient received from that rank."""

    @staticmethod
    def forward(ctx, prefix, ssm, dst, tag, group):
        dist.send(prefix.contiguous(), dst, group=group, tag=2 * tag)
        dist.send(ssm.contiguous(), dst, group=group, tag=2 * tag + 1)
        ctx.dst, ctx.tag, ctx.group = dst, tag, group
        ctx.shapes = (prefix.shape, prefix.dtype, ssm.shape, ssm.dtype, prefix.device)
        return prefix.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, _):
        ps, pd, ss, sd, device = ctx.shapes
        d_prefix, d_ssm = torch.empty(ps, dtype=pd, device=device), torch.empty(ss, dtype=sd, device=device)
        tag = _BACKWARD_TAG + ctx.tag
        dist.recv(d_prefix, ctx.dst, group=ctx.group, tag=2 * tag)
        dist.recv(d_ssm, ctx.dst, group=ctx.group, tag=2 * tag + 1)
        return d_prefix, d_ssm, None, None, None


def sequence_parallel_lm_nll(model: MambaLMHeadModel, input_ids: torch.Tensor, labels: torch.Tensor,
                             group=None, chunk_tokens: int = 1 << 16) -> torch.Tensor:
    """This rank's slice of a sequence split along L over `group` (default: the world): input_ids,
    labels (batch, L_rank), the same batch size on every rank, slices in rank order. -> the summed
    next-token NLL (nats, fp32 scalar) of this rank's positions. Summing it over the group gives
    the whole sequence's; backward() on every rank, then all_reduce_gradients, gives its gradients."""
    backbone, weight = model.backbone, model.lm_head.weight
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    state0 = backbone.initial_segment_state(input_ids.shape[0], dtype=weight.dtype)
    residual = backbone.residual_start(backbone.embedding(input_ids))
    use_ckpt = backbone.activation_checkpointing and torch.is_grad_enabled()
    to_loss = []
    for i, layer in enumerate(backbone.layers):
        prefix, ssm = state0[2 * i], state0[2 * i + 1]
        if rank > 0:
            prefix, ssm = _ReceiveState.apply(residual, prefix, ssm, _peer(group, -1), i, group)
        if use_ckpt:  # recomputation stays inside the block: the messages are outside it, sent once
            residual, prefix, ssm = checkpoint(layer.residual_update_segment, residual, prefix, ssm,
                                               use_reentrant=False)
        else:
            residual, prefix, ssm = layer.residual_update_segment(residual, prefix, ssm)
        if rank < world - 1:
            # in the dtype the next rank receives into (its state0's): under autocast the block
            # returns its conv inputs in bf16, and a size mismatch would break the exchange
            to_loss.append(_SendState.apply(prefix.to(state0[2 * i].dtype), ssm.to(state0[2 * i + 1].dtype),
                                            _peer(group, +1), i, group))
    hidden = backbone.norm_f(residual.to(backbone.norm_f.weight.dtype))
    nll = chunked_lm_nll(hidden, weight, labels, chunk_tokens)
    return nll + sum(to_loss) if to_loss else nll


def all_reduce_gradients(model: torch.nn.Module, group=None) -> None:
    """Sum every parameter's gradient over the group: each rank holds its slice's share."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
