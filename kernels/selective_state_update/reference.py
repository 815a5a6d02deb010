"""One step of the S6 recurrence in plain PyTorch: the CPU path, and the reference for the kernel.

    dt = dt_low @ W.T                      (only with dt_proj_weight W (dim, R): dt is then (batch, R);
                                            the fp32 dot is rounded to dt_low's dtype, as a matmul's)
    dt = softplus(dt + dt_bias)            (or dt + dt_bias without dt_softplus)
    state = exp(dt * A) * state + dt * B * x        (in place, fp32)
    y = C . state + D * x;   out = y * silu(z)

All arithmetic in fp32 whatever the input dtype; the output is cast to x's dtype. This is the
single-position form of the scan contract in DESIGN.md, so a scan over L positions equals L calls
of this function carrying the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .arguments import check_state_update_args

__all__ = ["selective_state_update_reference"]


def selective_state_update_reference(
    state: torch.Tensor,  # (batch, dim, N) fp32, updated in place
    x: torch.Tensor,  # (batch, dim)
    dt: torch.Tensor,  # (batch, dim)
    A: torch.Tensor,  # (dim, N)
    B: torch.Tensor,  # (batch, N)
    C: torch.Tensor,  # (batch, N)
    D: torch.Tensor | None = None,  # (dim,)
    z: torch.Tensor | None = None,  # (batch, dim)
    dt_bias: torch.Tensor | None = None,  # (dim,)
    dt_softplus: bool = True,
    dt_proj_weight: torch.Tensor | None = None,  # (dim, R): dt is then (batch, R), projected here in fp32
) -> torch.Tensor:  # -> y (batch, dim) in x's dtype
    check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    f32 = torch.float32
    xf, dtf = x.to(f32), dt.to(f32)
    if dt_proj_weight is not None:  # elementwise + sum, not a matmul (autocast would run it in bf16)
        dtf = (dtf[:, None, :] * dt_proj_weight.to(f32)).sum(-1).to(dt.dtype).to(f32)  # rounded as a matmul's
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(f32)
    if dt_softplus:
        dtf = F.softplus(dtf)
    decay = torch.exp(dtf[:, :, None] * A.to(f32))  # (batch, dim, N)
    drive = (dtf * xf)[:, :, None] * B.to(f32)[:, None, :]  # (batch, dim, N)
    state.mul_(decay).add_(drive)
    y = (state * C.to(f32)[:, None, :]).sum(-1)  # elementwise + sum: autocast would run a matmul in bf16
    if D is not None:
        y = y + D.to(f32) * xf
    if z is not None:
        y = y * F.silu(z.to(f32))
    return y.to(x.dtype)
