"""The residual Mamba backbone and its language-model head.

    embedding -> n_layer x [RMSNorm -> MambaMixer, residual added in fp32] -> RMSNorm -> tied LM head

Pre-norm blocks carry the residual stream separately (as mamba_ssm does), so the sum of
residuals is kept in fp32 even when the blocks run in bf16.

With config.rc_equivariant the same blocks, of width d_model/2, run on both strands at once
(rc_equivariant.py): embedding -> strand layout -> blocks -> norm_f -> back -> RC LM head.

Recurrent inference (causal models only): allocate_inference_cache, prefill (the parallel forward
over a prompt, filling the cache) and step (one token); see inference.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from kernels.selective_state_update import add_rms_norm

from .config import MambaConfig
from .inference import InferenceCache, check_can_decode
from .bidirectional import BiMambaMixer
from .mixer import MambaMixer
from .rc_equivariant import RCEmbedding, RCLMHead, check_right_padded, from_strands, strand_config, to_strands


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim) -> (..., dim) in x's dtype; statistics in fp32
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual block: (hidden, residual) -> (mixer(norm(hidden + residual)), hidden + residual)."""

    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.bidirectional = config.bidirectional
        self.mixer = (BiMambaMixer if config.bidirectional else MambaMixer)(config, layer_idx=layer_idx)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, mask: torch.Tensor | None = None):
        # hidden, residual: (batch, L, d_model); mask: (batch, L) bool, used by bidirectional mixers
        residual = hidden if residual is None else residual + hidden
        if self.residual_in_fp32:
            residual = residual.float()
        normed = self.norm(residual.to(self.norm.weight.dtype))
        hidden = self.mixer(normed, mask) if self.bidirectional else self.mixer(normed)
        return hidden, residual

    def residual_update(self, residual: torch.Tensor) -> torch.Tensor:
        # residual: (batch, L, d_model), the sum of the embedding and every earlier block's output
        # -> that sum after this block. Numerically `forward` (the add happens in the next block
        # there); a checkpointed backbone saves only this one tensor per block.
        return residual + self.mixer(self.norm(residual.to(self.norm.weight.dtype)))

    def residual_update_segment(self, residual, conv_prefix, ssm_state):
        # as residual_update over a segment that continues a sequence (MambaMixer.forward_segment)
        # -> (residual after this block, conv_prefix and ssm_state after the segment)
        out, conv_prefix, ssm_state = self.mixer.forward_segment(
            self.norm(residual.to(self.norm.weight.dtype)), conv_prefix, ssm_state)
        return residual + out, conv_prefix, ssm_state

    def _add_residual(self, hidden, residual):
        # as forward: -> (norm(hidden + residual), hidden + residual)
        residual = hidden if residual is None else residual + hidden
        if self.residual_in_fp32:
            residual = residual.float()
        return self.norm(residual.to(self.norm.weight.dtype)), residual

    def step(self, hidden, residual, conv_state, ssm_state):
        # hidden, residual: (batch, d_model) -> the same, one position (states updated in place);
        # the arithmetic of _add_residual in one fused op (one kernel on CUDA)
        normed, residual = add_rms_norm(hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32)
        return self.mixer.step(normed, conv_state, ssm_state), residual

    def prefill(self, hidden, residual, conv_state, ssm_state):
        # hidden, residual: (batch, L, d_model) -> the same (states left after the L positions)
        normed, residual = self._add_residual(hidden, residual)
        return self.mixer.prefill(normed, conv_state, ssm_state), residual


