"""Chunked plain-PyTorch selective scan: the CPU path, and the reference for the Triton kernels.

Semantics (the float64 loop in oracle.py is the specification):
    dt  = softplus(delta + delta_bias)  (or delta + delta_bias)
    h_t = exp(dt_t*A) * h_{t-1} + dt_t*B_t*u_t     (reset to 0 before t where seq_idx changes)
    y_t = C_t . h_t + D*u_t;   out = y * silu(z)

Memory: the recurrence runs chunk by chunk; the forward keeps only the state entering each chunk
(batch*dim*N*L/chunk_size) and the backward recomputes one chunk's per-step states at a time, so
nothing of size batch*dim*N*L is ever held and B, C are never expanded over the channels (dim is
viewed as (groups, dim_per_group)). Saved for backward: the inputs as given, B and C time-major,
and the chunk-boundary states.

Speed: one custom autograd.Function does the whole scan with a hand-written backward.
  * Time-major layout. u, delta, z are transposed once to (L, batch, groups, p) through PyTorch's
    blocked 2-D transpose (a generic permuted copy is ~5x slower), and a state is
    (batch, groups, N, p) with the channel axis p innermost: every step of the recurrence is one
    contiguous fused op (addcmul) on a row of a preallocated buffer, the sums over N are small
    matmuls and the sums over p are long contiguous reductions.
  * Cache-sized blocks. chunk_size only sets where states are checkpointed; the work inside a
    chunk runs in blocks of at most _BLOCK_BYTES per buffer (L2-sized), reusing the same four
    buffers for the whole call. In the backward a chunk longer than one block first recomputes
    its block-entry states, then walks its blocks in reverse.
  * Decays use exp2(dt * A*log2(e)), the same value as exp(dt*A) and ~3x cheaper on CPU.
  * reverse=True walks chunks, blocks and steps backwards; nothing is flipped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .arguments import check_scan_args

__all__ = ["selective_scan_reference"]

_LOG2E = 1.0 / math.log(2.0)
_BLOCK_BYTES = 2 << 20  # one (block, batch, dim, N) buffer; ~L2-sized is fastest on CPU


def _to_time_major(x, dtype):
    """(b, k, L), any strides and dtype -> contiguous (L, b, k) in `dtype`.

    A generic permuted copy of (b, k, L) runs far below memory speed (consecutive elements of a
    row sit on different pages); PyTorch's blocked 2-D transpose path (a contiguous 2-D copy_
    of a .t() view) does not, so transpose each batch element in 2-D, then move whole rows."""
    b, k, L = x.shape
    xt = x.transpose(1, 2)  # already (b, L, k)-contiguous when x came from a (b, L, k) tensor
    if not xt.is_contiguous():
        xc = x.contiguous()
        xt = xc.new_empty((b, L, k))
        for i in range(b):
            xt[i].copy_(xc[i].t())
    return x.new_empty((L, b, k), dtype=dtype).copy_(xt.transpose(0, 1))


def _from_time_major(y, dtype):
    """Contiguous (L, b, k) -> contiguous (b, k, L) in `dtype`, through the same 2-D path."""
    L, b, k = y.shape
    yb = y.new_empty((b, L, k), dtype=dtype).copy_(y.transpose(0, 1))
    out = yb.new_empty((b, k, L))
    for i in range(b):
        out[i].copy_(yb[i].t())
    return out


class _Scan:
    """One call's working state, shared by the forward and the backward of _ScanFn.

    Positions keep their natural order in every buffer (row i of a block is position lo+i); a
    reverse scan visits the rows from last to first.
    """

    def __init__(self, u, delta, z, A, B, C, D, bias, keep, softplus, reverse, chunk):
        batch, dim, L = u.shape
        g, N, p = A.shape
        cdt = A.dtype
        self.L, self.chunk, self.reverse, self.softplus = L, chunk, reverse, softplus
        self.step = -1 if reverse else 1  # the previous step in scan order is row i - step
        # u, delta + bias and z, time-major in the compute dtype (fresh copies: ours to modify)
        self.u = _to_time_major(u, cdt).view(L, batch, g, p)
        self.raw = _to_time_major(delta, cdt).view(L, batch, g, p)
        if bias is not None:
            self.raw += bias
        self.z = None if z is None else _to_time_major(z, cdt).view(L, batch, g, p)
        self.A, self.A2, self.B, self.C, self.D, self.keep = A, A * _LOG2E, B, C, D, keep
        step_bytes = batch * dim * N * A.element_size()
        self.block = max(1, min(chunk, L, _BLOCK_BYTES // max(step_bytes, 1)))
        self.a, self.H = (A.new_empty((self.block, batch, g, N, p)) for _ in range(2))
        self.a_rows, self.H_rows = self.a.unbind(0), self.H.unbind(0)

    def spans(self, lo, hi, size):
        """[lo, hi) cut into spans of `size` positions, listed in scan order."""
        s = [(i, min(i + size, hi)) for i in range(lo, hi, size)]
        return s[::-1] if self.reverse else s

    def order(self, n):
        return range(n - 1, -1, -1) if self.reverse else range(n)

    def states(self, lo, hi, h_in):
        """Decays a_t = exp(dt_t*A)*keep_t and states h_t of one block [lo, hi), from the state
        entering it, into the a/H buffers. Returns the block's (u, raw, dt, dt*u): (n, b, g, p)."""
        n = hi - lo
        a, H = self.a[:n], self.H[:n]
        u, raw = self.u[lo:hi], self.raw[lo:hi]
        dt = F.softplus(raw) if self.softplus else raw
        dtu = dt * u
        torch.mul(dt.unsqueeze(3), self.A2, out=a)  # (n,b,g,1,p) * (g,N,p)
        a.exp2_()
        if self.keep is not None:
            a.mul_(self.keep[lo:hi, :, None, None, None])
        torch.mul(dtu.unsqueeze(3), self.B[lo:hi].unsqueeze(4), out=H)  # x_t = dt_t*u_t*B_t
        Hs, As, step = self.H_rows, self.a_rows, self.step
        order = self.order(n)
        torch.addcmul(Hs[order[0]], As[order[0]], h_in, out=Hs[order[0]])
        for i in order[1:]:  # h_t = x_t + a_t*h_{t-1}: one fused op per step
            torch.addcmul(Hs[i], As[i], Hs[i - step], out=Hs[i])
        return u, raw, dt, dtu

    def last_state(self, lo, hi):
        return self.H[self.order(hi - lo)[-1]]

    def output(self, lo, hi, u):
        """y = C.h + D*u (before the z gate) for a block whose states are in H: (n, b, g, p), fresh."""
        y = torch.matmul(self.C[lo:hi].unsqueeze(3), self.H[: hi - lo]).squeeze(3)  # (n,b,g,1,N)@(n,b,g,N,p)
        if self.D is not None:
            y.addcmul_(u, self.D)
        return y

    def backward_block(self, lo, hi, h_in, carry, dout, gr):
        """Adjoint of one block given dL/dh at its end (`carry`); accumulates into `gr`, returns
        dL/dh entering the block."""
        n = hi - lo
        u, raw, dt, dtu = self.states(lo, hi, h_in)
        a, H, G, W = self.a[:n], self.H[:n], self.G[:n], self.W[:n]
        order, step = self.order(n), self.step
        first, last = order[0], order[-1]
        # output stage: out = (C.h + D*u) * silu(z)
        dy = dout[lo:hi]  # a private copy: scaled in place
        if self.z is not None:
            z = self.z[lo:hi]
            sz = torch.sigmoid(z)
            y = self.output(lo, hi, u)
            torch.mul(dy * y, sz * (1 + z * (1 - sz)), out=gr["z"][lo:hi])  # silu'(z) = sig*(1 + z*(1-sig))
            dy.mul_(z * sz)
        du = gr["u"][lo:hi]
        if self.D is not None:
            gr["D"] += (dy * u).sum((0, 1))
            torch.mul(dy, self.D, out=du)
        else:
            du.zero_()
        # G_t = dL/dh_t = C_t*dy_t + a_{t+1}*G_{t+1}: one fused op per step, backwards in scan order
        dy5 = dy.unsqueeze(3)  # (n, b, g, 1, p)
        torch.mul(dy5, self.C[lo:hi].unsqueeze(4), out=G)
        G[last] += carry
        Gs, As = self.G_rows, self.a_rows
        for i in reversed(order[:-1]):
            torch.addcmul(Gs[i], As[i + step], Gs[i + step], out=Gs[i])
        carry = a[first] * G[first]
        # W_t = G_t * a_t * h_{t-1} = dL/d(dt_t*A) through the decay
        torch.mul(a[first], h_in, out=W[first])
        if self.reverse:
            torch.mul(a[:-1], H[1:], out=W[:-1])
        else:
            torch.mul(a[1:], H[:-1], out=W[1:])
        W.mul_(G)
        GB = torch.matmul(self.B[lo:hi].unsqueeze(3), G).squeeze(3)  # dL/dx_t . B_t: (n, b, g, p)
        du.addcmul_(GB, dt)
        torch.mul(W, self.A, out=a)  # the decays are no longer needed: reuse their buffer
        ddt = torch.addcmul(a.sum(3), GB, u, out=gr["delta"][lo:hi])
        W.mul_(dt.unsqueeze(3))
        gr["A"] += W.view(-1, *W.shape[2:]).sum(0)
        gr["B"][lo:hi] = G.mul_(dtu.unsqueeze(3)).sum(4)  # summed over the group's channels
        gr["C"][lo:hi] = H.mul_(dy5).sum(4)
        if self.softplus:
            ddt.mul_(torch.sigmoid(raw))
        if gr["bias"] is not None:
            gr["bias"] += ddt.sum((0, 1))
        return carry


