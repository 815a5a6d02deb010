"""The chunked PyTorch reference scan against the float64 oracle (values and every gradient).

Everything is checked against `selective_scan_oracle` (an independent float64 loop), never
against the reference itself, except where the property under test is self-consistency
(chunk sizes, splitting a sequence across calls).
"""

import itertools

import pytest
import torch

from kernels.selective_scan import reference as reference_module
from kernels.selective_scan import selective_scan, selective_scan_oracle, selective_scan_reference

GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def make_inputs(batch=2, dim=6, L=37, N=4, groups=None, dtype=torch.float32, seed=0, n_seqs=4):
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
        # packed sequences of random lengths: sorted ids, so each id is one contiguous run
        seq_idx=torch.sort(torch.randint(0, n_seqs, (batch, L), generator=g), dim=1).values,
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


def grads_of(fn, x, leaves_names=GRAD_NAMES, seed=1, **kw):
    """Gradients of a random linear loss on the output AND the final state, w.r.t. the named inputs."""
    leaves = {k: x[k].clone().requires_grad_() for k in leaves_names}
    out, state = call(fn, {**x, **leaves}, **kw)
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64)  # the same weights whatever fn's dtypes
    w_state = torch.randn(state.shape, generator=g, dtype=torch.float64)
    # the loss reads the final state too, so gradients must flow back through it
    loss = (out.double() * w_out).sum() + (state.double() * w_state).sum()
    return dict(zip(leaves_names, torch.autograd.grad(loss, list(leaves.values()))))


# ---------------------------------------------------------------------------------------------
# forward values


@pytest.mark.parametrize("L", [1, 63, 500])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seqs", [False, True])
def test_forward_matches_oracle_fp32(L, groups, reverse, seqs):
    x = make_inputs(L=L, groups=groups)
    out, state = call(selective_scan_reference, x, reverse=reverse, seqs=seqs, chunk_size=16)
    ref_out, ref_state = call(selective_scan_oracle, x, reverse=reverse, seqs=seqs)
    # fp32 accumulation over <= 500 steps of a contracting recurrence: ~1e-6 relative
    assert out.dtype == torch.float32 and out.shape == x["u"].shape
    assert state.dtype == torch.float32 and state.shape == x["initial_state"].shape
    assert rel(out, ref_out) < 2e-5
    assert rel(state, ref_state) < 2e-5


@pytest.mark.parametrize(
    "flags",
    [dict(zip(["with_z", "with_D", "with_bias", "softplus", "init"], bits)) for bits in itertools.product([False, True], repeat=5)],
)
def test_optional_inputs_on_and_off(flags):
    x = make_inputs(L=45, groups=2)
    if not flags["softplus"]:  # raw delta must stay positive for a stable recurrence
        x["delta"] = torch.nn.functional.softplus(x["delta"]) + 1.0
    out, state = call(selective_scan_reference, x, chunk_size=8, **flags)
    ref_out, ref_state = call(selective_scan_oracle, x, **flags)
    assert rel(out, ref_out) < 2e-5 and rel(state, ref_state) < 2e-5


def test_return_final_state_false_returns_only_the_output():
    x = make_inputs(L=30)
    out = selective_scan_reference(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_softplus=True)
    ref = selective_scan_oracle(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_softplus=True)
    assert isinstance(out, torch.Tensor) and rel(out, ref) < 2e-5


