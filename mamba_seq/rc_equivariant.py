"""Reverse-complement equivariance by parameter sharing (RCPS, as in Caduceus-PS: Schiff et al.,
"Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence Modeling", 2024).

A DNA sequence and its reverse complement are the same molecule, so a model should give the same
answer for both, read backwards. With hidden states of d = d_model channels split into two halves
of k = d/2 channels, [a | b], one half per strand, define

    rc(x)        = complement(x) read right to left                    token ids (batch, L)
    rc([a | b])  = [rho(b) | rho(a)],  rho = flip along L and along channels     (batch, L, d)

(so rc on hidden states is simply `h.flip(1, 2)`). The model f is RC-equivariant when
f(rc(x)) = rc(f(x)). Each layer is made so:

- Embedding (table E of k channels): e(x) = [E[x] | flip_channels(E[complement(x)])]. Per position,
  so e(rc(x)) = rc(e(x)) follows from complement being an involution.
- Every block (RMSNorm, mixer, residual): g_rc([a | b]) = [g(a) | rho(g(rho(b)))], the same g with
  the same weights for both strands. Then g_rc(rc(h)) = [g(rho b) | rho(g(a))] = rc(g_rc(h)) for
  any g, causal or bidirectional. The RMSNorm statistics are per strand (per half), so the norm is
  part of g and needs nothing else; the residual sum is elementwise and commutes with rc.
- LM head (weight W, (vocab, k)): logits = a @ W^T + flip_channels(b) @ W[complement]^T, so the
  logits of rc(x) at position t are those of x at L-1-t with the vocabulary permuted by complement.

Implementation: the strand layout S(h) = [a ; rho(b)] stacks the two strands along the batch axis,
each read 5'->3' on its own strand. In that layout rc swaps the two batch halves, and every block
acts on each sequence of the batch alone, so the whole layer stack runs once on (2 batch, L, k) in
strand layout: S is applied after the embedding and undone before the head, and consecutive
blocks' S^-1 S cancel. It costs the same as a plain model of width k on twice the batch.

Padding: a mask (batch, L) bool must be right-padded (True then False). The rc of a padded batch
is the batch of each sequence's reverse complement, padded the same way, i.e. only the first
`length` positions are reversed and the padding stays on the right. The reverse strand is laid out
the same way, so both strands are right-padded and a causal block (which never looks right) and a
bidirectional one (which masks padding out) give the same outputs at real positions as each
sequence alone.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MambaConfig


def complement_table(complement_map: list[int], size: int) -> torch.Tensor:
    """The complement of every id in [0, size): complement_map, then identity for the rows that
    pad the vocabulary to `size`. -> (size,) int64."""
    table = torch.arange(size, dtype=torch.long)
    table[: len(complement_map)] = torch.tensor(complement_map, dtype=torch.long)
    return table


def strand_config(config: MambaConfig) -> MambaConfig:
    """The config of one strand's layers: d_model/2 channels, everything else as in `config`
    (dt_rank as already resolved for the full width)."""
    return dataclasses.replace(config, d_model=config.d_model // 2, rc_equivariant=False, complement_map=None)


def check_right_padded(mask: torch.Tensor) -> torch.Tensor:
    """mask: (batch, L) bool, True at real tokens -> lengths (batch,) int64. Raises unless every row
    is True up to its length and False after it."""
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"mask must be a (batch, L) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    lengths = mask.sum(1)
    right_padded = torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]
    if not torch.equal(mask, right_padded):
        raise ValueError(
            "an RC-equivariant model needs right-padded masks (each row True up to its length, then "
            "False): the reverse strand of a sequence is read from its last real token, which is "
            "only well defined for right padding. Pad on the right."
        )
    return lengths


def reverse_positions(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse each sequence's first lengths[i] positions along dim 1; the padding after them stays
    in place. x: (batch, L, ...); lengths: (batch,) int64 (from check_right_padded) or None for
    unpadded -> like x."""
    if lengths is None:
        return x.flip(1)
    t = torch.arange(x.shape[1], device=x.device)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (batch, L)
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


def _lengths(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else check_right_padded(mask)


def reverse_complement_ids(input_ids: torch.Tensor, complement: torch.Tensor, mask: torch.Tensor | None = None):
    """rc on tokens: input_ids (batch, L) int64, complement (vocab,) int64, mask (batch, L) bool
    right-padded or None -> (batch, L): complemented and reversed, padding left where it was."""
    return reverse_positions(complement.to(input_ids.device)[input_ids], _lengths(mask))


def reverse_complement_hidden(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """rc on hidden states: hidden (batch, L, d), mask (batch, L) bool right-padded or None ->
    (batch, L, d), reversed along L (real positions only) and along channels, which swaps and
    mirrors the two strand halves."""
    return reverse_positions(hidden.flip(-1), _lengths(mask))


def to_strands(hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[a | b] (batch, L, d) -> strand layout [a ; rho(b)] (2 batch, L, d/2): the reverse strand
    read 5'->3' on its own strand, its channels in their own order. lengths: (batch,) or None."""
    k = hidden.shape[-1] // 2
    return torch.cat([hidden[..., :k], reverse_positions(hidden[..., k:].flip(-1), lengths)], dim=0)


def from_strands(strands: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of to_strands: (2 batch, L, k) -> (batch, L, 2k)."""
    forward, reverse = strands.chunk(2, dim=0)
    return torch.cat([forward, reverse_positions(reverse, lengths).flip(-1)], dim=-1)


class RCEmbedding(nn.Embedding):
    """A table of d_model/2 channels giving RC-equivariant embeddings of d_model channels:
    e(x) = [E[x] | flip_channels(E[complement(x)])]. `weight` is (num_embeddings, d_model/2)."""

    def __init__(self, num_embeddings: int, d_model: int, complement_map: list[int]):
        if d_model % 2:
            raise ValueError(f"RCEmbedding needs an even d_model, got {d_model}")
        super().__init__(num_embeddings, d_model // 2)
        # not saved in state dicts: it is part of the config, which checkpoints store
        self.register_buffer("complement", complement_table(complement_map, num_embeddings), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (batch, L) int64 -> (batch, L, d_model)
        forward = super().forward(input_ids)
        reverse = super().forward(self.complement[input_ids]).flip(-1)
        return torch.cat([forward, reverse], dim=-1)


class RCLMHead(nn.Linear):
    """LM head on RC-equivariant hidden states [a | b] (d_model channels) with a weight of
    (vocab, d_model/2), shareable with RCEmbedding's table:
    logits = a @ W^T + flip_channels(b) @ W[complement]^T."""

    def __init__(self, d_model: int, vocab_size: int, complement_map: list[int]):
        if d_model % 2:
            raise ValueError(f"RCLMHead needs an even d_model, got {d_model}")
        super().__init__(d_model // 2, vocab_size, bias=False)
        self.register_buffer("complement", complement_table(complement_map, vocab_size), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, L, d_model) -> logits (batch, L, vocab)
        k = self.in_features
        return F.linear(hidden[..., :k], self.weight) + F.linear(hidden[..., k:].flip(-1), self.weight[self.complement])
