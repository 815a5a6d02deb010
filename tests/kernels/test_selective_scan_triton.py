"""Triton selective scan against the float64 oracle.

CPU: the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) at small shapes with a small
chunk, so odd lengths (1, 63, 500) and L not a multiple of the chunk are cheap.
GPU (`-m gpu`, through the device tool): the same checks compiled, then 2^20 tokens, > 2^31
elements, torch.compile and NaN/inf checks.

Error measure: ||kernel - oracle|| / ||oracle|| per tensor, oracle in float64 on the very inputs
the kernel saw (bf16/fp16 inputs are rounded first, so the bound covers the kernel's arithmetic
and the rounding of its outputs only). Bounds per input dtype:
    fp32: 2e-5 (fp32 accumulation; seen ~1e-7)
    fp16: 5e-3 (outputs/gradients rounded to fp16, 2^-11 relative)
    bf16: 2e-2 (outputs/gradients rounded to bf16, 2^-8 relative)
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from kernels.selective_scan.oracle import selective_scan_oracle
from kernels.selective_scan.triton_scan import selective_scan_triton

TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# small launch settings so the interpreter stays quick; the GPU runs its default settings too
SMALL = dict(chunk_size=16, block_d=4, num_warps=4)

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values in the kernel's result"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(batch, dim, N, L, groups=0, dtype=torch.float32, use_D=True, use_z=True,
                use_bias=True, use_h0=True, seed=0, device=DEV, realistic_dt=False):
    """Random inputs (never zeros). groups=0 means 3-D B/C."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    bc_shape = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    if realistic_dt:  # mamba's init: bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1]
        dt0 = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        bias = (dt0 + torch.log(-torch.expm1(-dt0))).to(device)
        A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1).to(device)
    else:
        bias = rnd(dim, scale=0.3)
        A = -(torch.rand(dim, N, generator=g) * 2 + 0.2).to(device)
    return dict(
        u=rnd(batch, dim, L).to(dtype),
        delta=rnd(batch, dim, L, scale=0.5).to(dtype),
        A=A,
        B=rnd(*bc_shape).to(dtype),
        C=rnd(*bc_shape).to(dtype),
        D=rnd(dim) if use_D else None,
        z=rnd(batch, dim, L).to(dtype) if use_z else None,
        delta_bias=bias if use_bias else None,
        initial_state=rnd(batch, dim, N) if use_h0 else None,
    )


def check_against_oracle(inp, softplus=True, seq_idx=None, reverse=False, grads=True, tol=None, **launch):
    dtype = inp["u"].dtype
    tol = tol or TOL[dtype]
    kin = {k: (v.clone().requires_grad_(grads) if v is not None else None) for k, v in inp.items()}
    out, hT = selective_scan_triton(
        kin["u"], kin["delta"], kin["A"], kin["B"], kin["C"], D=kin["D"], z=kin["z"],
        delta_bias=kin["delta_bias"], delta_softplus=softplus, initial_state=kin["initial_state"],
        return_final_state=True, seq_idx=seq_idx, reverse=reverse, **launch,
    )
    assert out.dtype == inp["u"].dtype and out.shape == inp["u"].shape
    assert hT.dtype == torch.float32
    oin = {k: (v.detach().double().requires_grad_(grads) if v is not None else None) for k, v in inp.items()}
    ref_out, ref_hT = selective_scan_oracle(
        oin["u"], oin["delta"], oin["A"], oin["B"], oin["C"], D=oin["D"], z=oin["z"],
        delta_bias=oin["delta_bias"], delta_softplus=softplus, initial_state=oin["initial_state"],
        return_final_state=True, seq_idx=seq_idx, reverse=reverse,
    )
    errs = {"out": rel(out, ref_out), "final_state": rel(hT, ref_hT)}
    if grads:
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
        wh = torch.randn(hT.shape, generator=torch.Generator().manual_seed(8)).to(out.device)
        ((out.float() * w).sum() + (hT * wh).sum()).backward()
        ((ref_out * w.double()).sum() + (ref_hT * wh.double()).sum()).backward()
        for k in NAMES:
            if kin[k] is None:
                continue
            assert kin[k].grad is not None, f"no gradient for {k}"
            assert kin[k].grad.dtype == kin[k].dtype, f"gradient of {k} in {kin[k].grad.dtype}"
            errs["d" + k] = rel(kin[k].grad, oin[k].grad)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative errors over {tol}: {bad} (all: {errs})"
    return errs


