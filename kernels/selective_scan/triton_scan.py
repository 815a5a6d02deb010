"""The selective scan on Triton kernels, behind a `torch.library` custom op with autograd.

Public entry: `selective_scan_triton`, same signature as the oracle (see DESIGN.md, "The scan
contract"), plus keyword-only launch settings for tests and benchmarks.

Design (kernels and the math in `triton_kernels.py`): the sequence is cut into segments that run
in parallel; a pass computes each segment's end state from zero, a short sequential pass over
segments gives every segment its entering state, and a second parallel pass produces the output.
The backward does the same for the adjoint, per backward chunk (`chunk_size` positions), then one
parallel pass per chunk and channel group recomputes the states and produces every gradient.
- exp2 count: 2 per (channel, state, position) forward, 2 more backward (its state recompute
  keeps the state entering each in-register tile in a small scratch instead of a third exp).
- saved activation: the state entering every backward chunk, (batch, nchunks, dim, N) fp32.
  Backward memory beyond inputs and gradients: per-chunk adjoint carries and dA partials of the
  same size, the scratch (batch, nchunks, programs' channels, N per tile) and fp32 dB/dC (with a
  few partial rows over channel super-blocks when the batch is too small to fill the GPU).
- deterministic: no atomics; dA, dD, d(delta_bias) are per-chunk partials summed here.
- L is never a specialised argument (`do_not_specialize`); the segment split is a runtime
  argument. Launch settings depend on (dim, N, dtype, needs_grad) only, never on L.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Optional

import torch
from torch import Tensor

from .arguments import check_scan_args
from .triton_kernels import (
    _bwd_main_kernel,
    _bwd_state_kernel,
    _carry_kernel,
    _fwd_out_kernel,
    _fwd_state_kernel,
)

__all__ = ["selective_scan_triton", "scan_config"]

# Launch settings (chunk = positions per backward chunk and per saved state, channels per
# program, warps); each is checked against the oracle on the GPU
# (tests/kernels/test_selective_scan_triton.py::test_gpu_configs_vs_oracle); measurements in
# benchmarks/NOTES_selective_scan.md. The choice depends on (dim, N, dtype, needs_grad), never L.
_CONFIGS = {
    "train": (256, 32, 1),
    "infer": (256, 32, 1),
}
_CONFIG_CACHE: dict = {}
# register cap of the backward main kernel: uncapped it takes 255 registers (8 warps per SM); at
# 200 (10 warps) its two-state loop does not spill (benchmarks/sass_counts.py) and it ran 12%
# faster than at 168, which spills (H200 sweep in benchmarks/NOTES_selective_scan.md)
_MAIN_MAXNREG = 200
# programs of one warp that keep an H200 busy (132 SMs x 48 resident warps); the backward main
# kernel: 24 per SM, two waves at 12 resident warps (set at a cap of 168 registers; at 200 an SM
# holds 10, so this is 2.4 waves: not re-tuned)
_TARGET_WARPS = 132 * 48
_MAIN_TARGET_WARPS = 132 * 24


def scan_config(dim: int, N: int, dtype: torch.dtype, needs_grad: bool = True) -> tuple[int, int, int]:
    """(chunk, block_d, num_warps) for a problem; depends on (dim, N, dtype, needs_grad) only."""
    key = (dim, N, dtype, needs_grad)
    if key not in _CONFIG_CACHE:
        env = os.environ.get("MAMBA_SEQ_SCAN_CONFIG")  # "chunk,BD,warps": for benchmarks
        if env:
            T, bd, w = (int(v) for v in env.split(","))
        else:
            T, bd, w = _CONFIGS["train" if needs_grad else "infer"]
        _CONFIG_CACHE[key] = (T, bd, w)
    return _CONFIG_CACHE[key]


def _tile(dtype: torch.dtype) -> int:
    """Positions per in-thread tile: one 16-byte vector load of the input dtype."""
    return 16 // torch.empty((), dtype=dtype).element_size()


def _padded_channels(x: Optional[Tensor], axis: int, groups: int, pad: int) -> Optional[Tensor]:
    """x with `pad` zero channels appended to each of its `groups` channel groups along `axis`."""
    if x is None:
        return None
    xg = x.unflatten(axis, (groups, x.shape[axis] // groups))
    fill = list(xg.shape)
    fill[axis + 1] = pad
    return torch.cat([xg, xg.new_zeros(fill)], dim=axis + 1).flatten(axis, axis + 1)


def _unpadded_channels(x: Tensor, axis: int, groups: int, dpg: int) -> Tensor:
    return x.unflatten(axis, (groups, x.shape[axis] // groups)).narrow(axis + 1, 0, dpg).flatten(axis, axis + 1)


def _forward_segments(batch: int, nblocks: int, warps: int, nchunks: int, KB: int) -> int:
    """Chunks per forward segment: a multiple of the backward chunk KB, as long as the parallel
    passes still fill the GPU (fewer segments: a shorter sequential carry pass)."""
    nb = triton_cdiv(nchunks, KB)
    m = 1
    while m * 2 <= nb and batch * triton_cdiv(nb, m * 2) * nblocks * warps >= _TARGET_WARPS:
        m *= 2
    return KB * m


def _super_blocks(batch: int, nseg_b: int, G: int, blocks_per_group: int, warps: int, bytes_per_super: int,
                  budget: int) -> int:
    """Channel super-blocks per group in the backward main pass (a divisor of the group's channel
    blocks): the fewest that fill the GPU, without letting their scratch and dB/dC partial rows
    (`bytes_per_super` each) outgrow `budget`, so a short sequence's peak memory stays low."""
    best = 1
    for k in range(1, blocks_per_group + 1):
        if blocks_per_group % k:
            continue
        if k > 1 and k * bytes_per_super > budget:
            break
        best = k
        if batch * nseg_b * G * k * warps >= _MAIN_TARGET_WARPS:
            break
    return best


