"""The selective scan on Triton kernels, behind a `torch.library` custom op with autograd.

Public entry: `selective_scan_triton`, same signature as the oracle (see DESIGN.md, "The scan
contract"), plus keyword-only launch settings for tests and benchmarks.

Design (kernels in `triton_kernels.py`):
- forward: one program per (batch, block of channels) walks the sequence chunk by chunk, the
  state carried in registers; inside a chunk one associative scan per state n. One exp2 per
  (channel, n, position). Stores the state entering each chunk, (batch, nchunks, dim, N) fp32: the
  only saved activation.
- backward: a carry pass (reverse walk over chunks, a reduction per chunk, one exp2 per element)
  gives the gradient entering every chunk from the future; then every chunk is independent and a
  parallel pass recomputes states and produces all gradients (two exp2 per element).
- memory beyond inputs, outputs and gradients: the entering states and the backward carries, each
  batch*dim*N*L/chunk fp32; dB/dC fp32 partials over a few channel blocks (one at long L); dA, dD,
  d(delta_bias) in at most 64 fp32 slots filled by atomic adds (their last bits can differ run to
  run; everything else is deterministic).
- L is never a specialised argument (`do_not_specialize`); the channel strides (= L for contiguous
  inputs) keep Triton's divisible-by-16 flag, so at most two compiles by L mod 16 serve every L.
  Time is read with unit stride (other layouts are copied). Launch settings depend on
  (dim, N, dtype, needs_grad) only.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

from .arguments import check_scan_args
from .triton_kernels import _bwd_carry_kernel, _bwd_chunk_kernel, _fwd_kernel

__all__ = ["selective_scan_triton", "scan_config"]

# Launch settings; each one is checked against the oracle on the GPU
# (tests/kernels/test_selective_scan_triton.py::test_gpu_configs_vs_oracle). Measured on the H200
# (benchmarks/NOTES_selective_scan.md): T=128 is fastest for forward+backward, T=256 for the
# forward alone (half the sequential chunk steps per program), so calls that need no gradient use
# it. The choice depends on (dim, N, dtype, needs_grad) only, never on L.
_CONFIGS = {
    # name: (chunk T, channels per program BD, num_warps)
    "train": (128, 1, 1),
    "infer": (256, 1, 1),
}
_CONFIG_CACHE: dict = {}


def scan_config(dim: int, N: int, dtype: torch.dtype, needs_grad: bool = True) -> tuple[int, int, int]:
    """(chunk, block_d, num_warps) for a problem; depends on (dim, N, dtype, needs_grad) only."""
    key = (dim, N, dtype, needs_grad)
    if key not in _CONFIG_CACHE:
        env = os.environ.get("MAMBA_SEQ_SCAN_CONFIG")  # "T,BD,warps": for benchmarks
        if env:
            T, bd, w = (int(v) for v in env.split(","))
        else:
            T, bd, w = _CONFIGS["train" if needs_grad else "infer"]
        _CONFIG_CACHE[key] = (max(T, triton_next_pow2(N)), bd, w)  # the chunk holds the N states
    return _CONFIG_CACHE[key]


def _block_d(dpg: int, want: int) -> int:
    """Largest power of two <= want that divides dim-per-group (blocks never straddle groups)."""
    bd = 1
    while bd * 2 <= want and dpg % (bd * 2) == 0:
        bd *= 2
    return bd


def _nsub(batch: int, nchunks: int, dim: int, dpg: int, bd: int, target: int = 4096) -> int:
    """Channel sub-blocks per backward chunk program: as many as keeps >= target programs, so the
    dB/dC partials (one per channel block) stay few: at 2^20 tokens one block per group."""
    m = dpg // bd
    best = 1
    for k in range(1, m + 1):
        if m % k == 0 and batch * max(nchunks, 1) * (dim // (k * bd)) >= target:
            best = k
    return best


def _opts(num_warps: int) -> dict:
    """Launch options; MAMBA_SEQ_SCAN_STAGES (benchmarks only) sets Triton's num_stages."""
    stages = os.environ.get("MAMBA_SEQ_SCAN_STAGES")
    return dict(num_warps=num_warps, **({"num_stages": int(stages)} if stages else {}))


def _strides3(x: Optional[Tensor]):
    # batch/channel strides; the time stride is 1 (`_unit_time`)
    return tuple(x.stride()[:2]) if x is not None else (0, 0)


def _unit_time(x: Optional[Tensor]) -> Optional[Tensor]:
    """The kernels read time contiguously (stride 1, so loads vectorise): copy other layouts."""
    if x is None or x.stride(-1) == 1 or x.shape[-1] <= 1:
        return x
    return x.contiguous()


