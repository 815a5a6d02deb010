"""Causal depthwise conv1d with optional fused SiLU (Mamba's mixer conv), behind one function.

    causal_conv1d(x, weight, bias=None, prefix=None, silu=False) -> y
    x: (batch, dim, L), any strides (channel-last views of a (batch, L, 2*dim) tensor and
       time-contiguous tensors are the two fast layouts); bf16/fp16/fp32
    weight: (dim, k), k the width (1..8 on the Triton path)     bias: (dim,) or None
    prefix: (batch, dim, k-1) or None: the k-1 inputs just before x[..., 0] (zeros if None), to
            continue a sequence across segments; it gets a gradient like every other input.
    xpad = cat(prefix or zeros, x) along time
    y[b, d, t] = act(bias[d] + sum_{j<k} weight[d, j] * xpad[b, d, t + j]),  act = silu or identity
    Accumulated in fp32; y in x's dtype and x's memory layout: a channel-last x (stride 1 along dim)
    gives a channel-last y (a (batch, dim, L) view of a contiguous (batch, L, dim) tensor), any
    other x a contiguous (batch, dim, L) y.

Dispatch: CUDA tensors -> the Triton kernels (triton_conv.py); everything else -> the PyTorch
reference (reference.py). Both are tested against the float64 oracle (oracle.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from .oracle import causal_conv1d_oracle
from .reference import causal_conv1d_reference

try:  # the Triton kernels are optional: a CPU-only install may lack a working triton
    from .triton_conv import causal_conv1d_triton
except ImportError:  # pragma: no cover - depends on the install
    causal_conv1d_triton = None

__all__ = ["causal_conv1d", "causal_conv1d_oracle", "causal_conv1d_reference", "causal_conv1d_triton"]


def causal_conv1d(
    x: torch.Tensor,  # (batch, dim, L)
    weight: torch.Tensor,  # (dim, k)
    bias: Optional[torch.Tensor] = None,  # (dim,)
    prefix: Optional[torch.Tensor] = None,  # (batch, dim, k-1)
    silu: bool = False,
) -> torch.Tensor:  # -> y (batch, dim, L) in x's dtype and layout
    use_triton = (x.is_cuda and causal_conv1d_triton is not None and weight.shape[-1] <= 8
                  and x.dtype in (torch.float32, torch.float16, torch.bfloat16))
    impl = causal_conv1d_triton if use_triton else causal_conv1d_reference
    return impl(x, weight, bias=bias, prefix=prefix, silu=silu)
