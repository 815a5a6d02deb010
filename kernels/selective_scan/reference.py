"""Chunked plain-PyTorch selective scan: the CPU path, and the reference for the Triton kernels.

Memory: the recurrence runs chunk by chunk; the forward keeps only the state at each chunk
boundary (batch*dim*N*L/chunk) and the backward recomputes one chunk's per-step states at a time
(batch*dim*N*chunk), so nothing of size batch*dim*N*L is ever held. B and C are never expanded
over the channels: dim is viewed as (groups, dim_per_group).

Inside a chunk the recurrence is one fused op per step (addcmul into a time-major buffer);
everything else (decays, inputs, outputs, all gradient reductions) is vectorised over the chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunk_terms(u, dt, A, B, keep, t0, t1):
    """Decays a_t = exp(dt_t*A)*keep_t and inputs x_t = dt_t*u_t*B_t for steps [t0, t1), time-major.
    u, dt: (b, g, p, L); A: (g, p, N); B: (b, g, N, L); keep: (b, L) or None
    -> a, x: (T, b, g, p, N)"""
    # time-major copies first, so every (T, b, g, p, N) product below is contiguous per step
    dt_c = dt[..., t0:t1].permute(3, 0, 1, 2).contiguous()  # (T, b, g, p)
    a = torch.exp(dt_c[..., None] * A)
    if keep is not None:
        a = a * keep[:, t0:t1].t()[:, :, None, None, None]
    dtu = dt_c * u[..., t0:t1].permute(3, 0, 1, 2)
    x = dtu[..., None] * B[..., t0:t1].permute(3, 0, 1, 2).contiguous()[:, :, :, None, :]
    return a, x, dt_c, dtu


def _run_chunk(a, x, h):
    """Sequential recurrence over one chunk. a, x: (T, b, g, p, N); h: (b, g, p, N) -> H (T, b, g, p, N)."""
    H = torch.empty_like(x)
    for t in range(x.shape[0]):
        h = torch.addcmul(x[t], a[t], h, out=H[t])
    return H


class _ScanCore(torch.autograd.Function):
    """(u, dt, A, B, C, h0, keep) -> (y, h_last); y_t = C_t . h_t with h_t = a_t*h_{t-1} + x_t."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, keep, chunk):
        # u, dt: (b, g, p, L); A: (g, p, N); B, C: (b, g, N, L); h0: (b, g, p, N); keep: (b, L) | None
        L = u.shape[-1]
        starts = list(range(0, L, chunk))
        y = u.new_empty(u.shape)
        boundary = u.new_empty((len(starts),) + h0.shape)  # state entering each chunk
        h = h0
        for k, t0 in enumerate(starts):
            t1 = min(t0 + chunk, L)
            boundary[k] = h
            a, x, _, _ = _chunk_terms(u, dt, A, B, keep, t0, t1)
            H = _run_chunk(a, x, h)
            y[..., t0:t1] = torch.einsum("tbgpn,bgnt->bgpt", H, C[..., t0:t1])
            h = H[-1].clone()
        ctx.save_for_backward(u, dt, A, B, C, boundary, keep)
        ctx.chunk = chunk
        return y, (h if starts else h0.clone())

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, dt, A, B, C, boundary, keep = ctx.saved_tensors
        chunk = ctx.chunk
        L = u.shape[-1]
        du, ddt = torch.zeros_like(u), torch.zeros_like(dt)
        dB, dC, dA = torch.zeros_like(B), torch.zeros_like(C), torch.zeros_like(A)
        # adjoint of the state at the end of the current chunk, from everything after it
        carry = torch.zeros_like(boundary[0]) if dh_last is None else dh_last.to(boundary.dtype)
        dy = torch.zeros_like(u) if dy is None else dy
        starts = list(range(0, L, chunk))
        for k in range(len(starts) - 1, -1, -1):
            t0 = starts[k]
            t1 = min(t0 + chunk, L)
            a, x, dt_c, dtu = _chunk_terms(u, dt, A, B, keep, t0, t1)
            H = _run_chunk(a, x, boundary[k])
            C_c = C[..., t0:t1].permute(3, 0, 1, 2).contiguous()[:, :, :, None, :]  # (T, b, g, 1, N)
            B_c = B[..., t0:t1].permute(3, 0, 1, 2).contiguous()[:, :, :, None, :]
            dy_c = dy[..., t0:t1].permute(3, 0, 1, 2).contiguous()  # (T, b, g, p)
            # G_t = dL/dh_t = dy_t*C_t + a_{t+1}*G_{t+1}, one fused op per step
            G = dy_c[..., None] * C_c
            G[-1] += carry
            for t in range(G.shape[0] - 2, -1, -1):
                torch.addcmul(G[t], a[t + 1], G[t + 1], out=G[t])
            carry = a[0] * G[0]
            H_prev = torch.cat([boundary[k][None], H[:-1]])
            da_a = G * H_prev * a  # dL/da_t * a_t = dL/d(dt_t*A)
            GB = (G * B_c).sum(-1)  # dL/dx_t . B_t: (T, b, g, p)
            u_c = u[..., t0:t1].permute(3, 0, 1, 2)
            ddt[..., t0:t1] = (torch.einsum("tbgpn,gpn->tbgp", da_a, A) + GB * u_c).permute(1, 2, 3, 0)
            du[..., t0:t1] = (GB * dt_c).permute(1, 2, 3, 0)
            dA += torch.einsum("tbgpn,tbgp->gpn", da_a, dt_c)
            dB[..., t0:t1] = torch.einsum("tbgpn,tbgp->bgnt", G, dtu)
            dC[..., t0:t1] = torch.einsum("tbgpn,tbgp->bgnt", H, dy_c)
        return du, ddt, dA, dB, dC, carry, None, None