_LANE_SUM_OK: dict = {}


def shuffles_are_row_per_lane(ttgir: str) -> bool:
    """True when every inline-PTX shuffle in a compiled kernel works on a tile laid out one row per
    lane (the butterfly's contract). Triton picks layouts itself: where a tile's loads cannot be
    vectorised (e.g. B/C strides not divisible by 16) it may spread a row over several lanes, and
    a butterfly on that layout would sum the wrong values."""
    layouts = dict(re.findall(r"^(#[\w.]+) = (.*)$", ttgir, re.M))
    for m in re.finditer(r"shfl\.sync[^\n]*?: tensor<[^,>]*, (#[\w.]+)>", ttgir):
        lay = layouts.get(m.group(1), "")
        if "threadsPerWarp = [32, 1]" not in lay and "threadsPerWarp = [32]" not in lay:
            return False
    return True


def _lane_sum_compiles(grid, args, kw) -> bool:
    """Whether the backward main kernel, specialised for these arguments, may use the lane
    shuffles; otherwise it runs the layout-independent channel sums (slower, always right)."""
    ck = _bwd_main_kernel.warmup(*args, grid=grid, LANE_SUM=True, **kw)
    ok = _LANE_SUM_OK.get(ck.hash)  # the compilation's hash: an id() could be reused once unloaded
    if ok is None:
        ok = _LANE_SUM_OK[ck.hash] = shuffles_are_row_per_lane(ck.asm["ttgir"])
        if not ok:
            warnings.warn("selective scan backward: Triton laid out the dB/dC tiles across lanes for these strides; "
                          "using the slower layout-independent channel sums (make B and C contiguous with L a "
                          "multiple of 16 to avoid this)", stacklevel=3)
    return ok


def _state_unroll(N: int) -> int:
    """States per iteration of the backward main kernel's state loop: two independent chains
    when N is even (MAMBA_SEQ_SCAN_UNROLL=1 forces one, for benchmarks)."""
    return 2 if N % 2 == 0 and os.environ.get("MAMBA_SEQ_SCAN_UNROLL", "2") != "1" else 1


