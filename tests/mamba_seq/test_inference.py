"""Recurrent inference: stepping (and prefill + stepping) equals the parallel forward.

Tolerance for the fp32 CPU comparisons: relative error ||step - forward|| / ||forward|| over all
logits < 2e-5, and the largest single-logit error < 1e-4 * max|logit|.
Why: the two paths compute the same sums in different orders (scan vs one step; conv1d vs a 4-term
sum), so they differ only by fp32 rounding, eps = 2^-24 = 6e-8 per operation. The SSM is a
contraction (decay exp(dt*A) < 1), so an error injected at one step decays with the channel's
memory; the slowest channel forgets over M = 1/(dt_min*|A_min|) = 1/(1e-3*1) = 1000 steps at
initialisation. Rounding errors of ~10 operations per step per layer, over min(L, M) = 300 steps
and 3 layers, add at worst linearly: 10 * 6e-8 * 300 * 3 = 5e-4; as independent roundings they add
as a random walk: 10 * 6e-8 * sqrt(300) * 3 = 3e-5 (seen: 3e-7, as most channels forget in a few
dozen steps). The bound is set at the random-walk estimate, with the worst-case bound above
as the reason it is not much tighter.
"""

from __future__ import annotations

import pytest
import torch

from kernels.selective_state_update import selective_state_update_triton, triton_on_cpu
from mamba_seq import InferenceCache, MambaConfig, MambaLMHeadModel
from mamba_seq.inference import count_step_ops
from tests.mamba_seq.test_model import mixer_by_steps

REL_TOL = 2e-5
MAX_TOL = 1e-4


def tiny(**kw) -> MambaLMHeadModel:
    torch.manual_seed(kw.pop("seed", 0))
    base = dict(d_model=32, n_layer=3, vocab_size=12, d_state=16)
    base.update(kw)
    return MambaLMHeadModel(MambaConfig(**base)).eval()


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_close_logits(got, want):
    assert rel(got, want) < REL_TOL, rel(got, want)
    assert (got - want).abs().max() < MAX_TOL * want.abs().max()


@torch.no_grad()
def step_all(model, ids, cache) -> torch.Tensor:
    # ids (batch, L) -> logits (batch, L, vocab), one step per position
    return torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)


@torch.no_grad()
def test_stepping_300_tokens_equals_forward():
    model = tiny()
    ids = torch.randint(0, 12, (3, 300), generator=torch.Generator().manual_seed(1))
    cache = model.allocate_inference_cache(3)
    logits = step_all(model, ids, cache)
    assert logits.shape == (3, 300, model.config.padded_vocab_size)
    assert cache.seqlen_offset == 300
    assert_close_logits(logits, model(ids))


@torch.no_grad()
def test_mixer_step_matches_float64_recurrence():
    """MambaMixer.step against the independent float64 step-by-step mixer of test_model.py."""
    model = tiny(d_model=16, n_layer=2, d_state=4)
    mixer = model.backbone.layers[1].mixer
    hidden = torch.randn(2, 50, 16, generator=torch.Generator().manual_seed(2))
    conv_state, ssm_state = mixer.allocate_inference_cache(2)
    out = torch.stack([mixer.step(hidden[:, t], conv_state, ssm_state) for t in range(50)], dim=1)
    assert rel(out, mixer_by_steps(mixer, hidden)) < 1e-5


@pytest.mark.parametrize("P", [1, 2, 4, 37])  # 1, 2 < d_conv: the conv state is left-padded with zeros
@torch.no_grad()
def test_prefill_then_steps_equals_forward(P):
    model = tiny()
    L = 60
    ids = torch.randint(0, 12, (2, L), generator=torch.Generator().manual_seed(P))
    full = model(ids)
    cache = model.allocate_inference_cache(2)
    last = model.prefill(ids[:, :P], cache)
    assert cache.seqlen_offset == P
    assert_close_logits(last, full[:, P - 1])
    # the cache after prefill is the cache after stepping the same P tokens
    stepped = model.allocate_inference_cache(2)
    step_all(model, ids[:, :P], stepped)
    for (c1, s1), (c2, s2) in zip(cache, stepped):
        torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-6)
    assert_close_logits(step_all(model, ids[:, P:], cache), full[:, P:])


@torch.no_grad()
def test_prefill_in_pieces_continues_from_the_cache():
    model = tiny()
    ids = torch.randint(0, 12, (2, 40), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache = model.allocate_inference_cache(2)
    model.prefill(ids[:, :13], cache)
    model.step(ids[:, 13], cache)
    last = model.prefill(ids[:, 14:30], cache)
    assert_close_logits(last, full[:, 29])
    assert_close_logits(step_all(model, ids[:, 30:], cache), full[:, 30:])


@torch.no_grad()
def test_streams_of_a_batch_are_independent():
    model = tiny()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 12, (3, 80), generator=g)
    batched = step_all(model, ids, model.allocate_inference_cache(3))
    for i in range(3):
        alone = step_all(model, ids[i : i + 1], model.allocate_inference_cache(1))
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-6)
    # changing one stream's tokens leaves the others' logits exactly as they were
    other = ids.clone()
    other[1] = torch.randint(0, 12, (80,), generator=g)
    changed = step_all(model, other, model.allocate_inference_cache(3))
    assert torch.equal(changed[0], batched[0]) and torch.equal(changed[2], batched[2])
    assert not torch.equal(changed[1], batched[1])


