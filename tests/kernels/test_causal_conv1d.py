"""Causal depthwise conv1d (kernels/causal_conv1d): reference and Triton kernels against the float64
oracle, for the output and every gradient (x, weight, bias, prefix).

CPU: the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py) at small shapes with small
launch settings (SMALL_*), so several tiles, partial channel blocks, a backward program walking
several tiles and lengths shorter than the halo are all exercised cheaply (the whole file: ~40 s).
GPU (`-m gpu`, run on the H200 through the device tool): the compiled kernels at their default
settings, then 2^20 tokens at dim 1536 in bf16, > 2^31 elements, a time-contiguous long case,
torch.compile and determinism.

Error measure: ||result - oracle|| / ||oracle|| per tensor, the oracle in float64 on the very inputs
the kernel saw (bf16/fp16 inputs, and the output gradient, are rounded first), so a bound covers the
kernel's arithmetic and the rounding of its outputs only:
    fp32: 1e-5. fp32 accumulation of k <= 8 taps (y, dx) or of batch*L terms (dweight, dbias), a
          fast-math exp2/reciprocal in the SiLU (~2 ulp): ~1e-7 is seen, 1e-5 leaves margin for
          longer sums without hiding a wrong tap or an off-by-one (those give O(1) errors).
    fp16: 4e-3. y, dx, dprefix are rounded to fp16 (2^-11 relative); dweight/dbias stay fp32 sums.
    bf16: 1.5e-2. y, dx, dprefix are rounded to bf16 (2^-8 = 3.9e-3 relative per element, ~half that
          in norm); bf16 weights/bias would add their own rounding, so those are kept fp32.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from kernels.causal_conv1d import (
    causal_conv1d,
    causal_conv1d_oracle,
    causal_conv1d_reference,
)
from kernels.causal_conv1d.triton_conv import causal_conv1d_triton

TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1.5e-2}
DEV = "cuda" if torch.cuda.is_available() else "cpu"
# small launch settings: on the CPU interpreter they keep programs cheap and make tiles short, so
# that L = 17 or 64 spans several tiles (and the backward's programs walk more than one)
SMALL = dict(block_t=8, block_n=2, block_d=16, time_programs=2)
NAMES = ("x", "weight", "bias", "prefix")
OPTIONS = list(itertools.product([False, True], repeat=3))  # (prefix, bias, silu)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values in the result"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(batch, dim, L, k, layout="cl", dtype=torch.float32, prefix=True, bias=True, seed=0, device=DEV):
    """Random inputs. layout "cl": x is a (batch, dim, L) view of a (batch, L, 2*dim) tensor (the
    mixer's in_proj output, here its second half, so the view starts dim elements in); "tc": x is
    contiguous (batch, dim, L)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device)

    if layout == "cl":
        x = rnd(batch, L, 2 * dim).to(dtype)[..., dim:].transpose(1, 2)
    else:
        x = rnd(batch, dim, L).to(dtype)
    return dict(
        x=x,
        weight=rnd(dim, k) / math.sqrt(k),
        bias=rnd(dim) if bias else None,
        prefix=rnd(batch, dim, k - 1).to(dtype) if prefix else None,
    )


def check(fn, inp, silu, tol=None, grads=True, **launch):
    """fn (triton or reference) against the oracle on inp: y, its layout, and every gradient."""
    dtype = inp["x"].dtype
    tol = tol or TOL[dtype]
    kin = {n: (t.detach().clone().requires_grad_(grads) if t is not None else None) for n, t in inp.items()}
    if kin["x"] is not None and inp["x"].stride(1) == 1 and inp["x"].shape[2] > 1:  # keep the layout
        kin["x"] = inp["x"].detach().transpose(1, 2).clone().transpose(1, 2).requires_grad_(grads)
    y = fn(kin["x"], kin["weight"], kin["bias"], kin["prefix"], silu=silu, **launch)
    assert y.shape == inp["x"].shape and y.dtype == dtype
    if inp["x"].shape[1] > 1 and inp["x"].shape[2] > 1:  # layout follows x
        assert (y.stride(1) == 1) == (inp["x"].stride(1) == 1), (y.stride(), inp["x"].stride())
    oin = {n: (t.detach().double().requires_grad_(grads) if t is not None else None) for n, t in inp.items()}
    ref = causal_conv1d_oracle(oin["x"], oin["weight"], oin["bias"], oin["prefix"], silu=silu)
    errs = {"y": rel(y, ref)}
    if grads and y.numel():
        # output gradient representable in y's dtype, so the oracle sees exactly what the kernel does
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype).to(y.device)
        (y.float() * w.float()).sum().backward()
        (ref * w.double()).sum().backward()
        for n in NAMES:
            if kin[n] is None:
                continue
            assert kin[n].grad is not None, f"no gradient for {n}"
            assert kin[n].grad.dtype == kin[n].dtype and kin[n].grad.shape == kin[n].shape, n
            errs["d" + n] = rel(kin[n].grad, oin[n].grad)
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f"relative errors over {tol}: {bad} (all: {errs})"
    return errs


