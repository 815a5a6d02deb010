"""Plain-PyTorch causal depthwise conv1d: the CPU path, and the reference for the Triton kernels.

Semantics (the float64 loop in oracle.py is the specification):
    xpad = cat(prefix or zeros, x) along time;  y[b, d, t] = act(bias[d] + sum_j weight[d, j] * xpad[b, d, t + j])
One `F.conv1d(groups=dim)` over the padded input in fp32 (or the input's dtype when wider), output
cast back to x's dtype; autograd gives every gradient (the padded copy costs O(batch*dim*L) extra,
which is fine on a CPU). Also home of the argument checks and the layout rule shared with the
Triton path.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d_reference", "check_conv_args", "is_channel_last", "empty_like_layout"]


def check_conv_args(x: Tensor, weight: Tensor, bias: Optional[Tensor], prefix: Optional[Tensor]) -> None:
    """ValueError naming the argument when a shape or device does not match the contract."""
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, dim, L), got shape {tuple(x.shape)}")
    batch, dim, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"causal_conv1d: weight must be (dim={dim}, k) with k >= 1, got {tuple(weight.shape)} "
                         "(an nn.Conv1d weight (dim, 1, k) needs [:, 0])")
    k = weight.shape[1]
    for name, t, shape in (("bias", bias, (dim,)), ("prefix", prefix, (batch, dim, k - 1))):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"causal_conv1d: {name} must have shape {shape}, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("prefix", prefix)):
        if t is not None and t.device != x.device:
            raise ValueError(f"causal_conv1d: {name} is on {t.device}, x on {x.device}")


def is_channel_last(x: Tensor) -> bool:
    """Whether x (batch, dim, L) is laid out channel-last (dim the faster axis, as in a view of a
    (batch, L, dim') tensor) rather than time-contiguous. A size-1 axis has no say."""
    _, dim, L = x.shape
    if L <= 1:
        return dim > 1 and x.stride(1) == 1
    if dim <= 1:
        return False
    sd, st = abs(x.stride(1)), abs(x.stride(2))
    return sd == 1 or (st != 1 and sd < st)


def empty_like_layout(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An uninitialised (batch, dim, L) tensor with x's layout: a (batch, dim, L) view of a
    contiguous (batch, L, dim) tensor when x is channel-last, else contiguous (batch, dim, L)."""
    batch, dim, L = x.shape
    dtype = dtype or x.dtype
    if is_channel_last(x):
        return torch.empty((batch, L, dim), dtype=dtype, device=x.device).transpose(1, 2)
    return torch.empty((batch, dim, L), dtype=dtype, device=x.device)


def causal_conv1d_reference(
    x: Tensor,  # (batch, dim, L), any strides
    weight: Tensor,  # (dim, k)
    bias: Optional[Tensor] = None,  # (dim,)
    prefix: Optional[Tensor] = None,  # (batch, dim, k-1)
    silu: bool = False,
) -> Tensor:  # -> y (batch, dim, L) in x's dtype and x's layout (see empty_like_layout)
    check_conv_args(x, weight, bias, prefix)
    batch, dim, L = x.shape
    k = weight.shape[1]
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    head = prefix.to(acc) if prefix is not None else xf.new_zeros((batch, dim, k - 1))
    xpad = torch.cat([head, xf], dim=-1)  # (batch, dim, k-1+L)
    if L == 0 or batch == 0 or dim == 0:  # F.conv1d rejects some empty shapes; keep the graph
        y = xpad[..., :L] * 0 + (weight.to(acc).sum() * 0)
        if bias is not None:
            y = y + bias.to(acc)[None, :, None]
    else:
        y = F.conv1d(xpad, weight.to(acc).unsqueeze(1), bias.to(acc) if bias is not None else None, groups=dim)
    if silu:
        y = F.silu(y)
    return _layout_like(y.to(x.dtype), x)


def _layout_like(y: Tensor, x: Tensor) -> Tensor:
    # y (batch, dim, L) contiguous -> same values in x's layout, differentiable
    if is_channel_last(x):
        return y.transpose(1, 2).contiguous().transpose(1, 2)
    return y