def packed_seq_idx(batch, L, device=DEV, seed=0):
    """(batch, L) int32 segment ids with a few random boundaries per row (row 0 has none)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.zeros(L, dtype=torch.int32)]
    for _ in range(1, batch):
        cuts = torch.zeros(L, dtype=torch.int32)
        if L > 2:
            pos = torch.randint(1, L, (max(1, L // 20),), generator=g)
            cuts[pos] = 1
        rows.append(torch.cumsum(cuts, 0).to(torch.int32))
    return torch.stack(rows).to(device)


# --------------------------------------------------------------------------------------------
# CPU (interpreter) and GPU: small shapes against the oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 16, 63, 500])
def test_lengths(L):
    check_against_oracle(make_inputs(1 if L > 100 else 2, 4, 5, L, seed=L), **SMALL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    check_against_oracle(make_inputs(2, 4, 4, 50, dtype=dtype, seed=3), **SMALL)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groups(groups):
    check_against_oracle(make_inputs(2, 8, 3, 40, groups=groups, seed=groups), **SMALL)


@pytest.mark.parametrize("reverse", [False, True])
def test_seq_idx(reverse):
    inp = make_inputs(3, 4, 4, 70, groups=2, seed=11)
    check_against_oracle(inp, seq_idx=packed_seq_idx(3, 70), reverse=reverse, **SMALL)


@pytest.mark.parametrize("L", [1, 47])
def test_reverse(L):
    check_against_oracle(make_inputs(2, 4, 3, L, seed=5), reverse=True, **SMALL)


@pytest.mark.parametrize(
    "use_D,use_z,use_bias,use_h0,softplus",
    [(False, False, False, False, False), (True, False, True, False, True),
     (False, True, False, True, True), (True, True, True, True, False)],
)
def test_optional_inputs(use_D, use_z, use_bias, use_h0, softplus):
    inp = make_inputs(2, 4, 4, 33, use_D=use_D, use_z=use_z, use_bias=use_bias, use_h0=use_h0, seed=9)
    if not softplus:  # plain dt must stay positive
        inp["delta"] = inp["delta"].abs() + 0.05
        if inp["delta_bias"] is not None:
            inp["delta_bias"] = inp["delta_bias"].abs()
    check_against_oracle(inp, softplus=softplus, **SMALL)


@pytest.mark.parametrize("block_d,chunk_size", [(1, 16), (4, 32), (2, 64)])
def test_launch_settings(block_d, chunk_size):
    """Every launch setting the config table may pick must be right (incl. BD = 1)."""
    check_against_oracle(make_inputs(1, 4, 8, 70, groups=2, seed=21), chunk_size=chunk_size,
                         block_d=block_d, num_warps=4)


@pytest.mark.parametrize(
    "dim,N,groups,L,dtype,reverse",
    [(64, 4, 1, 37, torch.float32, False), (64, 3, 2, 37, torch.float32, True),
     (96, 4, 3, 40, torch.bfloat16, True), (64, 2, 1, 20, torch.bfloat16, False)],
)
def test_lane_sum_path(dim, N, groups, L, dtype, reverse):
    """The GPU's launch setting (32 channels, one warp): dB/dC summed by lane exchanges (emulated
    under the interpreter), two states per iteration when N is even, with packed sequences and
    several channel blocks adding into the same partial rows."""
    inp = make_inputs(1, dim, N, L, groups=groups, dtype=dtype, seed=dim + N)
    check_against_oracle(inp, seq_idx=packed_seq_idx(1, L), reverse=reverse, chunk_size=16, block_d=32,
                         num_warps=1)


def test_channel_groups_padded_to_whole_blocks(monkeypatch):
    """A group of channels that the block does not divide (dim 40 in 2 groups of 20, 32-channel
    blocks) is padded with zero channels: the kernels only ever see whole 32-channel blocks, and
    every output and gradient is the oracle's."""
    from kernels.selective_scan import triton_scan as ts

    seen = []
    real = ts._fwd_state_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append((args[12], args[13], kw["BD"]))  # (dim, dim per group, BD) of the launch
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(ts, "_fwd_state_kernel", Spy())
    inp = make_inputs(2, 40, 4, 37, groups=2, seed=41)
    check_against_oracle(inp, seq_idx=packed_seq_idx(2, 37), chunk_size=16, block_d=32, num_warps=1)
    assert seen == [(64, 32, 32)]