def selective_scan_reference(
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
    chunk_size: int = 64,
):  # -> out (batch, dim, L) in u's dtype [, final_state (batch, dim, N) fp32 (fp64 for fp64 inputs)]
    _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, chunk_size)
    batch, dim, L = u.shape
    N = A.shape[1]
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32  # accumulate in fp32 at least
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    g = B.shape[1]
    p = dim // g

    dt = delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    uc, Bc, Cc = u.to(cdt), B.to(cdt), C.to(cdt)
    sidx = seq_idx
    if reverse:  # the reference may copy; the Triton kernels walk backwards instead
        uc, dt, Bc, Cc = uc.flip(-1), dt.flip(-1), Bc.flip(-1), Cc.flip(-1)
        sidx = None if seq_idx is None else seq_idx.flip(-1)
    keep = None
    if sidx is not None:  # 0 where a new packed sequence starts: the state is reset there
        keep = torch.ones(batch, L, dtype=cdt, device=u.device)
        keep[:, 1:] = (sidx[:, 1:] == sidx[:, :-1]).to(cdt)
    h0 = u.new_zeros((batch, g, p, N), dtype=cdt) if initial_state is None else initial_state.to(cdt).reshape(batch, g, p, N)

    y, h_last = _ScanCore.apply(
        uc.reshape(batch, g, p, L), dt.reshape(batch, g, p, L), A.to(cdt).reshape(g, p, N),
        Bc, Cc, h0, keep, int(chunk_size),
    )
    y = y.reshape(batch, dim, L)
    if reverse:
        y = y.flip(-1)
    if D is not None:
        y = y + D.to(cdt)[None, :, None] * u.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    out = y.to(u.dtype)
    return (out, h_last.reshape(batch, dim, N)) if return_final_state else out


def _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, chunk_size):
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} must equal u's {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4) or t.shape[0] != batch or t.shape[-2] != N or t.shape[-1] != L:
            raise ValueError(f"{name} must be (batch={batch}, N={N}, L={L}) or (batch, groups, N, L), got {tuple(t.shape)}")
        groups = 1 if t.dim() == 3 else t.shape[1]
        if dim % groups:
            raise ValueError(f"dim={dim} is not a multiple of {name}'s {groups} groups")
    if B.shape != C.shape:
        raise ValueError(f"B {tuple(B.shape)} and C {tuple(C.shape)} must have the same shape")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z shape {tuple(z.shape)} must equal u's {tuple(u.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, N):
        raise ValueError(f"initial_state must be (batch, dim, N) = {(batch, dim, N)}, got {tuple(initial_state.shape)}")
    if seq_idx is not None and tuple(seq_idx.shape) != (batch, L):
        raise ValueError(f"seq_idx must be (batch, L) = {(batch, L)}, got {tuple(seq_idx.shape)}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
