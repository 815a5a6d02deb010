"""Causal depthwise conv1d (+ optional SiLU) on Triton kernels, forward and backward, behind a
`torch.library` custom op with autograd.

Public entry: `causal_conv1d_triton(x, weight, bias=None, prefix=None, silu=False)`, the contract of
`kernels.causal_conv1d` (oracle.py is the specification), plus keyword-only launch settings.

Design
------
A program owns a tile of BD channels x NT sub-blocks of T consecutive times. Inside a sub-block the
kernel walks time column by column (a column = one time, all the tile's channels and sub-blocks),
fully unrolled, keeping the last k inputs (and, backward, the last k gradients g) in registers as
rolling windows of named slots, so every input is read and every pre-activation computed once per
sub-block; the k-1 halo columns on either side of a sub-block are the only repeats ((k-1)/T extra
loads, served by L1/L2, and in the backward (k-1)/T extra SiLU recomputations).
  * channel-last x (stride 1 along dim, the mixer's view of a (batch, L, 2*dim) tensor): a column is
    an (NT, BD) tile loaded straight from memory, contiguous along BD (16-byte vector accesses per
    thread forward, 8-byte backward); T = 32, NT = 4 (one sub-block per warp). The next PF columns
    are loaded ahead through a queue of named slots: the compiler cannot move a load above the
    previous column's store (y may alias x), so without it one load per warp is in flight and the
    kernel is latency-bound (~1.5 TB/s by Little's law on an H200) instead of memory-bound.
  * any other layout (time-contiguous x): NT = 1 and a sub-block is one (BD, T) tile, one channel
    row per thread holding T times (one 16-byte vector); columns are picked out of it with split
    (register renaming) and output columns put back with a select on the in-thread column index
    (constant per register, so it folds away); two (BD, KH) tiles (KH = next power of two >= k-1)
    bring the halo times. Tiles wholly inside [0, L) load and store without a time mask, so the
    accesses vectorise. T is 16 bytes of the dtype (8 for bf16), so the halo overhead is larger
    here: this is the secondary layout.
Forward: one tile per program: y(t) = act(bias + sum_j w_j xpad(t + j)), written in x's dtype.
Backward: the pre-activation is recomputed from x (nothing but the inputs is saved), then
    g = dy * silu'(pre) (or dy), dx(s) = sum_j w_j g(s + k-1 - j), dw_j = sum_t g(t) xpad(t + j),
    dbias = sum g; dprefix is dx at the k-1 times before 0, written by the programs at time 0.
    A program walks n_iter consecutive tiles along time (a runtime loop), accumulating dw/dbias in
    fp32 registers, and writes one partial row; the partials (batch * programs along time, dim,
    k+1) are summed here. No atomics: deterministic for a given shape and device. A dy in the
    other layout than x is copied into x's layout first.
SiLU: exp2 and (compiled) one `rcp.approx.ftz` per position and pass, in fp32.
sm_90 / ptxas 12.9 (offline compile, channel-last, bf16, k=4, SiLU, default settings): forward 128
registers, no spills, ~15 SASS instructions per output; backward 168, ~38 per output (the SiLU
recomputation and three k-tap sums), a few spills outside the column loop. See `conv_config`.

Memory: forward none beyond y; backward dx, dprefix, and the partials (a few MB at most).
Offsets: every memory offset is int64 (batch*dim*L may exceed 2^31); times are int32 (L < 2^31).
Compiles: L and n_iter are never specialised (`do_not_specialize`), so one compile serves every
length; Triton still keys a compile on the strides' divisibility by 16 (for a time-contiguous x
(stride L along dim) that is L % 16: at most two compiles) and on a stride past 2^31 (int64 argument).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .reference import check_conv_args, empty_like_layout, is_channel_last

__all__ = ["causal_conv1d_triton", "conv_config"]

LOG2E = tl.constexpr(1.4426950408889634)
MAX_K = 8


# ----------------------------------------------------------------------------------------------
# helpers. Each is called once per column at most: the CPU interpreter pays ~0.2 ms per call of a
# jit function, so the windows are named slots, not recursive helpers.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _col(x, j: tl.constexpr, K: tl.constexpr):
    # column j of an (R, K) tile (K a power of two <= 32) -> (R,): split the in-thread last axis
    # into even and odd columns, keep the half holding j, repeat; splits of an axis that lives in
    # one thread compile to register renaming
    y = x
    for lvl in tl.static_range(5):  # the width at level lvl is K >> lvl; j's bit lvl picks the half
        if (K >> lvl) == 2:
            e, od = tl.split(y)
            if (j >> lvl) % 2 == 0:
                y = e
            else:
                y = od
        elif (K >> lvl) > 2:
            e, od = tl.split(tl.reshape(y, (y.shape[0], K >> (lvl + 1), 2)))
            if (j >> lvl) % 2 == 0:
                y = e
            else:
                y = od
    if K == 1:
        y = tl.reshape(y, (y.shape[0],))
    return y


@triton.jit
def _wload(w_ptr, d64, dm, j: tl.constexpr, K: tl.constexpr):
    # weight[d, j] in fp32 (the weights are passed fp32 contiguous (dim, K)); 0 past K (never read)
    if j < K:
        return tl.load(w_ptr + d64 * K + j, mask=dm, other=0.0)
    else:
        return 0.0


@triton.jit
def _shift_in(a0, a1, a2, a3, a4, a5, a6, a7, v, K: tl.constexpr):
    # input window: a_j = xpad(t - (K-1) + j), j < K (the taps of output t); slide by one time and
    # put the newest input v in slot K-1. Slots >= K hold junk that is never read.
    a0, a1, a2, a3, a4, a5, a6 = a1, a2, a3, a4, a5, a6, a7
    if K == 1:
        a0 = v
    elif K == 2:
        a1 = v
    elif K == 3:
        a2 = v
    elif K == 4:
        a3 = v
    elif K == 5:
        a4 = v
    elif K == 6:
        a5 = v
    elif K == 7:
        a6 = v
    else:
        a7 = v
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _taps(acc, K: tl.constexpr, w0, w1, w2, w3, w4, w5, w6, w7, a0, a1, a2, a3, a4, a5, a6, a7):
    # acc + sum_{j<K} w_j a_j: the pre-activation from the input window (a_j = xpad(t - (K-1) + j)),
    # and dx from the gradient window (a_j = g(s + K-1 - j))
    acc = acc + w0 * a0
    if K > 1:
        acc = acc + w1 * a1
    if K > 2:
        acc = acc + w2 * a2
    if K > 3:
        acc = acc + w3 * a3
    if K > 4:
        acc = acc + w4 * a4
    if K > 5:
        acc = acc + w5 * a5
    if K > 6:
        acc = acc + w6 * a6
    if K > 7:
        acc = acc + w7 * a7
    return acc


@triton.jit
def _dw8(d0, d1, d2, d3, d4, d5, d6, d7, g, a0, a1, a2, a3, a4, a5, a6, a7, K: tl.constexpr):
    # dw_j += g(t) * xpad(t - (K-1) + j) for j < K
    d0 = d0 + g * a0
    if K > 1:
        d1 = d1 + g * a1
    if K > 2:
        d2 = d2 + g * a2
    if K > 3:
        d3 = d3 + g * a3
    if K > 4:
        d4 = d4 + g * a4
    if K > 5:
        d5 = d5 + g * a5
    if K > 6:
        d6 = d6 + g * a6
    if K > 7:
        d7 = d7 + g * a7
    return d0, d1, d2, d3, d4, d5, d6, d7


@triton.jit
def _ld_col(row, tt, L, dm, st, c: tl.constexpr, NC: tl.constexpr, HALO: tl.constexpr):
    # channel-last: column c of NC, in the input's dtype: the times tt (NT, 1) of the channels of
    # row (1, BD), zero outside [0, L) (HALO: tt may be < 0); nothing (0.0, never read) past NC
    if c >= NC:
        return 0.0
    elif HALO:
        return tl.load(row + tt.to(tl.int64) * st, mask=dm & (tt >= 0) & (tt < L), other=0.0)
    else:
        return tl.load(row + tt.to(tl.int64) * st, mask=dm & (tt < L), other=0.0)


@triton.jit
def _prefix_col(prow, tt, dm, spt, K: tl.constexpr):
    # channel-last: the prefix at times tt < 0 (NT, 1) -> (NT, BD) fp32, zero elsewhere. Its load
    # (stride k-1 along the channels) takes another layout; callers run it in the tile at time 0 only
    return tl.load(prow + (tt + (K - 1)).to(tl.int64) * spt, mask=dm & (tt < 0), other=0.0).to(tl.float32)


@triton.jit
def _tile(row, t0, C: tl.constexpr, L, dm2, st, inner, use):
    # time-contiguous: the (BD, C) tile of the rows row (BD, 1) at times t0 .. t0+C-1 -> fp32, zero
    # outside [0, L) and where not `use` (1, C). `inner`: the tile lies inside [0, L), so the load
    # has no time mask and vectorises along time (a mask against the unspecialised L would not)
    c = tl.arange(0, C)[None, :]
    tt = t0 + c
    if inner:
        v = tl.load(row + tt.to(tl.int64) * st, mask=dm2, other=0.0)
    else:
        v = tl.load(row + tt.to(tl.int64) * st, mask=dm2 & use & (tt >= 0) & (tt < L), other=0.0)
    return v.to(tl.float32)


@triton.jit
def _back_halo(xrow, prow, t0, L, dm2, sxt, spt, inner, K: tl.constexpr, KH: tl.constexpr,
               HAS_PREFIX: tl.constexpr):
    # time-contiguous: xpad at times t0-KH .. t0-1 as a (BD, KH) tile (only the last K-1 are read)
    c = tl.arange(0, KH)[None, :]
    v = _tile(xrow, t0 - KH, KH, L, dm2, sxt, inner, c >= KH - (K - 1))
    if HAS_PREFIX:
        if t0 == 0:
            v += tl.load(prow + (c - KH + (K - 1)).to(tl.int64) * spt, mask=dm2 & (c >= KH - (K - 1)),
                         other=0.0).to(tl.float32)
    return v


@triton.jit
def _store_tile(row, v, t0, T: tl.constexpr, L, dm2, st):
    # time-contiguous: store the (BD, T) tile v at times t0 .. t0+T-1 (< L)
    tt = t0 + tl.arange(0, T)[None, :]
    ptr = row + tt.to(tl.int64) * st
    if t0 + T <= L:  # no time mask: vector stores
        tl.store(ptr, v.to(row.dtype.element_ty), mask=dm2)
    else:
        tl.store(ptr, v.to(row.dtype.element_ty), mask=dm2 & (tt < L))


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["L"])
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, p_ptr, y_ptr,
    L, dim,
    sxb, sxd, sxt, spb, spd, spt, syb, syd, syt,
    K: tl.constexpr, KH: tl.constexpr, T: tl.constexpr, NT: tl.constexpr, BD: tl.constexpr,
    TC: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SILU: tl.constexpr,
    FAST_RCP: tl.constexpr, PF: tl.constexpr,
):
    # grid (tiles along time, channel blocks, batch); a tile is NT sub-blocks of T times x BD channels
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    t0 = pid_t * (NT * T)
    if TC:
        d = pid_d * BD + tl.arange(0, BD)  # (BD,): columns are (BD,)
    else:
        d = pid_d * BD + tl.arange(0, BD)[None, :]  # (1, BD): columns are (NT, BD)
    dm = d < dim
    d64 = d.to(tl.int64)
    w0 = _wload(w_ptr, d64, dm, 0, K)
    w1 = _wload(w_ptr, d64, dm, 1, K)
    w2 = _wload(w_ptr, d64, dm, 2, K)
    w3 = _wload(w_ptr, d64, dm, 3, K)
    w4 = _wload(w_ptr, d64, dm, 4, K)
    w5 = _wload(w_ptr, d64, dm, 5, K)
    w6 = _wload(w_ptr, d64, dm, 6, K)
    w7 = _wload(w_ptr, d64, dm, 7, K)
    if HAS_BIAS:
        bias = tl.load(b_ptr + d64, mask=dm, other=0.0)
    else:
        bias = 0.0
    x_b = x_ptr + pid_b * sxb
    p_b = p_ptr + pid_b * spb
    y_b = y_ptr + pid_b * syb
    if TC:
        rows = d64[:, None]
        dm2 = dm[:, None]
        xrow = x_b + rows * sxd
        cT = tl.arange(0, T)[None, :]
        inner = (t0 >= KH) & (t0 + T <= L)
        xm = _tile(xrow, t0, T, L, dm2, sxt, inner, cT >= 0)
        xb = _back_halo(xrow, p_b + rows * spd, t0, L, dm2, sxt, spt, inner, K, KH, HAS_PREFIX)
        yt = tl.zeros((BD, T), dtype=tl.float32)
    else:
        tn = t0 + tl.arange(0, NT)[:, None] * T  # (NT, 1) sub-block starts
        xrow = x_b + d64 * sxd
        prow = p_b + d64 * spd
        yrow = y_b + d64 * syd
        # prefetch queue: the next PF input columns, loaded ahead of this column's store (which the
        # compiler may not reorder loads across: y could alias x), so PF loads are in flight per warp
        q0 = 0.0
        q1 = 0.0
        q2 = 0.0
        q3 = 0.0
        q4 = 0.0
        q5 = 0.0
        q6 = 0.0
        q7 = 0.0
        for c in tl.static_range(PF):
            q0, q1, q2, q3, q4, q5, q6, q7 = _shift_in(
                q0, q1, q2, q3, q4, q5, q6, q7,
                _ld_col(xrow, tn + (c - (K - 1)), L, dm, sxt, c, T + K - 1, c < K - 1), PF)
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    a4 = 0.0
    a5 = 0.0
    a6 = 0.0
    a7 = 0.0
    for c in tl.static_range(T + K - 1):  # column c: time c - (K-1) from the sub-block start
        if TC:
            if c < K - 1:
                xv = _col(xb, KH + c - (K - 1), KH)
            else:
                xv = _col(xm, c - (K - 1), T)
        else:
            xv = q0.to(tl.float32)
            q0, q1, q2, q3, q4, q5, q6, q7 = _shift_in(
                q0, q1, q2, q3, q4, q5, q6, q7,
                _ld_col(xrow, tn + (c + PF - (K - 1)), L, dm, sxt, c + PF, T + K - 1, c + PF < K - 1), PF)
            if HAS_PREFIX and c < K - 1:
                if t0 == 0:
                    xv += _prefix_col(prow, tn + (c - (K - 1)), dm, spt, K)
        a0, a1, a2, a3, a4, a5, a6, a7 = _shift_in(a0, a1, a2, a3, a4, a5, a6, a7, xv, K)
        if c >= K - 1:
            z = _taps(bias, K, w0, w1, w2, w3, w4, w5, w6, w7, a0, a1, a2, a3, a4, a5, a6, a7)
            if SILU:
                den = 1.0 + tl.exp2(-(z * LOG2E))
                if FAST_RCP:  # one MUFU op; 1/den in IEEE division costs range checks
                    z = z * tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [den],
                                                      dtype=tl.float32, is_pure=True, pack=1)
                else:
                    z = z / den
            if TC:  # the select folds away: the tile's column index is a constant per register
                yt = tl.where(cT == c - (K - 1), z[:, None], yt)
            else:
                tt = tn + (c - (K - 1))
                tl.store(yrow + tt.to(tl.int64) * syt, z.to(y_ptr.dtype.element_ty), mask=dm & (tt < L))
    if TC:
        _store_tile(y_b + rows * syd, yt, t0, T, L, dm2, syt)


@triton.jit(do_not_specialize=["L", "n_iter"])
def _conv_bwd_kernel(
    x_ptr, w_ptr, b_ptr, p_ptr, dy_ptr, dx_ptr, dp_ptr, part_ptr,
    L, dim, n_iter,
    sxb, sxd, sxt, spb, spd, spt, sgb, sgd, sgt, sdb, sdd, sdt, sqb, sqd, sqt,
    K: tl.constexpr, KH: tl.constexpr, T: tl.constexpr, NT: tl.constexpr, BD: tl.constexpr,
    TC: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SILU: tl.constexpr,
    FAST_RCP: tl.constexpr, PF: tl.constexpr,
):
    # grid (programs along time, channel blocks, batch); program pid_t walks the tiles
    # pid_t*n_iter .. pid_t*n_iter + n_iter - 1. Strides: x (sx*), prefix (sp*), dy (sg*), dx (sd*),
    # dprefix (sq*). part: (batch * programs along time, dim, K+1) fp32: dw_0..dw_{K-1}, dbias.
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    n_prog_t = tl.num_programs(0)
    if TC:
        d = pid_d * BD + tl.arange(0, BD)  # (BD,)
        zero = tl.zeros((BD,), dtype=tl.float32)
    else:
        d = pid_d * BD + tl.arange(0, BD)[None, :]  # (1, BD)
        zero = tl.zeros((NT, BD), dtype=tl.float32)
    dm = d < dim
    d64 = d.to(tl.int64)
    w0 = _wload(w_ptr, d64, dm, 0, K)
    w1 = _wload(w_ptr, d64, dm, 1, K)
    w2 = _wload(w_ptr, d64, dm, 2, K)
    w3 = _wload(w_ptr, d64, dm, 3, K)
    w4 = _wload(w_ptr, d64, dm, 4, K)
    w5 = _wload(w_ptr, d64, dm, 5, K)
    w6 = _wload(w_ptr, d64, dm, 6, K)
    w7 = _wload(w_ptr, d64, dm, 7, K)
    if HAS_BIAS:
        bias = tl.load(b_ptr + d64, mask=dm, other=0.0)
    else:
        bias = 0.0
    x_b = x_ptr + pid_b * sxb
    p_b = p_ptr + pid_b * spb
    g_b = dy_ptr + pid_b * sgb
    dx_b = dx_ptr + pid_b * sdb
    q_b = dp_ptr + pid_b * sqb
    if TC:
        rows = d64[:, None]
        dm2 = dm[:, None]
        xrow = x_b + rows * sxd
        prow = p_b + rows * spd
        grow = g_b + rows * sgd
        dxrow = dx_b + rows * sdd
        cT = tl.arange(0, T)[None, :]
        cH = tl.arange(0, KH)[None, :]
    else:
        xrow = x_b + d64 * sxd
        prow = p_b + d64 * spd
        grow = g_b + d64 * sgd
        dxrow = dx_b + d64 * sdd
    qrow = q_b + d64 * sqd
    dw0 = zero
    dw1 = zero
    dw2 = zero
    dw3 = zero
    dw4 = zero
    dw5 = zero
    dw6 = zero
    dw7 = zero
    db = zero
    for it in range(0, n_iter):
        t0 = (pid_t * n_iter + it) * (NT * T)
        if TC:
            inner = (t0 >= KH) & (t0 + T + KH <= L)
            xm = _tile(xrow, t0, T, L, dm2, sxt, inner, cT >= 0)
            xb = _back_halo(xrow, prow, t0, L, dm2, sxt, spt, inner, K, KH, HAS_PREFIX)
            xf = _tile(xrow, t0 + T, KH, L, dm2, sxt, inner, cH < K - 1)
            gm = _tile(grow, t0, T, L, dm2, sgt, inner, cT >= 0)
            gf = _tile(grow, t0 + T, KH, L, dm2, sgt, inner, cH < K - 1)
            dxt = tl.zeros((BD, T), dtype=tl.float32)
        else:
            tn = t0 + tl.arange(0, NT)[:, None] * T  # (NT, 1) sub-block starts
            # prefetch queues of the next PF columns of x (q*) and dy (r*), as in the forward
            q0 = 0.0
            q1 = 0.0
            q2 = 0.0
            q3 = 0.0
            q4 = 0.0
            q5 = 0.0
            q6 = 0.0
            q7 = 0.0
            r0 = 0.0
            r1 = 0.0
            r2 = 0.0
            r3 = 0.0
            r4 = 0.0
            r5 = 0.0
            r6 = 0.0
            r7 = 0.0
            for c in tl.static_range(PF):
                q0, q1, q2, q3, q4, q5, q6, q7 = _shift_in(
                    q0, q1, q2, q3, q4, q5, q6, q7,
                    _ld_col(xrow, tn + (c - (K - 1)), L, dm, sxt, c, T + 2 * K - 2, c < K - 1), PF)
                r0, r1, r2, r3, r4, r5, r6, r7 = _shift_in(
                    r0, r1, r2, r3, r4, r5, r6, r7, _ld_col(grow, tn + c, L, dm, sgt, c, T + K - 1, False), PF)
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        a4 = 0.0
        a5 = 0.0
        a6 = 0.0
        a7 = 0.0
        g0 = 0.0  # gradient window, newest first: g_i = g(time of this column - i)
        g1 = 0.0
        g2 = 0.0
        g3 = 0.0
        g4 = 0.0
        g5 = 0.0
        g6 = 0.0
        g7 = 0.0
        for c in tl.static_range(T + 2 * K - 2):  # column c: time c - (K-1) from the sub-block start
            if TC:
                if c < K - 1:
                    xv = _col(xb, KH + c - (K - 1), KH)
                elif c < T + K - 1:
                    xv = _col(xm, c - (K - 1), T)
                else:
                    xv = _col(xf, c - (K - 1) - T, KH)
            else:
                xv = q0.to(tl.float32)
                q0, q1, q2, q3, q4, q5, q6, q7 = _shift_in(
                    q0, q1, q2, q3, q4, q5, q6, q7,
                    _ld_col(xrow, tn + (c + PF - (K - 1)), L, dm, sxt, c + PF, T + 2 * K - 2, c + PF < K - 1), PF)
                if HAS_PREFIX and c < K - 1:
                    if t0 == 0:
                        xv += _prefix_col(prow, tn + (c - (K - 1)), dm, spt, K)
            a0, a1, a2, a3, a4, a5, a6, a7 = _shift_in(a0, a1, a2, a3, a4, a5, a6, a7, xv, K)
            if c >= K - 1:
                # g at time o (zero past L): dy, times silu'(pre) recomputed from the input window
                if TC:
                    if c < T + K - 1:
                        gv = _col(gm, c - (K - 1), T)
                    else:
                        gv = _col(gf, c - (K - 1) - T, KH)
                else:
                    gv = r0.to(tl.float32)
                    r0, r1, r2, r3, r4, r5, r6, r7 = _shift_in(
                        r0, r1, r2, r3, r4, r5, r6, r7,
                        _ld_col(grow, tn + (c - (K - 1) + PF), L, dm, sgt, c - (K - 1) + PF, T + K - 1, False), PF)
                if SILU:
                    z = _taps(bias, K, w0, w1, w2, w3, w4, w5, w6, w7, a0, a1, a2, a3, a4, a5, a6, a7)
                    den = 1.0 + tl.exp2(-(z * LOG2E))
                    if FAST_RCP:
                        s = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [den],
                                                      dtype=tl.float32, is_pure=True, pack=1)
                    else:
                        s = 1.0 / den
                    gv = gv * s * (1.0 + z * (1.0 - s))
                g0, g1, g2, g3, g4, g5, g6, g7 = gv, g0, g1, g2, g3, g4, g5, g6
                if c < T + K - 1:  # this sub-block's own outputs: dw, dbias
                    dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = _dw8(dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7, gv,
                                                                  a0, a1, a2, a3, a4, a5, a6, a7, K)
                    db = db + gv
                # dx at time s = c - 2(K-1) = sum_j w_j g(s + K-1 - j) is now complete
                if c >= 2 * (K - 1):
                    v = _taps(0.0, K, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7)
                    if TC:
                        dxt = tl.where(cT == c - 2 * (K - 1), v[:, None], dxt)
                    else:
                        ts = tn + (c - 2 * (K - 1))
                        tl.store(dxrow + ts.to(tl.int64) * sdt, v.to(dx_ptr.dtype.element_ty), mask=dm & (ts < L))
                elif HAS_PREFIX:  # a time < 0, so only in the sub-block at time 0: dprefix
                    if t0 == 0:
                        v = _taps(0.0, K, w0, w1, w2, w3, w4, w5, w6, w7, g0, g1, g2, g3, g4, g5, g6, g7)
                        if TC:
                            tq = (c - 2 * (K - 1)) + tl.zeros((BD,), dtype=tl.int32)
                        else:
                            tq = tn + (c - 2 * (K - 1))
                        tl.store(qrow + (tq + (K - 1)).to(tl.int64) * sqt, v.to(dp_ptr.dtype.element_ty),
                                 mask=dm & (tq < 0))
        if TC:
            _store_tile(dxrow, dxt, t0, T, L, dm2, sdt)
    # one partial row per program
    if TC:
        dd = d64
    else:
        dd = pid_d * BD + tl.arange(0, BD).to(tl.int64)
        dw0 = tl.sum(dw0, 0)
        dw1 = tl.sum(dw1, 0)
        dw2 = tl.sum(dw2, 0)
        dw3 = tl.sum(dw3, 0)
        dw4 = tl.sum(dw4, 0)
        dw5 = tl.sum(dw5, 0)
        dw6 = tl.sum(dw6, 0)
        dw7 = tl.sum(dw7, 0)
        db = tl.sum(db, 0)
    ddm = dd < dim
    prow_ = part_ptr + ((pid_b * n_prog_t + pid_t) * dim + dd) * (K + 1)
    tl.store(prow_ + 0, dw0, mask=ddm)
    if K > 1:
        tl.store(prow_ + 1, dw1, mask=ddm)
    if K > 2:
        tl.store(prow_ + 2, dw2, mask=ddm)
    if K > 3:
        tl.store(prow_ + 3, dw3, mask=ddm)
    if K > 4:
        tl.store(prow_ + 4, dw4, mask=ddm)
    if K > 5:
        tl.store(prow_ + 5, dw5, mask=ddm)
    if K > 6:
        tl.store(prow_ + 6, dw6, mask=ddm)
    if K > 7:
        tl.store(prow_ + 7, dw7, mask=ddm)
    if HAS_BIAS:
        tl.store(prow_ + K, db, mask=ddm)


# ----------------------------------------------------------------------------------------------
# launch settings
# ----------------------------------------------------------------------------------------------


def conv_config(dim: int, k: int, dtype: torch.dtype, channel_last: bool,
                backward: bool) -> tuple[int, int, int, int, int, int]:
    """(T, NT, BD, num_warps, prefetch, maxnreg) for a problem; depends on (dim, k, dtype, layout,
    pass), never on L. maxnreg 0: no cap.

    channel-last: BD channels contiguous per column, 16-byte accesses per thread forward, 8-byte
    backward (4-byte for k > 4): the backward's windows of inputs, gradients, weights and dw
    accumulators all scale with k times the channels a thread holds. NT = 4 sub-blocks of T = 32
    times, one per warp. `prefetch` columns are loaded ahead (8 forward, 6 of x and of dy backward:
    ~3-4 KB in flight per warp) and registers are capped so that 4 (forward) / 3 (backward) programs
    of 4 warps fit an SM: sm_90 with ptxas 12.9 (offline compile, bf16, k=4, SiLU) then gives
    forward 128 registers and no spills, backward 168 and a few spills outside the column loop
    (uncapped: 136 and 188).
    time-contiguous: one channel row per thread (BD = 32 * warps) holding T times, one 16-byte
    vector (Triton spreads a longer row over lanes, and then every column pick is a layout
    conversion); at least the halo width. Its tiles are loaded whole, so no prefetch."""
    esize = torch.empty((), dtype=dtype).element_size()
    if channel_last:
        vec = max(1, (16 if not backward else 8 if k <= 4 else 4) // esize)
        bd = min(32 * vec, max(16, triton.next_power_of_2(dim)))
        return (32, 4, bd, 4, 6, 168) if backward else (32, 4, bd, 4, 8, 128)
    bd = min(128, max(32, triton.next_power_of_2(dim)))
    return max(16 // esize, _halo(k)), 1, bd, bd // 32, 1, 0


def _check_launch(T: int, NT: int, BD: int, K: int, tc: bool) -> None:
    for name, v in (("block_t", T), ("block_n", NT), ("block_d", BD)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"causal_conv1d: {name} must be a power of two, got {v}")
    if T < max(K - 1, _halo(K)):
        raise ValueError(f"causal_conv1d: block_t={T} must be >= {max(K - 1, _halo(K))} for width {K}")
    if tc and NT != 1:
        raise ValueError("causal_conv1d: block_n must be 1 for a time-contiguous x")


def _halo(K: int) -> int:
    return triton.next_power_of_2(max(K - 1, 1))


def _strides(t: Optional[Tensor]) -> tuple[int, int, int]:
    return tuple(t.stride()) if t is not None else (0, 0, 0)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _time_programs(n_tiles: int, batch: int, nblk_d: int, device: torch.device, override: int) -> tuple[int, int]:
    """(programs along time, tiles per program) of the backward: enough programs for about eight per
    SM, each walking consecutive tiles (the dw/dbias partials are one row per program)."""
    want = override or max(1, -(-_sm_count(device) * 8 // max(1, batch * nblk_d)))
    progs = max(1, min(n_tiles, want))
    n_iter = -(-n_tiles // progs)
    return -(-n_tiles // n_iter), n_iter


def _fast_rcp(x: Tensor) -> bool:
    """The PTX reciprocal in the SiLU: compiled NVIDIA kernels only (the interpreter runs no PTX)."""
    return x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1" and torch.version.hip is None


def _opts(x: Tensor, num_warps: int, maxnreg: int) -> dict:
    """Launch options; the register cap only where the kernels are compiled for a GPU."""
    cap = maxnreg and x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1" and torch.version.hip is None
    return dict(num_warps=num_warps, **({"maxnreg": maxnreg} if cap else {}))


def _fp32(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.to(torch.float32).contiguous() if t is not None else None


# ----------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("mamba_seq::causal_conv1d_fwd", mutates_args=())
def _conv_fwd(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], prefix: Optional[Tensor], silu: bool,
    fwd_cfg: list[int], bwd_cfg: list[int],
) -> Tensor:  # y (batch, dim, L) in x's dtype and layout
    batch, dim, L = x.shape
    K = weight.shape[1]
    y = empty_like_layout(x)
    if batch == 0 or dim == 0 or L == 0:
        return y
    T, NT, BD, warps, pf, maxnreg = fwd_cfg
    tc = not is_channel_last(x)
    w_ = _fp32(weight)
    b_ = _fp32(bias)
    grid = (triton.cdiv(L, NT * T), triton.cdiv(dim, BD), batch)
    _conv_fwd_kernel[grid](
        x, w_, b_ if b_ is not None else w_, prefix if prefix is not None else x, y,
        L, dim,
        *x.stride(), *_strides(prefix), *y.stride(),
        K=K, KH=_halo(K), T=T, NT=NT, BD=BD, TC=tc, HAS_BIAS=bias is not None, HAS_PREFIX=prefix is not None,
        SILU=bool(silu), FAST_RCP=_fast_rcp(x), PF=pf, **_opts(x, warps, maxnreg),
    )
    return y


@_conv_fwd.register_fake
def _conv_fwd_fake(x, weight, bias, prefix, silu, fwd_cfg, bwd_cfg):
    return empty_like_layout(x)


@torch.library.custom_op("mamba_seq::causal_conv1d_bwd", mutates_args=())
def _conv_bwd(
    dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], prefix: Optional[Tensor], silu: bool,
    bwd_cfg: list[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # dx, dweight, dbias (or empty), dprefix (or empty)
    batch, dim, L = x.shape
    K = weight.shape[1]
    T, NT, BD, warps, pf, maxnreg, time_progs = bwd_cfg
    dev = x.device
    dx = empty_like_layout(x)
    dprefix = (torch.zeros(prefix.shape, dtype=prefix.dtype, device=dev) if prefix is not None
               else x.new_empty(0))
    if batch == 0 or dim == 0 or L == 0:
        dw = torch.zeros(weight.shape, dtype=weight.dtype, device=dev)
        db = torch.zeros(bias.shape, dtype=bias.dtype, device=dev) if bias is not None else x.new_empty(0)
        return dx, dw, db, dprefix
    tc = not is_channel_last(x)
    nblk_d = triton.cdiv(dim, BD)
    progs, n_iter = _time_programs(triton.cdiv(L, NT * T), batch, nblk_d, dev, time_progs)
    part = torch.empty((batch * progs, dim, K + 1), dtype=torch.float32, device=dev)
    w_ = _fp32(weight)
    b_ = _fp32(bias)
    _conv_bwd_kernel[(progs, nblk_d, batch)](
        x, w_, b_ if b_ is not None else w_, prefix if prefix is not None else x, dy, dx,
        dprefix if prefix is not None else dx, part,
        L, dim, n_iter,
        *x.stride(), *_strides(prefix), *dy.stride(), *dx.stride(), *_strides(dprefix if prefix is not None else None),
        K=K, KH=_halo(K), T=T, NT=NT, BD=BD, TC=tc, HAS_BIAS=bias is not None, HAS_PREFIX=prefix is not None,
        SILU=bool(silu), FAST_RCP=_fast_rcp(x), PF=pf, **_opts(x, warps, maxnreg),
    )
    sums = part.sum(dim=0)  # (dim, K+1) fp32, a fixed-order reduction
    dw = sums[:, :K].to(weight.dtype, copy=True)  # copies: custom-op outputs may not alias
    db = sums[:, K].to(bias.dtype, copy=True) if bias is not None else x.new_empty(0)
    return dx, dw, db, dprefix


@_conv_bwd.register_fake
def _conv_bwd_fake(dy, x, weight, bias, prefix, silu, bwd_cfg):
    return (
        empty_like_layout(x), weight.new_empty(weight.shape),
        bias.new_empty(bias.shape) if bias is not None else x.new_empty(0),
        prefix.new_empty(prefix.shape) if prefix is not None else x.new_empty(0),
    )


def _like_layout(dy: Tensor, x: Tensor) -> Tensor:
    """dy in x's layout: the backward walks dy like x, so a dy in the other layout (autograd may
    sum the gradients of y's consumers into either) would be read across its contiguous axis;
    one copy is cheaper than that."""
    if x.shape[1] <= 1 or x.shape[2] <= 1:
        return dy
    if is_channel_last(x):
        return dy if dy.stride(1) == 1 else empty_like_layout(x).copy_(dy)
    return dy if dy.stride(2) == 1 else empty_like_layout(x).copy_(dy)


def _setup_context(ctx, inputs, output):
    x, weight, bias, prefix, silu, fwd_cfg, bwd_cfg = inputs
    ctx.save_for_backward(x, weight, bias, prefix)
    ctx.silu = silu
    ctx.bwd_cfg = bwd_cfg
    ctx.set_materialize_grads(False)


def _backward(ctx, dy):
    x, weight, bias, prefix = ctx.saved_tensors
    if dy is None:
        return None, None, None, None, None, None, None
    dx, dw, db, dp = _conv_bwd(_like_layout(dy, x), x, weight, bias, prefix, ctx.silu, ctx.bwd_cfg)
    return (
        dx if ctx.needs_input_grad[0] else None,
        dw if ctx.needs_input_grad[1] else None,
        db if bias is not None and ctx.needs_input_grad[2] else None,
        dp if prefix is not None and ctx.needs_input_grad[3] else None,
        None, None, None,
    )


_conv_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------


def causal_conv1d_triton(
    x: Tensor,  # (batch, dim, L), any strides; bf16/fp16/fp32
    weight: Tensor,  # (dim, k), 1 <= k <= 8
    bias: Optional[Tensor] = None,  # (dim,)
    prefix: Optional[Tensor] = None,  # (batch, dim, k-1)
    silu: bool = False,
    *,
    block_t: Optional[int] = None,
    block_n: Optional[int] = None,
    block_d: Optional[int] = None,
    num_warps: Optional[int] = None,
    prefetch: Optional[int] = None,
    time_programs: int = 0,
) -> Tensor:  # -> y (batch, dim, L) in x's dtype and x's layout (channel-last in, channel-last out)
    """Launch settings (tests and benchmarks): block_t/block_n/block_d/num_warps/prefetch (1..8)
    replace those of `conv_config` for both passes (a register cap then stays off);
    time_programs fixes the backward's programs along time."""
    check_conv_args(x, weight, bias, prefix)
    K = weight.shape[1]
    if K > MAX_K:
        raise ValueError(f"causal_conv1d_triton: width k={K} > {MAX_K}; use causal_conv1d_reference")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"causal_conv1d_triton: x must be fp32, fp16 or bf16, got {x.dtype}")
    if x.shape[0] > 65535:
        raise ValueError(f"causal_conv1d_triton: batch {x.shape[0]} > 65535 (a grid axis)")
    tc = not is_channel_last(x)
    cfgs = []
    for backward in (False, True):
        T, NT, BD, w, pf, maxnreg = conv_config(x.shape[1], K, x.dtype, not tc, backward)
        if block_t or block_n or block_d or num_warps or prefetch:
            maxnreg = 0
        T, NT, BD, w, pf = block_t or T, block_n or NT, block_d or BD, num_warps or w, prefetch or pf
        NT = 1 if tc else NT
        _check_launch(T, NT, BD, K, tc)
        if not 1 <= pf <= 8:
            raise ValueError(f"causal_conv1d: prefetch must be in 1..8, got {pf}")
        cfgs.append([T, NT, BD, w, pf, maxnreg])
    cfgs[1].append(int(time_programs))
    return _conv_fwd(x, weight, bias, prefix, bool(silu), cfgs[0], cfgs[1])
