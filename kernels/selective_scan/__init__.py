"""The S6 selective scan behind one public function with mamba_ssm's argument names.

Dispatch: CUDA tensors go to the Triton kernels, everything else (and a single position) to the
chunked PyTorch reference. Both are tested against the float64 oracle in `oracle.py`.
"""

from __future__ import annotations

import torch

from .oracle import selective_scan_oracle
from .reference import selective_scan_reference

try:  # the Triton kernels are optional: a CPU-only install may lack a working triton
    from .triton_scan import selective_scan_triton
except ImportError:  # pragma: no cover - depends on the install
    selective_scan_triton = None

__all__ = ["selective_scan", "selective_scan_oracle", "selective_scan_reference", "selective_scan_triton"]


def selective_scan(
    u: torch.Tensor,  # (batch, dim, L)
    delta: torch.Tensor,  # (batch, dim, L)
    A: torch.Tensor,  # (dim, N) fp32
    B: torch.Tensor,  # (batch, N, L) or (batch, groups, N, L)
    C: torch.Tensor,  # (batch, N, L) or (batch, groups, N, L)
    D: torch.Tensor | None = None,  # (dim,) fp32
    z: torch.Tensor | None = None,  # (batch, dim, L)
    delta_bias: torch.Tensor | None = None,  # (dim,) fp32
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,  # (batch, dim, N) fp32
    return_final_state: bool = False,
    seq_idx: torch.Tensor | None = None,  # (batch, L) int
    reverse: bool = False,
):  # -> out (batch, dim, L) in u's dtype [, final_state (batch, dim, N) fp32]
    # A single position (a one-token prefill) goes to the reference: its time strides are 1, which
    # Triton specialises into another kernel variant, whose first launch was still compiling after
    # 60 s on an H200 (triton 3.6; the variant of other lengths compiles in about 30 s). One position
    # costs next to nothing in PyTorch.
    use_triton = u.is_cuda and selective_scan_triton is not None and u.shape[-1] > 1
    impl = selective_scan_triton if use_triton else selective_scan_reference
    return impl(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        initial_state=initial_state, return_final_state=return_final_state, seq_idx=seq_idx,
        reverse=reverse,
    )
