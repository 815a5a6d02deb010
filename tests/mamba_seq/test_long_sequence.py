"""Long-sequence training pieces against the plain one-piece computation (the oracle here is
autograd through model.forward + F.cross_entropy): chunked LM loss, per-block activation
checkpointing, and segment-wise training with the state and its gradient passed between segments."""

import pytest
import torch
import torch.nn.functional as F

from mamba_seq import MambaConfig, MambaLMHeadModel
from mamba_seq.long_sequence import IGNORE_INDEX, chunked_lm_nll, segmented_lm_nll

# fp32 on CPU (the chunked PyTorch scan): the segment and one-piece computations differ only in
# summation order (per-chunk partial sums, the scan's chunk boundaries), so 1e-5 relative to the
# largest gradient entry is generous for fp32 (~1e-7 epsilon times a few hundred terms).
RTOL = 1e-5


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    c = MambaConfig(d_model=16, n_layer=3, vocab_size=12, d_state=4, d_conv=4, **kw)
    return MambaLMHeadModel(c)


def one_piece(model, ids, labels):
    logits = model(ids)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def grads_of(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=RTOL, atol=0)
    assert ga.keys() == gb.keys()
    for name in ga:
        scale = gb[name].abs().max().clamp_min(1e-12)
        assert (ga[name] - gb[name]).abs().max() <= RTOL * scale, name


def data(batch=2, L=48, vocab=12, seed=1, pad_tail=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, L), generator=g)
    labels = torch.randint(0, vocab, (batch, L), generator=g)
    if pad_tail:
        labels[0, -pad_tail:] = IGNORE_INDEX
    return ids, labels


@pytest.mark.parametrize("chunk", [1, 7, 96, 1000])
def test_chunked_lm_nll_equals_cross_entropy(chunk):
    model = tiny_model()
    ids, labels = data(pad_tail=5)
    ref = grads_of(model, lambda: one_piece(model, ids, labels))
    got = grads_of(model, lambda: chunked_lm_nll(model.backbone(ids), model.lm_head.weight, labels, chunk))
    assert_same(got, ref)


def test_activation_checkpointing_same_loss_and_gradients():
    model = tiny_model()
    ids, labels = data()
    ref = grads_of(model, lambda: one_piece(model, ids, labels))
    model.backbone.set_activation_checkpointing(True)
    got = grads_of(model, lambda: one_piece(model, ids, labels))
    assert_same(got, ref)


@pytest.mark.parametrize("segment_len,L", [(16, 48), (13, 48), (2, 11), (48, 48), (100, 48)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_segmented_gradients_equal_one_piece(segment_len, L, checkpointing):
    # segments shorter than the conv width (2 < d_conv - 1 = 3) pass the conv inputs of earlier segments on
    model = tiny_model()
    ids, labels = data(L=L, pad_tail=3)
    ref = grads_of(model, lambda: one_piece(model, ids, labels))
    model.backbone.set_activation_checkpointing(checkpointing)
    got = grads_of(model, lambda: segmented_lm_nll(model, ids, labels, segment_len, chunk_tokens=10))
    assert_same(got, ref)


def test_segment_state_matters():
    # a property that fails if the state were not carried: resetting it at each segment changes the loss
    model = tiny_model()
    ids, labels = data(L=32)
    with torch.no_grad():
        carried = segmented_lm_nll(model, ids, labels, 8)
        reset = sum(chunked_lm_nll(model.backbone(ids[:, s:s + 8]), model.lm_head.weight, labels[:, s:s + 8])
                    for s in range(0, 32, 8))
        whole = one_piece(model, ids, labels)
    torch.testing.assert_close(carried, whole, rtol=RTOL, atol=0)
    assert (reset - whole).abs() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_segmented_equals_one_piece_bf16_triton():
    # the Triton scan and conv kernels, bf16 autocast: segments of 4096 over 16384 positions vs one
    # piece. bf16 rounding of activations differs between the two only where the recompute order
    # differs, so gradients agree to bf16 noise: 2e-2 of the largest entry per parameter.
    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=256, n_layer=4, vocab_size=16)).cuda()
    ids = torch.randint(0, 16, (2, 16384), device="cuda")
    labels = torch.randint(0, 16, (2, 16384), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = grads_of(model, lambda: chunked_lm_nll(model.backbone(ids), model.lm_head.weight, labels))
        got = grads_of(model, lambda: segmented_lm_nll(model, ids, labels, 4096))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=0)
    for name in ref[1]:
        scale = ref[1][name].abs().max()
        assert (got[1][name] - ref[1][name]).abs().max() <= 2e-2 * scale, name


def test_bad_chunk_and_segment_lengths_are_named():
    model = tiny_model()
    ids, labels = data(L=8)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1, got 0"):
        chunked_lm_nll(model.backbone(ids), model.lm_head.weight, labels, 0)
    with pytest.raises(ValueError, match="segment_len must be >= 1, got 0"):
        segmented_lm_nll(model, ids, labels, 0)


def test_causal_lm_task_names_bad_long_sequence_options():
    from tasks import CausalLMTask

    config = dict(d_model=16, n_layer=1, vocab_size=12, d_state=4)
    with pytest.raises(ValueError, match=r"task.loss_chunk_tokens and task.segment_len must be >= 1, got 65536, 0"):
        CausalLMTask(config, segment_len=0)
    with pytest.raises(ValueError, match=r"got 0, None"):
        CausalLMTask(config, loss_chunk_tokens=0)
