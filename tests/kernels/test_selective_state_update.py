"""The decode-step kernels (selective state update, with dt_proj inside or not; conv step; add + RMSNorm):
the Triton kernels and the PyTorch references against float64 one-step formulas.

CPU: the kernel runs under TRITON_INTERPRET=1 (tests/conftest.py); on a CUDA machine it is compiled.

Error measure: ||impl - oracle|| / ||oracle|| per tensor (y and the updated state), the oracle in
float64 on the very inputs the implementation saw (bf16 inputs are rounded first). Bounds:
    fp32 inputs: 1e-5  (a handful of fp32 roundings per element: exp, one FMA, an N-term sum; seen ~1e-7)
    bf16 inputs: 1e-2  for y, which is rounded to bf16 (relative 2^-9 = 2e-3 per element); the
                 state stays fp32, so it keeps the 1e-5 bound.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.selective_state_update import (
    TRITON_LAUNCHES,
    add_rms_norm_reference,
    add_rms_norm_triton,
    causal_conv1d_step_reference,
    causal_conv1d_step_triton,
    selective_state_update,
    selective_state_update_reference,
    selective_state_update_triton,
    triton_on_cpu,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
Y_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
STATE_TOL = 1e-5


def one_step_f64(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """Independent float64 formula, one element at a time in broadcast form (no shared code)."""
    f = lambda t: None if t is None else t.double()  # noqa: E731
    state, x, dt, A, B, C, D, z, dt_bias = map(f, (state, x, dt, A, B, C, D, z, dt_bias))
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = torch.log1p(torch.exp(dt))  # inputs here stay far below the linear threshold
    new = torch.exp(dt.unsqueeze(-1) * A) * state + (dt * x).unsqueeze(-1) * B.unsqueeze(1)
    y = (new * C.unsqueeze(1)).sum(-1)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * z / (1 + torch.exp(-z))
    return y, new


def make(batch, dim, N, dtype, use_D=True, use_z=True, use_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEV)

    return dict(
        state=rnd(batch, dim, N),
        x=rnd(batch, dim).to(dtype),
        dt=rnd(batch, dim, scale=0.5).to(dtype),
        A=-(torch.rand(dim, N, generator=g) * 2 + 0.1).to(DEV),
        B=rnd(batch, N).to(dtype),
        C=rnd(batch, N).to(dtype),
        D=rnd(dim) if use_D else None,
        z=rnd(batch, dim).to(dtype) if use_z else None,
        dt_bias=rnd(dim, scale=0.3) if use_bias else None,
    )


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


IMPLS = {"reference": selective_state_update_reference, "triton": selective_state_update_triton}


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch,dim,N,use_D,use_z,use_bias,softplus",
    [
        (2, 40, 16, True, True, True, True),  # dim not a multiple of the channel block
        (3, 64, 4, True, True, True, True),
        (1, 33, 16, False, False, False, True),
        (2, 100, 4, True, False, True, False),
        (2, 70, 16, False, True, False, False),
        (1, 8, 3, True, True, True, True),  # N not a power of two, dim below one block
    ],
)
def test_state_update_vs_oracle(impl, dtype, batch, dim, N, use_D, use_z, use_bias, softplus):
    if IMPLS[impl] is None:
        pytest.skip("triton is not importable here")
    a = make(batch, dim, N, dtype, use_D, use_z, use_bias)
    if not softplus:  # raw dt must be a positive step size
        a["dt"] = a["dt"].abs()
        if a["dt_bias"] is not None:
            a["dt_bias"] = a["dt_bias"].abs()
    y_ref, state_ref = one_step_f64(**a, dt_softplus=softplus)
    state = a.pop("state")
    state_before = state.clone()
    ptr = state.data_ptr()
    y = IMPLS[impl](state, **a, dt_softplus=softplus)
    assert y.shape == (batch, dim) and y.dtype == dtype
    assert state.data_ptr() == ptr and state.dtype == torch.float32  # updated in place
    assert not torch.equal(state, state_before)
    assert rel(state, state_ref) < STATE_TOL
    assert rel(y, y_ref) < Y_TOL[dtype]


@pytest.mark.parametrize("block_d", [32, 64])
def test_triton_equals_reference_and_block_size_is_irrelevant(block_d):
    if selective_state_update_triton is None:
        pytest.skip("triton is not importable here")
    a = make(3, 72, 16, torch.float32, seed=3)
    s_ref, s_tri = a.pop("state"), None
    s_tri = s_ref.clone()
    y_ref = selective_state_update_reference(s_ref, **a)
    y_tri = selective_state_update_triton(s_tri, **a, block_d=block_d)
    assert rel(y_tri, y_ref) < 1e-6 and rel(s_tri, s_ref) < 1e-6


def test_narrow_channel_blocks_are_refused():
    if selective_state_update_triton is None:
        pytest.skip("triton is not importable here")
    a = make(1, 16, 4, torch.float32)
    with pytest.raises(ValueError, match="block_d"):
        selective_state_update_triton(a.pop("state"), **a, block_d=16)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_strided_state_view_is_updated_in_place(impl):
    """The state may be a view into a larger buffer (a cache slice), with any strides."""
    if IMPLS[impl] is None:
        pytest.skip("triton is not importable here")
    a = make(2, 40, 4, torch.float32, seed=5)
    big = torch.randn(2, 40, 8, device=DEV)
    view = big[:, :, ::2]  # (2, 40, 4), last stride 2
    view.copy_(a.pop("state"))
    y_ref, state_ref = one_step_f64(view.clone(), **a, dt_softplus=True)
    untouched = big[:, :, 1::2].clone()
    y = IMPLS[impl](view, **a)
    assert rel(view, state_ref) < STATE_TOL and rel(y, y_ref) < Y_TOL[torch.float32]
    assert torch.equal(big[:, :, 1::2], untouched)


def test_repeated_steps_equal_the_scan():
    """L calls carrying the state equal the selective scan over L positions (the scan's contract)."""
    from kernels.selective_scan import selective_scan_oracle

    g = torch.Generator().manual_seed(7)
    batch, dim, N, L = 2, 40, 4, 25
    u, delta, z = (torch.randn(batch, dim, L, generator=g) for _ in range(3))
    A = -(torch.rand(dim, N, generator=g) + 0.5)
    B, C = torch.randn(batch, N, L, generator=g), torch.randn(batch, N, L, generator=g)
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g) * 0.3
    ref, h_ref = selective_scan_oracle(u, delta, A, B, C, D, z, bias, True, return_final_state=True)
    for impl in [f for f in IMPLS.values() if f is not None]:
        state = torch.zeros(batch, dim, N)
        ys = [impl(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias) for t in range(L)]
        assert rel(torch.stack(ys, -1), ref) < 1e-5 and rel(state, h_ref) < 1e-5