def test_cache_layout_dtypes_and_reset():
    model = tiny(d_model=16, n_layer=2, d_state=4)
    cache = model.allocate_inference_cache(5)
    assert isinstance(cache, InferenceCache) and cache.batch_size == 5 and len(cache) == 2
    conv, ssm = cache[0]
    assert conv.shape == (5, 32, 4) and conv.dtype == torch.float32
    assert ssm.shape == (5, 32, 4) and ssm.dtype == torch.float32
    cache16 = model.allocate_inference_cache(5, dtype=torch.bfloat16)
    assert cache16[1][0].dtype == torch.bfloat16 and cache16[1][1].dtype == torch.float32  # ssm stays fp32
    with torch.no_grad():
        model.prefill(torch.randint(0, 10, (5, 7)), cache)
        ptrs = [t.data_ptr() for t in (*cache.conv_states, *cache.ssm_states)]
        assert all(s.abs().sum() > 0 for s in cache.ssm_states)
        cache.reset()
    assert cache.seqlen_offset == 0 and all(s.abs().sum() == 0 for s in (*cache.conv_states, *cache.ssm_states))
    assert ptrs == [t.data_ptr() for t in (*cache.conv_states, *cache.ssm_states)]


@torch.no_grad()
def test_bf16_model_steps_close_to_its_forward():
    """A bf16 model (fp32 residual and SSM state): stepping tracks the forward as closely as the
    forward tracks the fp32 model, i.e. within bf16 rounding noise (2^-8 relative per element)."""
    model = tiny()
    ids = torch.randint(0, 12, (2, 100), generator=torch.Generator().manual_seed(5))
    ref = model(ids)
    model16 = model.to(torch.bfloat16)
    fwd16 = model16(ids).float()
    step16 = step_all(model16, ids, model16.allocate_inference_cache(2)).float()
    noise = rel(fwd16, ref)
    assert rel(step16, ref) < 2 * noise + 1e-3, (rel(step16, ref), noise)
    assert rel(step16, fwd16) < 3 * noise + 1e-3


@pytest.mark.parametrize("kw,what", [(dict(bidirectional=True), "bidirectional"),
                                     (dict(rc_equivariant=True, complement_map=[0, 1, 2, 3, 4, 8, 7, 6, 5, 9],
                                           vocab_size=10), "rc_equivariant")])
def test_non_causal_models_refuse(kw, what):
    model = tiny(**kw)
    with pytest.raises(ValueError, match=what):
        model.allocate_inference_cache(1)
    with pytest.raises(ValueError, match="causal"):
        model.step(torch.zeros(1, dtype=torch.long), InferenceCache([], []))
    with pytest.raises(ValueError, match="causal"):
        model.prefill(torch.zeros(1, 3, dtype=torch.long), InferenceCache([], []))
    if what == "bidirectional":
        mixer = model.backbone.layers[0].mixer
        with pytest.raises(ValueError, match="not causal"):
            mixer.step(torch.zeros(1, 32), None, None)


needs_triton = pytest.mark.skipif(selective_state_update_triton is None, reason="triton is not importable here")


@needs_triton
@torch.no_grad()
def test_triton_step_path_equals_forward():
    """The CUDA step path (fused add+RMSNorm, conv step, state update with dt_proj inside), run on
    CPU under the Triton interpreter: stepping equals the parallel forward (fp32 bound above), and
    one mixer's steps equal the float64 step-by-step mixer."""
    model = tiny()
    ids = torch.randint(0, 12, (2, 40), generator=torch.Generator().manual_seed(8))
    with triton_on_cpu():
        logits = step_all(model, ids, model.allocate_inference_cache(2))
        mixer = model.backbone.layers[1].mixer
        hidden = torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(9))
        conv_state, ssm_state = mixer.allocate_inference_cache(2)
        out = torch.stack([mixer.step(hidden[:, t], conv_state, ssm_state) for t in range(30)], dim=1)
    assert_close_logits(logits, model(ids))
    assert rel(out, mixer_by_steps(mixer, hidden)) < 1e-5


def ops_per_layer(dtype, triton: bool, d_model=64):
    """count_step_ops of a step of 2- and 3-layer models -> (per layer, fixed) for aten ops and kernels."""
    counts = []
    for n_layer in (2, 3):
        model = tiny(d_model=d_model, n_layer=n_layer).to(dtype)
        cache = model.allocate_inference_cache(1)
        ids = torch.zeros(1, dtype=torch.long)
        with triton_on_cpu(triton):
            model.step(ids, cache)  # the first step computes the step constants: count a later one
            counts.append(count_step_ops(model, cache, ids))
    per = {k: counts[1][k] - counts[0][k] for k in ("aten_ops", "kernels", "triton")}
    fixed = {k: counts[0][k] - 2 * per[k] for k in per}
    return per, fixed