class _ScanFn(torch.autograd.Function):
    """The whole scan, chunk by chunk, with a hand-written backward.

    u, delta, z: (b, dim, L), any float dtype    A: (g, N, p)    B, C: (L, b, g, N) time-major
    D, bias: (g, p) | None    h0: (b, g, N, p)    keep: (L, b) | None, 0 where the state resets
    (all but u/delta/z in the compute dtype) -> out (b, dim, L) in u's dtype, h_last (b, g, N, p)
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, h0, keep, softplus, reverse, chunk):
        sc = _Scan(u, delta, z, A, B, C, D, bias, keep, softplus, reverse, chunk)
        L = u.shape[-1]
        y_tm = sc.u.new_empty(sc.u.shape)
        chunks = sc.spans(0, L, chunk)
        boundary = h0.new_empty((len(chunks),) + h0.shape)  # state entering each chunk
        h = h0.clone()  # never a view of the buffers, which every block overwrites
        for lo, hi in chunks:
            boundary[lo // chunk] = h
            for blo, bhi in sc.spans(lo, hi, sc.block):
                u_b = sc.states(blo, bhi, h)[0]
                y = sc.output(blo, bhi, u_b)
                if sc.z is not None:
                    y.mul_(F.silu(sc.z[blo:bhi]))
                y_tm[blo:bhi] = y
                h.copy_(sc.last_state(blo, bhi))
        out = _from_time_major(y_tm.view(L, *u.shape[:2]), u.dtype)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, boundary, keep)
        ctx.flags = (softplus, reverse, chunk)
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dh_last):
        u, delta, A, B, C, D, z, bias, boundary, keep = ctx.saved_tensors
        softplus, reverse, chunk = ctx.flags
        sc = _Scan(u, delta, z, A, B, C, D, bias, keep, softplus, reverse, chunk)
        L = u.shape[-1]
        sc.G, sc.W = torch.empty_like(sc.a), torch.empty_like(sc.a)
        sc.G_rows = sc.G.unbind(0)
        tm_shape = sc.u.shape
        dout_tm = sc.u.new_zeros(tm_shape) if dout is None else _to_time_major(dout, A.dtype).view(tm_shape)
        gr = {
            "u": torch.empty_like(sc.u), "delta": torch.empty_like(sc.u),
            "z": None if z is None else torch.empty_like(sc.u),
            "A": torch.zeros_like(A), "B": torch.empty_like(B), "C": torch.empty_like(C),
            "D": None if D is None else torch.zeros_like(D), "bias": None if bias is None else torch.zeros_like(bias),
        }
        carry = boundary.new_zeros(boundary.shape[1:]) if dh_last is None else dh_last.to(A.dtype)
        entries = boundary.new_empty((-(-min(chunk, L) // sc.block),) + boundary.shape[1:]) if L else None
        for lo, hi in reversed(sc.spans(0, L, chunk)):
            blocks = sc.spans(lo, hi, sc.block)
            entries[0] = boundary[lo // chunk]
            for j, (blo, bhi) in enumerate(blocks[:-1]):  # states entering each block of the chunk
                sc.states(blo, bhi, entries[j])
                entries[j + 1] = sc.last_state(blo, bhi)
            for j in range(len(blocks) - 1, -1, -1):
                carry = sc.backward_block(*blocks[j], entries[j], carry, dout_tm, gr)
        flat = (L,) + tuple(u.shape[:2])
        return (
            _from_time_major(gr["u"].view(flat), u.dtype), _from_time_major(gr["delta"].view(flat), delta.dtype),
            gr["A"], gr["B"], gr["C"], gr["D"],
            None if z is None else _from_time_major(gr["z"].view(flat), z.dtype),
            gr["bias"], carry, None, None, None, None,
        )


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
    """Selective scan in plain PyTorch, differentiable in every tensor argument (see the module doc).

    Accumulates in fp32 whatever the input dtype (float64 when u is float64). Scan memory is
    O(batch*dim*N*min(chunk_size, block)) working buffers plus O(batch*dim*N*L/chunk_size) saved
    chunk-boundary states; chunk_size does not change the result beyond rounding.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    batch, dim, L = u.shape
    N = A.shape[1]
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32  # accumulate in fp32 at least
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    g = B.shape[1]
    p = dim // g

    keep = None
    if seq_idx is not None:  # 0 where a new packed sequence starts in scan order: reset the state
        s = seq_idx.t()
        keep = torch.ones(L, batch, dtype=cdt, device=u.device)
        if reverse:
            keep[:-1] = (s[:-1] == s[1:]).to(cdt)
        else:
            keep[1:] = (s[1:] == s[:-1]).to(cdt)
    if initial_state is None:
        h0 = u.new_zeros((batch, g, N, p), dtype=cdt)
    else:
        h0 = initial_state.to(cdt).reshape(batch, g, p, N).transpose(2, 3).contiguous()

    def bc_time_major(x):  # (batch, g, N, L) -> (L, batch, g, N): small, N << dim
        return x.to(cdt).permute(3, 0, 1, 2).contiguous()

    def per_channel(x):
        return None if x is None else x.to(cdt).reshape(g, p)

    out, h_last = _ScanFn.apply(
        u, delta, A.to(cdt).reshape(g, p, N).transpose(1, 2).contiguous(), bc_time_major(B), bc_time_major(C),
        per_channel(D), z, per_channel(delta_bias), h0, keep, bool(delta_softplus), bool(reverse), int(chunk_size),
    )
    if not return_final_state:
        return out
    return out, h_last.transpose(2, 3).reshape(batch, dim, N)