# ----------------------------------------------------------------------------------------------
# forward op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("mamba_seq::selective_scan_fwd", mutates_args=())
def _scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # B, C: (b, G, N, L)
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    initial_state: Optional[Tensor], seq_idx: Optional[Tensor], reverse: bool,
    chunk_size: int, block_d: int, num_warps: int,
) -> tuple[Tensor, Tensor, Tensor]:  # out (b, dim, L), final (b, dim, N) fp32, states (b, nc, dim, N) fp32
    batch, dim, L = u.shape
    N = A.shape[1]
    G = B.shape[1]
    dpg = dim // G
    T = chunk_size
    nchunks = triton_cdiv(L, T)
    bd = _block_d(dpg, block_d)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    states = torch.empty((batch, nchunks, dim, N), device=u.device, dtype=torch.float32)
    hT = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
    if batch == 0 or dim == 0:
        return out, hT.zero_(), states
    u, delta, z, B, C, seq_idx = (_unit_time(x) for x in (u, delta, z, B, C, seq_idx))
    A_ = A.to(torch.float32).contiguous()
    D_ = D.to(torch.float32).contiguous() if D is not None else A_
    bias_ = delta_bias.to(torch.float32).contiguous() if delta_bias is not None else A_
    h0_ = initial_state.to(torch.float32).contiguous() if initial_state is not None else A_
    seq_ = seq_idx if seq_idx is not None else u
    z_ = z if z is not None else u
    s_seq = seq_idx.stride() if seq_idx is not None else (0, 0)
    grid = (batch, dim // bd)
    _fwd_kernel[grid](
        u, delta, A_, B, C, D_, z_, bias_, h0_, seq_,
        out, states, hT,
        L, nchunks, dim, dpg,
        *_strides3(u), *_strides3(delta), *_strides3(z), *_strides3(out),
        *B.stride()[:3], *C.stride()[:3], s_seq[0],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None, HAS_SEQ=seq_idx is not None,
        REVERSE=bool(reverse), SAVE_STATES=True,
        BD=bd, N=N, T=T, **_opts(num_warps),
    )
    return out, hT, states


def triton_cdiv(a, b):
    return (a + b - 1) // b


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@_scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                   reverse, chunk_size, block_d, num_warps):
    batch, dim, L = u.shape
    N = A.shape[1]
    nchunks = (L + chunk_size - 1) // chunk_size
    out = u.new_empty((batch, dim, L))
    hT = u.new_empty((batch, dim, N), dtype=torch.float32)
    states = u.new_empty((batch, nchunks, dim, N), dtype=torch.float32)
    return out, hT, states