def test_kernels_only_see_aligned_rows(monkeypatch):
    """Odd L and inputs that start mid-allocation: every kernel launch gets 16-byte aligned
    tensors and strides that are multiples of 16 (what Triton needs to keep a tile's rows in one
    lane; see `_aligned_time_rows`), and the results are still the oracle's."""
    import inspect

    from kernels.selective_scan import triton_scan as ts

    launches = []

    class Spy:
        def __init__(self, kernel):
            self.kernel, self.names = kernel, list(inspect.signature(kernel.fn).parameters)

        def __getattr__(self, name):  # warmup(): on a GPU the backward checks the lane layout first
            return getattr(self.kernel, name)

        def __getitem__(self, grid):
            def launch(*args, **kw):
                launches.append(dict(zip(self.names, args)))
                return self.kernel[grid](*args, **kw)
            return launch

    for name in ("_fwd_state_kernel", "_fwd_out_kernel", "_bwd_state_kernel", "_bwd_main_kernel"):
        monkeypatch.setattr(ts, name, Spy(getattr(ts, name)))
    inp = make_inputs(2, 32, 4, 37, seed=43)
    for k in ("u", "delta", "z"):  # views starting 3 elements into a wider allocation
        wide = torch.zeros(2, 32, 41, device=DEV, dtype=inp[k].dtype)
        wide[..., 3:40] = inp[k]
        inp[k] = wide[..., 3:40]
    check_against_oracle(inp, chunk_size=16, block_d=32, num_warps=1)
    assert len(launches) == 4
    for args in launches:
        for name, v in args.items():
            if torch.is_tensor(v) and v.numel() > 1:
                assert v.data_ptr() % 16 == 0, name
            if name.startswith("s_"):
                assert v % 16 == 0, (name, v)


def test_final_state_only_gradient():
    """Gradient that reaches the inputs only through the final state (out unused)."""
    inp = make_inputs(1, 2, 3, 40, seed=4)
    kin = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    _, hT = selective_scan_triton(**kin, delta_softplus=True, return_final_state=True, **SMALL)
    hT.sum().backward()
    oin = {k: v.detach().double().requires_grad_() for k, v in inp.items() if v is not None}
    _, rhT = selective_scan_oracle(**oin, delta_softplus=True, return_final_state=True)
    rhT.sum().backward()
    for k in kin:
        if oin[k].grad is None:  # z and D do not reach the final state
            assert kin[k].grad is None or not kin[k].grad.any(), k
        else:
            assert rel(kin[k].grad, oin[k].grad) < TOL[torch.float32], k


def test_poisoned_output_fully_written():
    """Outputs come from fresh allocations; a NaN-poisoned non-contiguous input layout still works."""
    inp = make_inputs(2, 4, 4, 37, seed=13)
    u_big = torch.full((2, 8, 37), float("nan"), device=DEV)
    u_big[:, ::2] = inp["u"]
    inp["u"] = u_big[:, ::2]  # strided view: the NaN channels between must never be read
    errs = check_against_oracle(inp, **SMALL)
    assert all(math.isfinite(v) for v in errs.values())


def test_no_grad_call_uses_inference_config():
    from kernels.selective_scan import triton_scan as ts

    inp = make_inputs(1, 4, 4, 20, seed=18)
    with torch.no_grad():
        out = selective_scan_triton(**{k: v for k, v in inp.items() if v is not None}, delta_softplus=True)
    assert ts.scan_config(4, 4, torch.float32, False) == ts._CONFIGS["infer"]
    ref = selective_scan_oracle(**{k: v for k, v in inp.items() if v is not None}, delta_softplus=True)
    assert rel(out, ref) < TOL[torch.float32]


