"""The selective state update (one decode step of the S6 recurrence) as one Triton kernel.

    dt = softplus(dt + dt_bias);  state = exp(dt*A) * state + dt*B*x;  y = C.state + D*x;  out = y*silu(z)

With dt_proj_weight W (dim, R), dt is the low-rank (batch, R) input and the kernel first computes
dt = W @ dt_low per channel (an R-term fp32 dot, R <= 64 in practice: d_model / 16; rounded to
dt_low's dtype, as the sequence path's dt_proj matmul in that dtype is), so the decode
step needs no separate dt_proj matmul (Mamba's step: x_proj -> [dt_low | B | C] -> this kernel).

One program per (batch row, block of BD channels): it loads the block's (BD, N) state tile, A tile,
and the row's B and C (N values, broadcast over the channels), updates the state in registers with
fp32 arithmetic, stores it back in place and reduces over N for y. Each state element is read and
written exactly once: the op is memory-bound on the state (batch*dim*N*8 bytes per step).

- BD >= 32 always (a channel tail is masked): on the GPU's Triton 3.6, kernels with channel blocks
  narrower than 32 were seen to hang in compilation (the scan hit this).
- Offsets are int64 (batch * stride can pass 2^31 for large batches of wide models).
- Any strides: the state may be a view into a larger cache buffer.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .arguments import check_state_update_args

__all__ = ["selective_state_update_triton", "state_update_config"]

_MIN_BLOCK_D = 32


@triton.jit
def _softplus_f32(x):
    # log(1 + e^x); linear above 20 as torch's softplus; e(1 - e/2) where 1 + e would round
    e = tl.exp2(tl.minimum(x, 20.0) * 1.4426950408889634)
    sp = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log2(1.0 + e) * 0.6931471805599453)
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, W_ptr,
    dim, N, R,
    s_hb, s_hd, s_hn,  # state
    s_xb, s_xd,
    s_tb, s_td,  # dt
    s_ad, s_an,
    s_bb, s_bn,
    s_cb, s_cn,
    s_dd,  # D
    s_zb, s_zd,
    s_bias,
    s_ob, s_od,  # out
    s_wd, s_wr,  # dt_proj weight (dim, R)
    BD: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_PROJ: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BD + tl.arange(0, BD).to(tl.int64)  # (BD,) channels
    n = tl.arange(0, NP).to(tl.int64)  # (NP,) states
    md = d < dim
    mn = n < N
    m2 = md[:, None] & mn[None, :]

    x = tl.load(x_ptr + b * s_xb + d * s_xd, mask=md, other=0.0).to(tl.float32)
    if DT_PROJ:  # dt (batch, R) is the low-rank input: dt_d = sum_r W[d, r] * dt_r, in fp32
        r = tl.arange(0, RP).to(tl.int64)
        mr = r < R
        dt_low = tl.load(dt_ptr + b * s_tb + r * s_td, mask=mr, other=0.0).to(tl.float32)
        W = tl.load(W_ptr + d[:, None] * s_wd + r[None, :] * s_wr, mask=md[:, None] & mr[None, :],
                    other=0.0).to(tl.float32)
        # rounded to dt_low's dtype, as a matmul in that dtype (the sequence path's dt_proj) would be
        dt = tl.sum(W * dt_low[None, :], axis=1).to(dt_ptr.dtype.element_ty).to(tl.float32)
    else:
        dt = tl.load(dt_ptr + b * s_tb + d * s_td, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d * s_bias, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus_f32(dt)
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_bb + n * s_bn, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_cb + n * s_cn, mask=mn, other=0.0).to(tl.float32)

    h_ptrs = state_ptr + b * s_hb + d[:, None] * s_hd + n[None, :] * s_hn
    h = tl.load(h_ptrs, mask=m2, other=0.0)
    h = tl.exp2(A * (dt * 1.4426950408889634)[:, None]) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(h_ptrs, h, mask=m2)

    y = tl.sum(h * Cv[None, :], axis=1)  # (BD,); masked states are 0
    if HAS_D:
        y += x * tl.load(D_ptr + d * s_dd, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + d * s_zd, mask=md, other=0.0).to(tl.float32)
        y *= zv / (1.0 + tl.exp2(-zv * 1.4426950408889634))
    tl.store(out_ptr + b * s_ob + d * s_od, y.to(out_ptr.dtype.element_ty), mask=md)


def state_update_config(dim: int, N: int, R: int = 1) -> tuple[int, int]:
    """(block_d, num_warps): 64 channels x N states per program for N <= 16 (8 fp32 per thread at
    4 warps), 32 channels for larger N or a dt_proj of rank > 64; never below 32 channels (see the
    module docstring)."""
    NP = triton.next_power_of_2(N)
    block_d = 64 if NP <= 16 and R <= 64 else 32
    return block_d, 4 if block_d * NP >= 512 else 2


def selective_state_update_triton(
    state: Tensor,  # (batch, dim, N) fp32, updated in place
    x: Tensor,  # (batch, dim)
    dt: Tensor,  # (batch, dim)
    A: Tensor,  # (dim, N)
    B: Tensor,  # (batch, N)
    C: Tensor,  # (batch, N)
    D: Optional[Tensor] = None,  # (dim,)
    z: Optional[Tensor] = None,  # (batch, dim)
    dt_bias: Optional[Tensor] = None,  # (dim,)
    dt_softplus: bool = True,
    dt_proj_weight: Optional[Tensor] = None,  # (dim, R): dt is then (batch, R), projected inside
    *,
    block_d: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> Tensor:  # -> y (batch, dim) in x's dtype
    check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    batch, dim, N = state.shape
    R = dt_proj_weight.shape[1] if dt_proj_weight is not None else 1
    bd, warps = state_update_config(dim, N, R)
    bd = block_d or bd
    warps = num_warps or warps
    if bd < _MIN_BLOCK_D or bd & (bd - 1):
        raise ValueError(f"block_d must be a power of two >= {_MIN_BLOCK_D}, got {bd}")
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)
    if batch == 0 or dim == 0:
        return out
    dummy = state  # never read: the HAS_* flags are compile-time
    Dt = D if D is not None else dummy
    zt = z if z is not None else dummy
    bt = dt_bias if dt_bias is not None else dummy
    Wt = dt_proj_weight if dt_proj_weight is not None else dummy
    grid = (batch, triton.cdiv(dim, bd))
    _state_update_kernel[grid](
        state, x, dt, A, B, C, Dt, zt, bt, out, Wt,
        dim, N, R,
        state.stride(0), state.stride(1), state.stride(2),
        x.stride(0), x.stride(1),
        dt.stride(0), dt.stride(1),
        A.stride(0), A.stride(1),
        B.stride(0), B.stride(1),
        C.stride(0), C.stride(1),
        D.stride(0) if D is not None else 0,
        z.stride(0) if z is not None else 0, z.stride(1) if z is not None else 0,
        dt_bias.stride(0) if dt_bias is not None else 0,
        out.stride(0), out.stride(1),
        Wt.stride(0) if dt_proj_weight is not None else 0, Wt.stride(1) if dt_proj_weight is not None else 0,
        BD=bd, NP=max(triton.next_power_of_2(N), 2), RP=max(triton.next_power_of_2(R), 2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        DT_PROJ=dt_proj_weight is not None,
        num_warps=warps,
    )
    return out