# ----------------------------------------------------------------------------------------------
# backward op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("mamba_seq::selective_scan_bwd", mutates_args=())
def _scan_bwd(
    dout: Tensor, dhT: Optional[Tensor],
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    initial_state: Optional[Tensor], seq_idx: Optional[Tensor], reverse: bool, states: Tensor,
    chunk_size: int, block_d: int, num_warps: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _bwd_impl(dout, dhT, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                     reverse, states, chunk_size, block_d, num_warps)


def _bwd_impl(dout, dhT, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
              reverse, states, chunk_size, block_d, num_warps, run_chunk=True):
    # -> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 (empty tensors for absent inputs)
    batch, dim, L = u.shape
    N = A.shape[1]
    G = B.shape[1]
    dpg = dim // G
    T = chunk_size
    nchunks = triton_cdiv(L, T)
    bd = _block_d(dpg, block_d)
    dev = u.device
    f32 = torch.float32
    dout, u, delta, z, B, C, seq_idx = (_unit_time(x) for x in (dout, u, delta, z, B, C, seq_idx))
    A_ = A.to(f32).contiguous()
    D_ = D.to(f32).contiguous() if D is not None else A_
    bias_ = delta_bias.to(f32).contiguous() if delta_bias is not None else A_
    dhT_ = dhT.to(f32).contiguous() if dhT is not None else A_
    seq_ = seq_idx if seq_idx is not None else u
    z_ = z if z is not None else u
    s_seq = seq_idx.stride() if seq_idx is not None else (0, 0)
    NP = triton_next_pow2(N)

    R = torch.empty((batch, nchunks, dim, N), device=dev, dtype=f32)
    dh0 = torch.empty((batch, dim, N), device=dev, dtype=f32)
    _bwd_carry_kernel[(batch, dim // bd)](
        dout, delta, A_, C, z_, bias_, dhT_, seq_,
        R, dh0,
        L, nchunks, dim, dpg,
        *_strides3(dout), *_strides3(delta), *_strides3(z), *C.stride()[:3], s_seq[0],
        HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        HAS_DHT=dhT is not None, HAS_SEQ=seq_idx is not None, REVERSE=bool(reverse),
        BD=bd, N=N, T=T, **_opts(num_warps),
    )

    if not run_chunk:  # benchmarks: time the carry pass alone
        return R, dh0
    nsub = _nsub(batch, nchunks, dim, dpg, bd)
    ndb = dpg // (nsub * bd)
    du = torch.empty((batch, dim, L), device=dev, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, L), device=dev, dtype=delta.dtype)
    dz = torch.empty((batch, dim, L), device=dev, dtype=z.dtype) if z is not None else u.new_empty(0)
    dBp = torch.empty((batch, G, ndb, N, L), device=dev, dtype=f32)
    dCp = torch.empty((batch, G, ndb, N, L), device=dev, dtype=f32)
    nslots = max(1, min(batch * nchunks, 64))  # atomic-add slots for dA, dD, d(delta_bias)
    dAs = torch.zeros((nslots, dim, N), device=dev, dtype=f32)
    dDs = torch.zeros((nslots, dim), device=dev, dtype=f32) if D is not None else dAs
    dbs = torch.zeros((nslots, dim), device=dev, dtype=f32) if delta_bias is not None else dAs
    if nchunks > 0:
        _bwd_chunk_kernel[(nchunks, dim // (nsub * bd), batch)](
            dout, u, delta, A_, B, C, D_, z_, bias_, seq_,
            states, R,
            du, ddelta, dz if z is not None else du, dBp, dCp, dAs, dDs, dbs,
            L, nchunks, dim, dpg, nsub, ndb, nslots,
            *_strides3(dout), *_strides3(u), *_strides3(delta), *_strides3(z),
            *B.stride()[:3], *C.stride()[:3], s_seq[0],
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DBIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_SEQ=seq_idx is not None, REVERSE=bool(reverse),
            BD=bd, N=N, NP=NP, T=T, **_opts(num_warps),
        )
    dA = dAs.sum(dim=0).to(A.dtype)
    dB = dBp.sum(dim=2).to(B.dtype)
    dC = dCp.sum(dim=2).to(C.dtype)
    dD = dDs.sum(dim=0).to(D.dtype) if D is not None else u.new_empty(0)
    dbias = dbs.sum(dim=0).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)
    dh0_ = dh0.to(initial_state.dtype) if initial_state is not None else dh0
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0_


@_scan_bwd.register_fake
def _scan_bwd_fake(dout, dhT, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                   seq_idx, reverse, states, chunk_size, block_d, num_warps):
    batch, dim, L = u.shape
    N = A.shape[1]
    return (
        u.new_empty(u.shape), delta.new_empty(delta.shape), A.new_empty(A.shape),
        B.new_empty(B.shape), C.new_empty(C.shape),
        D.new_empty(D.shape) if D is not None else u.new_empty(0),
        z.new_empty(z.shape) if z is not None else u.new_empty(0),
        delta_bias.new_empty(delta_bias.shape) if delta_bias is not None else u.new_empty(0),
        (initial_state.new_empty(initial_state.shape) if initial_state is not None
         else u.new_empty((batch, dim, N), dtype=torch.float32)),
    )


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, reverse,
     chunk_size, block_d, num_warps) = inputs
    _, _, states = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, states)
    ctx.flags = (delta_softplus, reverse, chunk_size, block_d, num_warps)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dhT, dstates):
    u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, states = ctx.saved_tensors
    delta_softplus, reverse, chunk_size, block_d, num_warps = ctx.flags
    if dout is None:
        dout = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_bwd(
        dout, dhT, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
        reverse, states, chunk_size, block_d, num_warps,
    )
    return (
        du, ddelta, dA, dB, dC,
        dD if D is not None else None,
        dz if z is not None else None,
        dbias if delta_bias is not None else None,
        None,
        dh0 if initial_state is not None else None,
        None, None, None, None, None,
    )


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------


def selective_scan_triton(
    u: Tensor,  # (batch, dim, L)
    delta: Tensor,  # (batch, dim, L)
    A: Tensor,  # (dim, N) fp32
    B: Tensor,  # (batch, N, L) or (batch, groups, N, L)
    C: Tensor,  # (batch, N, L) or (batch, groups, N, L)
    D: Optional[Tensor] = None,  # (dim,) fp32
    z: Optional[Tensor] = None,  # (batch, dim, L)
    delta_bias: Optional[Tensor] = None,  # (dim,) fp32
    delta_softplus: bool = False,
    initial_state: Optional[Tensor] = None,  # (batch, dim, N) fp32
    return_final_state: bool = False,
    seq_idx: Optional[Tensor] = None,  # (batch, L) int
    reverse: bool = False,
    *,
    chunk_size: Optional[int] = None,
    block_d: Optional[int] = None,
    num_warps: Optional[int] = None,
):  # -> out (batch, dim, L) in u's dtype [, final_state (batch, dim, N) fp32]
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    batch, dim, L = u.shape
    N = A.shape[1]
    B4 = B.unsqueeze(1) if B.dim() == 3 else B  # (batch, groups, N, L)
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    T0, bd0, w0 = scan_config(dim, N, u.dtype, needs_grad)
    T = int(chunk_size or T0)
    if T < N or T & (T - 1):
        raise ValueError(f"chunk_size must be a power of two >= N = {N}; got {T}")
    out, hT, _ = _scan_fwd(
        u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus), initial_state, seq_idx,
        bool(reverse), T, int(block_d or bd0), int(num_warps or w0),
    )
    return (out, hT) if return_final_state else out
