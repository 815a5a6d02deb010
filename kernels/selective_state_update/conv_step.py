"""One decode step of Mamba's causal depthwise conv: shift the conv state, convolve, SiLU.

    conv_state[:, :, :-1] = conv_state[:, :, 1:];  conv_state[:, :, -1] = x      (in place)
    out = silu(sum_k conv_state[:, :, k] * weight[:, k] + bias)                  (fp32 arithmetic)

conv_state (batch, dim, K) holds the last K conv inputs, newest last, in its own dtype (x is
rounded to it when appended, as the sequence path's conv sees x in the model's dtype); weight
(dim, K) and bias (dim,) are read in any dtype and used in fp32; out (batch, dim) is in x's dtype.
The whole window of a channel is read before any of it is written.

Two forms: `causal_conv1d_step_reference` (PyTorch: the CPU path and the reference) and
`causal_conv1d_step_triton` (one kernel, one program per (batch row, block of BD >= 32 channels),
int64 offsets, any strides: x may be a strided view such as the x half of in_proj's output).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_conv1d_step_reference", "causal_conv1d_step_triton", "check_conv_step_args"]

_MIN_BLOCK_D = 32


def check_conv_step_args(conv_state, x, weight, bias=None) -> None:
    if conv_state.dim() != 3:
        raise ValueError(f"causal_conv1d_step: conv_state must be (batch, dim, K), got {tuple(conv_state.shape)}")
    batch, dim, K = conv_state.shape
    for name, t, shape in (("x", x, (batch, dim)), ("weight", weight, (dim, K)), ("bias", bias, (dim,))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"causal_conv1d_step: {name} must have shape {shape} for a conv state of shape "
                             f"{tuple(conv_state.shape)}, got {tuple(t.shape)}")
        if t is not None and t.device != conv_state.device:
            raise ValueError(f"causal_conv1d_step: {name} is on {t.device}, the conv state on {conv_state.device}")


def causal_conv1d_step_reference(
    conv_state: Tensor,  # (batch, dim, K), updated in place
    x: Tensor,  # (batch, dim)
    weight: Tensor,  # (dim, K)
    bias: Optional[Tensor] = None,  # (dim,)
    silu: bool = True,
) -> Tensor:  # -> (batch, dim) in x's dtype
    check_conv_step_args(conv_state, x, weight, bias)
    window = torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1)
    conv_state.copy_(window)
    out = (window.float() * weight.float()).sum(-1)  # elementwise + sum: no matmul for autocast to round
    if bias is not None:
        out = out + bias.float()
    return (F.silu(out) if silu else out).to(x.dtype)


try:  # the Triton form is optional: a CPU-only install may lack a working triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:

    @triton.jit
    def _conv_step_kernel(
        state_ptr, x_ptr, w_ptr, bias_ptr, out_ptr,
        dim,
        s_sb, s_sd, s_sk,  # conv state
        s_xb, s_xd,
        s_wd, s_wk,
        s_bias,
        s_ob, s_od,
        K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD).to(tl.int64)  # (BD,) channels
        k = tl.arange(0, KP).to(tl.int64)  # (KP,) window positions
        md = d < dim
        mk = k < K
        m2 = md[:, None] & mk[None, :]
        row = state_ptr + b * s_sb + d[:, None] * s_sd  # (BD, 1)
        # the new window: old positions 1..K-1 at 0..K-2, then x (rounded to the state's dtype)
        old = tl.load(row + (k[None, :] + 1) * s_sk, mask=md[:, None] & (k[None, :] < K - 1), other=0.0)
        x = tl.load(x_ptr + b * s_xb + d * s_xd, mask=md, other=0.0).to(state_ptr.dtype.element_ty)
        win = tl.where(k[None, :] == K - 1, x[:, None], old)  # (BD, KP) in the state's dtype
        w = tl.load(w_ptr + d[:, None] * s_wd + k[None, :] * s_wk, mask=m2, other=0.0).to(tl.float32)
        acc = tl.sum(win.to(tl.float32) * w, axis=1)  # (BD,); padded positions have w = 0
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d * s_bias, mask=md, other=0.0).to(tl.float32)
        if SILU:
            acc = acc / (1.0 + tl.exp2(-acc * 1.4426950408889634))
        tl.store(out_ptr + b * s_ob + d * s_od, acc.to(out_ptr.dtype.element_ty), mask=md)
        # every thread has read its part of the old window before any thread overwrites it (a thread
        # may store position k that another thread read as k + 1)
        tl.debug_barrier()
        tl.store(row + k[None, :] * s_sk, win, mask=m2)


def causal_conv1d_step_triton(
    conv_state: Tensor,  # (batch, dim, K), updated in place
    x: Tensor,  # (batch, dim)
    weight: Tensor,  # (dim, K)
    bias: Optional[Tensor] = None,  # (dim,)
    silu: bool = True,
    *,
    block_d: int = 64,
) -> Tensor:  # -> (batch, dim) in x's dtype
    if triton is None:  # pragma: no cover
        raise ImportError("causal_conv1d_step_triton needs triton")
    check_conv_step_args(conv_state, x, weight, bias)
    if block_d < _MIN_BLOCK_D or block_d & (block_d - 1):
        raise ValueError(f"block_d must be a power of two >= {_MIN_BLOCK_D}, got {block_d}")
    batch, dim, K = conv_state.shape
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    if batch == 0 or dim == 0:
        return out
    bt = bias if bias is not None else weight  # never read without HAS_BIAS
    _conv_step_kernel[(batch, triton.cdiv(dim, block_d))](
        conv_state, x, weight, bt, out,
        dim,
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        x.stride(0), x.stride(1),
        weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        out.stride(0), out.stride(1),
        K=K, KP=max(triton.next_power_of_2(K), 2), BD=block_d, HAS_BIAS=bias is not None, SILU=bool(silu),
        num_warps=2 if block_d <= 32 else 4,
    )
    return out