def _opts(num_warps: int, maxnreg: Optional[int] = None) -> dict:
    """Launch options; MAMBA_SEQ_SCAN_MAXNREG (benchmarks only) overrides the register cap."""
    if maxnreg:
        maxnreg = int(os.environ.get("MAMBA_SEQ_SCAN_MAXNREG", 0)) or maxnreg
    return dict(num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))


def _strides3(x: Optional[Tensor]):
    # batch/channel strides; the time stride is 1 (`_aligned_time_rows`)
    return tuple(x.stride()[:2]) if x is not None else (0, 0)


def _empty_time_rows(shape, dtype: torch.dtype, device) -> Tensor:
    """An uninitialised (..., L) tensor whose rows start 16 elements apart (a view of (..., L16))."""
    L = shape[-1]
    Lp = triton_cdiv(L, 16) * 16
    return torch.empty((*shape[:-1], Lp), dtype=dtype, device=device)[..., :L]


def _aligned_time_rows(x: Optional[Tensor]) -> Optional[Tensor]:
    """x (..., L) with time contiguous, its start 16-byte aligned and every other stride a multiple
    of 16 elements; a copy (rows 16 elements apart) only where x is not.

    Triton specialises on that divisibility: with it, a (channels, T times) tile's loads
    vectorise along time and the tile stays one row per lane; without it (e.g. an odd L), Triton
    spreads rows over lanes: 8x more layout conversions on Triton 3.9, and compiles that take
    minutes or never end on 3.6 (seen on the H200). It also keeps the backward's dB/dC tiles one
    row per lane for its lane shuffles (`shuffles_are_row_per_lane`)."""
    if x is None or x.shape[-1] <= 1:
        return x
    if x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(
            s % 16 == 0 for s, n in zip(x.stride()[:-1], x.shape[:-1]) if n > 1):
        return x
    return _empty_time_rows(x.shape, x.dtype, x.device).copy_(x)