# Before the fused step (bf16 model, 14 layers): per layer 39 aten ops on the CUDA path, of which 31
# launched a kernel, plus the Triton state update: 32 kernels a layer (the conv state's roll, copy
# and setitem; .float() casts of five parameters and -exp(A_log); the RMSNorm's seven ops; ...);
# on the CPU reference path 63 aten ops (51 kernels). Fixed per step: 14 aten ops (13 kernels).
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_op_count_triton_path(dtype):
    """The CUDA path of one step: per layer 3 Triton kernels (add+RMSNorm, conv step, state update)
    + 3 matmuls (in_proj, x_proj, out_proj) = 6 kernels, 11 aten ops (the rest are views); per step
    3 more kernels (embedding, final add+RMSNorm, LM head)."""
    per, fixed = ops_per_layer(dtype, triton=True)
    assert per["triton"] == 3 and per["kernels"] <= 6 and per["aten_ops"] <= 11, per
    assert fixed["kernels"] <= 3 and fixed["aten_ops"] <= 3, fixed


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 47), (torch.bfloat16, 61)])
def test_step_op_count_reference_path(dtype, bound):
    """The CPU path (plain PyTorch: the references of the same math) stays within its count too."""
    per, fixed = ops_per_layer(dtype, triton=False)
    assert per["triton"] == 0 and per["aten_ops"] <= bound, per


@torch.no_grad()
def test_step_constants_are_cached_and_follow_the_parameters():
    model = tiny()
    mixer = model.backbone.layers[0].mixer
    c = mixer.step_constants()
    assert mixer.step_constants() is c and c.A.dtype == torch.float32
    torch.testing.assert_close(c.A, -torch.exp(mixer.A_log))
    A_before = c.A
    ids = torch.randint(0, 12, (2, 30), generator=torch.Generator().manual_seed(10))
    for p in (mixer.A_log, mixer.D, mixer.conv1d.weight, mixer.dt_proj.bias, mixer.dt_proj.weight):
        p.mul_(1.1)  # in place: the version counter moves
    c2 = mixer.step_constants()
    assert c2 is c and c2.A is A_before  # refreshed in place (a captured graph keeps reading it)
    torch.testing.assert_close(c2.A, -torch.exp(mixer.A_log))
    assert_close_logits(step_all(model, ids, model.allocate_inference_cache(2)), model(ids))
    model.to(torch.float64).to(torch.float32)  # new storage: recomputed too
    assert_close_logits(step_all(model, ids, model.allocate_inference_cache(2)), model(ids))


@pytest.mark.gpu
@pytest.mark.parametrize("P", [1, 2, 800])
@torch.no_grad()
def test_gpu_prefill_then_steps_equals_forward(P, monkeypatch):
    """On CUDA, prefill (the Triton scan, or the reference for one position) leaves the cache that
    stepping leaves. P=1 once sat compiling for minutes (see kernels/selective_scan/__init__.py)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = tiny(d_model=64, n_layer=2).cuda()
    ids = torch.randint(0, 12, (3, P + 20), generator=torch.Generator().manual_seed(P)).cuda()
    full = model(ids)
    cache = model.allocate_inference_cache(3)
    assert_close_logits(model.prefill(ids[:, :P], cache), full[:, P - 1])
    assert_close_logits(step_all(model, ids[:, P:], cache), full[:, P:])


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_16000_steps_equal_forward(monkeypatch):
    """16,000 steps on CUDA (the Triton state update) against the parallel forward (Triton scan).

    fp32 (TF32 off): the fp32 bound of the module docstring, with M = 1000 steps of memory instead
    of 300 (min(L, M)): random walk 10 * 6e-8 * sqrt(1000) * 3 = 6e-5 -> rel < 1e-4.
    bf16 autocast: step and forward round to bf16 in different places (the step sums the conv in
    fp32), so they differ by bf16 noise (2^-8 per element); the bound is self-calibrated: the step's
    distance to the fp32 forward is at most twice the autocast forward's own distance to it (+1e-3),
    and the error over the last 1000 positions is no more than 3x that over positions 1000-2000
    (no drift: the state is a contraction)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = tiny(d_model=64, n_layer=2).cuda()
    L = 16_000
    ids = torch.randint(0, 12, (2, L), generator=torch.Generator().manual_seed(6)).cuda()
    full = model(ids)
    logits = step_all(model, ids, model.allocate_inference_cache(2))
    assert rel(logits, full) < 1e-4, rel(logits, full)

    with torch.autocast("cuda", dtype=torch.bfloat16):
        fwd16 = model(ids).float()
        step16 = step_all(model, ids, model.allocate_inference_cache(2)).float()
    noise = rel(fwd16, full)
    err = rel(step16, full)
    assert err < 2 * noise + 1e-3, (err, noise)
    early, late = rel(step16[:, 1000:2000], full[:, 1000:2000]), rel(step16[:, -1000:], full[:, -1000:])
    assert late < 3 * early + 1e-3, (early, late)