def test_custom_op_compiles():
    """torch.compile(fullgraph=True) through the custom op (fake impls), forward and backward."""
    inp = make_inputs(1, 4, 4, 20, seed=17)

    def f(u, delta, A, B, C, D, z, bias, h0):
        out, hT = selective_scan_triton(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                        initial_state=h0, return_final_state=True, **SMALL)
        return out.sum() + hT.square().sum()

    args = [inp[k].clone().requires_grad_() for k in NAMES]
    backend = "inductor" if DEV == "cuda" else "aot_eager"
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    loss = compiled(*args)
    loss.backward()
    args2 = [inp[k].clone().requires_grad_() for k in NAMES]
    loss2 = f(*args2)
    loss2.backward()
    assert torch.allclose(loss, loss2, rtol=1e-5)
    for a, b in zip(args, args2):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_opcheck():
    """torch.library's own consistency checks of the registration (schema, fake, autograd)."""
    from kernels.selective_scan import triton_scan as ts

    inp = make_inputs(1, 2, 3, 9, seed=19)
    B4, C4 = inp["B"].unsqueeze(1), inp["C"].unsqueeze(1)
    args = (inp["u"].requires_grad_(), inp["delta"], inp["A"], B4, C4, inp["D"], inp["z"], inp["delta_bias"],
            True, inp["initial_state"], None, False, 16, 2, 4, True)
    torch.library.opcheck(ts._scan_fwd, args, test_utils=("test_schema", "test_faketensor"))