def test_dispatch_and_argument_checks():
    a = make(2, 8, 4, torch.float32)
    state = a.pop("state")
    y = selective_state_update(state, **a)  # CPU -> reference; CUDA -> Triton
    assert y.shape == (2, 8)
    with pytest.raises(ValueError, match="float32"):
        selective_state_update(state.double(), **a)
    bad = dict(a, B=a["B"][:, :3])
    with pytest.raises(ValueError, match="B must have shape"):
        selective_state_update(state, **bad)


@pytest.mark.gpu
def test_gpu_large_batch_64bit_offsets():
    """batch * dim * N past 2^31 elements of the state: the int64 offsets must reach the last row."""
    batch, dim, N = 2**15 + 3, 4096, 16  # 2.1e9 state elements (8.6 GB fp32)
    state = torch.zeros(batch, dim, N, device="cuda")
    x = torch.ones(batch, dim, device="cuda", dtype=torch.bfloat16)
    dt = torch.full((batch, dim), 0.5, device="cuda", dtype=torch.bfloat16)
    A = -torch.ones(dim, N, device="cuda")
    B = torch.ones(batch, N, device="cuda", dtype=torch.bfloat16)
    C = torch.ones(batch, N, device="cuda", dtype=torch.bfloat16)
    y = selective_state_update(state, x, dt, A, B, C, dt_softplus=False)
    # state = 0.5 everywhere, y = N * 0.5 = 8
    assert state[-1, -1].eq(0.5).all() and state[0, 0].eq(0.5).all()
    assert y[-1].float().eq(8.0).all() and y[0].float().eq(8.0).all()


