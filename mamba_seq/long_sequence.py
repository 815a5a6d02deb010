"""Training a causal LM on very long sequences in bounded memory, with exact gradients.

Two pieces, both plain autograd functions, so any training loop (Lightning's automatic
optimisation, DDP) uses them through `loss.backward()`:

- `chunked_lm_nll`: the summed next-token NLL of a linear (tied) LM head, computed `chunk_tokens`
  positions at a time in the forward and again in the backward. The (tokens, vocab) logits are never
  held for more than one chunk: at L = 2^20 with a 256-token audio vocabulary, full fp32 logits
  and their gradient would be 2 GiB.
- `segmented_lm_nll`: the same loss over a sequence processed in segments of `segment_len`
  positions, with the exact recurrent state (each block's conv inputs and fp32 SSM state) passed
  from one segment to the next. The forward pass runs every segment without a graph and keeps only
  the state at each boundary (a few hundred KiB per boundary). The backward pass walks the segments
  from last to first: it re-runs segment k from its stored start state with gradients on, and
  back-propagates the loss of segment k together with the gradient that segment k+1 sent to its
  start state. That is the one-piece gradient (tests/mamba_seq/test_long_sequence.py checks it), at
  the memory of one segment: sequences longer than memory allows in one piece train unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import MambaLMHeadModel

IGNORE_INDEX = -100  # a label that is no target (padding), as in F.cross_entropy

__all__ = ["chunked_lm_nll", "segmented_lm_nll", "IGNORE_INDEX"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # the matmul dtype autocast would use for the head here (bf16 under bf16-mixed), else x's
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _ChunkedLMNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_tokens, compute_dtype):
        # hidden (n, d), weight (V, d), labels (n,) int64 -> summed NLL in nats, fp32 scalar
        total = hidden.new_zeros((), dtype=torch.float32)
        w = weight.to(compute_dtype)
        for s in range(0, hidden.shape[0], chunk_tokens):
            logits = (hidden[s:s + chunk_tokens].to(compute_dtype) @ w.t()).float()
            total += F.cross_entropy(logits, labels[s:s + chunk_tokens], ignore_index=IGNORE_INDEX, reduction="sum")
        ctx.save_for_backward(hidden, weight, labels)
        ctx.chunk_tokens, ctx.compute_dtype = chunk_tokens, compute_dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, labels = ctx.saved_tensors
        chunk, cdt = ctx.chunk_tokens, ctx.compute_dtype
        w = weight.to(cdt)
        d_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(cdt)
            y = labels[s:s + chunk]
            # d(sum NLL)/d logits = softmax - onehot(label), zero at ignored positions
            d_logits = torch.softmax((h @ w.t()).float(), dim=-1)
            valid = y != IGNORE_INDEX
            d_logits[valid, y[valid]] -= 1.0
            d_logits *= valid[:, None] * grad_total
            d_logits = d_logits.to(cdt)
            if d_hidden is not None:
                d_hidden[s:s + chunk] = (d_logits @ w).to(hidden.dtype)
            if d_weight is not None:
                d_weight += (d_logits.t() @ h).float()
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None


def chunked_lm_nll(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   chunk_tokens: int = 1 << 16) -> torch.Tensor:
    """hidden (batch, L, d_model), the backbone's final-norm output; weight (V, d_model), the LM
    head (no bias); labels (batch, L) int64, IGNORE_INDEX where there is no target -> the NLL in nats
    summed over the real targets, fp32 scalar. Equals F.cross_entropy(hidden @ weight.T, labels,
    reduction="sum") with the head's matmul in the autocast dtype (if any) and the softmax in fp32."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    d = hidden.shape[-1]
    return _ChunkedLMNLL.apply(hidden.reshape(-1, d), weight, labels.reshape(-1), int(chunk_tokens),
                               _compute_dtype(hidden))


def _lm_head_weight(model: MambaLMHeadModel) -> torch.Tensor:
    head = model.lm_head
    if type(head) is not torch.nn.Linear or head.bias is not None:
        raise ValueError(f"the chunked LM loss needs a linear LM head without bias, got {type(head).__name__}")
    return head.weight


class _SegmentedLMNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, model, input_ids, labels, segment_len, chunk_tokens, *params):
        backbone, weight = model.backbone, _lm_head_weight(model)
        device = input_ids.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        state = backbone.initial_segment_state(input_ids.shape[0], dtype=weight.dtype)
        boundaries, total = [], None
        with torch.no_grad():
            for s in range(0, input_ids.shape[1], segment_len):
                boundaries.append(state)
                hidden, state = backbone.forward_segment(input_ids[:, s:s + segment_len], state)
                nll = chunked_lm_nll(hidden, weight, labels[:, s:s + segment_len], chunk_tokens)
                total = nll if total is None else total + nll
        ctx.model, ctx.segment_len, ctx.chunk_tokens, ctx.boundaries = model, segment_len, chunk_tokens, boundaries
        ctx.save_for_backward(input_ids, labels)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        input_ids, labels = ctx.saved_tensors
        model, seg, boundaries = ctx.model, ctx.segment_len, ctx.boundaries
        params = [p for p in model.parameters() if p.requires_grad]
        param_grads: list[torch.Tensor | None] = [None] * len(params)
        d_state = None  # the gradient of the loss of every later segment w.r.t. the current boundary state
        device, autocast_on, autocast_dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            for k in reversed(range(len(boundaries))):
                start = [t.detach().requires_grad_(k > 0) for t in boundaries[k]]
                hidden, end = model.backbone.forward_segment(input_ids[:, k * seg:(k + 1) * seg], start)
                nll = chunked_lm_nll(hidden, _lm_head_weight(model), labels[:, k * seg:(k + 1) * seg], ctx.chunk_tokens)
                outputs, grad_outputs = [nll], [grad_total]
                if d_state is not None:
                    pairs = [(o, g) for o, g in zip(end, d_state) if g is not None]
                    outputs += [o for o, _ in pairs]
                    grad_outputs += [g for _, g in pairs]
                inputs = params + (start if k > 0 else [])
                grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)
                for i, g in enumerate(grads[:len(params)]):
                    if g is not None:
                        param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
                d_state = list(grads[len(params):])
        ctx.boundaries = None
        # the params given to apply are model.parameters() in order (segmented_lm_nll passes them so)
        return (None, None, None, None, None, *param_grads)


def segmented_lm_nll(model: MambaLMHeadModel, input_ids: torch.Tensor, labels: torch.Tensor, segment_len: int,
                     chunk_tokens: int = 1 << 16) -> torch.Tensor:
    """The summed next-token NLL (nats, fp32 scalar) of a causal model over input_ids (batch, L),
    labels (batch, L), run `segment_len` positions at a time with the exact state carried across
    (see the module docstring). Value and gradients equal chunked_lm_nll over one forward pass;
    memory is that of one segment (plus, per boundary, each block's conv and SSM state)."""
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    params = [p for p in model.parameters() if p.requires_grad]
    return _SegmentedLMNLL.apply(model, input_ids, labels, int(segment_len), int(chunk_tokens), *params)
