"""The chunked PyTorch reference scan against the float64 oracle (values and every gradient)."""

import itertools

import pytest
import torch

from kernels.selective_scan import selective_scan, selective_scan_oracle, selective_scan_reference


def make_inputs(batch=2, dim=6, L=37, N=4, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bc = (batch, groups, N, L) if groups else (batch, N, L)
    p32 = torch.float64 if dtype == torch.float64 else torch.float32  # parameters and state: fp32 (fp64 for gradcheck)
    return dict(
        u=r(batch, dim, L).to(dtype),
        delta=(r(batch, dim, L) * 0.5 - 1.0).to(dtype),  # softplus -> dt around 0.3, as trained models have
        A=-torch.exp(r(dim, N)).to(p32),
        B=r(*bc).to(dtype),
        C=r(*bc).to(dtype),
        D=r(dim).to(p32),
        z=r(batch, dim, L).to(dtype),
        delta_bias=(r(dim) * 0.3).to(p32),
        initial_state=r(batch, dim, N).to(p32),
        seq_idx=torch.sort(torch.randint(0, 4, (batch, L), generator=g), dim=1).values,
    )


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def call(fn, x, *, with_z=True, with_D=True, with_bias=True, softplus=True, init=True, seqs=False, reverse=False, **kw):
    return fn(
        x["u"], x["delta"], x["A"], x["B"], x["C"],
        D=x["D"] if with_D else None, z=x["z"] if with_z else None,
        delta_bias=x["delta_bias"] if with_bias else None, delta_softplus=softplus,
        initial_state=x["initial_state"] if init else None, return_final_state=True,
        seq_idx=x["seq_idx"] if seqs else None, reverse=reverse, **kw,
    )


@pytest.mark.parametrize("L", [1, 63, 500])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seqs", [False, True])
def test_forward_matches_oracle_fp32(L, groups, reverse, seqs):
    x = make_inputs(L=L, groups=groups)
    out, state = call(selective_scan_reference, x, reverse=reverse, seqs=seqs, chunk_size=16)
    ref_out, ref_state = call(selective_scan_oracle, x, reverse=reverse, seqs=seqs)
    # fp32 accumulation over <= 500 steps of a contracting recurrence: ~1e-6 relative
    assert rel(out, ref_out) < 2e-5
    assert rel(state, ref_state) < 2e-5
    assert state.dtype == torch.float32


@pytest.mark.parametrize(
    "flags",
    [dict(zip(["with_z", "with_D", "with_bias", "softplus", "init"], bits)) for bits in itertools.product([False, True], repeat=5)],
)
def test_optional_inputs_on_and_off(flags):
    x = make_inputs(L=45)
    if not flags["softplus"]:  # raw delta must stay positive for a stable recurrence
        x["delta"] = torch.nn.functional.softplus(x["delta"]) + 1.0
    out, state = call(selective_scan_reference, x, chunk_size=8, **flags)
    ref_out, ref_state = call(selective_scan_oracle, x, **flags)
    assert rel(out, ref_out) < 2e-5 and rel(state, ref_state) < 2e-5


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_precision_inputs_accumulate_in_fp32(dtype, bound):
    """Inputs are rounded to bf16/fp16; the oracle sees the same rounded values. What remains is
    the rounding of the output to that dtype (bf16: 2^-8 relative, fp16: 2^-11)."""
    x = make_inputs(L=200, dtype=dtype)
    out, state = call(selective_scan_reference, x, chunk_size=32)
    ref_out, ref_state = call(selective_scan_oracle, x)
    assert out.dtype == dtype
    assert rel(out, ref_out) < bound
    assert rel(state, ref_state) < 1e-5  # the state is never rounded to the input dtype


GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


@pytest.mark.parametrize("groups,reverse,seqs", [(None, False, False), (2, False, True), (3, True, False), (2, True, True)])
def test_every_gradient_matches_oracle(groups, reverse, seqs):
    x = make_inputs(dim=6, L=50, groups=groups, dtype=torch.float64)
    leaves = {k: x[k].clone().requires_grad_() for k in GRAD_NAMES}
    y = {**x, **leaves}
    grads = {}
    for name, fn in (("ref", selective_scan_reference), ("oracle", selective_scan_oracle)):
        kw = {"chunk_size": 7} if name == "ref" else {}
        out, state = call(fn, y, reverse=reverse, seqs=seqs, **kw)
        g = torch.Generator().manual_seed(1)
        w_out, w_state = torch.randn(out.shape, generator=g, dtype=out.dtype), torch.randn(state.shape, generator=g, dtype=state.dtype)
        # the loss reads the final state too, so gradients must flow back through it
        grads[name] = torch.autograd.grad((out * w_out).sum() + (state * w_state).sum(), list(leaves.values()))
    for k, a, b in zip(GRAD_NAMES, grads["ref"], grads["oracle"]):
        assert rel(a, b) < 1e-10, k


def test_gradcheck_tiny_float64():
    x = make_inputs(batch=1, dim=2, N=3, L=7, groups=2, dtype=torch.float64, seed=3)
    x["seq_idx"] = torch.tensor([[0, 0, 0, 1, 1, 2, 2]])
    inputs = [x[k].clone().requires_grad_() for k in GRAD_NAMES]

    def f(u, delta, A, B, C, D, z, delta_bias, h0):
        out, state = selective_scan_reference(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True, initial_state=h0,
            return_final_state=True, seq_idx=x["seq_idx"], reverse=True, chunk_size=3,
        )
        return out, state

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("reverse", [False, True])
def test_chunk_consistency_state_carried_across_calls(reverse):
    """Scanning L at once equals scanning L1 then L2 with the final state handed over."""
    x = make_inputs(L=90, groups=2)
    full, full_state = call(selective_scan_reference, x, reverse=reverse, chunk_size=16)
    cut = 41
    first = slice(cut, None) if reverse else slice(0, cut)  # reverse scans the tail first
    second = slice(0, cut) if reverse else slice(cut, None)

    def part(sl, h0):
        y = {k: (v[..., sl] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
        y["initial_state"] = h0
        return call(selective_scan_reference, y, reverse=reverse, chunk_size=16)

    out1, h1 = part(first, x["initial_state"])
    out2, h2 = part(second, h1)
    joined = torch.cat([out2, out1] if reverse else [out1, out2], dim=-1)
    assert rel(joined, full) < 1e-6 and rel(h2, full_state) < 1e-6


def test_chunk_size_does_not_change_the_result():
    x = make_inputs(L=77, groups=2)
    outs = [call(selective_scan_reference, x, seqs=True, chunk_size=c) for c in (1, 5, 64, 1000)]
    for out, state in outs[1:]:
        assert rel(out, outs[0][0]) < 1e-6 and rel(state, outs[0][1]) < 1e-6


def test_nothing_of_size_batch_dim_N_L_is_saved_for_backward():
    """Memory bound: with L much longer than the chunk, every tensor autograd keeps is smaller
    than batch*dim*N*L (the per-step states are recomputed in the backward, never stored)."""
    batch, dim, N, L = 2, 8, 16, 512
    x = make_inputs(batch=batch, dim=dim, N=N, L=L)
    leaves = {k: x[k].clone().requires_grad_() for k in ("u", "delta", "B", "C")}
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out, _ = call(selective_scan_reference, {**x, **leaves}, chunk_size=32)
    out.sum().backward()
    # the largest things kept are the inputs (u, delta: batch*dim*L; B, C: batch*N*L) and the
    # chunk-boundary states (batch*dim*N*L/chunk)
    assert max(sizes) <= max(batch * dim * L, batch * N * L, batch * dim * N * (L // 32))
    assert max(sizes) < batch * dim * N * L // 4


def test_empty_sequence():
    x = make_inputs(L=0)
    out, state = call(selective_scan_reference, x)
    assert out.shape == (2, 6, 0)
    assert torch.equal(state, x["initial_state"])


def test_public_function_dispatches_to_reference_on_cpu():
    x = make_inputs(L=20)
    a = call(selective_scan, x)[0]
    b = call(selective_scan_reference, x)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda x: x.update(delta=x["delta"][..., :-1]), "delta shape"),
        (lambda x: x.update(A=x["A"][:-1]), "A must be"),
        (lambda x: x.update(B=x["B"][:, :3]), "B must be"),
        (lambda x: x.update(B=torch.randn(2, 4, 4, 37), C=torch.randn(2, 4, 4, 37)), "not a multiple"),
        (lambda x: x.update(D=torch.randn(5)), "D must be"),
        (lambda x: x.update(initial_state=torch.randn(2, 6)), "initial_state"),
        (lambda x: x.update(seq_idx=torch.zeros(2, 36, dtype=torch.long)), "seq_idx"),
    ],
)
def test_bad_arguments_raise_value_error(change, match):
    x = make_inputs()
    change(x)
    with pytest.raises(ValueError, match=match):
        call(selective_scan_reference, x, seqs=True)