def test_seq_idx_resets_the_state_exactly_where_the_id_changes():
    """Packed sequences in one row give the same outputs as each sequence scanned on its own."""
    x = make_inputs(batch=1, L=40, seed=4)
    x["seq_idx"] = torch.tensor([[0] * 13 + [5] * 20 + [2] * 7])
    for reverse in (False, True):
        packed, _ = call(selective_scan_reference, x, seqs=True, reverse=reverse, init=False, chunk_size=8)
        for lo, hi in ((0, 13), (13, 33), (33, 40)):
            part = {k: (v[..., lo:hi] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
            alone, _ = call(selective_scan_oracle, part, init=False, reverse=reverse)
            assert rel(packed[..., lo:hi], alone) < 2e-5


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("groups", [None, 2])
def test_half_precision_inputs_accumulate_in_fp32(dtype, bound, groups):
    """Inputs are rounded to bf16/fp16; the oracle sees the same rounded values. What remains is
    the rounding of the output to that dtype (bf16: 2^-8 relative, fp16: 2^-11)."""
    x = make_inputs(L=200, dtype=dtype, groups=groups)
    out, state = call(selective_scan_reference, x, seqs=True, chunk_size=32)
    ref_out, ref_state = call(selective_scan_oracle, x, seqs=True)
    assert out.dtype == dtype
    assert state.dtype == torch.float32  # the state is never rounded to the input dtype
    assert rel(out, ref_out) < bound
    assert rel(state, ref_state) < 1e-5


def test_float64_inputs_compute_in_float64():
    x = make_inputs(L=300, dtype=torch.float64, groups=2)
    out, state = call(selective_scan_reference, x, seqs=True, chunk_size=16)
    ref_out, ref_state = call(selective_scan_oracle, x, seqs=True)
    assert out.dtype == torch.float64 and state.dtype == torch.float64
    assert rel(out, ref_out) < 1e-12 and rel(state, ref_state) < 1e-12


def test_non_contiguous_inputs():
    """u, delta, z as (batch, L, dim) tensors transposed (how a Mamba block produces them)."""
    x = make_inputs(L=70, groups=2)
    for k in ("u", "delta", "z"):
        x[k] = x[k].transpose(1, 2).contiguous().transpose(1, 2)
    x["B"] = x["B"].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not x["u"].is_contiguous()
    out, state = call(selective_scan_reference, x, seqs=True, chunk_size=16)
    ref_out, ref_state = call(selective_scan_oracle, x, seqs=True)
    assert rel(out, ref_out) < 2e-5 and rel(state, ref_state) < 2e-5


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize(
    "groups,reverse,seqs,flags",
    [
        (None, False, False, {}),
        (2, False, True, {}),
        (3, True, False, {}),
        (2, True, True, {}),
        (None, False, True, dict(with_z=False, with_D=False)),
        (2, True, False, dict(with_bias=False, init=False)),
    ],
)
def test_every_gradient_matches_oracle_float64(groups, reverse, seqs, flags):
    x = make_inputs(dim=6, L=50, groups=groups, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if not (
        (k == "z" and flags.get("with_z") is False) or (k == "D" and flags.get("with_D") is False)
        or (k == "delta_bias" and flags.get("with_bias") is False) or (k == "initial_state" and flags.get("init") is False)
    )]
    kw = dict(reverse=reverse, seqs=seqs, **flags)
    ref = grads_of(selective_scan_reference, x, names, chunk_size=7, **kw)
    oracle = grads_of(selective_scan_oracle, x, names, **kw)
    for k in names:
        assert rel(ref[k], oracle[k]) < 1e-10, k


def test_gradients_without_softplus_match_oracle():
    x = make_inputs(dim=4, L=33, groups=2, dtype=torch.float64)
    x["delta"] = torch.nn.functional.softplus(x["delta"]) + 0.1
    ref = grads_of(selective_scan_reference, x, softplus=False, seqs=True, chunk_size=5)
    oracle = grads_of(selective_scan_oracle, x, softplus=False, seqs=True)
    for k in GRAD_NAMES:
        assert rel(ref[k], oracle[k]) < 1e-10, k


@pytest.mark.parametrize("reverse", [False, True])
def test_fp32_gradients_match_float64_oracle(reverse):
    """The fp32 path (what training runs): gradients within fp32 accumulation error of float64."""
    x = make_inputs(dim=8, L=300, groups=2)
    ref = grads_of(selective_scan_reference, x, reverse=reverse, seqs=True, chunk_size=32)
    x64 = {k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}
    oracle = grads_of(selective_scan_oracle, x64, reverse=reverse, seqs=True)
    for k in GRAD_NAMES:
        assert ref[k].dtype == x[k].dtype, k
        assert rel(ref[k], oracle[k]) < 1e-4, k


def test_bf16_gradients_come_back_in_input_dtypes():
    x = make_inputs(L=64, dtype=torch.bfloat16, groups=2)
    ref = grads_of(selective_scan_reference, x, seqs=True, chunk_size=16)
    oracle = grads_of(selective_scan_oracle, x, seqs=True)
    for k in GRAD_NAMES:
        assert ref[k].dtype == x[k].dtype, k
        # the gradient reaching the bf16 output is itself rounded to bf16 (2^-8 relative)
        assert rel(ref[k], oracle[k]) < 1e-2, k


def test_loss_on_final_state_only_backpropagates():
    x = make_inputs(L=40, dtype=torch.float64, groups=2)
    leaves = {k: x[k].clone().requires_grad_() for k in GRAD_NAMES}
    grads = {}
    for name, fn in (("ref", selective_scan_reference), ("oracle", selective_scan_oracle)):
        _, state = call(fn, {**x, **leaves}, **({"chunk_size": 6} if name == "ref" else {}))
        grads[name] = torch.autograd.grad(state.square().sum(), list(leaves.values()), allow_unused=True)
    for k, a, b in zip(GRAD_NAMES, grads["ref"], grads["oracle"]):
        if k in ("z", "D", "C"):  # the final state does not depend on the output stage
            assert a is None or a.abs().max() == 0, k
            continue
        assert rel(a, b) < 1e-10, k


@pytest.mark.parametrize("reverse,groups,seqs,batch", [(True, 2, True, 1), (False, None, True, 2)])
def test_gradcheck_tiny_float64(reverse, groups, seqs, batch):
    x = make_inputs(batch=batch, dim=2, N=3, L=7, groups=groups, dtype=torch.float64, seed=3)
    x["seq_idx"] = torch.tensor([[0, 0, 0, 1, 1, 2, 2]] * batch)
    inputs = [x[k].clone().requires_grad_() for k in GRAD_NAMES]

    def f(u, delta, A, B, C, D, z, delta_bias, h0):
        return selective_scan_reference(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True, initial_state=h0,
            return_final_state=True, seq_idx=x["seq_idx"] if seqs else None, reverse=reverse, chunk_size=3,
        )

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# chunking: splitting across calls, chunk sizes, cache blocks inside a chunk


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
    ref_out, ref_state = call(selective_scan_oracle, x, reverse=reverse)
    assert rel(joined, ref_out) < 2e-5 and rel(h2, ref_state) < 2e-5


@pytest.mark.parametrize("reverse", [False, True])
def test_chunk_size_does_not_change_the_result(reverse):
    x = make_inputs(L=77, groups=2)
    outs = [call(selective_scan_reference, x, seqs=True, reverse=reverse, chunk_size=c) for c in (1, 5, 64, 77, 1000)]
    for out, state in outs[1:]:
        assert rel(out, outs[0][0]) < 1e-6 and rel(state, outs[0][1]) < 1e-6
    x64 = {k: (v.double() if v.is_floating_point() else v) for k, v in x.items()}
    grads = [grads_of(selective_scan_reference, x64, seqs=True, reverse=reverse, chunk_size=c) for c in (1, 5, 1000)]
    for g in grads[1:]:
        for k in GRAD_NAMES:
            assert rel(g[k], grads[0][k]) < 1e-10, k


@pytest.mark.parametrize("block_bytes_steps", [1, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_cache_blocks_inside_a_chunk_match_oracle(monkeypatch, block_bytes_steps, reverse):
    """A chunk is processed in cache-sized blocks (and the backward recomputes block-entry states
    first). Force blocks of 1 and 3 steps inside chunks of 8 and check values and gradients."""
    x = make_inputs(dim=6, N=4, L=29, groups=2, dtype=torch.float64)
    step_bytes = 2 * 6 * 4 * 8  # batch * dim * N * float64
    monkeypatch.setattr(reference_module, "_BLOCK_BYTES", block_bytes_steps * step_bytes)
    out, state = call(selective_scan_reference, x, seqs=True, reverse=reverse, chunk_size=8)
    ref_out, ref_state = call(selective_scan_oracle, x, seqs=True, reverse=reverse)
    assert rel(out, ref_out) < 1e-12 and rel(state, ref_state) < 1e-12
    ref = grads_of(selective_scan_reference, x, seqs=True, reverse=reverse, chunk_size=8)
    oracle = grads_of(selective_scan_oracle, x, seqs=True, reverse=reverse)
    for k in GRAD_NAMES:
        assert rel(ref[k], oracle[k]) < 1e-10, k


# ---------------------------------------------------------------------------------------------
# memory


def test_nothing_of_size_batch_dim_N_L_is_saved_for_backward():
    """Memory bound: with L much longer than the chunk, every tensor autograd keeps is smaller
    than batch*dim*N*L (the per-step states are recomputed in the backward, never stored)."""
    batch, dim, N, L, chunk, groups = 2, 16, 16, 512, 32, 2
    x = make_inputs(batch=batch, dim=dim, N=N, L=L, groups=groups)
    leaves = {k: x[k].clone().requires_grad_() for k in GRAD_NAMES}
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        out, state = call(selective_scan_reference, {**x, **leaves}, seqs=True, chunk_size=chunk)
    (out.sum() + state.sum()).backward()
    assert sizes, "the saved-tensor hook saw nothing"
    # the largest things kept are the inputs (u, delta, z: batch*dim*L; B, C: batch*groups*N*L)
    # and the chunk-boundary states (batch*dim*N*L/chunk)
    assert max(sizes) <= max(batch * dim * L, batch * groups * N * L, batch * dim * N * (L // chunk))
    assert max(sizes) < batch * dim * N * L // 4


@pytest.mark.parametrize("reverse", [False, True])
def test_no_allocation_of_size_batch_dim_N_L(monkeypatch, reverse):
    """Nothing allocated during forward or backward (per-step states, B or C expanded over the
    channels) comes near batch*dim*N*L elements. Control: with chunk_size = L and no cache-block
    limit the per-step buffer is exactly that big, and the probe sees it."""
    from torch.profiler import profile

    batch, dim, N, L = 2, 16, 16, 512
    x = make_inputs(batch=batch, dim=dim, N=N, L=L, groups=2)  # B, C: batch*2*N*L = 1/8 of that
    full_bytes = batch * dim * N * L * 4

    def largest_allocation(chunk):
        leaves = {k: x[k].clone().requires_grad_() for k in GRAD_NAMES}
        with profile(profile_memory=True) as prof:
            out, state = call(selective_scan_reference, {**x, **leaves}, seqs=True, reverse=reverse, chunk_size=chunk)
            (out.sum() + state.sum()).backward()
        return max(e.self_cpu_memory_usage for e in prof.events())

    assert largest_allocation(16) < full_bytes // 4
    monkeypatch.setattr(reference_module, "_BLOCK_BYTES", 1 << 40)
    assert largest_allocation(L) >= full_bytes


# ---------------------------------------------------------------------------------------------
# edge cases and arguments


@pytest.mark.parametrize("init", [False, True])
def test_empty_sequence(init):
    x = make_inputs(L=0)
    leaves = {k: x[k].clone().requires_grad_() for k in ("u", "initial_state")}
    out, state = call(selective_scan_reference, {**x, **leaves}, init=init)
    assert out.shape == (2, 6, 0) and state.shape == (2, 6, 4) and state.dtype == torch.float32
    expected = x["initial_state"] if init else torch.zeros(2, 6, 4)
    assert torch.equal(state, expected)
    if init:  # the final state is the initial state: gradient is the identity
        (g,) = torch.autograd.grad(state.sum(), [leaves["initial_state"]])
        assert torch.equal(g, torch.ones_like(g))


def test_public_function_dispatches_to_reference_on_cpu():
    x = make_inputs(L=20)
    a = call(selective_scan, x)[0]
    b = call(selective_scan_reference, x)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda x: x.update(u=x["u"][0]), "u must be"),
        (lambda x: x.update(delta=x["delta"][..., :-1]), "delta shape"),
        (lambda x: x.update(A=x["A"][:-1]), "A must be"),
        (lambda x: x.update(A=x["A"][:, 0]), "A must be"),
        (lambda x: x.update(B=x["B"][:, :3]), "B must be"),
        (lambda x: x.update(C=x["C"][..., :-1]), "C must be"),
        (lambda x: x.update(B=torch.randn(2, 4, 4, 37), C=torch.randn(2, 4, 4, 37)), "not a multiple"),
        (lambda x: x.update(B=torch.randn(2, 2, 4, 37)), "same shape"),
        (lambda x: x.update(D=torch.randn(5)), "D must be"),
        (lambda x: x.update(delta_bias=torch.randn(6, 1)), "delta_bias must be"),
        (lambda x: x.update(z=torch.randn(2, 6, 36)), "z shape"),
        (lambda x: x.update(initial_state=torch.randn(2, 6)), "initial_state"),
        (lambda x: x.update(seq_idx=torch.zeros(2, 36, dtype=torch.long)), "seq_idx"),
        (lambda x: x.update(seq_idx=torch.zeros(2, 37)), "integer"),
        (lambda x: x.update(u=x["u"].long()), "floating-point"),
    ],
)
def test_bad_arguments_raise_value_error(change, match):
    x = make_inputs()
    change(x)
    with pytest.raises(ValueError, match=match):
        call(selective_scan_reference, x, seqs=True)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_size_raises_value_error(chunk):
    x = make_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        call(selective_scan_reference, x, chunk_size=chunk)