class MambaBackbone(nn.Module):
    """Token ids -> final-norm hidden states (batch, L, d_model).

    RC-equivariant (config.rc_equivariant): hidden states [a | b] carry one strand per half; the
    blocks are those of a d_model/2 model, applied with shared weights to the forward strand and
    to the reverse complement (stacked along the batch), so backbone(rc(x)) = rc(backbone(x))."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.rc_equivariant = config.rc_equivariant
        if config.rc_equivariant:
            layer_config = strand_config(config)
            self.embedding = RCEmbedding(config.padded_vocab_size, config.d_model, config.complement_map)
        else:
            layer_config = config
            self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(MambaBlock(layer_config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(layer_config.d_model, eps=config.norm_eps)
        # Per-block activation checkpointing while training (set_activation_checkpointing): keep
        # one residual-stream tensor per block and recompute the block in the backward pass.
        self.activation_checkpointing = False

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every block in the backward pass, keeping only its input (the fp32 residual
        stream, 4 bytes x d_model per token per block). With it a 16-block d_model 256 model trains
        at 2^20 tokens in a fraction of the memory, for about one extra forward pass."""
        self.activation_checkpointing = bool(enabled)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (batch, L) int64; mask: (batch, L) bool, True at real tokens (only a
        # bidirectional backbone needs it: a causal one never looks right of a position; an
        # RC-equivariant one needs it right-padded) -> hidden states (batch, L, d_model)
        hidden, residual, lengths = self.embedding(input_ids), None, None
        if self.rc_equivariant:
            if mask is not None:
                lengths = check_right_padded(mask)
            hidden = to_strands(hidden, lengths)  # (2 batch, L, d_model/2); both strands right-padded
            mask = None if mask is None else torch.cat([mask, mask])
        if self.activation_checkpointing and torch.is_grad_enabled() and not self.config.bidirectional:
            residual = self.residual_start(hidden)
            for layer in self.layers:
                residual = checkpoint(layer.residual_update, residual, use_reentrant=False)
        else:
            for layer in self.layers:
                hidden, residual = layer(hidden, residual, mask)
            residual = hidden if residual is None else residual + hidden
        out = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return from_strands(out, lengths) if self.rc_equivariant else out

    def residual_start(self, embedded: torch.Tensor) -> torch.Tensor:
        # the residual stream as the first block's residual_update takes it (fp32 when configured)
        return embedded.float() if self.config.residual_in_fp32 else embedded

    # -- segments of one long sequence (causal only) -----------------------------------------------

    def initial_segment_state(self, batch_size: int, dtype: torch.dtype, device=None) -> list[torch.Tensor]:
        """The state at a sequence's start, as forward_segment takes it: per layer a conv prefix
        (batch, d_inner, d_conv - 1) in `dtype` and an SSM state (batch, d_inner, N) fp32, all zeros,
        flattened [prefix_0, ssm_0, prefix_1, ...] (a flat list is what autograd hands around)."""
        check_can_decode(self.config)
        device = self.embedding.weight.device if device is None else device
        state = []
        for layer in self.layers:
            m = layer.mixer
            state.append(torch.zeros(batch_size, m.d_inner, m.conv1d.kernel_size[0] - 1, dtype=dtype, device=device))
            state.append(torch.zeros(batch_size, m.d_inner, m.d_state, dtype=torch.float32, device=device))
        return state

    def forward_segment(self, input_ids: torch.Tensor, state: list[torch.Tensor]):
        """input_ids (batch, L) continuing the sequence whose state is `state` (initial_segment_state
        at its start) -> (final-norm hidden states (batch, L, d_model), the state after the segment).
        Differentiable in the parameters and in `state`: chaining segments equals one forward pass,
        and gradients flow back across the boundaries (mamba_seq/long_sequence.py)."""
        check_can_decode(self.config)
        residual = self.residual_start(self.embedding(input_ids))
        new_state = []
        use_ckpt = self.activation_checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            args = (residual, state[2 * i], state[2 * i + 1])
            if use_ckpt:
                residual, prefix, ssm = checkpoint(layer.residual_update_segment, *args, use_reentrant=False)
            else:
                residual, prefix, ssm = layer.residual_update_segment(*args)
            new_state += [prefix, ssm]
        return self.norm_f(residual.to(self.norm_f.weight.dtype)), new_state

    # -- recurrent inference (causal only) ---------------------------------------------------------

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                                 device: torch.device | None = None) -> InferenceCache:
        check_can_decode(self.config)
        states = [layer.mixer.allocate_inference_cache(batch_size, dtype, device) for layer in self.layers]
        return InferenceCache([c for c, _ in states], [s for _, s in states])

    def _final(self, hidden, residual):
        residual = hidden if residual is None else residual + hidden
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        # input_ids: (batch,) int64, the token at position cache.seqlen_offset -> hidden (batch, d_model)
        check_can_decode(self.config)
        hidden, residual = self.embedding(input_ids), None
        for layer, (conv_state, ssm_state) in zip(self.layers, cache):
            hidden, residual = layer.step(hidden, residual, conv_state, ssm_state)
        cache.seqlen_offset += 1
        # _final fused: residual + hidden in their promoted dtype, normed in norm_f's dtype
        return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps, residual_fp32=False)[0]

    def prefill(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        # input_ids: (batch, L), L >= 1 -> hidden (batch, L, d_model), continuing from the cache
        check_can_decode(self.config)
        if input_ids.shape[1] < 1:
            raise ValueError("prefill needs at least one position")
        hidden, residual = self.embedding(input_ids), None
        for layer, (conv_state, ssm_state) in zip(self.layers, cache):
            hidden, residual = layer.prefill(hidden, residual, conv_state, ssm_state)
        cache.seqlen_offset += input_ids.shape[1]
        return self._final(hidden, residual)


class MambaLMHeadModel(nn.Module):
    """Backbone plus a linear head over the (padded) vocabulary, tied to the embedding by default.
    RC-equivariant models get RCLMHead: logits(rc(x))[t] = logits(x)[L-1-t][complement]."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        if config.rc_equivariant:
            self.lm_head = RCLMHead(config.d_model, config.padded_vocab_size, config.complement_map)
        else:
            self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        """mamba_ssm's `_init_weights`: zero linear biases (except dt_proj's), N(0, 0.02) embeddings,
        and out_proj scaled by 1/sqrt(n_layer) so the residual stream's variance does not grow with depth."""
        c = self.config
        if isinstance(module, nn.Linear):
            if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=c.initializer_range)
        if c.rescale_prenorm_residual and isinstance(module, MambaMixer):  # BiMambaMixer included
            w = module.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(c.n_layer)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (batch, L); mask: (batch, L) bool or None (see MambaBackbone)
        # -> logits (batch, L, padded_vocab_size)
        return self.lm_head(self.backbone(input_ids, mask))

    # -- recurrent inference (causal only; see inference.py) ---------------------------------------

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                                 device: torch.device | None = None) -> InferenceCache:
        """Zero states for `batch_size` streams: conv states in `dtype` (default: the model's),
        SSM states in fp32, on `device` (default: the model's). ValueError for a bidirectional or
        rc_equivariant model."""
        return self.backbone.allocate_inference_cache(batch_size, dtype, device)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        # input_ids: (batch,) int64 -> logits (batch, padded_vocab_size) for the next position;
        # the cache advances one position in place (no autograd: a graph would grow every step)
        return self.lm_head(self.backbone.step(input_ids, cache))

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        # input_ids: (batch, P) -> logits (batch, padded_vocab_size) at the last position: one
        # parallel forward; the cache (fresh, or after earlier positions) advances P positions
        return self.lm_head(self.backbone.prefill(input_ids, cache)[:, -1])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def no_weight_decay_param_names(model: nn.Module) -> set[str]:
    """Parameters that AdamW must not decay: biases, norm weights, embeddings, A_log and D."""
    names = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if (
                getattr(p, "_no_weight_decay", False)
                or name == "bias"
                or isinstance(module, (RMSNorm, nn.Embedding))
                or p.ndim < 2
            ):
                names.add(full)
    return names