# ----------------------------------------------------------------------------------------------
# forward op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("mamba_seq::selective_scan_fwd", mutates_args=())
def _scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,  # B, C: (b, G, N, L)
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    initial_state: Optional[Tensor], seq_idx: Optional[Tensor], reverse: bool,
    chunk_size: int, block_d: int, num_warps: int, save_states: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # out (b, dim, L), final (b, dim, N) fp32, states (b, nc, dim, N) fp32
    batch, dim, L = u.shape
    N = A.shape[1]
    G = B.shape[1]
    dpg = dim // G
    T = _tile_of(u, delta, B, C, z)
    nchunks = triton_cdiv(L, T)
    KB = chunk_size // T
    nseg_b = triton_cdiv(nchunks, KB)
    bd = block_d  # divides dpg (`selective_scan_triton` pads the channel groups)
    dev, f32 = u.device, torch.float32
    out = _empty_time_rows(u.shape, u.dtype, dev)
    states = torch.empty((batch, nseg_b if save_states else 0, dim, N), device=dev, dtype=f32)
    hT = torch.empty((batch, dim, N), device=dev, dtype=f32)
    if batch == 0 or dim == 0 or L == 0:
        hT.copy_(initial_state if initial_state is not None else torch.zeros_like(hT))
        return out, hT, states
    u, delta, z, B, C, seq_idx = (_aligned_time_rows(x) for x in (u, delta, z, B, C, seq_idx))
    A_, D_, bias_, seq_, z_, s_seq = _kernel_operands(u, A, D, delta_bias, seq_idx, z)
    h0_ = initial_state.to(f32).contiguous() if initial_state is not None else None
    NP = triton_next_pow2(N)
    KS = _forward_segments(batch, dim // bd, num_warps, nchunks, KB)
    nseg = triton_cdiv(nchunks, KS)
    flags = dict(HAS_DBIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), HAS_SEQ=seq_idx is not None,
                 REVERSE=bool(reverse), N=N, NP=NP)
    hloc = torch.empty((batch, nseg, dim, N), device=dev, dtype=f32)
    dts = torch.empty((batch, nseg, dim), device=dev, dtype=f32)
    grid = (nseg, dim // bd, batch)
    _fwd_state_kernel[grid](
        u, delta, A_, B, bias_, seq_, hloc, dts,
        L, nchunks, KS, nseg, dim, dpg,
        *_strides3(u), *_strides3(delta), *B.stride()[:3], s_seq,
        BD=bd, T=T, **flags, **_opts(num_warps),
    )
    _launch_carry(hloc, dts, A_, h0_, hT, backward=False, reverse=reverse)
    _fwd_out_kernel[grid](
        u, delta, A_, B, C, D_, z_, bias_, seq_, hloc,
        out, states,
        L, nchunks, KS, nseg, KB, nseg_b, dim, dpg,
        *_strides3(u), *_strides3(delta), *_strides3(z), *_strides3(out),
        *B.stride()[:3], *C.stride()[:3], s_seq,
        HAS_D=D is not None, HAS_Z=z is not None, SAVE_STATES=bool(save_states),
        BD=bd, T=T, **flags, **_opts(num_warps),
    )
    return out, hT, states


def _tile_of(*xs: Optional[Tensor]) -> int:
    return min(_tile(x.dtype) for x in xs if x is not None)


def _kernel_operands(u, A, D, delta_bias, seq_idx, z):
    """fp32 A/D/delta_bias and stand-ins for absent optional inputs (never read: their HAS_*
    flag is off), as both the forward and the backward pass them to the kernels."""
    f32 = torch.float32
    A_ = A.to(f32).contiguous()
    D_ = D.to(f32).contiguous() if D is not None else A_
    bias_ = delta_bias.to(f32).contiguous() if delta_bias is not None else A_
    seq_ = seq_idx if seq_idx is not None else u
    z_ = z if z is not None else u
    s_seq = seq_idx.stride()[0] if seq_idx is not None else 0
    return A_, D_, bias_, seq_, z_, s_seq


def _launch_carry(loc: Tensor, dts: Tensor, A_: Tensor, init: Optional[Tensor], final: Tensor, backward: bool,
                  reverse: bool) -> None:
    batch, nseg, dim, N = loc.shape
    bdc = 32
    _carry_kernel[(triton_cdiv(dim, bdc), batch)](
        loc, dts, A_, init if init is not None else A_, final, nseg, dim,
        HAS_INIT=init is not None, BACKWARD=backward, REVERSE=bool(reverse),
        BDC=bdc, N=N, NP=triton_next_pow2(N), num_warps=4,
    )


def triton_cdiv(a, b):
    return (a + b - 1) // b


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@_scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                   reverse, chunk_size, block_d, num_warps, save_states):
    batch, dim, L = u.shape
    N = A.shape[1]
    T = _tile_of(u, delta, B, C, z)
    nseg_b = triton_cdiv(triton_cdiv(L, T), chunk_size // T) if save_states else 0
    out = _empty_time_rows((batch, dim, L), u.dtype, u.device)
    hT = u.new_empty((batch, dim, N), dtype=torch.float32)
    states = u.new_empty((batch, nseg_b, dim, N), dtype=torch.float32)
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
              reverse, states, chunk_size, block_d, num_warps, run_main=True):
    # -> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 (empty tensors for absent inputs)
    batch, dim, L = u.shape
    N = A.shape[1]
    G = B.shape[1]
    dpg = dim // G
    T = _tile_of(u, delta, B, C, z, dout)
    nchunks = triton_cdiv(L, T)
    KB = chunk_size // T
    nseg_b = triton_cdiv(nchunks, KB)
    bd = block_d  # divides dpg (`selective_scan_triton` pads the channel groups)
    dev, f32 = u.device, torch.float32
    dout, u, delta, z, B, C, seq_idx = (_aligned_time_rows(x) for x in (dout, u, delta, z, B, C, seq_idx))
    A_, D_, bias_, seq_, z_, s_seq = _kernel_operands(u, A, D, delta_bias, seq_idx, z)
    dhT_ = dhT.to(f32).contiguous() if dhT is not None else None
    NP = triton_next_pow2(N)
    flags = dict(HAS_DBIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), HAS_SEQ=seq_idx is not None,
                 REVERSE=bool(reverse), BD=bd, N=N, NP=NP, T=T)

    # adjoint entering every chunk from later positions (in place of the local ones), dh0
    qin = torch.empty((batch, nseg_b, dim, N), device=dev, dtype=f32)
    dts = torch.empty((batch, nseg_b, dim), device=dev, dtype=f32)
    dh0 = torch.empty((batch, dim, N), device=dev, dtype=f32)
    if L > 0 and batch > 0 and dim > 0:
        _bwd_state_kernel[(nseg_b, dim // bd, batch)](
            dout, delta, A_, C, z_, bias_, seq_, qin, dts,
            L, nchunks, KB, nseg_b, dim, dpg,
            *_strides3(dout), *_strides3(delta), *_strides3(z), *C.stride()[:3], s_seq,
            HAS_Z=z is not None, **flags, **_opts(num_warps),
        )
        _launch_carry(qin, dts, A_, dhT_, dh0, backward=True, reverse=reverse)
    else:
        dh0.copy_(dhT_ if dhT_ is not None else torch.zeros_like(dh0))
    if not run_main:  # benchmarks: time the state and carry passes alone
        return qin, dh0

    nblk_g = dpg // bd
    per_super = 4 * (batch * nseg_b * G * KB * N * bd + 2 * batch * G * N * L)  # scratch + dB/dC rows
    nsuper = _super_blocks(batch, nseg_b, G, nblk_g, num_warps, per_super, u.numel() * u.element_size())
    nblk = nblk_g // nsuper
    du = _empty_time_rows((batch, dim, L), u.dtype, dev)
    ddelta = _empty_time_rows((batch, dim, L), delta.dtype, dev)
    dz = _empty_time_rows((batch, dim, L), z.dtype, dev) if z is not None else u.new_empty(0)
    dBCp = _empty_time_rows((2, batch, G, nsuper, N, L), f32, dev)  # dB, dC partial rows
    dAp = torch.empty((batch, nseg_b, dim, N), device=dev, dtype=f32)
    dDp = torch.empty((batch, nseg_b, dim), device=dev, dtype=f32) if D is not None else dAp
    dbp = torch.empty((batch, nseg_b, dim), device=dev, dtype=f32) if delta_bias is not None else dAp
    scratch = torch.empty((batch * nseg_b * G * nsuper, KB, N, bd), device=dev, dtype=f32)
    # channel sums of dB/dC by lane exchanges need one warp of 32 channels; the interpreter
    # emulates the GPU's shuffles, so the CPU tests run this path too
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    lane_sum = bd == 32 and num_warps == 1 and (dev.type == "cuda" or interpret)
    if L > 0 and batch > 0 and dim > 0:
        grid = (nseg_b, G * nsuper, batch)
        args = (dout, u, delta, A_, B, C, D_, z_, bias_, seq_, states, qin, scratch,
                du, ddelta, dz if z is not None else du, dBCp, dAp, dDp, dbp,
                L, nchunks, KB, nseg_b, dim, dpg, nsuper, nblk,
                *_strides3(dout), *_strides3(u), *_strides3(delta), *_strides3(z), *du.stride()[:2],
                *B.stride()[:3], *C.stride()[:3], dBCp.stride(0), dBCp.stride(4), s_seq)
        kw = dict(HAS_D=D is not None, HAS_Z=z is not None, SHFL_ASM=not interpret, UNROLL=_state_unroll(N),
                  **flags, **_opts(num_warps, _MAIN_MAXNREG if dev.type == "cuda" else None))
        if lane_sum and not interpret:
            lane_sum = _lane_sum_compiles(grid, args, kw)
        _bwd_main_kernel[grid](*args, LANE_SUM=lane_sum, **kw)
    else:
        for t in (dBCp, dAp, dDp, dbp):
            t.zero_()
    dBp, dCp = dBCp[0], dBCp[1]
    dA = dAp.sum(dim=(0, 1)).to(A.dtype)
    dB = dBp.sum(dim=2).to(B.dtype)  # a new tensor even at nsuper == 1: dB and dC share dBCp
    dC = dCp.sum(dim=2).to(C.dtype)
    dD = dDp.sum(dim=(0, 1)).to(D.dtype) if D is not None else u.new_empty(0)
    dbias = dbp.sum(dim=(0, 1)).to(delta_bias.dtype) if delta_bias is not None else u.new_empty(0)
    dh0_ = dh0.to(initial_state.dtype) if initial_state is not None else dh0
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0_


@_scan_bwd.register_fake
def _scan_bwd_fake(dout, dhT, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                   seq_idx, reverse, states, chunk_size, block_d, num_warps):
    batch, dim, L = u.shape
    N = A.shape[1]
    return (
        _empty_time_rows(u.shape, u.dtype, u.device), _empty_time_rows(delta.shape, delta.dtype, u.device),
        A.new_empty(A.shape), B.new_empty(B.shape), C.new_empty(C.shape),
        D.new_empty(D.shape) if D is not None else u.new_empty(0),
        _empty_time_rows(z.shape, z.dtype, u.device) if z is not None else u.new_empty(0),
        delta_bias.new_empty(delta_bias.shape) if delta_bias is not None else u.new_empty(0),
        (initial_state.new_empty(initial_state.shape) if initial_state is not None
         else u.new_empty((batch, dim, N), dtype=torch.float32)),
    )


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, reverse,
     chunk_size, block_d, num_warps, save_states) = inputs
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
        None, None, None, None, None, None,
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
    chunk0, bd0, w0 = scan_config(dim, N, u.dtype, needs_grad)
    chunk, bd = int(chunk_size or chunk0), int(block_d or bd0)
    tile = _tile_of(u, delta, B, C, z)
    if chunk < tile or chunk & (chunk - 1):
        raise ValueError(f"chunk_size must be a power of two >= {tile} (one tile of {u.dtype}); got {chunk}")
    if bd < 1 or bd & (bd - 1):
        raise ValueError(f"block_d must be a power of two; got {bd}")
    G = B4.shape[1]
    dpg = dim // G
    pad = -dpg % bd
    if pad:
        # Channel blocks are whole (the kernels have no channel masks): a group of dpg channels
        # that the block does not divide gets zero channels appended, which leave every other
        # channel's output and every gradient unchanged (zero u, so zero state, and no dout
        # reaches them). Smaller blocks instead would give a (BD < 32)-row tile that Triton
        # spreads over several lanes: slow code on Triton 3.9, a compile that never ends on 3.6.
        p1 = lambda x: _padded_channels(x, 1, G, pad)  # noqa: E731
        res = selective_scan_triton(
            p1(u), p1(delta), _padded_channels(A, 0, G, pad), B4, C4, _padded_channels(D, 0, G, pad), p1(z),
            _padded_channels(delta_bias, 0, G, pad), delta_softplus, p1(initial_state), return_final_state,
            seq_idx, reverse, chunk_size=chunk, block_d=bd, num_warps=num_warps,
        )
        if not return_final_state:
            return _unpadded_channels(res, 1, G, dpg)
        return _unpadded_channels(res[0], 1, G, dpg), _unpadded_channels(res[1], 1, G, dpg)
    out, hT, _ = _scan_fwd(
        u, delta, A, B4, C4, D, z, delta_bias, bool(delta_softplus), initial_state, seq_idx,
        bool(reverse), chunk, bd, int(num_warps or w0), needs_grad,
    )
    return (out, hT) if return_final_state else out
