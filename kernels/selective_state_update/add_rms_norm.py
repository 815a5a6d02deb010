"""Residual add + RMSNorm for one decode position (the pre-norm of every Mamba block and the final norm).

    residual = hidden + residual          (residual = hidden when there is none yet); fp32 if residual_fp32
    normed = rms_norm(residual.to(weight.dtype)) * weight, statistics in fp32, out in weight's dtype

This is exactly the arithmetic of mamba_seq.model.MambaBlock's forward (RMSNorm of the residual
rounded to the norm's dtype), so a step's norm equals the forward's up to fp32 rounding.

Two forms: `add_rms_norm_reference` (PyTorch: the CPU path and the reference) and
`add_rms_norm_triton` (one kernel, one program per row of up to 8192 features).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["add_rms_norm_reference", "add_rms_norm_triton", "residual_dtype"]

_MAX_FEATURES = 8192


def residual_dtype(hidden: Tensor, residual: Optional[Tensor], residual_fp32: bool) -> torch.dtype:
    if residual_fp32:
        return torch.float32
    return hidden.dtype if residual is None else torch.promote_types(hidden.dtype, residual.dtype)


def add_rms_norm_reference(
    hidden: Tensor,  # (batch, d)
    residual: Optional[Tensor],  # (batch, d) or None
    weight: Tensor,  # (d,)
    eps: float,
    residual_fp32: bool = True,
) -> tuple[Tensor, Tensor]:  # -> normed (batch, d) in weight's dtype, residual (batch, d)
    residual = hidden if residual is None else residual + hidden
    if residual_fp32:
        residual = residual.float()
    x32 = residual.to(weight.dtype).float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return normed.to(weight.dtype), residual


try:  # the Triton form is optional: a CPU-only install may lack a working triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(
        h_ptr, r_ptr, w_ptr, out_ptr, rout_ptr,
        d, eps,
        s_hb, s_hd, s_rb, s_rd, s_w, s_ob, s_od, s_qb, s_qd,
        BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        i = tl.arange(0, BLOCK).to(tl.int64)
        m = i < d
        res = tl.load(h_ptr + b * s_hb + i * s_hd, mask=m, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            res += tl.load(r_ptr + b * s_rb + i * s_rd, mask=m, other=0.0).to(tl.float32)
        res = res.to(rout_ptr.dtype.element_ty)  # the residual stream's dtype (fp32 normally)
        tl.store(rout_ptr + b * s_qb + i * s_qd, res, mask=m)
        x = res.to(w_ptr.dtype.element_ty).to(tl.float32)  # the norm sees the residual in its own dtype
        w = tl.load(w_ptr + i * s_w, mask=m, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d + eps)
        tl.store(out_ptr + b * s_ob + i * s_od, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=m)


def add_rms_norm_triton(
    hidden: Tensor,  # (batch, d)
    residual: Optional[Tensor],  # (batch, d) or None
    weight: Tensor,  # (d,)
    eps: float,
    residual_fp32: bool = True,
) -> tuple[Tensor, Tensor]:  # -> normed (batch, d) in weight's dtype, residual (batch, d)
    if triton is None:  # pragma: no cover
        raise ImportError("add_rms_norm_triton needs triton")
    batch, d = hidden.shape
    if residual is not None and residual.shape != hidden.shape:
        raise ValueError(f"add_rms_norm: residual {tuple(residual.shape)} and hidden {tuple(hidden.shape)} differ")
    if weight.shape != (d,):
        raise ValueError(f"add_rms_norm: weight must have shape ({d},), got {tuple(weight.shape)}")
    if d > _MAX_FEATURES:
        raise ValueError(f"add_rms_norm_triton handles up to {_MAX_FEATURES} features, got {d}")
    out = torch.empty((batch, d), dtype=weight.dtype, device=hidden.device)
    res = torch.empty((batch, d), dtype=residual_dtype(hidden, residual, residual_fp32), device=hidden.device)
    if batch == 0:
        return out, res
    r = residual if residual is not None else hidden  # never read without HAS_RESIDUAL
    block = max(triton.next_power_of_2(d), 32)
    _add_rms_norm_kernel[(batch,)](
        hidden, r, weight, out, res,
        d, float(eps),
        hidden.stride(0), hidden.stride(1), r.stride(0), r.stride(1), weight.stride(0),
        out.stride(0), out.stride(1), res.stride(0), res.stride(1),
        BLOCK=block, HAS_RESIDUAL=residual is not None,
        num_warps=1 if block <= 256 else (4 if block <= 2048 else 8),
    )
    return out, res
