"""Argument checks shared by every form of the selective scan."""

from __future__ import annotations

import torch


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None, seq_idx=None):
    """Shapes, dtypes and devices of a selective_scan call (the contract in DESIGN.md); ValueError otherwise."""
    tensors = (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
               ("delta_bias", delta_bias), ("initial_state", initial_state))
    for name, t in tensors:
        if t is not None and not (isinstance(t, torch.Tensor) and t.is_floating_point()):
            raise ValueError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
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
        if groups < 1 or dim % groups:
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
    if seq_idx is not None:
        if not isinstance(seq_idx, torch.Tensor) or seq_idx.is_floating_point() or seq_idx.is_complex():
            raise ValueError(f"seq_idx must be an integer tensor, got {getattr(seq_idx, 'dtype', type(seq_idx).__name__)}")
        if tuple(seq_idx.shape) != (batch, L):
            raise ValueError(f"seq_idx must be (batch, L) = {(batch, L)}, got {tuple(seq_idx.shape)}")
    devices = {t.device for _, t in tensors + (("seq_idx", seq_idx),) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