def test_reference_keeps_fp32_under_autocast():
    """Under bf16 autocast (as the model's step runs) the reference's sums must stay fp32: no
    matmul (which autocast would run in bf16) in its arithmetic."""
    a = make(2, 40, 16, torch.float32, seed=9)
    s1, s2 = a["state"].clone(), a.pop("state").clone()
    y1 = selective_state_update_reference(s1, **a)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        y2 = selective_state_update_reference(s2, **a)
    assert y2.dtype == torch.float32 and torch.equal(y1, y2) and torch.equal(s1, s2)


# -- the decode step's other kernels: dt_proj inside the update, the conv step, add + RMSNorm ---------


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,N,R", [(2, 40, 16, 3), (1, 96, 16, 16), (3, 33, 4, 64), (2, 64, 5, 1)])
def test_state_update_with_dt_proj_vs_oracle(impl, dtype, batch, dim, N, R):
    """dt_proj_weight W (dim, R): dt is the low-rank (batch, R) input and dt = dt_low @ W.T inside.
    The oracle projects in float64. The implementations round the projection to dt_low's dtype (as
    a matmul in that dtype would): for bf16, 2^-9 relative on dt, which the state then carries, so
    the state's bound there is bf16's (Y_TOL) instead of STATE_TOL."""
    if IMPLS[impl] is None:
        pytest.skip("triton is not importable here")
    a = make(batch, dim, N, dtype, seed=R)
    g = torch.Generator().manual_seed(100 + R)
    W = (torch.randn(dim, R, generator=g) * R**-0.5).to(DEV)
    a["dt"] = (torch.randn(batch, R, generator=g) * 0.5).to(DEV).to(dtype)
    y_ref, state_ref = one_step_f64(**dict(a, dt=a["dt"].double() @ W.double().t()), dt_softplus=True)
    state = a.pop("state")
    y = IMPLS[impl](state, **a, dt_softplus=True, dt_proj_weight=W)
    state_tol = STATE_TOL if dtype == torch.float32 else Y_TOL[dtype]
    assert rel(state, state_ref) < state_tol
    assert rel(y, y_ref) < Y_TOL[dtype]


def test_dt_proj_weight_shape_is_checked():
    a = make(2, 8, 4, torch.float32)
    a["dt"] = a["dt"][:, :3]
    with pytest.raises(ValueError, match="dt_proj_weight must have shape"):
        selective_state_update(a.pop("state"), **a, dt_proj_weight=torch.zeros(7, 3, device=DEV))


def conv_step_f64(conv_state, x, weight, bias, silu):
    """Independent float64 conv step: the window is the old state minus its oldest column, plus x."""
    window = torch.cat([conv_state.double()[:, :, 1:], x.to(conv_state.dtype).double().unsqueeze(-1)], -1)
    out = torch.einsum("bdk,dk->bd", window, weight.double())
    if bias is not None:
        out = out + bias.double()
    return (out * torch.sigmoid(out) if silu else out), window


CONV_IMPLS = {"reference": causal_conv1d_step_reference, "triton": causal_conv1d_step_triton}


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,K,use_bias,silu", [(2, 40, 4, True, True), (3, 64, 2, False, True),
                                                       (1, 100, 3, True, False), (2, 8, 4, True, True)])
def test_conv_step_vs_oracle(impl, dtype, batch, dim, K, use_bias, silu):
    if CONV_IMPLS[impl] is None:
        pytest.skip("triton is not importable here")
    g = torch.Generator().manual_seed(dim + K)
    conv_state = torch.randn(batch, dim, K, generator=g).to(DEV, dtype)
    xz = torch.randn(batch, 2 * dim, generator=g).to(DEV, dtype)
    x = xz[:, :dim]  # a strided view, as the x half of in_proj's output
    weight = torch.randn(dim, K, generator=g).to(DEV)
    bias = torch.randn(dim, generator=g).to(DEV) if use_bias else None
    want, window = conv_step_f64(conv_state, x, weight, bias, silu)
    ptr = conv_state.data_ptr()
    out = CONV_IMPLS[impl](conv_state, x, weight, bias, silu)
    assert out.shape == (batch, dim) and out.dtype == dtype and conv_state.data_ptr() == ptr
    assert torch.equal(conv_state.double(), window)  # shifted exactly, x appended in the state's dtype
    assert rel(out, want) < Y_TOL[dtype]


