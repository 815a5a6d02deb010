"""Triton kernels of the selective scan (forward, backward carry pass, backward chunk pass).

Notation (scan order p = 0..L-1; position p reads time t = p, or t = L-1-p when REVERSE):
    dt_p = softplus(delta_p + bias)             a_p = exp(dt_p*A) * keep_p   (keep_p = 0 where seq_idx resets)
    x_p  = dt_p * u_p * B_p                     h_p = a_p h_{p-1} + x_p,   h_{-1} = h0
    y_p  = C_p . h_p + D u_p                    out_p = y_p * silu(z_p)

Tiles are (BD channels, T positions); the N states are a static loop (like mamba's CUDA kernel),
so each state's chunk recurrence is a 1-D `tl.associative_scan` along T with the affine combine,
and the per-channel states (N values) travel packed in the first N columns of a (BD, T) tile.

Forward (`_fwd_kernel`): one program per (batch, BD channels) walks the chunks in scan order,
carrying h; inside a chunk h = scan(a, x) + cumprod(a) * h_in. One exp2 per (channel, n, position).
The state entering every chunk is stored (b, nchunks, dim, N) fp32: the only saved activation.

Backward, two launches:
  `_bwd_carry_kernel`: per (batch, BD channels), chunks in reverse scan order, computes
      R_c = dLoss/dh at the last position of chunk c from everything after it (R_last = dh_final):
      R_{c-1} = sum_p W_p C_p dy_p + W_end R_c,  W_p = prod_{s=chunk start..p} a_s = exp2(A2*cumsum(dt))
      A reduction, no scan: one exp2 per element. R_{-1} is dLoss/dh0.
  `_bwd_chunk_kernel`: one program per (chunk, channel block, batch), all independent: recompute
      h from the saved entering state (scan, one exp2), the reverse scan of
      g_p = C_p dy_p + a_{p+1} g_{p+1} from R_c (one more exp2 for a_{p+1}), then every gradient.
      dB/dC are summed over the program's channels in registers and written as fp32 partials per
      channel block (summed on the host side); dA, dD, d(delta_bias) go by atomic adds into a few
      fp32 slots (summed on the host side).

Chunks that lie wholly inside [0, L) load and store without masks (so the unit-stride time
axis vectorises); the one tail chunk is a second, masked instance of the same code (MASKED).
In REVERSE mode chunk c holds times [L-(c+1)T, L-cT) in ascending memory order and the scans run
right to left, so no flipped copies are made and loads stay ascending.

All offsets that can exceed 2^31 are computed in int64. L is never a compile-time constant
(`do_not_specialize`), so one compile serves every length (up to the divisible-by-16 flag Triton
keeps on the channel strides).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # (a1, b1) earlier, (a2, b2) later: x -> a2*(a1*x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) in fp32, exact enough at both ends (torch's threshold 20 for the linear part)
    e = tl.exp2(tl.minimum(x, 20.0) * 1.4426950408889634)
    sp = tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log2(1.0 + e) * 0.6931471805599453)
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp2(-x * 1.4426950408889634))


@triton.jit
def _load_dt(delta_ptr, off_dl, mask_dl, bias, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    dt = tl.load(delta_ptr + off_dl, mask=mask_dl, other=0.0).to(tl.float32)
    if HAS_DBIAS:
        dt = dt + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask_dl, dt, 0.0)


@triton.jit
def _keep(seq_ptr, seq_base, p, t, L, REVERSE: tl.constexpr):
    # keep_p = 0 where the packed sequence changes between scan positions p-1 and p; 1 elsewhere
    # (also 1 at p = 0 and past the end)
    if REVERSE:
        t_prev = t + 1
    else:
        t_prev = t - 1
    m = (p > 0) & (p < L)
    s_cur = tl.load(seq_ptr + seq_base + t.to(tl.int64), mask=m, other=0)
    s_prev = tl.load(seq_ptr + seq_base + t_prev.to(tl.int64), mask=m, other=0)
    return tl.where(m & (s_cur != s_prev), 0.0, 1.0)



@triton.jit
def _col(Hp, i, n: tl.constexpr):
    # column n of a (BD, T) tile -> (BD,)
    return tl.sum(tl.where(i[None, :] == n, Hp, 0.0), axis=1)


@triton.jit
def _ld(ptrs, mask, MASKED: tl.constexpr):
    if MASKED:
        v = tl.load(ptrs, mask=mask, other=0.0)
    else:
        v = tl.load(ptrs)
    return v.to(tl.float32)


@triton.jit
def _load_dt2(ptrs, mask, bias, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr, MASKED: tl.constexpr):
    dt = _ld(ptrs, mask, MASKED)
    if HAS_DBIAS:
        dt = dt + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    if MASKED:
        dt = tl.where(mask, dt, 0.0)
    return dt


@triton.jit
def _fwd_chunk(pid_b, c, H, L, nchunks, dim, d, d64, i, g, Dv, bias, u_base, dl_base, z_base, o_base,
               B_base, C_base, s_B_n, s_C_n, seq_ptr, seq_base, A_ptr, states_ptr, is_last, colN,
               HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
               HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr, SAVE_STATES: tl.constexpr,
               BD: tl.constexpr, N: tl.constexpr, T: tl.constexpr, MASKED: tl.constexpr):
    # one chunk of the forward; MASKED = False only for chunks that lie wholly inside [0, L)
    if REVERSE:  # chunk c holds times [L-(c+1)T, L-cT), scanned right to left
        p = c * T + (T - 1 - i)
        t = L - (c + 1) * T + i
    else:
        p = c * T + i  # scan positions (T,)
        t = p
    mask_l = p < L
    t64 = t.to(tl.int64)
    mask_dl = mask_l[None, :] & (d[:, None] < dim)
    t_bd = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)  # same layout as the (BD, T) tiles
    mask_bd = mask_l[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
    dt = _load_dt2(dl_base + t64[None, :], mask_dl, bias, HAS_DBIAS, SOFTPLUS, MASKED)
    uu = _ld(u_base + t64[None, :], mask_dl, MASKED)
    if HAS_SEQ:
        keep = _keep(seq_ptr, seq_base, p, t, L, REVERSE)
    if SAVE_STATES:
        tl.store(states_ptr + ((pid_b * nchunks + c) * dim + d64[:, None]) * N + i[None, :], H, mask=colN)
    dtu = dt * uu
    if HAS_D:
        y = Dv[:, None] * uu
    else:
        y = tl.zeros([BD, T], dtype=tl.float32)
    for n in tl.static_range(N):
        A2n = tl.load(A_ptr + d64 * N + n).to(tl.float32) * 1.4426950408889634  # (BD,)
        Bn = _ld(B_base + n * s_B_n + t_bd, mask_bd, MASKED)  # (BD, T), rows equal
        Cn = _ld(C_base + n * s_C_n + t_bd, mask_bd, MASKED)  # (BD, T), rows equal
        a = tl.exp2(dt * A2n[:, None])  # 1 past the end (dt = 0)
        if HAS_SEQ:
            a = a * keep[None, :]
        ca, hl = tl.associative_scan((a, dtu * Bn), 1, _affine_combine, reverse=REVERSE)
        hs = hl + ca * _col(H, i, n)[:, None]
        y += hs * Cn
        H = tl.where(i[None, :] == n, tl.sum(tl.where(is_last, hs, 0.0), axis=1)[:, None], H)
    if HAS_Z:
        zz = _ld(z_base + t64[None, :], mask_dl, MASKED)
        y = y * zz * _sigmoid(zz)
    if MASKED:
        tl.store(o_base + t64[None, :], y.to(o_base.dtype.element_ty), mask=mask_dl)
    else:
        tl.store(o_base + t64[None, :], y.to(o_base.dtype.element_ty))
    return H


@triton.jit(do_not_specialize=["L", "nchunks"])
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seq_ptr,
    out_ptr, states_ptr, hT_ptr,
    L, nchunks, dim, dpg,
    s_u_b, s_u_d,
    s_dl_b, s_dl_d,
    s_z_b, s_z_d,
    s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_seq_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr, SAVE_STATES: tl.constexpr,
    BD: tl.constexpr, N: tl.constexpr, T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,) channels, all in one group
    i = tl.arange(0, T)
    g = ((pid_d * BD) // dpg).to(tl.int64)
    d64 = d.to(tl.int64)
    colN = (i < N)[None, :] & (d[:, None] < dim)
    hd_off = (pid_b * dim + d64[:, None]) * N + i[None, :]  # packed (BD, T) view of a (b, dim, N) tensor

    if HAS_D:
        Dv = tl.load(D_ptr + d).to(tl.float32)
    else:
        Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_DBIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_H0:
        H = tl.load(h0_ptr + hd_off, mask=colN, other=0.0).to(tl.float32)
    else:
        H = tl.zeros([BD, T], dtype=tl.float32)

    u_base = u_ptr + pid_b * s_u_b + d64[:, None] * s_u_d
    dl_base = delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d
    z_base = z_ptr + pid_b * s_z_b + d64[:, None] * s_z_d
    o_base = out_ptr + pid_b * s_o_b + d64[:, None] * s_o_d
    B_base = B_ptr + pid_b * s_B_b + g * s_B_g
    C_base = C_ptr + pid_b * s_C_b + g * s_C_g
    seq_base = pid_b * s_seq_b
    if REVERSE:
        is_last = (i == 0)[None, :]  # last in scan order
    else:
        is_last = (i == T - 1)[None, :]

    nfull = L // T  # chunks with every position valid: loads without masks (vectorised)
    for c in range(0, nfull):
        H = _fwd_chunk(pid_b, c, H, L, nchunks, dim, d, d64, i, g, Dv, bias, u_base, dl_base, z_base, o_base,
                       B_base, C_base, s_B_n, s_C_n, seq_ptr, seq_base, A_ptr, states_ptr, is_last, colN,
                       HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, SAVE_STATES, BD, N, T, False)
    if nfull < nchunks:
        H = _fwd_chunk(pid_b, nfull, H, L, nchunks, dim, d, d64, i, g, Dv, bias, u_base, dl_base, z_base, o_base,
                       B_base, C_base, s_B_n, s_C_n, seq_ptr, seq_base, A_ptr, states_ptr, is_last, colN,
                       HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, SAVE_STATES, BD, N, T, True)

    tl.store(hT_ptr + hd_off, H, mask=colN)


@triton.jit(do_not_specialize=["L", "nchunks"])
def _bwd_carry_kernel(
    dout_ptr, delta_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, dhT_ptr, seq_ptr,
    R_ptr, dh0_ptr,
    L, nchunks, dim, dpg,
    s_do_b, s_do_d,
    s_dl_b, s_dl_d,
    s_z_b, s_z_d,
    s_C_b, s_C_g, s_C_n,
    s_seq_b,
    HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DHT: tl.constexpr, HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
    BD: tl.constexpr, N: tl.constexpr, T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    d = pid_d * BD + tl.arange(0, BD)
    i = tl.arange(0, T)
    g = ((pid_d * BD) // dpg).to(tl.int64)
    d64 = d.to(tl.int64)
    colN = (i < N)[None, :] & (d[:, None] < dim)
    hd_off = (pid_b * dim + d64[:, None]) * N + i[None, :]
    if HAS_DBIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_DHT:
        Rt = tl.load(dhT_ptr + hd_off, mask=colN, other=0.0).to(tl.float32)
    else:
        Rt = tl.zeros([BD, T], dtype=tl.float32)

    do_base = dout_ptr + pid_b * s_do_b + d64[:, None] * s_do_d
    dl_base = delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d
    z_base = z_ptr + pid_b * s_z_b + d64[:, None] * s_z_d
    C_base = C_ptr + pid_b * s_C_b + g * s_C_g
    seq_base = pid_b * s_seq_b

    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        tl.store(R_ptr + ((pid_b * nchunks + c) * dim + d64[:, None]) * N + i[None, :], Rt, mask=colN)
        if REVERSE:  # chunk c holds times [L-(c+1)T, L-cT), scanned right to left
            p = c * T + (T - 1 - i)
            t = L - (c + 1) * T + i
        else:
            p = c * T + i  # scan positions (T,)
            t = p
        mask_l = p < L
        t64 = t.to(tl.int64)
        mask_dl = mask_l[None, :] & (d[:, None] < dim)
        t_bd = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)  # same layout as the (BD, T) tiles
        mask_bd = mask_l[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
        dt = _load_dt(dl_base, t64[None, :], mask_dl, bias, HAS_DBIAS, SOFTPLUS)
        dy = tl.load(do_base + t64[None, :], mask=mask_dl, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_base + t64[None, :], mask=mask_dl, other=0.0).to(tl.float32)
            dy = dy * zz * _sigmoid(zz)
        cdt = tl.cumsum(dt, axis=1, reverse=REVERSE)  # (BD, T), in scan order
        dtot = tl.sum(dt, axis=1)  # (BD,)
        if HAS_SEQ:
            keep = _keep(seq_ptr, seq_base, p, t, L, REVERSE)
            nres = tl.cumsum(1.0 - keep, axis=0, reverse=REVERSE)  # resets in [chunk start, p]
            chunk_ok = tl.sum(1.0 - keep, axis=0) == 0.0
        for n in tl.static_range(N):
            A2n = tl.load(A_ptr + d64 * N + n).to(tl.float32) * 1.4426950408889634
            Cn = tl.load(C_base + n * s_C_n + t_bd, mask=mask_bd, other=0.0).to(tl.float32)  # (BD, T), rows equal
            W = tl.exp2(cdt * A2n[:, None])
            Wend = tl.exp2(dtot * A2n)
            if HAS_SEQ:
                W = tl.where((nres == 0.0)[None, :], W, 0.0)
                Wend = tl.where(chunk_ok, Wend, 0.0)
            rn = tl.sum(W * (Cn * dy), axis=1) + Wend * _col(Rt, i, n)
            Rt = tl.where(i[None, :] == n, rn[:, None], Rt)

    tl.store(dh0_ptr + hd_off, Rt, mask=colN)


@triton.jit
def _st(ptrs, v, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptrs, v.to(ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(ptrs, v.to(ptrs.dtype.element_ty))


@triton.jit
def _bwd_chunk_body(c, pid_db, pid_b, dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr,
    states_ptr, R_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAs_ptr, dDs_ptr, dbs_ptr,
    L, nchunks, dim, dpg, nsub, ndb, nslots,
    s_do_b, s_do_d,
    s_u_b, s_u_d,
    s_dl_b, s_dl_d,
    s_z_b, s_z_d,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_seq_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
    BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, MASKED: tl.constexpr):
    nrow = tl.arange(0, NP)
    i = tl.arange(0, T)
    d_start = pid_db * nsub * BD
    g32 = d_start // dpg
    jb = (d_start - g32 * dpg) // (nsub * BD)  # channel-block index inside the group
    g = g32.to(tl.int64)
    slot = (pid_b * nchunks + c) % nslots

    if REVERSE:  # chunk c holds times [L-(c+1)T, L-cT), scanned right to left
        p = c * T + (T - 1 - i)
        t = L - (c + 1) * T + i
        t_next = t - 1
        chunk_end = i == 0
    else:
        p = c * T + i
        t = p
        t_next = t + 1
        chunk_end = i == T - 1
    mask_l = p < L
    t64 = t.to(tl.int64)
    # a_{p+1} is used for p < chunk end and p+1 < L; the carry R covers the chunk end
    has_next = (chunk_end == 0) & (p + 1 < L)
    tn64 = tl.where(has_next, t_next, 0).to(tl.int64)
    B_base = B_ptr + pid_b * s_B_b + g * s_B_g
    C_base = C_ptr + pid_b * s_C_b + g * s_C_g
    if HAS_SEQ:
        seq_base = pid_b * s_seq_b
        keep = _keep(seq_ptr, seq_base, p, t, L, REVERSE)
        keep_next = tl.where(has_next, _keep(seq_ptr, seq_base, p + 1, t_next, L, REVERSE), 1.0)
    dB_acc = tl.zeros([NP, T], dtype=tl.float32)
    dC_acc = tl.zeros([NP, T], dtype=tl.float32)

    for j in range(0, nsub):
        d = d_start + j * BD + tl.arange(0, BD)
        d64 = d.to(tl.int64)
        colN = (i < N)[None, :] & (d[:, None] < dim)
        mask_dl = mask_l[None, :] & (d[:, None] < dim)
        t_bd = t64[None, :] + tl.zeros([BD, 1], dtype=tl.int64)  # same layout as the (BD, T) tiles
        mask_bd = mask_l[None, :] & (tl.zeros([BD, 1], dtype=tl.int32) == 0)
        if HAS_DBIAS:
            bias = tl.load(bias_ptr + d).to(tl.float32)
        else:
            bias = tl.zeros([BD], dtype=tl.float32)
        dl_base = delta_ptr + pid_b * s_dl_b + d64[:, None] * s_dl_d
        draw = _ld(dl_base + t64[None, :], mask_dl, MASKED)
        if HAS_DBIAS:
            draw = draw + bias[:, None]
        if SOFTPLUS:
            dt = tl.where(mask_dl, _softplus(draw), 0.0)
        else:
            dt = tl.where(mask_dl, draw, 0.0)
        mask_next = has_next[None, :] & (d[:, None] < dim)
        dt_next = _load_dt(dl_base, tn64[None, :], mask_next, bias, HAS_DBIAS, SOFTPLUS)
        uu = _ld(u_ptr + pid_b * s_u_b + d64[:, None] * s_u_d + t64[None, :], mask_dl, MASKED)
        dout = _ld(dout_ptr + pid_b * s_do_b + d64[:, None] * s_do_d + t64[None, :], mask_dl, MASKED)
        if HAS_Z:
            zz = _ld(z_ptr + pid_b * s_z_b + d64[:, None] * s_z_d + t64[None, :], mask_dl, MASKED)
            sz = _sigmoid(zz)
            dy = dout * zz * sz
        else:
            dy = dout
        st_off = ((pid_b * nchunks + c) * dim + d64[:, None]) * N + i[None, :]
        Hin = tl.load(states_ptr + st_off, mask=colN, other=0.0)
        Rt = tl.load(R_ptr + st_off, mask=colN, other=0.0)
        dtu = dt * uu
        if HAS_D:
            Dv = tl.load(D_ptr + d).to(tl.float32)
            y = Dv[:, None] * uu
            du = Dv[:, None] * dy
        else:
            y = tl.zeros([BD, T], dtype=tl.float32)
            du = tl.zeros([BD, T], dtype=tl.float32)
        ddt = tl.zeros([BD, T], dtype=tl.float32)
        dA_t = tl.zeros([BD, T], dtype=tl.float32)  # column n: this sub-block's dA[:, n]

        for n in tl.static_range(N):
            An = tl.load(A_ptr + d64 * N + n).to(tl.float32)
            A2n = An * 1.4426950408889634
            Bn = _ld(B_base + n * s_B_n + t_bd, mask_bd, MASKED)  # (BD, T), rows equal
            Cn = _ld(C_base + n * s_C_n + t_bd, mask_bd, MASKED)  # (BD, T), rows equal
            a = tl.exp2(dt * A2n[:, None])
            a_next = tl.exp2(dt_next * A2n[:, None])  # 1 where there is no next (dt_next = 0)
            if HAS_SEQ:
                a = a * keep[None, :]
                a_next = a_next * keep_next[None, :]
            x = dtu * Bn
            ca, hl = tl.associative_scan((a, x), 1, _affine_combine, reverse=REVERSE)
            hs = hl + ca * _col(Hin, i, n)[:, None]
            y += hs * Cn
            # reverse scan: g_p = C_p dy_p + a_{p+1} g_{p+1}, g at the chunk end = C dy + R
            ga, gl = tl.associative_scan((a_next, Cn * dy), 1, _affine_combine, reverse=not REVERSE)
            gs = gl + ga * _col(Rt, i, n)[:, None]
            dB_acc += tl.where(nrow[:, None] == n, tl.sum(gs * dtu, axis=0)[None, :], 0.0)
            dC_acc += tl.where(nrow[:, None] == n, tl.sum(hs * dy, axis=0)[None, :], 0.0)
            ah = gs * (hs - x)  # g * a * h_prev
            ddt += gs * Bn * uu + ah * An[:, None]
            du += gs * Bn * dt
            dA_t = tl.where(i[None, :] == n, tl.sum(ah * dt, axis=1)[:, None], dA_t)

        if HAS_Z:
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            out_off = (pid_b * dim + d64[:, None]) * L + t64[None, :]
            _st(dz_ptr + out_off, dz, mask_dl, MASKED)
        if SOFTPLUS:
            ddt = ddt * _sigmoid(draw)
        ddt = tl.where(mask_dl, ddt, 0.0)
        out_off = (pid_b * dim + d64[:, None]) * L + t64[None, :]
        _st(du_ptr + out_off, du, mask_dl, MASKED)
        _st(ddelta_ptr + out_off, ddt, mask_dl, MASKED)
        tl.atomic_add(dAs_ptr + (slot * dim + d64[:, None]) * N + i[None, :], dA_t, mask=colN)
        if HAS_D:
            tl.atomic_add(dDs_ptr + slot * dim + d64, tl.sum(dy * uu, axis=1))
        if HAS_DBIAS:
            tl.atomic_add(dbs_ptr + slot * dim + d64, tl.sum(ddt, axis=1))

    mask_nl = (nrow < N)[:, None] & mask_l[None, :]
    bc_off = (((pid_b * (dim // dpg) + g) * ndb + jb) * N + nrow[:, None].to(tl.int64)) * L + t64[None, :]
    tl.store(dBp_ptr + bc_off, dB_acc, mask=mask_nl)
    tl.store(dCp_ptr + bc_off, dC_acc, mask=mask_nl)


@triton.jit(do_not_specialize=["L", "nchunks"])
def _bwd_chunk_kernel(
    dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr,
    states_ptr, R_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAs_ptr, dDs_ptr, dbs_ptr,
    L, nchunks, dim, dpg, nsub, ndb, nslots,
    s_do_b, s_do_d,
    s_u_b, s_u_d,
    s_dl_b, s_dl_d,
    s_z_b, s_z_d,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_seq_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DBIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_SEQ: tl.constexpr, REVERSE: tl.constexpr,
    BD: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
):
    # du, ddelta, dz: contiguous (b, dim, L); dBp, dCp: (b, G, ndb, N, L) fp32 partials over
    # channel blocks; dAs: (nslots, dim, N), dDs, dbs: (nslots, dim) fp32, added atomically
    c = tl.program_id(0)
    pid_db = tl.program_id(1)  # block of nsub*BD channels
    pid_b = tl.program_id(2).to(tl.int64)
    if c < L // T:  # chunk wholly inside [0, L): loads and stores without masks (vectorised)
        _bwd_chunk_body(c, pid_db, pid_b, dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, states_ptr, R_ptr, du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAs_ptr, dDs_ptr, dbs_ptr, L, nchunks, dim, dpg, nsub, ndb, nslots, s_do_b, s_do_d, s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_seq_b, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T, False)
    else:
        _bwd_chunk_body(c, pid_db, pid_b, dout_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, states_ptr, R_ptr, du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAs_ptr, dDs_ptr, dbs_ptr, L, nchunks, dim, dpg, nsub, ndb, nslots, s_do_b, s_do_d, s_u_b, s_u_d, s_dl_b, s_dl_d, s_z_b, s_z_d, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_seq_b, HAS_D, HAS_Z, HAS_DBIAS, SOFTPLUS, HAS_SEQ, REVERSE, BD, N, NP, T, True)
