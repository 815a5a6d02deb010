"""The obviously-right selective scan: a float64 loop over time, one step per position.

This is the oracle every other form (chunked reference, Triton kernels) is tested against. It is
slow on purpose and shares no code with them. Semantics (see shared DESIGN.md, "The scan contract"):

    dt   = softplus(delta + delta_bias)            if delta_softplus else delta + delta_bias
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t  = C_t . h_t + D * u_t
    out  = y * silu(z)                             if z is given

`seq_idx` marks packed sequences: where seq_idx[t] differs from the previous position in scan
order, the state is reset to zero before step t (the initial state only feeds the first sequence).
`reverse=True` scans from the last position to the first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_oracle(
    u: torch.Tensor,  # (batch, dim, L)
    delta: torch.Tensor,  # (batch, dim, L)
    A: torch.Tensor,  # (dim, N)
    B: torch.Tensor,  # (batch, N, L) or (batch, groups, N, L)
    C: torch.Tensor,  # (batch, N, L) or (batch, groups, N, L)
    D: torch.Tensor | None = None,  # (dim,)
    z: torch.Tensor | None = None,  # (batch, dim, L)
    delta_bias: torch.Tensor | None = None,  # (dim,)
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,  # (batch, dim, N)
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,  # (batch, L) int
    reverse: bool = False,
):  # -> out (batch, dim, L) float64 [, final_state (batch, dim, N) float64]
    f64 = torch.float64
    batch, dim, L = u.shape
    N = A.shape[1]
    u, delta, A = u.to(f64), delta.to(f64), A.to(f64)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    B, C = B.to(f64), C.to(f64)
    groups = B.shape[1]
    assert dim % groups == 0, "dim must be a multiple of the number of B/C groups"
    # channel d reads group d // (dim // groups)
    B = B.repeat_interleave(dim // groups, dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // groups, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.to(f64)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)

    h = torch.zeros(batch, dim, N, dtype=f64, device=u.device)
    if initial_state is not None:
        h = h + initial_state.to(f64)
    ys = [None] * L
    order = range(L - 1, -1, -1) if reverse else range(L)
    prev = None
    for t in order:
        if seq_idx is not None and prev is not None:
            same = (seq_idx[:, t] == seq_idx[:, prev]).to(f64)  # (batch,)
            h = h * same[:, None, None]
        dt = delta[:, :, t, None]  # (batch, dim, 1)
        h = torch.exp(dt * A) * h + dt * B[:, :, :, t] * u[:, :, t, None]
        ys[t] = (h * C[:, :, :, t]).sum(-1)  # (batch, dim)
        prev = t
    y = torch.stack(ys, dim=-1) if L > 0 else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(f64)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(f64))
    return (y, h) if return_final_state else y
