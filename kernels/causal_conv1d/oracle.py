"""The obviously-right causal depthwise conv1d: float64, one loop step per tap.

The specification every other form (reference, Triton kernels) is tested against. Slow on purpose
and shares no code with them:

    xpad = cat(prefix or zeros(batch, dim, k-1), x) along time
    y[b, d, t] = act(bias[d] + sum_{j=0}^{k-1} weight[d, j] * xpad[b, d, t + j])
    act = silu if silu else identity

Gradients come from autograd through these float64 operations.
"""

from __future__ import annotations

import torch


def causal_conv1d_oracle(
    x: torch.Tensor,  # (batch, dim, L)
    weight: torch.Tensor,  # (dim, k)
    bias: torch.Tensor | None = None,  # (dim,)
    prefix: torch.Tensor | None = None,  # (batch, dim, k-1)
    silu: bool = False,
) -> torch.Tensor:  # -> y (batch, dim, L) float64
    f64 = torch.float64
    batch, dim, L = x.shape
    k = weight.shape[1]
    x, weight = x.to(f64), weight.to(f64)
    head = prefix.to(f64) if prefix is not None else x.new_zeros((batch, dim, k - 1))
    xpad = torch.cat([head, x], dim=-1)  # (batch, dim, k-1+L)
    y = x.new_zeros((batch, dim, L))
    for j in range(k):
        y = y + weight[None, :, j, None] * xpad[:, :, j:j + L]
    if bias is not None:
        y = y + bias.to(f64)[None, :, None]
    if silu:
        y = y * torch.sigmoid(y)
    return y
