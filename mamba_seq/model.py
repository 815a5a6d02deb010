"""The residual Mamba backbone and its language-model head.

    embedding -> n_layer x [RMSNorm -> MambaMixer, residual added in fp32] -> RMSNorm -> tied LM head

Pre-norm blocks carry the residual stream separately (as mamba_ssm does), so the sum of
residuals is kept in fp32 even when the blocks run in bf16.

With config.rc_equivariant the same blocks, of width d_model/2, run on both strands at once
(rc_equivariant.py): embedding -> strand layout -> blocks -> norm_f -> back -> RC LM head.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import MambaConfig
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
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, mask)
        residual = hidden if residual is None else residual + hidden
        out = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return from_strands(out, lengths) if self.rc_equivariant else out


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