def triton_small(x, weight, bias, prefix, silu=False):
    launch = dict(SMALL)
    if x.stride(1) != 1:  # time-contiguous: one sub-block per tile
        launch.pop("block_n")
    return causal_conv1d_triton(x, weight, bias, prefix, silu=silu, **launch)


# --------------------------------------------------------------------------------------------
# reference (plain PyTorch) against the oracle: cheap, so the full grid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 3, 17, 64])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["cl", "tc"])
@pytest.mark.parametrize("prefix,bias,silu", OPTIONS)
def test_reference_vs_oracle(L, k, layout, prefix, bias, silu):
    inp = make_inputs(2, 12, L, k, layout, prefix=prefix, bias=bias, device="cpu")
    check(causal_conv1d_reference, inp, silu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_low_precision(dtype):
    inp = make_inputs(2, 12, 33, 4, "cl", dtype=dtype, device="cpu")
    check(causal_conv1d_reference, inp, silu=True)


def test_dispatch_cpu_is_reference():
    inp = make_inputs(2, 8, 17, 4, "cl", device="cpu")
    a = causal_conv1d(inp["x"], inp["weight"], inp["bias"], inp["prefix"], silu=True)
    b = causal_conv1d_reference(inp["x"], inp["weight"], inp["bias"], inp["prefix"], silu=True)
    assert torch.equal(a, b)
    assert a.stride(1) == 1  # channel-last in, channel-last out


def test_bad_arguments():
    x = torch.randn(2, 8, 10)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(8, 1, 4))
    with pytest.raises(ValueError, match="prefix"):
        causal_conv1d(x, torch.randn(8, 4), prefix=torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d(x, torch.randn(8, 4), bias=torch.randn(7))
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d(x[0], torch.randn(8, 4))
    with pytest.raises(ValueError, match="width"):
        causal_conv1d_triton(x, torch.randn(8, 9))


# --------------------------------------------------------------------------------------------
# Triton kernels against the oracle (interpreted on the CPU, compiled on a GPU)
# --------------------------------------------------------------------------------------------


def _options(i):
    return OPTIONS[i % len(OPTIONS)]


# L: one step, shorter than the halo, several tiles with a partial last one, several full tiles.
# The (prefix, bias, silu) options rotate with the case so that each appears at every L and k.
@pytest.mark.parametrize("L", [1, 3, 17, 64])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("layout", ["cl", "tc"])
def test_triton_fp32_vs_oracle(L, k, layout):
    i = [1, 3, 17, 64].index(L) * 3 + (k - 2) + (layout == "tc") * 5
    prefix, bias, silu = _options(i)
    inp = make_inputs(2, 20, L, k, layout, prefix=prefix, bias=bias, seed=i)  # 20: a partial channel block
    check(triton_small, inp, silu)


@pytest.mark.parametrize("layout", ["cl", "tc"])
@pytest.mark.parametrize("prefix,bias,silu", [(False, False, False), (True, True, True)])
def test_triton_fp32_all_options(layout, prefix, bias, silu):
    inp = make_inputs(2, 24, 40, 4, layout, prefix=prefix, bias=bias, seed=3)
    check(triton_small, inp, silu)


@pytest.mark.parametrize("layout", ["cl", "tc"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_vs_oracle(layout, dtype):
    inp = make_inputs(2, 24, 64, 4, layout, dtype=dtype, seed=5)
    check(triton_small, inp, silu=True)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_triton_prefetch_distance(prefetch):
    # the channel-last queue of columns loaded ahead, shorter than the default (8 / 6)
    inp = make_inputs(2, 20, 30, 3, "cl", seed=4)
    check(lambda *a, **kw: causal_conv1d_triton(*a, **kw, **SMALL, prefetch=prefetch), inp, silu=True)


@pytest.mark.parametrize("layout", ["cl", "tc"])
def test_triton_default_launch(layout):
    # the GPU's launch settings (tiles longer than L, a 24-channel problem in a wider block)
    inp = make_inputs(2, 24, 70, 4, layout, seed=6)
    check(causal_conv1d_triton, inp, silu=True)


def test_triton_k1_and_odd_strides():
    # width 1 (no halo), and an x with no unit stride at all (every other time of a wider tensor)
    check(triton_small, make_inputs(2, 8, 20, 1, "tc", prefix=True, seed=8), silu=True)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 12, 50, generator=g)[..., ::2].to(DEV)
    inp = dict(x=x, weight=torch.randn(12, 3, generator=g).to(DEV), bias=None,
               prefix=torch.randn(2, 12, 2, generator=g).to(DEV))
    check(triton_small, inp, silu=False)


def test_triton_dy_other_layout():
    # autograd may hand the backward a dy in the other layout than x: the result must not change
    inp = make_inputs(2, 20, 33, 4, "cl", seed=13)
    xs = [inp["x"].detach().transpose(1, 2).clone().transpose(1, 2).requires_grad_() for _ in range(2)]
    w = torch.randn(2, 20, 33, generator=torch.Generator().manual_seed(14)).to(DEV)
    grads = []
    for x, dy in zip(xs, (w, w.transpose(1, 2).contiguous().transpose(1, 2))):
        assert (dy.stride(1) == 1) == (dy is not w)
        y = triton_small(x, inp["weight"], inp["bias"], inp["prefix"], silu=True)
        y.backward(dy)
        grads.append(x.grad)
    assert rel(grads[0], grads[1]) < 1e-6


def test_triton_empty():
    for L in (0,):
        inp = make_inputs(2, 8, L, 4, "tc", seed=1)
        kin = {n: t.clone().requires_grad_() for n, t in inp.items()}
        y = causal_conv1d_triton(kin["x"], kin["weight"], kin["bias"], kin["prefix"], silu=True)
        assert y.shape == (2, 8, 0)
        y.sum().backward()
        assert kin["weight"].grad.abs().sum() == 0 and kin["prefix"].grad.abs().sum() == 0


# --------------------------------------------------------------------------------------------
# segments: conv([x1, x2]) == conv(x1), then conv(x2, prefix = the last k-1 inputs before x2)
# --------------------------------------------------------------------------------------------


def _segment_check(fn, L1, L2, k, layout, dtype=torch.float32, silu=True, tol=1e-5):
    inp = make_inputs(2, 20, L1 + L2, k, layout, dtype=dtype, seed=11)
    x = inp["x"]
    leaves = {n: inp[n].detach().clone().requires_grad_() for n in ("weight", "bias", "prefix")}
    x1 = x[..., :L1].detach().clone().requires_grad_()
    x2 = x[..., L1:].detach().clone().requires_grad_()
    if layout == "cl":  # keep the segments channel-last
        x1 = x1.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        x2 = x2.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    gw = torch.randn(2, 20, L1 + L2, generator=torch.Generator().manual_seed(12)).to(dtype).to(x.device)

    # whole sequence
    xw = torch.cat([x1, x2], dim=-1).detach().requires_grad_()
    whole = {n: t.detach().clone().requires_grad_() for n, t in leaves.items()}
    yw = fn(xw, whole["weight"], whole["bias"], whole["prefix"], silu=silu)
    (yw.float() * gw.float()).sum().backward()

    # two segments: the second's prefix is the last k-1 inputs before it (from x1, and from the
    # first prefix when x1 is shorter than k-1), so gradients flow back into x1 and the prefix
    y1 = fn(x1, leaves["weight"], leaves["bias"], leaves["prefix"], silu=silu)
    p2 = torch.cat([leaves["prefix"], x1], dim=-1)[..., -(k - 1):]
    y2 = fn(x2, leaves["weight"], leaves["bias"], p2, silu=silu)
    ys = torch.cat([y1, y2], dim=-1)
    (ys.float() * gw.float()).sum().backward()

    errs = {"y": rel(ys, yw), "dx1": rel(x1.grad, xw.grad[..., :L1]), "dx2": rel(x2.grad, xw.grad[..., L1:])}
    for n in leaves:
        errs["d" + n] = rel(leaves[n].grad, whole[n].grad)
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f"segments differ from the whole over {tol}: {bad} (all: {errs})"


@pytest.mark.parametrize("L1,L2", [(17, 30), (2, 9)])
@pytest.mark.parametrize("layout", ["cl", "tc"])
def test_segments_triton(L1, L2, layout):
    _segment_check(triton_small, L1, L2, 4, layout)


@pytest.mark.parametrize("L1,L2", [(17, 30), (2, 9)])
def test_segments_reference(L1, L2):
    _segment_check(causal_conv1d_reference, L1, L2, 4, "cl")


# --------------------------------------------------------------------------------------------
# GPU only: compiled kernels at their own launch settings and at scale
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,k", [(torch.float32, k) for k in (2, 3, 4, 8)]
                         + [(torch.bfloat16, k) for k in (2, 3, 4, 8)] + [(torch.float16, 4)])
@pytest.mark.parametrize("layout", ["cl", "tc"])
def test_gpu_default_launch_vs_oracle(dtype, k, layout):
    # one option set per (dtype, k, layout) (each is its own compile), rotating with k; the lengths
    # share the compile (L is not specialised) up to the divisibility of L-dependent strides
    prefix, bias, silu = _options(k + (dtype == torch.bfloat16) * 3 + (layout == "tc"))
    if k == 4:
        prefix, bias, silu = True, True, True
    for i, L in enumerate([1, 5, 1000, 4099]):
        inp = make_inputs(2, 200, L, k, layout, dtype=dtype, prefix=prefix, bias=bias, seed=i, device="cuda")
        check(causal_conv1d, inp, silu)


# dweight/dbias at scale: fp32 sums of the same bf16 products over up to 2^20 positions, in another
# order than the reference's: a random walk of roundings, ~2^10 * 2^-24 relative, so 3e-4
SUM_TOL = 3e-4


def _reference_fp32(inp, silu, dy):
    """The reference in fp32 (cuDNN without TF32) on the kernel's (rounded) inputs: y and every
    gradient, in fp32."""
    r = {n: (t.detach().float().requires_grad_() if t is not None else None) for n, t in inp.items()}
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        y = causal_conv1d_reference(r["x"], r["weight"], r["bias"], r["prefix"], silu=silu)
        y.backward(dy.float())
    return y.detach(), {n: t.grad for n, t in r.items() if t is not None}


@pytest.mark.gpu
def test_gpu_long_bf16_channel_last():
    # the mixer's shape: 2^20 tokens, dim 1536, bf16, channel-last, width 4, SiLU, bias, prefix
    torch.cuda.empty_cache()
    inp = make_inputs(1, 1536, 1 << 20, 4, "cl", dtype=torch.bfloat16, seed=21, device="cuda")
    kin = {n: t.detach().clone().requires_grad_() for n, t in inp.items()}
    kin["x"] = inp["x"].detach().transpose(1, 2).clone().transpose(1, 2).requires_grad_()
    y = causal_conv1d(kin["x"], kin["weight"], kin["bias"], kin["prefix"], silu=True)
    assert y.stride(1) == 1
    dy = torch.randn(y.shape, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(3))
    y.backward(dy)
    y_ref, g_ref = _reference_fp32(inp, True, dy)
    assert rel(y, y_ref) < TOL[torch.bfloat16]
    assert rel(kin["x"].grad, g_ref["x"]) < TOL[torch.bfloat16]
    assert rel(kin["prefix"].grad, g_ref["prefix"]) < TOL[torch.bfloat16]
    # fp32 sums over 2^20 positions of the same bf16 products, in another order
    assert rel(kin["weight"].grad, g_ref["weight"]) < SUM_TOL
    assert rel(kin["bias"].grad, g_ref["bias"]) < SUM_TOL
    # the last positions too (a 32-bit offset would go wrong past 2^31 / (2 * 1536) ~ 700K tokens)
    assert rel(y[..., -4096:], y_ref[..., -4096:]) < TOL[torch.bfloat16]
    assert rel(kin["x"].grad[..., -4096:], g_ref["x"][..., -4096:]) < TOL[torch.bfloat16]


@pytest.mark.gpu
def test_gpu_long_time_contiguous():
    inp = make_inputs(2, 256, (1 << 20) + 3, 4, "tc", dtype=torch.bfloat16, seed=22, device="cuda")
    kin = {n: t.detach().clone().requires_grad_() for n, t in inp.items()}
    y = causal_conv1d(kin["x"], kin["weight"], kin["bias"], kin["prefix"], silu=True)
    assert y.is_contiguous()
    dy = torch.randn(y.shape, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(4))
    y.backward(dy)
    y_ref, g_ref = _reference_fp32(inp, True, dy)
    assert rel(y, y_ref) < TOL[torch.bfloat16]
    for n in NAMES:
        assert rel(kin[n].grad, g_ref[n]) < (TOL[torch.bfloat16] if n in ("x", "prefix") else SUM_TOL), n


@pytest.mark.gpu
def test_gpu_over_2_31_elements():
    # batch * dim * L > 2^31 (x itself a view of a tensor of 2x that): the end of the last batch row
    # checked against the reference on a window, continued from the inputs before it via prefix
    torch.cuda.empty_cache()
    batch, dim, L, k = 2, 1024, (1 << 20) + 5, 4
    assert batch * dim * L > 2**31
    g = torch.Generator("cuda").manual_seed(5)
    xz = torch.randn(batch, L, 2 * dim, device="cuda", dtype=torch.bfloat16, generator=g)
    x = xz[..., :dim].transpose(1, 2).requires_grad_()
    w = torch.randn(dim, k, device="cuda", generator=g) / 2
    b = torch.randn(dim, device="cuda", generator=g)
    y = causal_conv1d(x, w, b, silu=True)
    dy = torch.randn(y.shape, device="cuda", dtype=torch.bfloat16, generator=g)
    (dx,) = torch.autograd.grad(y, x, dy)
    t0 = L - 3000
    xw = x.detach()[1:, :, t0:].float()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yw = causal_conv1d_reference(xw.requires_grad_(), w, b, prefix=x.detach()[1:, :, t0 - (k - 1):t0].float(),
                                     silu=True)
        yw.backward(dy[1:, :, t0:].float())
    assert rel(y[1:, :, t0:], yw) < TOL[torch.bfloat16]
    assert rel(dx[1:, :, t0:], xw.grad) < TOL[torch.bfloat16]


@pytest.mark.gpu
def test_gpu_deterministic_and_compiles():
    inp = make_inputs(4, 768, 5000, 4, "cl", dtype=torch.bfloat16, seed=23, device="cuda")
    grads = []
    for _ in range(2):
        w = inp["weight"].clone().requires_grad_()
        y = causal_conv1d(inp["x"], w, inp["bias"], silu=True)
        y.float().square().sum().backward()
        grads.append(w.grad)
    assert torch.equal(grads[0], grads[1]), "dweight differs between two identical runs"

    fn = torch.compile(lambda x, w, b: F.gelu(causal_conv1d(x, w, b, silu=True)), fullgraph=True)
    x = inp["x"].detach().requires_grad_()
    out = fn(x, inp["weight"], inp["bias"])
    eager = F.gelu(causal_conv1d(inp["x"], inp["weight"], inp["bias"], silu=True))
    torch.testing.assert_close(out.float(), eager.float(), rtol=1e-2, atol=1e-2)  # gelu fused or not
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()
