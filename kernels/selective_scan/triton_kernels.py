"""Triton kernels of the selective scan: segment-parallel forward and backward.

Notation (scan order p = 0..L-1 reads time t = p, or t = L-1-p when REVERSE):
    dt_p = softplus(delta_p + bias)             a_p = exp(dt_p*A) * keep_p   (keep_p = 0 where seq_idx resets)
    x_p  = dt_p * u_p * B_p                     h_p = a_p h_{p-1} + x_p,   h_{-1} = h0
    y_p  = C_p . h_p + D u_p                    out_p = y_p * silu(z_p)

Layout. Every (BD channels, T times) tile holds T consecutive times of one channel in one thread
(T = 16 bytes of the input dtype: one vector load; Triton's coalescing then gives
sizePerThread [1, T], threadsPerWarp [32, 1]). So every scan along time is a sequential chain of
FMAs inside a thread: no shuffles, no shared memory. The N states of a channel travel as one
(BD, NP) tile, also within the thread; the helpers below pick, set, shift and reverse columns of
such tiles with split/join, which compile to register renaming. REVERSE loads time-ascending
(vector loads) and reverses the tile in registers, so every kernel body is written in scan order.

Parallelism over L: the sequence is cut into segments, each scanned by its own programs:
  forward  A `_fwd_state_kernel`  per segment: end state from zero and the segment's decay
           B `_fwd_carry_kernel`  per channel: a short sequential pass over segments -> entering states
           C `_fwd_out_kernel`    per segment: the scan from its entering state -> out; stores the state
                                  entering every backward chunk (the only saved activation)
  backward A `_bwd_state_kernel`  per chunk: the adjoint at the chunk start from zero, and the decay
           B `_bwd_carry_kernel`  per channel: sequential over chunks -> adjoint entering each chunk
           C `_bwd_main_kernel`   per chunk and channel group: recompute the states (a forward sweep
                                  that keeps each tile's entering state in a small scratch), then a
                                  reverse sweep producing every gradient.
Each A/C pass costs one exp2 per (channel, state, position).

The adjoint uses q_p = a_p g_p, g_p = dLoss/dh_p: q_p = a_p (C_p dy_p + q_{p+1}), q past the end is
dLoss/dh_final, and q_0 = dLoss/dh0. Then g_p = C_p dy_p + q_{p+1} and g_p a_p h_{p-1} = q_p h_{p-1}:
    du = D dy + dt sum_n g B      ddt = u sum_n g B + sum_n A q h_prev      dA = sum_t dt q h_prev
    dB = sum_channels g dt u      dC = sum_channels h dy
dB/dC are summed over the channels of a program in registers and accumulated over the program's
channel blocks in place (read-add-write by the same program, no atomics); dA, dD, d(delta_bias)
are written per (batch, chunk) and summed by the caller. Everything is deterministic.

All offsets that can exceed 2^31 are int64. L and the segment sizes are runtime arguments
(`do_not_specialize`), so one compile serves every length (up to the divisible-by-16 flag Triton
keeps on the channel strides).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# in-thread column helpers on (R, K) tiles, K a power of two (compile-time recursion)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _eo(x, K: tl.constexpr):
    # even and odd columns of an (R, K) tile: two (R, K/2) tiles ((R,) when K == 2)
    if K == 2:
        return tl.split(x)
    else:
        return tl.split(tl.reshape(x, (x.shape[0], K // 2, 2)))


@triton.jit
def _il(e, o, K: tl.constexpr):
    # interleave even and odd columns into an (R, K) tile
    if K == 2:
        return tl.join(e, o)
    else:
        return tl.reshape(tl.join(e, o), (e.shape[0], K))


@triton.jit
def _col(x, j: tl.constexpr, K: tl.constexpr):
    # column j -> (R,)
    if K == 1:
        return tl.reshape(x, (x.shape[0],))
    else:
        e, o = _eo(x, K)
        if K == 2:
            if j == 0:
                return e
            else:
                return o
        else:
            if j % 2 == 0:
                return _col(e, j // 2, K // 2)
            else:
                return _col(o, j // 2, K // 2)


@triton.jit
def _set_col(x, j: tl.constexpr, v, K: tl.constexpr):
    # x with column j replaced by v (R,)
    if K == 1:
        return tl.reshape(v, (v.shape[0], 1))
    else:
        e, o = _eo(x, K)
        if K == 2:
            if j == 0:
                return _il(v, o, 2)
            else:
                return _il(e, v, 2)
        else:
            if j % 2 == 0:
                return _il(_set_col(e, j // 2, v, K // 2), o, K)
            else:
                return _il(e, _set_col(o, j // 2, v, K // 2), K)


@triton.jit
def _shl(x, fill, K: tl.constexpr):
    # y[:, j] = x[:, j+1], y[:, K-1] = fill
    if K == 1:
        return tl.reshape(fill, (fill.shape[0], 1))
    else:
        e, o = _eo(x, K)
        if K == 2:
            return _il(o, fill, 2)
        else:
            return _il(o, _shl(e, fill, K // 2), K)


@triton.jit
def _rev(x, K: tl.constexpr):
    # columns in reverse order
    if K == 1:
        return x
    else:
        e, o = _eo(x, K)
        if K == 2:
            return _il(o, e, 2)
        else:
            return _il(_rev(o, K // 2), _rev(e, K // 2), K)


@triton.jit
def _shr(x, fill, K: tl.constexpr):
    # y[:, j] = x[:, j-1], y[:, 0] = fill (reversals are register renaming)
    return _rev(_shl(_rev(x, K), fill, K), K)


@triton.jit
def _first(x, K: tl.constexpr):
    return _col(x, 0, K)


@triton.jit
def _last(x, K: tl.constexpr):
    return _col(x, K - 1, K)


@triton.jit
def _to_scan_order(x, T: tl.constexpr, REVERSE: tl.constexpr):
    if REVERSE:
        return _rev(x, T)
    else:
        return x


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # (a1, b1) earlier, (a2, b2) later: x -> a2*(a1*x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan(a, x):
    # h_j = a_j h_{j-1} + x_j along the in-thread axis 1, from h = 0
    _, h = tl.associative_scan((a, x), 1, _affine_combine)
    return h


@triton.jit
def _rscan(a, x, T: tl.constexpr):
    # q_j = a_j q_{j+1} + x_j, right to left (Triton's reverse scan shuffles, so reverse in registers)
    return _rev(_scan(_rev(a, T), _rev(x, T)), T)


@triton.jit
def _shfl_xor(x, M: tl.constexpr, ASM: tl.constexpr):
    # x from lane ^ M (one warp of 32 rows, one row per lane): a butterfly exchange of every
    # register of x. ASM: the GPU's shuffle; otherwise the same exchange as a row gather, so that
    # the interpreter runs (and the CPU tests check) the lane-sum path.
    if ASM and M == 16:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 16, 0x1f, 0xffffffff;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif ASM and M == 8:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 8, 0x1f, 0xffffffff;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif ASM and M == 4:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 4, 0x1f, 0xffffffff;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif ASM and M == 2:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 2, 0x1f, 0xffffffff;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    elif ASM:
        return tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, 1, 0x1f, 0xffffffff;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        src = tl.arange(0, 32) ^ M
        if len(x.shape) == 2:
            src = src[:, None] + tl.zeros(x.shape, dtype=tl.int32)
        return tl.gather(x, src, 0)


@triton.jit
def _lane_allsum(v, M: tl.constexpr, ASM: tl.constexpr):
    # butterfly all-reduce of a per-lane value over the lane bits M, M/2, ..., 1
    v = v + _shfl_xor(v, M, ASM)
    if M > 1:
        v = _lane_allsum(v, M // 2, ASM)
    return v


@triton.jit
def _lane_reduce_scatter(P, lane, K: tl.constexpr, M: tl.constexpr, SH: tl.constexpr, ASM: tl.constexpr):
    # Sum a (32, K) tile over its 32 rows (one row per lane of one warp) with halving exchanges:
    # at the step with lane bit M (= 1 << SH) a lane keeps the odd columns if that bit is set, the
    # even ones otherwise, and adds its partner's. Ends with one value per lane: the sum of column
    # sum_k bit(lane, 4-k) << k (mod K). 2K-1 + log2(32/K) shuffles instead of 5K for tl.sum(axis=0).
    if K == 1:
        v = tl.reshape(P, (P.shape[0],))
        if M >= 1:
            v = _lane_allsum(v, M, ASM)
        return v
    else:
        e, o = _eo(P, K)
        if K == 2:
            bit = ((lane >> SH) & 1) == 1
        else:
            bit = (((lane >> SH) & 1) == 1)[:, None]
        keep = tl.where(bit, o, e)
        send = tl.where(bit, e, o)
        return _lane_reduce_scatter(keep + _shfl_xor(send, M, ASM), lane, K // 2, M // 2, SH - 1, ASM)


@triton.jit
def _sum_store(P, first_block, ptr, mask, MASKED: tl.constexpr):
    # ptr (+)= P: the first channel block of a program writes, the later ones add
    if first_block:
        if MASKED:
            tl.store(ptr, P, mask=mask)
        else:
            tl.store(ptr, P)
    else:
        if MASKED:
            tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + P, mask=mask)
        else:
            tl.store(ptr, tl.load(ptr) + P)


@triton.jit
def _channel_sums_store(PB0, PC0, PB1, PC1, first_block, bc_base, s_q, n, s_n, t0, L, lane,
                        S: tl.constexpr, T: tl.constexpr, REVERSE: tl.constexpr, MASKED: tl.constexpr,
                        LANE_SUM: tl.constexpr, SHFL_ASM: tl.constexpr):
    # dB/dC partial rows of states n .. n+S-1 at the tile's T positions: bc_base[q*s_q + (n+s)*s_n + t]
    # (+)= sum over the tile's channels of P{B,C}{s}[:, t] (tiles in scan order; q = 0 for dB, 1 for dC).
    if LANE_SUM:  # one warp of 32 channels: one reduce-scatter of all 2*S tiles, one value per lane
        if S == 2:  # column c = 2 (2 j + s) + q
            P = _il(_il(PB0, PB1, 2 * T), _il(PC0, PC1, 2 * T), 4 * T)
        else:  # column c = 2 j + q
            P = _il(PB0, PC0, 2 * T)
        K: tl.constexpr = 2 * S * T
        v = _lane_reduce_scatter(P, lane, K, 16, 4, SHFL_ASM)
        c = ((lane >> 4) & 1) | (((lane >> 3) & 1) << 1) | (((lane >> 2) & 1) << 2) | (((lane >> 1) & 1) << 3) \
            | ((lane & 1) << 4)
        c = c & (K - 1)
        j = c >> S
        if REVERSE:
            j = T - 1 - j
        ptr = bc_base + (c & 1) * s_q + (n + ((c >> 1) & (S - 1))) * s_n + t0 + j
        owner = (lane & (32 // K - 1)) == 0  # lanes that differ only below the column bits hold copies
        if MASKED:
            owner = owner & (t0 + j < L)
        if first_block:
            tl.store(ptr, v, mask=owner)
        else:  # a reduction without a return value (no stall); the same lane adds to an address in
            # block order every time, so the sum is deterministic
            tl.atomic_add(ptr, v, mask=owner, sem="relaxed")
    else:
        tt = t0 + tl.arange(0, T)[None, :]
        m1 = tt < L
        ptr = bc_base + n * s_n + tt
        _sum_store(_to_scan_order(tl.sum(PB0, axis=0)[None, :], T, REVERSE), first_block, ptr, m1, MASKED)
        _sum_store(_to_scan_order(tl.sum(PC0, axis=0)[None, :], T, REVERSE), first_block, ptr + s_q, m1, MASKED)
        if S == 2:
            _sum_store(_to_scan_order(tl.sum(PB1, axis=0)[None, :], T, REVERSE), first_block, ptr + s_n, m1,
                       MASKED)
            _sum_store(_to_scan_order(tl.sum(PC1, axis=0)[None, :], T, REVERSE), first_block, ptr + s_q + s_n,
                       m1, MASKED)


@triton.jit
def _softplus(x):
    # log(1 + e^x) in fp32, exact enough at both ends (torch's threshold 20 for the linear part)
    e = tl.exp2(tl.minimum(x, 20.0) * 1.4426950408889634)
    sp = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log2(1.0 + e) * 0.6931471805599453)
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp2(-x * 1.4426950408889634))


# ----------------------------------------------------------------------------------------------
# per-tile loads (time order in memory, returned in scan order)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _ld(ptrs, mask, T: tl.constexpr, REVERSE: tl.constexpr, MASKED: tl.constexpr):
    if MASKED:
        v = tl.load(ptrs, mask=mask, other=0.0)
    else:
        v = tl.load(ptrs)
    return _to_scan_order(v.to(tl.float32), T, REVERSE)


@triton.jit
def _st(ptrs, v, mask, T: tl.constexpr, REVERSE: tl.constexpr, MASKED: tl.constexpr):
    v = _to_scan_order(v, T, REVERSE).to(ptrs.dtype.element_ty)
    if MASKED:
        tl.store(ptrs, v, mask=mask)
    else:
        tl.store(ptrs, v)


@triton.jit
def _tile_dt(dl_ptrs, mask, bias, T: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
             REVERSE: tl.constexpr, MASKED: tl.constexpr):
    # (raw delta + bias, dt) in scan order; dt = 0 past the end, so a = 1 and x = 0 there
    draw = _ld(dl_ptrs, mask, T, REVERSE, MASKED)
    if HAS_DBIAS:
        draw = draw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(draw)
    else:
        dt = draw
    if MASKED:
        dt = tl.where(_to_scan_order(mask, T, REVERSE), dt, 0.0)
    return draw, dt


@triton.jit
def _tile_keep(seq_ptr, seq_base, t, L, BD: tl.constexpr, T: tl.constexpr, REVERSE: tl.constexpr):
    # keep_p = 0 where the packed sequence changes between scan positions p-1 and p (scan order)
    if REVERSE:
        t_prev = t + 1
        m = (t_prev < L) & (t < L)
    else:
        t_prev = t - 1
        m = (t > 0) & (t < L)
    m2 = m[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
    tp = t[None, :].to(tl.int64) + tl.zeros([BD, 1], dtype=tl.int64)
    s_cur = tl.load(seq_ptr + seq_base + tp, mask=m2, other=0)
    s_prev = tl.load(seq_ptr + seq_base + tp + (t_prev - t)[None, :], mask=m2, other=0)
    keep = tl.where(m2 & (s_cur != s_prev), 0.0, 1.0)
    return _to_scan_order(keep, T, REVERSE)


@triton.jit
def _chunk_range(sb, KS, nchunks, L, T: tl.constexpr):
    # time chunks [k0, k1) of segment sb; chunks below kf are wholly inside [0, L) (unmasked loads)
    k0 = sb * KS
    k1 = tl.minimum(k0 + KS, nchunks)
    kf = tl.minimum(k1, L // T)
    return k0, k1, kf


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _fwd_tile(c, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr, d64, Dv, bias,
              seq_ptr, seq_base, L, dtsum,
              OUTPUT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr,
              SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
              BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, MASKED: tl.constexpr):
    # one (BD, T) tile of time chunk c: advances the states H (BD, NP); OUTPUT: also writes out
    i = tl.arange(0, T)
    t = c * T + i
    t64 = t.to(tl.int64)
    mask = (t < L)[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
    tb = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)  # (BD, T): rows equal, same layout as the tiles
    draw, dt = _tile_dt(dl_base + t64[None, :], mask, bias, T, HAS_DBIAS, SOFTPLUS, REVERSE, MASKED)
    uu = _ld(u_base + t64[None, :], mask, T, REVERSE, MASKED)
    dtu = dt * uu
    if HAS_SEQ:
        keep = _tile_keep(seq_ptr, seq_base, t, L, BD, T, REVERSE)
        dtsum = tl.where(tl.min(keep, axis=1) == 0.0, float("nan"), dtsum + tl.sum(dt, axis=1))
    else:
        dtsum = dtsum + tl.sum(dt, axis=1)
    if OUTPUT:
        if HAS_D:
            y = Dv[:, None] * uu
        else:
            y = tl.zeros([BD, T], dtype=tl.float32)
    for n in tl.static_range(N):
        A2n = tl.load(A_ptr + d64 * N + n) * 1.4426950408889634
        Bn = _ld(B_base + n * s_B_n + tb, mask, T, REVERSE, MASKED)
        a = tl.exp2(dt * A2n[:, None])
        if HAS_SEQ:
            a = a * keep
        x = dtu * Bn
        hn = _col(H, n, NP)
        x = _set_col(x, 0, _first(x, T) + _first(a, T) * hn, T)  # fold the entering state in
        hs = _scan(a, x)
        H = _set_col(H, n, _last(hs, T), NP)
        if OUTPUT:
            Cn = _ld(C_base + n * s_C_n + tb, mask, T, REVERSE, MASKED)
            y += hs * Cn
    if OUTPUT:
        if HAS_Z:
            zz = _ld(z_base + t64[None, :], mask, T, REVERSE, MASKED)
            y = y * zz * _sigmoid(zz)
        _st(o_base + t64[None, :], y, mask, T, REVERSE, MASKED)
    return H, dtsum


@triton.jit
def _fwd_walk(k0, k1, kf, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr, d64, Dv,
              bias, seq_ptr, seq_base, L, dtsum,
              OUTPUT: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr,
              SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
              BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr):
    # chunks [k0, k1) in scan order; [k0, kf) unmasked, [kf, k1) (at most the one tail chunk) masked
    if REVERSE:
        for c in range(kf, k1):
            H, dtsum = _fwd_tile(c, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr, d64,
                                 Dv, bias, seq_ptr, seq_base, L, dtsum, OUTPUT, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS,
                                 HAS_SEQ, REVERSE, BD, N, NP, T, True)
        for cc in range(k0, kf):
            c = kf - 1 - (cc - k0)
            H, dtsum = _fwd_tile(c, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr, d64,
                                 Dv, bias, seq_ptr, seq_base, L, dtsum, OUTPUT, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS,
                                 HAS_SEQ, REVERSE, BD, N, NP, T, False)
    else:
        for c in range(k0, kf):
            H, dtsum = _fwd_tile(c, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr, d64,
                                 Dv, bias, seq_ptr, seq_base, L, dtsum, OUTPUT, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS,
                                 HAS_SEQ, REVERSE, BD, N, NP, T, False)
        for c in range(kf, k1):
            H, dtsum = _fwd_tile(c, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr, d64,
                                 Dv, bias, seq_ptr, seq_base, L, dtsum, OUTPUT, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS,
                                 HAS_SEQ, REVERSE, BD, N, NP, T, True)
    return H, dtsum


@triton.jit
def _state_tile_offsets(base_row, d64, BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr):
    # offsets and mask of a (BD, NP) view of rows base_row + d of an (..., dim, N) fp32 tensor
    nn = tl.arange(0, NP)
    off = (base_row + d64[:, None]) * N + nn[None, :]
    return off, (nn < N)[None, :] & (d64[:, None] >= 0)


@triton.jit
def _zero_states(dtsum, NP: tl.constexpr, T: tl.constexpr):
    # a (BD, NP) zero tile built from an in-thread (BD, T) tile, so it stays in registers of its thread
    z = tl.zeros([dtsum.shape[0], T], dtype=tl.float32)
    if NP == T:
        return z
    elif NP < T:
        return tl.reshape(tl.sum(tl.reshape(z, (dtsum.shape[0], NP, T // NP)), axis=2), (dtsum.shape[0], NP))
    else:
        return tl.reshape(tl.join(_zero_states(dtsum, NP // 2, T), _zero_states(dtsum, NP // 2, T)),
                          (dtsum.shape[0], NP))


@triton.jit(do_not_specialize=["L", "nchunks", "KS", "nseg"])
def _fwd_state_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, seq_ptr,
    hloc_ptr, dts_ptr,
    L, nchunks, KS, nseg, dim, dpg,
    s_u_b, s_u_d, s_dl_b, s_dl_d, s_B_b, s_B_g, s_B_n, s_seq_b,
    HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
    BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
):
    # pass A: per segment, the end state from a zero start -> hloc (b, nseg, dim, N), and the sum of
    # dt -> dts (b, nseg, dim) (NaN where the segment holds a seq_idx reset: its decay is 0)
    sb = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d64 = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    g = ((pid_d * BD) // dpg).to(tl.int64)
    if HAS_DBIAS:
        bias = tl.load(bias_ptr + d64)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    k0, k1, kf = _chunk_range(sb, KS, nchunks, L, T)
    dtsum = tl.zeros([BD], dtype=tl.float32)
    H = _zero_states(dtsum, NP, T)
    H, dtsum = _fwd_walk(k0, k1, kf, H, u_ptr + pid_b * s_u_b + d64[:, None] * s_u_d,
                         delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d, u_ptr, u_ptr,
                         B_ptr + pid_b * s_B_b + g * s_B_g, B_ptr, s_B_n, 0, A_ptr, d64, bias, bias,
                         seq_ptr, pid_b * s_seq_b, L, dtsum,
                         False, False, False, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T)
    row = (pid_b * nseg + sb) * dim
    off, m = _state_tile_offsets(row, d64, BD, N, NP)
    tl.store(hloc_ptr + off, H, mask=m)
    tl.store(dts_ptr + row + d64, dtsum)


@triton.jit(do_not_specialize=["nseg"])
def _carry_kernel(
    loc_ptr, dts_ptr, A_ptr, init_ptr, final_ptr,
    nseg, dim,
    HAS_INIT: tl.constexpr, BACKWARD: tl.constexpr, REVERSE: tl.constexpr,
    BDC: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
):
    # pass B (forward and backward): the sequential pass over segments, per (channel, state).
    # Segments in carry order (scan order forward; reverse scan order backward):
    #     in_s = S ;  S = exp2(A2 * dts_s) * S + loc_s     (dts_s = NaN: decay 0)
    # loc (b, nseg, dim, N) is overwritten by in_s; the last S goes to final (b, dim, N).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d64 = (pid_d * BDC + tl.arange(0, BDC)).to(tl.int64)
    nn = tl.arange(0, NP)
    m = (d64[:, None] < dim) & (nn < N)[None, :]
    A2 = tl.load(A_ptr + d64[:, None] * N + nn[None, :], mask=m, other=0.0) * 1.4426950408889634
    if HAS_INIT:
        S = tl.load(init_ptr + (pid_b * dim + d64[:, None]) * N + nn[None, :], mask=m, other=0.0)
    else:
        S = tl.zeros([BDC, NP], dtype=tl.float32)
    ascending = BACKWARD == REVERSE  # forward+!REVERSE or backward+REVERSE walk segments up in time
    for k in range(0, nseg):
        if ascending:
            sb = k
        else:
            sb = nseg - 1 - k
        row = (pid_b * nseg + sb) * dim + d64
        ds = tl.load(dts_ptr + row, mask=d64 < dim, other=0.0)
        loc = tl.load(loc_ptr + row[:, None] * N + nn[None, :], mask=m, other=0.0)
        tl.store(loc_ptr + row[:, None] * N + nn[None, :], S, mask=m)
        decay = tl.where((ds == ds)[:, None], tl.exp2(A2 * ds[:, None]), 0.0)
        S = decay * S + loc
    tl.store(final_ptr + (pid_b * dim + d64[:, None]) * N + nn[None, :], S, mask=m)


@triton.jit(do_not_specialize=["L", "nchunks", "KS", "nseg", "KB", "nseg_b"])
def _fwd_out_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, hin_ptr,
    out_ptr, states_ptr,
    L, nchunks, KS, nseg, KB, nseg_b, dim, dpg,
    s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_seq_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr, SAVE_STATES: tl.constexpr,
    BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
):
    # pass C: per segment (KS chunks), the scan from its entering state -> out; SAVE_STATES: the
    # state entering every backward chunk (KB chunks, KS a multiple) -> states (b, nseg_b, dim, N)
    sb = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d64 = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    g = ((pid_d * BD) // dpg).to(tl.int64)
    if HAS_DBIAS:
        bias = tl.load(bias_ptr + d64)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d64)
    else:
        Dv = bias
    dtsum = tl.zeros([BD], dtype=tl.float32)
    off, m = _state_tile_offsets((pid_b * nseg + sb) * dim, d64, BD, N, NP)
    H = _zero_states(dtsum, NP, T) + tl.load(hin_ptr + off, mask=m, other=0.0)
    u_base = u_ptr + pid_b * s_u_b + d64[:, None] * s_u_d
    dl_base = delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d
    z_base = z_ptr + pid_b * s_z_b + d64[:, None] * s_z_d
    o_base = out_ptr + pid_b * s_o_b + d64[:, None] * s_o_d
    B_base = B_ptr + pid_b * s_B_b + g * s_B_g
    C_base = C_ptr + pid_b * s_C_b + g * s_C_g
    nsub = KS // KB
    k0s = sb * KS
    nsub = tl.minimum(nsub, (nchunks - k0s + KB - 1) // KB)  # sub-segments that exist
    for jj in range(0, nsub):
        if REVERSE:
            j = nsub - 1 - jj
        else:
            j = jj
        bseg = sb * (KS // KB) + j  # backward chunk index
        k0, k1, kf = _chunk_range(bseg, KB, nchunks, L, T)
        if SAVE_STATES:
            offs, ms = _state_tile_offsets((pid_b * nseg_b + bseg) * dim, d64, BD, N, NP)
            tl.store(states_ptr + offs, H, mask=ms)
        H, dtsum = _fwd_walk(k0, k1, kf, H, u_base, dl_base, z_base, o_base, B_base, C_base, s_B_n, s_C_n, A_ptr,
                             d64, Dv, bias, seq_ptr, pid_b * s_seq_b, L, dtsum,
                             True, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T)


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dy_tile(do_base, z_base, t64, mask, T: tl.constexpr, HAS_Z: tl.constexpr, REVERSE: tl.constexpr,
             MASKED: tl.constexpr):
    dout = _ld(do_base + t64[None, :], mask, T, REVERSE, MASKED)
    if HAS_Z:
        zz = _ld(z_base + t64[None, :], mask, T, REVERSE, MASKED)
        sz = _sigmoid(zz)
        dy = dout * zz * sz
    else:
        zz = dout
        sz = dout
        dy = dout
    return dout, zz, sz, dy


@triton.jit
def _bwd_state_tile(c, Q, do_base, dl_base, z_base, C_base, s_C_n, A_ptr, d64, bias, seq_ptr, seq_base, L, dtsum,
                    HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
                    REVERSE: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
                    MASKED: tl.constexpr):
    # one tile of the adjoint from the right: Q (BD, NP) = q entering from later positions
    i = tl.arange(0, T)
    t = c * T + i
    t64 = t.to(tl.int64)
    mask = (t < L)[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
    tb = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)
    _, dt = _tile_dt(dl_base + t64[None, :], mask, bias, T, HAS_DBIAS, SOFTPLUS, REVERSE, MASKED)
    _, _, _, dy = _dy_tile(do_base, z_base, t64, mask, T, HAS_Z, REVERSE, MASKED)
    if HAS_SEQ:
        keep = _tile_keep(seq_ptr, seq_base, t, L, BD, T, REVERSE)
        dtsum = tl.where(tl.min(keep, axis=1) == 0.0, float("nan"), dtsum + tl.sum(dt, axis=1))
    else:
        dtsum = dtsum + tl.sum(dt, axis=1)
    for n in tl.static_range(N):
        A2n = tl.load(A_ptr + d64 * N + n) * 1.4426950408889634
        Cn = _ld(C_base + n * s_C_n + tb, mask, T, REVERSE, MASKED)
        a = tl.exp2(dt * A2n[:, None])
        if HAS_SEQ:
            a = a * keep
        w = a * (Cn * dy)
        qn = _col(Q, n, NP)
        w = _set_col(w, T - 1, _last(w, T) + _last(a, T) * qn, T)
        q = _rscan(a, w, T)
        Q = _set_col(Q, n, _first(q, T), NP)
    return Q, dtsum


@triton.jit
def _bwd_state_walk(k0, k1, kf, Q, do_base, dl_base, z_base, C_base, s_C_n, A_ptr, d64, bias, seq_ptr, seq_base,
                    L, dtsum,
                    HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
                    REVERSE: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr):
    # chunks [k0, k1) in reverse scan order
    if REVERSE:
        for c in range(k0, kf):
            Q, dtsum = _bwd_state_tile(c, Q, do_base, dl_base, z_base, C_base, s_C_n, A_ptr, d64, bias, seq_ptr,
                                       seq_base, L, dtsum, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP,
                                       T, False)
        for c in range(kf, k1):
            Q, dtsum = _bwd_state_tile(c, Q, do_base, dl_base, z_base, C_base, s_C_n, A_ptr, d64, bias, seq_ptr,
                                       seq_base, L, dtsum, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP,
                                       T, True)
    else:
        for c in range(kf, k1):
            Q, dtsum = _bwd_state_tile(c, Q, do_base, dl_base, z_base, C_base, s_C_n, A_ptr, d64, bias, seq_ptr,
                                       seq_base, L, dtsum, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP,
                                       T, True)
        for cc in range(k0, kf):
            c = kf - 1 - (cc - k0)
            Q, dtsum = _bwd_state_tile(c, Q, do_base, dl_base, z_base, C_base, s_C_n, A_ptr, d64, bias, seq_ptr,
                                       seq_base, L, dtsum, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP,
                                       T, False)
    return Q, dtsum


@triton.jit(do_not_specialize=["L", "nchunks", "KB", "nseg_b"])
def _bwd_state_kernel(
    dout_ptr, delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, seq_ptr,
    qloc_ptr, dts_ptr,
    L, nchunks, KB, nseg_b, dim, dpg,
    s_do_b, s_do_d, s_dl_b, s_dl_d, s_z_b, s_z_d, s_C_b, s_C_g, s_C_n, s_seq_b,
    HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr,
    REVERSE: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
):
    # backward pass A: per backward chunk, q at its first scan position from a zero carry -> qloc,
    # and the chunk's sum of dt -> dts (NaN where it holds a reset)
    sb = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d64 = (pid_d * BD + tl.arange(0, BD)).to(tl.int64)
    g = ((pid_d * BD) // dpg).to(tl.int64)
    if HAS_DBIAS:
        bias = tl.load(bias_ptr + d64)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    k0, k1, kf = _chunk_range(sb, KB, nchunks, L, T)
    dtsum = tl.zeros([BD], dtype=tl.float32)
    Q = _zero_states(dtsum, NP, T)
    Q, dtsum = _bwd_state_walk(k0, k1, kf, Q, dout_ptr + pid_b * s_do_b + d64[:, None] * s_do_d,
                               delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d,
                               z_ptr + pid_b * s_z_b + d64[:, None] * s_z_d,
                               C_ptr + pid_b * s_C_b + g * s_C_g, s_C_n, A_ptr, d64, bias, seq_ptr, pid_b * s_seq_b,
                               L, dtsum, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T)
    row = (pid_b * nseg_b + sb) * dim
    off, m = _state_tile_offsets(row, d64, BD, N, NP)
    tl.store(qloc_ptr + off, Q, mask=m)
    tl.store(dts_ptr + row + d64, dtsum)


@triton.jit
def _bwd_fwd_tile(c, H, scr_ptr, kk, u_base, dl_base, B_base, s_B_n, A_ptr, d64, bias, seq_ptr, seq_base, L,
                  HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
                  BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, MASKED: tl.constexpr):
    # forward sweep of the backward: keep the state entering tile kk in the scratch (KB, N, BD),
    # state-major so that the reverse sweep reads one state of all lanes with one coalesced load
    rows = tl.arange(0, BD)
    i = tl.arange(0, T)
    t = c * T + i
    t64 = t.to(tl.int64)
    mask = (t < L)[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
    tb = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)
    _, dt = _tile_dt(dl_base + t64[None, :], mask, bias, T, HAS_DBIAS, SOFTPLUS, REVERSE, MASKED)
    dtu = dt * _ld(u_base + t64[None, :], mask, T, REVERSE, MASKED)
    if HAS_SEQ:
        keep = _tile_keep(seq_ptr, seq_base, t, L, BD, T, REVERSE)
    for n in tl.static_range(N):
        hn = _col(H, n, NP)
        tl.store(scr_ptr + (kk * N + n) * BD + rows, hn)
        A2n = tl.load(A_ptr + d64 * N + n) * 1.4426950408889634
        Bn = _ld(B_base + n * s_B_n + tb, mask, T, REVERSE, MASKED)
        a = tl.exp2(dt * A2n[:, None])
        if HAS_SEQ:
            a = a * keep
        x = dtu * Bn
        x = _set_col(x, 0, _first(x, T) + _first(a, T) * hn, T)
        H = _set_col(H, n, _last(_scan(a, x), T), NP)
    return H


@triton.jit
def _bwd_state_grads(n, An, hin, qn, Bn, Cn, dt, dtu, dy, keep, q_rows, dA_rows,
                     HAS_SEQ: tl.constexpr, LANE_SUM: tl.constexpr, T: tl.constexpr):
    # one state of the reverse sweep: h (recomputed from the entering state hin), the adjoint q from
    # the carry qn (stored back for the next tile), g_p = C_p dy_p + q_{p+1} and q_p h_{p-1}
    a = tl.exp2(dt * (An * 1.4426950408889634)[:, None])
    if HAS_SEQ:
        a = a * keep
    x = dtu * Bn
    x = _set_col(x, 0, _first(x, T) + _first(a, T) * hin, T)
    h = _scan(a, x)
    cdy = Cn * dy
    w = a * cdy
    w = _set_col(w, T - 1, _last(w, T) + _last(a, T) * qn, T)
    q = _rscan(a, w, T)
    tl.store(q_rows + n, _first(q, T))
    g = cdy + _shl(q, qn, T)
    qh = q * _shr(h, hin, T)  # q_p h_{p-1} = g_p a_p h_{p-1}
    if LANE_SUM:  # same lane, same address, in order: deterministic
        tl.atomic_add(dA_rows + n, tl.sum(qh * dt, axis=1), sem="relaxed")
    else:
        tl.store(dA_rows + n, tl.load(dA_rows + n) + tl.sum(qh * dt, axis=1))
    return h, g, qh


@triton.jit
def _bwd_main_tile(c, q_rows, dA_rows, scr_ptr, kk, first_block, do_base, u_base, dl_base, z_base, du_base, ddl_base, dz_base,
                   B_base, C_base, s_B_n, s_C_n, bc_base, s_bc_q, s_bc_n, A_ptr, d64, Dv, bias, seq_ptr, seq_base,
                   L, dD_acc, db_acc,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr, LANE_SUM: tl.constexpr, SHFL_ASM: tl.constexpr,
                   UNROLL: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
                   MASKED: tl.constexpr):
    # reverse sweep: every gradient of tile c. The adjoint carry q (moving to earlier positions) and
    # the dA sums live in memory rows of the program's channels (q_rows, dA_rows: (BD,) pointers to
    # N consecutive fp32), so the state loop can stay a loop: unrolled, its 16 states' loads and
    # temporaries would not fit in registers. UNROLL = 2 (N even) runs two states per iteration:
    # two independent dependency chains, and one lane reduce-scatter for their four dB/dC tiles.
    rows = tl.arange(0, BD)
    i = tl.arange(0, T)
    t0 = c * T
    t = t0 + i
    t64 = t.to(tl.int64)
    mask = (t < L)[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
    tb = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)
    _, dt = _tile_dt(dl_base + t64[None, :], mask, bias, T, HAS_DBIAS, SOFTPLUS, REVERSE, MASKED)
    uu = _ld(u_base + t64[None, :], mask, T, REVERSE, MASKED)
    _, _, _, dy = _dy_tile(do_base, z_base, t64, mask, T, HAS_Z, REVERSE, MASKED)
    dtu = dt * uu
    if HAS_SEQ:
        keep = _tile_keep(seq_ptr, seq_base, t, L, BD, T, REVERSE)
    else:
        keep = dt
    y = tl.zeros([BD, T], dtype=tl.float32)
    gB = tl.zeros([BD, T], dtype=tl.float32)  # sum_n g B
    qhA = tl.zeros([BD, T], dtype=tl.float32)  # sum_n A q h_prev
    # the loads of the next iteration's states are issued before this one's are computed (their
    # latency hidden by the work); the last iteration reloads the first states, unused
    An1 = tl.load(A_ptr + d64 * N)
    hin1 = tl.load(scr_ptr + kk * N * BD + rows)
    qn1 = tl.load(q_rows)
    Bn1 = _ld(B_base + tb, mask, T, REVERSE, MASKED)
    Cn1 = _ld(C_base + tb, mask, T, REVERSE, MASKED)
    if UNROLL == 2:
        Am1 = tl.load(A_ptr + d64 * N + 1)
        him1 = tl.load(scr_ptr + (kk * N + 1) * BD + rows)
        qm1 = tl.load(q_rows + 1)
        Bm1 = _ld(B_base + s_B_n + tb, mask, T, REVERSE, MASKED)
        Cm1 = _ld(C_base + s_C_n + tb, mask, T, REVERSE, MASKED)
    for n in range(0, N, UNROLL):
        An = An1
        hin = hin1
        qn = qn1
        Bn = Bn1
        Cn = Cn1
        n1 = (n + UNROLL) % N
        An1 = tl.load(A_ptr + d64 * N + n1)
        hin1 = tl.load(scr_ptr + (kk * N + n1) * BD + rows)
        qn1 = tl.load(q_rows + n1)
        Bn1 = _ld(B_base + n1 * s_B_n + tb, mask, T, REVERSE, MASKED)
        Cn1 = _ld(C_base + n1 * s_C_n + tb, mask, T, REVERSE, MASKED)
        if UNROLL == 2:
            Am = Am1
            him = him1
            qm = qm1
            Bm = Bm1
            Cm = Cm1
            Am1 = tl.load(A_ptr + d64 * N + n1 + 1)
            him1 = tl.load(scr_ptr + (kk * N + n1 + 1) * BD + rows)
            qm1 = tl.load(q_rows + n1 + 1)
            Bm1 = _ld(B_base + (n1 + 1) * s_B_n + tb, mask, T, REVERSE, MASKED)
            Cm1 = _ld(C_base + (n1 + 1) * s_C_n + tb, mask, T, REVERSE, MASKED)
        h, g, qh = _bwd_state_grads(n, An, hin, qn, Bn, Cn, dt, dtu, dy, keep, q_rows, dA_rows, HAS_SEQ, LANE_SUM, T)
        y += h * Cn
        gB += g * Bn
        qhA += qh * An[:, None]
        if UNROLL == 2:
            h2, g2, qh2 = _bwd_state_grads(n + 1, Am, him, qm, Bm, Cm, dt, dtu, dy, keep, q_rows, dA_rows, HAS_SEQ,
                                           LANE_SUM, T)
            y += h2 * Cm
            gB += g2 * Bm
            qhA += qh2 * Am[:, None]
            _channel_sums_store(g * dtu, h * dy, g2 * dtu, h2 * dy, first_block, bc_base, s_bc_q, n, s_bc_n, t0, L,
                                rows, 2, T, REVERSE, MASKED, LANE_SUM, SHFL_ASM)
        else:
            _channel_sums_store(g * dtu, h * dy, g, h, first_block, bc_base, s_bc_q, n, s_bc_n, t0, L, rows, 1, T,
                                REVERSE, MASKED, LANE_SUM, SHFL_ASM)
    # z, dout and the raw delta are read again (cache hits) rather than kept live through the loop
    du = dt * gB
    ddt = uu * gB + qhA
    if HAS_D:
        y += Dv[:, None] * uu
        du += Dv[:, None] * dy
        dD_acc += tl.sum(dy * uu, axis=1)
    if HAS_Z:
        dout, zz, sz, _ = _dy_tile(do_base, z_base, t64, mask, T, HAS_Z, REVERSE, MASKED)
        dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
        _st(dz_base + t64[None, :], dz, mask, T, REVERSE, MASKED)
    if SOFTPLUS:
        draw, _ = _tile_dt(dl_base + t64[None, :], mask, bias, T, HAS_DBIAS, False, REVERSE, MASKED)
        ddt = ddt * _sigmoid(draw)
    if MASKED:
        ddt = tl.where(_to_scan_order(mask, T, REVERSE), ddt, 0.0)
    db_acc += tl.sum(ddt, axis=1)
    _st(du_base + t64[None, :], du, mask, T, REVERSE, MASKED)
    _st(ddl_base + t64[None, :], ddt, mask, T, REVERSE, MASKED)
    return dD_acc, db_acc


@triton.jit(do_not_specialize=["L", "nchunks", "KB", "nseg_b", "nblk"])
def _bwd_main_kernel(
    dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr,
    states_ptr, qin_ptr, scr_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBCp_ptr, dAp_ptr, dDp_ptr, dbp_ptr,
    L, nchunks, KB, nseg_b, dim, dpg, nsuper, nblk,
    s_do_b, s_do_d, s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d, s_g_b, s_g_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_bc_q, s_bc_n, s_seq_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr, LANE_SUM: tl.constexpr, SHFL_ASM: tl.constexpr,
    UNROLL: tl.constexpr, BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
):
    # one program per (backward chunk, group x channel super-block, batch); it walks its nblk
    # blocks of BD channels. du/ddelta/dz: contiguous (b, dim, L) (strides s_g_*); dBCp:
    # (2, b, G, nsuper, N, L) fp32 dB and dC partial rows (strides s_bc_q, s_bc_n = L); dAp:
    # (b, nseg_b, dim, N), dDp/dbp: (b, nseg_b, dim) fp32 partials. LANE_SUM (BD = 32, one warp):
    # dB/dC channel sums by lane exchanges, the GPU's shuffles when SHFL_ASM, else emulated.
    sb = tl.program_id(0)
    pid_gs = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    G = dim // dpg
    gi = pid_gs // nsuper
    sup = pid_gs % nsuper
    g = gi.to(tl.int64)
    k0, k1, kf = _chunk_range(sb, KB, nchunks, L, T)
    nk = k1 - k0
    prog = (pid_b * nseg_b + sb) * (G * nsuper) + pid_gs
    scr = scr_ptr + prog * KB * BD * N
    B_base = B_ptr + pid_b * s_B_b + g * s_B_g
    C_base = C_ptr + pid_b * s_C_b + g * s_C_g
    bc_base = dBCp_ptr + ((pid_b * G + g) * nsuper + sup) * N * s_bc_n
    seq_base = pid_b * s_seq_b
    for jb in range(0, nblk):
        d64 = (gi * dpg + (sup * nblk + jb) * BD + tl.arange(0, BD)).to(tl.int64)
        if HAS_DBIAS:
            bias = tl.load(bias_ptr + d64)
        else:
            bias = tl.zeros([BD], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + d64)
        else:
            Dv = bias
        u_base = u_ptr + pid_b * s_u_b + d64[:, None] * s_u_d
        dl_base = delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d
        do_base = dout_ptr + pid_b * s_do_b + d64[:, None] * s_do_d
        z_base = z_ptr + pid_b * s_z_b + d64[:, None] * s_z_d
        out_row = pid_b * s_g_b + d64[:, None] * s_g_d
        dtsum = tl.zeros([BD], dtype=tl.float32)
        row = (pid_b * nseg_b + sb) * dim
        off, m = _state_tile_offsets(row, d64, BD, N, NP)
        # forward sweep (scan order): the state entering each tile -> scratch slot (scan index kk).
        # Barriers: the scratch and the dB/dC rows are reused across blocks by other threads.
        tl.debug_barrier()
        H = _zero_states(dtsum, NP, T) + tl.load(states_ptr + off, mask=m, other=0.0)
        if REVERSE:
            for c in range(kf, k1):
                H = _bwd_fwd_tile(c, H, scr, k1 - 1 - c, u_base, dl_base, B_base, s_B_n, A_ptr, d64, bias, seq_ptr,
                                  seq_base, L, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T, True)
            for cc in range(k0, kf):
                c = kf - 1 - (cc - k0)
                H = _bwd_fwd_tile(c, H, scr, k1 - 1 - c, u_base, dl_base, B_base, s_B_n, A_ptr, d64, bias, seq_ptr,
                                  seq_base, L, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T, False)
        else:
            for c in range(k0, kf):
                H = _bwd_fwd_tile(c, H, scr, c - k0, u_base, dl_base, B_base, s_B_n, A_ptr, d64, bias, seq_ptr,
                                  seq_base, L, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T, False)
            for c in range(kf, k1):
                H = _bwd_fwd_tile(c, H, scr, c - k0, u_base, dl_base, B_base, s_B_n, A_ptr, d64, bias, seq_ptr,
                                  seq_base, L, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T, True)
        # reverse sweep; q starts as the carry entering the chunk (qin, updated in place), dA at 0
        tl.debug_barrier()
        q_rows = qin_ptr + (row + d64) * N
        dA_rows = dAp_ptr + (row + d64) * N
        tl.store(dAp_ptr + off, _zero_states(dtsum, NP, T), mask=m)
        dD_acc = tl.zeros([BD], dtype=tl.float32)
        db_acc = tl.zeros([BD], dtype=tl.float32)
        first_block = jb == 0
        if REVERSE:
            for c in range(k0, kf):
                dD_acc, db_acc = _bwd_main_tile(
                    c, q_rows, dA_rows, scr, k1 - 1 - c, first_block, do_base, u_base, dl_base, z_base,
                    du_ptr + out_row, ddelta_ptr + out_row, dz_ptr + out_row, B_base, C_base, s_B_n, s_C_n, bc_base,
                    s_bc_q, s_bc_n, A_ptr, d64, Dv, bias, seq_ptr, seq_base, L, dD_acc, db_acc,
                    HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, LANE_SUM, SHFL_ASM, UNROLL, BD, N, NP, T, False)
            for c in range(kf, k1):
                dD_acc, db_acc = _bwd_main_tile(
                    c, q_rows, dA_rows, scr, k1 - 1 - c, first_block, do_base, u_base, dl_base, z_base,
                    du_ptr + out_row, ddelta_ptr + out_row, dz_ptr + out_row, B_base, C_base, s_B_n, s_C_n, bc_base,
                    s_bc_q, s_bc_n, A_ptr, d64, Dv, bias, seq_ptr, seq_base, L, dD_acc, db_acc,
                    HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, LANE_SUM, SHFL_ASM, UNROLL, BD, N, NP, T, True)
        else:
            for c in range(kf, k1):
                dD_acc, db_acc = _bwd_main_tile(
                    c, q_rows, dA_rows, scr, c - k0, first_block, do_base, u_base, dl_base, z_base,
                    du_ptr + out_row, ddelta_ptr + out_row, dz_ptr + out_row, B_base, C_base, s_B_n, s_C_n, bc_base,
                    s_bc_q, s_bc_n, A_ptr, d64, Dv, bias, seq_ptr, seq_base, L, dD_acc, db_acc,
                    HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, LANE_SUM, SHFL_ASM, UNROLL, BD, N, NP, T, True)
            for cc in range(k0, kf):
                c = kf - 1 - (cc - k0)
                dD_acc, db_acc = _bwd_main_tile(
                    c, q_rows, dA_rows, scr, c - k0, first_block, do_base, u_base, dl_base, z_base,
                    du_ptr + out_row, ddelta_ptr + out_row, dz_ptr + out_row, B_base, C_base, s_B_n, s_C_n, bc_base,
                    s_bc_q, s_bc_n, A_ptr, d64, Dv, bias, seq_ptr, seq_base, L, dD_acc, db_acc,
                    HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, LANE_SUM, SHFL_ASM, UNROLL, BD, N, NP, T, False)
        if HAS_D:
            tl.store(dDp_ptr + row + d64, dD_acc)
        if HAS_DBIAS:
            tl.store(dbp_ptr + row + d64, db_acc)