@pytest.mark.parametrize("block_d", [32, 64])
def test_conv_step_triton_equals_reference(block_d):
    if causal_conv1d_step_triton is None:
        pytest.skip("triton is not importable here")
    g = torch.Generator().manual_seed(11)
    s1 = torch.randn(3, 72, 4, generator=g).to(DEV)
    s2 = s1.clone()
    x, w, b = torch.randn(3, 72, generator=g).to(DEV), torch.randn(72, 4, generator=g).to(DEV), torch.randn(72).to(DEV)
    for _ in range(5):  # repeated steps: the state keeps shifting
        y1 = causal_conv1d_step_reference(s1, x, w, b)
        y2 = causal_conv1d_step_triton(s2, x, w, b, block_d=block_d)
        assert rel(y2, y1) < 1e-6 and torch.equal(s1, s2)
        x = x + 1


def add_rms_norm_f64(hidden, residual, weight, eps, residual_fp32):
    res = hidden.double() if residual is None else hidden.double() + residual.double()
    res_dtype = torch.float32 if residual_fp32 else (hidden.dtype if residual is None else
                                                      torch.promote_types(hidden.dtype, residual.dtype))
    res = res.to(res_dtype)  # the residual stream's rounding
    x = res.to(weight.dtype).double()  # the norm sees it in its own dtype
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight.double(), res


NORM_IMPLS = {"reference": add_rms_norm_reference, "triton": add_rms_norm_triton}


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,has_residual,residual_fp32", [(48, True, True), (48, False, True), (256, True, False),
                                                         (33, True, True)])
def test_add_rms_norm_vs_oracle(impl, dtype, d, has_residual, residual_fp32):
    if NORM_IMPLS[impl] is None:
        pytest.skip("triton is not importable here")
    g = torch.Generator().manual_seed(d)
    hidden = torch.randn(3, d, generator=g).to(DEV, dtype)
    residual = (torch.randn(3, d, generator=g) * 3).to(DEV, torch.float32 if residual_fp32 else dtype) \
        if has_residual else None
    weight = (1 + 0.1 * torch.randn(d, generator=g)).to(DEV, dtype)
    want, want_res = add_rms_norm_f64(hidden, residual, weight, 1e-5, residual_fp32)
    normed, res = NORM_IMPLS[impl](hidden, residual, weight, 1e-5, residual_fp32)
    assert normed.dtype == dtype and res.dtype == want_res.dtype
    # an fp32 residual is exact (one add of two fp32-representable values, rounded once); a bf16 one
    # may round differently (the interpreter's fp32 -> bf16 cast truncates)
    assert rel(res, want_res) < (1e-7 if res.dtype == torch.float32 else Y_TOL[torch.bfloat16])
    assert rel(normed, want) < Y_TOL[dtype]


def test_dispatch_can_send_cpu_tensors_to_triton():
    """triton_on_cpu() (tests): the dispatchers take the Triton kernels for CPU tensors, counted."""
    if selective_state_update_triton is None or DEV != "cpu":
        pytest.skip("needs triton, on the CPU interpreter")
    a = make(2, 40, 4, torch.float32, seed=12)
    s1, s2 = a["state"].clone(), a.pop("state").clone()
    before = dict(TRITON_LAUNCHES)
    y1 = selective_state_update(s1, **a)
    assert dict(TRITON_LAUNCHES) == before  # the reference
    with triton_on_cpu():
        y2 = selective_state_update(s2, **a)
    assert TRITON_LAUNCHES["selective_state_update_triton"] == before.get("selective_state_update_triton", 0) + 1
    assert rel(y2, y1) < 1e-6 and rel(s2, s1) < 1e-6