# --------------------------------------------------------------------------------------------
# GPU only
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["train", "infer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_configs_vs_oracle(config, dtype, reverse):
    """Every launch setting the config table can pick, compiled, against the oracle."""
    from kernels.selective_scan.triton_scan import _CONFIGS

    T, bd, w = _CONFIGS[config]
    inp = make_inputs(2, 64, 16, 777, groups=2, dtype=dtype, seed=23)
    check_against_oracle(inp, seq_idx=packed_seq_idx(2, 777), reverse=reverse, chunk_size=T, block_d=bd,
                         num_warps=w)
    check_against_oracle(make_inputs(1, 32, 16, 2 * T + 5, dtype=dtype, seed=24), chunk_size=T, block_d=bd,
                         num_warps=w)


def _run(inp, **kw):
    return selective_scan_triton(
        inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
        delta_bias=inp["delta_bias"], delta_softplus=True, **kw,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_2pow20_chunk_consistency_and_reference(dtype):
    """L = 2^20: (1) one scan == two scans joined through the final/initial state (split not on a
    chunk boundary), forward and gradients; (2) against the chunked PyTorch reference (fp32)."""
    L, split = 1 << 20, (1 << 19) + 12345
    inp = make_inputs(1, 8, 16, L, dtype=dtype, use_h0=False, seed=29, realistic_dt=True)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    out, hT = _run(leaves, return_final_state=True)
    w = torch.randn(out.shape, device=DEV)
    ((out.float() * w).sum() + hT.sum()).backward()
    full_grads = {k: v.grad.clone() for k, v in leaves.items()}

    leaves2 = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    first = {k: (v[..., :split] if v.dim() == 3 else v) for k, v in leaves2.items()}
    second = {k: (v[..., split:] if v.dim() == 3 else v) for k, v in leaves2.items()}
    o1, h1 = _run(first, return_final_state=True)
    o2, h2 = _run(second, initial_state=h1, return_final_state=True)
    o12 = torch.cat([o1, o2], dim=-1)
    ((o12.float() * w).sum() + h2.sum()).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel(o12, out) < tol and rel(h2, hT) < 1e-5
    for k in full_grads:
        assert rel(leaves2[k].grad, full_grads[k]) < tol, k

    from kernels.selective_scan.reference import selective_scan_reference

    f32 = {k: v.float() for k, v in inp.items() if v is not None}
    ref_out, ref_hT = selective_scan_reference(
        f32["u"], f32["delta"], f32["A"], f32["B"], f32["C"], D=f32["D"], z=f32["z"],
        delta_bias=f32["delta_bias"], delta_softplus=True, return_final_state=True, chunk_size=4096,
    )
    assert rel(out, ref_out) < TOL[dtype] and rel(hT, ref_hT) < 1e-4


@pytest.mark.gpu
def test_gpu_over_2pow31_elements():
    """batch*dim*L > 2^31: the last channels (offsets past 2^31) match a run on just those channels."""
    batch, dim, L, N = 2, 1040, 1 << 20, 16
    assert batch * dim * L > 2**31
    g = torch.Generator(device=DEV).manual_seed(31)
    bf = torch.bfloat16
    u = torch.randn(batch, dim, L, device=DEV, dtype=bf, generator=g)
    delta = (torch.randn(batch, dim, L, device=DEV, generator=g) * 0.5).to(bf)
    z = torch.randn(batch, dim, L, device=DEV, dtype=bf, generator=g)
    B = torch.randn(batch, N, L, device=DEV, dtype=bf, generator=g)
    C = torch.randn(batch, N, L, device=DEV, dtype=bf, generator=g)
    A = -torch.rand(dim, N, device=DEV, generator=g) - 0.5
    D = torch.randn(dim, device=DEV, generator=g)
    bias = torch.randn(dim, device=DEV, generator=g) * 0.3 - 3.0
    u.requires_grad_()
    out = selective_scan_triton(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    sl = slice(dim - 8, dim)
    u2 = u.detach()[1:, sl].clone().requires_grad_()
    out2 = selective_scan_triton(u2, delta[1:, sl], A[sl], B[1:], C[1:], D=D[sl], z=z[1:, sl],
                                 delta_bias=bias[sl], delta_softplus=True)
    out2.backward(dout[1:, sl])
    # not bitwise: the two launches split the sequence into different segments (their number
    # depends on the channel count), so fp32 sums round differently before the bf16 output; an
    # offset that wrapped at 2^31 would read other channels' data and miss by O(1)
    assert rel(out[1:, sl], out2) < 5e-3
    assert rel(u.grad[1:, sl], u2.grad) < 5e-3


@pytest.mark.gpu
def test_gpu_bf16_2pow20_realistic_dt_finite():
    inp = make_inputs(1, 256, 16, 1 << 20, dtype=torch.bfloat16, use_h0=False, seed=37, realistic_dt=True)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
    out, hT = _run(leaves, return_final_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(hT).all()
    (out.float().square().mean() + hT.square().mean()).backward()
    for k, v in leaves.items():
        assert torch.isfinite(v.grad).all(), k


@pytest.mark.gpu
def test_gpu_compile_mamba_mixer():
    """torch.compile(fullgraph=True) of the mixer; uses the Triton path on CUDA, matches eager."""
    mixer_mod = pytest.importorskip("mamba_seq.mixer")
    from mamba_seq.config import MambaConfig

    torch.manual_seed(0)
    m = mixer_mod.MambaMixer(MambaConfig(d_model=64, d_state=16)).to(DEV)
    x = torch.randn(2, 300, 64, device=DEV, requires_grad=True)
    eager = m(x)
    eager.square().sum().backward()
    g_eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    x2 = x.detach().clone().requires_grad_()
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x2)
    y.square().sum().backward()
    assert rel(y, eager) < 1e-4
    for p, ge in zip(m.parameters(), g_eager):
        assert rel(p.grad, ge) < 1e-3


@pytest.mark.gpu
def test_gpu_gradients_bitwise_deterministic():
    """Two identical backward passes give bit-identical gradients: the dB/dC/dA sums over channel
    blocks are added by one lane per address in a fixed order (no order-dependent atomics)."""
    inp = make_inputs(2, 256, 16, 5000, groups=2, dtype=torch.bfloat16, seed=31)
    grads = []
    for _ in range(2):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items() if v is not None}
        out = _run(leaves)
        out.float().square().sum().backward()
        grads.append({k: v.grad for k, v in leaves.items() if v.grad is not None})
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k


def test_shuffle_guard_reads_lane_layouts():
    """The guard that keeps the GPU's lane shuffles off tiles whose rows span several lanes."""
    from kernels.selective_scan.triton_scan import shuffles_are_row_per_lane

    def ttgir(threads):
        return (f"#blocked = #ttg.blocked<{{sizePerThread = [1, 2], threadsPerWarp = {threads}, "
                "warpsPerCTA = [1, 1], order = [1, 0]}>\n"
                '%v = tt.elementwise_inline_asm "shfl.sync.bfly.b32 $0, $1, 2, 0x1f, 0xffffffff;" '
                "{constraints = \"=r,r\", packed_element = 1 : i32, pure = true} %s : "
                "tensor<32x2xf32, #blocked> -> tensor<32x2xf32, #blocked>\n")

    assert shuffles_are_row_per_lane(ttgir("[32, 1]"))
    assert not shuffles_are_row_per_lane(ttgir("[4, 8]"))


COMPILE_BWD_MAIN_SM90 = """
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.selective_scan.triton_kernels import _bwd_main_kernel
from kernels.selective_scan.triton_scan import shuffles_are_row_per_lane
L, Lp = 500, 512
ints = dict(L=L, nchunks=63, KB=32, nseg_b=2, dim=64, dpg=64, nsuper=2, nblk=2, s_B_b=2 * Lp, s_B_g=2 * Lp,
            s_B_n=Lp, s_C_b=2 * Lp, s_C_g=2 * Lp, s_C_n=Lp, s_bc_q=4 * Lp, s_bc_n=Lp, s_seq_b=0)
const = dict(HAS_D=True, HAS_Z=True, HAS_DBIAS=True, SOFTPLUS=True, HAS_SEQ=False, REVERSE=False, LANE_SUM=True,
             SHFL_ASM=True, UNROLL=2, BD=32, N=2, NP=2, T=8)
bf16 = {"dout_ptr", "u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
sig, attrs = {}, {}
for j, name in enumerate(inspect.signature(_bwd_main_kernel.fn).parameters):
    if name in const:
        sig[name] = "constexpr"
    elif name.endswith("_ptr"):
        sig[name] = "*bf16" if name in bf16 else ("*i32" if name == "seq_ptr" else "*fp32")
        attrs[(j,)] = [["tt.divisibility", 16]]
    else:
        v = ints.get(name, 64 * Lp if name.endswith("_b") else Lp)  # activations (b, 64, L) in rows of Lp
        sig[name] = "i32"
        if v % 16 == 0:
            attrs[(j,)] = [["tt.divisibility", 16]]
compiled = triton.compile(ASTSource(_bwd_main_kernel, sig, constexprs=const, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1))
print("ROW_PER_LANE", shuffles_are_row_per_lane(compiled.asm["ttgir"]))
"""


def test_aligned_rows_keep_the_lane_shuffles():
    """Compiled for sm_90 (no GPU needed): with an odd L but every sequence operand in rows 16
    elements apart, as `_aligned_time_rows` makes them, Triton lays the dB/dC tiles out one row
    per lane, so the fast channel sums apply."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", COMPILE_BWD_MAIN_SM90], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    if "ROW_PER_LANE" not in res.stdout and ("nvidia" in res.stderr.lower() or "ptxas" in res.stderr.lower()):
        pytest.skip(f"no NVIDIA compiler in this Triton: {res.stderr.strip().splitlines()[-1]}")
    assert "ROW_PER_LANE True" in res.stdout, res.stdout + res.stderr[-3000:]


@pytest.mark.parametrize("chunk_size", [12, 4])
def test_bad_chunk_size_names_the_rule(chunk_size):
    """A chunk that is not a power of two, or shorter than one bf16 tile (8), fails before launch."""
    inp = make_inputs(1, 2, 4, 20, dtype=torch.bfloat16, seed=1)
    with pytest.raises(ValueError, match=rf"chunk_size must be a power of two >= 8 .*got {chunk_size}"):
        selective_scan_triton(**{k: v for k, v in inp.items() if v is not None}, chunk_size=chunk_size)
