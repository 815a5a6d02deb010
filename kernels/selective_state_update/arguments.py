"""Shape and dtype checks shared by every form of the state update (cheap: no device sync)."""

from __future__ import annotations

import torch


def check_state_update_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_proj_weight=None) -> None:
    if state.dim() != 3:
        raise ValueError(f"selective_state_update: state must be (batch, dim, N), got {tuple(state.shape)}")
    batch, dim, N = state.shape
    if state.dtype != torch.float32:
        raise ValueError(f"selective_state_update: state must be float32 (it accumulates), got {state.dtype}")
    if dt_proj_weight is not None and dt_proj_weight.dim() != 2:
        raise ValueError("selective_state_update: dt_proj_weight must be (dim, dt_rank), got "
                         f"{tuple(dt_proj_weight.shape)}")
    R = dim if dt_proj_weight is None else dt_proj_weight.shape[1]  # dt is (batch, R) low rank with W
    want = {"x": (x, (batch, dim)), "dt": (dt, (batch, R)), "A": (A, (dim, N)), "B": (B, (batch, N)),
            "C": (C, (batch, N)), "D": (D, (dim,)), "z": (z, (batch, dim)), "dt_bias": (dt_bias, (dim,)),
            "dt_proj_weight": (dt_proj_weight, (dim, R))}
    for name, (t, shape) in want.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_state_update: {name} must have shape {shape} for a state of shape "
                             f"{tuple(state.shape)}, got {tuple(t.shape)}")
        if t is not None and t.device != state.device:
            raise ValueError(f"selective_state_update: {name} is on {t.device}, the state on {state.device}")
