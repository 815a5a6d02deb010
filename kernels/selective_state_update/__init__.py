"""The decode step's kernels: the selective state update (one step of the S6 recurrence), and the
two ops around it in a Mamba block's step, the conv-state step and the residual add + RMSNorm.

Dispatch as the scan's (kernels/selective_scan): CUDA tensors go to the Triton kernels,
everything else to the fp32 PyTorch references. All are tested against float64 one-step
formulas (tests/kernels/test_selective_state_update.py).

    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True,
                           dt_proj_weight=None) -> y
    state (batch, dim, N) fp32, updated in place;  x, dt, z (batch, dim);  A (dim, N);
    B, C (batch, N);  D, dt_bias (dim,);  with dt_proj_weight W (dim, R): dt is (batch, R), dt = dt @ W.T
    dt = softplus(dt + dt_bias);  state = exp(dt*A)*state + dt*B*x;  y = (C.state + D*x) * silu(z)

    causal_conv1d_step(conv_state, x, weight, bias=None, silu=True) -> silu(conv) (batch, dim)
    conv_state (batch, dim, K) shifted in place (x appended);  weight (dim, K);  bias (dim,)

    add_rms_norm(hidden, residual, weight, eps, residual_fp32=True) -> (normed, residual)

A Mamba block's decode step on CUDA is then six kernels: add_rms_norm, in_proj (matmul),
causal_conv1d_step, x_proj (matmul), selective_state_update with dt_proj inside, out_proj (matmul).

`triton_on_cpu()` (tests only) sends CPU tensors to the Triton kernels too, which run there under
TRITON_INTERPRET=1; `TRITON_LAUNCHES` counts the Triton launches made through these dispatchers
(mamba_seq.inference.count_step_ops reads it: Triton launches are not aten ops).
"""

from __future__ import annotations

import collections
import contextlib

import torch

from .add_rms_norm import add_rms_norm_reference
from .conv_step import causal_conv1d_step_reference
from .reference import selective_state_update_reference

try:  # the Triton kernels are optional: a CPU-only install may lack a working triton
    from .add_rms_norm import add_rms_norm_triton
    from .conv_step import causal_conv1d_step_triton
    from .triton_state_update import selective_state_update_triton
except ImportError:  # pragma: no cover - depends on the install
    selective_state_update_triton = causal_conv1d_step_triton = add_rms_norm_triton = None

__all__ = [
    "selective_state_update", "selective_state_update_reference", "selective_state_update_triton",
    "causal_conv1d_step", "causal_conv1d_step_reference", "causal_conv1d_step_triton",
    "add_rms_norm", "add_rms_norm_reference", "add_rms_norm_triton",
    "triton_on_cpu", "TRITON_LAUNCHES",
]

TRITON_LAUNCHES: collections.Counter = collections.Counter()  # kernel name -> launches
_TRITON_ON_CPU = False


@contextlib.contextmanager
def triton_on_cpu(enabled: bool = True):
    """Within: CPU tensors go to the Triton kernels too (under TRITON_INTERPRET=1; for tests)."""
    global _TRITON_ON_CPU
    before, _TRITON_ON_CPU = _TRITON_ON_CPU, enabled
    try:
        yield
    finally:
        _TRITON_ON_CPU = before


def _use_triton(t: torch.Tensor, impl) -> bool:
    return impl is not None and (t.is_cuda or _TRITON_ON_CPU)


def _launch(impl, t: torch.Tensor, *args, **kwargs):
    TRITON_LAUNCHES[impl.__name__] += 1
    if t.is_cuda:
        return impl(*args, **kwargs)
    # the interpreter runs the kernel with torch ops of its own: keep them out of any op count
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return impl(*args, **kwargs)


def selective_state_update(
    state: torch.Tensor,  # (batch, dim, N) fp32, updated in place
    x: torch.Tensor,  # (batch, dim)
    dt: torch.Tensor,  # (batch, dim), or (batch, R) with dt_proj_weight
    A: torch.Tensor,  # (dim, N)
    B: torch.Tensor,  # (batch, N)
    C: torch.Tensor,  # (batch, N)
    D: torch.Tensor | None = None,  # (dim,)
    z: torch.Tensor | None = None,  # (batch, dim)
    dt_bias: torch.Tensor | None = None,  # (dim,)
    dt_softplus: bool = True,
    dt_proj_weight: torch.Tensor | None = None,  # (dim, R)
) -> torch.Tensor:  # -> y (batch, dim) in x's dtype
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_proj_weight=dt_proj_weight)
    if _use_triton(state, selective_state_update_triton):
        return _launch(selective_state_update_triton, state, state, x, dt, A, B, C, **kw)
    return selective_state_update_reference(state, x, dt, A, B, C, **kw)


def causal_conv1d_step(
    conv_state: torch.Tensor,  # (batch, dim, K), updated in place
    x: torch.Tensor,  # (batch, dim)
    weight: torch.Tensor,  # (dim, K)
    bias: torch.Tensor | None = None,  # (dim,)
    silu: bool = True,
) -> torch.Tensor:  # -> (batch, dim) in x's dtype
    if _use_triton(conv_state, causal_conv1d_step_triton):
        return _launch(causal_conv1d_step_triton, conv_state, conv_state, x, weight, bias, silu)
    return causal_conv1d_step_reference(conv_state, x, weight, bias, silu)


def add_rms_norm(
    hidden: torch.Tensor,  # (batch, d)
    residual: torch.Tensor | None,  # (batch, d) or None (the first block: residual = hidden)
    weight: torch.Tensor,  # (d,)
    eps: float,
    residual_fp32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # -> normed (batch, d) in weight's dtype, residual (batch, d)
    if _use_triton(hidden, add_rms_norm_triton):
        return _launch(add_rms_norm_triton, hidden, hidden, residual, weight, eps, residual_fp32)
    return add_rms_norm_reference(hidden, residual, weight, eps, residual_fp32)
