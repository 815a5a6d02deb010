"""Reverse-complement equivariance (RCPS) as a property: f(rc(x)) = rc(f(x)) for the backbone's
hidden states and the LM's logits, for random weights, with and without bidirectional mixers."""

import pytest
import torch

from mamba_seq import MambaBackbone, MambaConfig, MambaLMHeadModel, reverse_complement_hidden, reverse_complement_ids
from mamba_seq.rc_equivariant import complement_table

# the DNA tokenizer's map: [PAD] [CLS] [SEP] [MASK] [UNK] A C G T N -> A<->T, C<->G, the rest fixed
COMPLEMENT = [0, 1, 2, 3, 4, 8, 7, 6, 5, 9]
ATOL = 1e-5


def rc_config(**kw) -> MambaConfig:
    base = dict(d_model=16, n_layer=2, vocab_size=10, d_state=4, rc_equivariant=True, complement_map=COMPLEMENT)
    base.update(kw)
    return MambaConfig(**base)


@torch.no_grad()
def perturb_all_parameters(model: torch.nn.Module, seed: int):
    """Move every parameter off its initialisation (which has symmetries of its own, e.g. D = 1,
    A_log = log(1..N) for every channel, all-ones norms), so equivariance must come from the
    parameter sharing."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.3 * torch.randn(p.shape, generator=g) * (p.detach().abs().mean() + 0.1))


def random_tokens(batch: int, length: int, seed: int, specials: bool = True) -> torch.Tensor:
    """Bases A C G T N, with some specials mixed in (they are their own complements)."""
    g = torch.Generator().manual_seed(seed)
    low = 0 if specials else 5
    return torch.randint(low, 10, (batch, length), generator=g)


def table(config: MambaConfig) -> torch.Tensor:
    return complement_table(config.complement_map, config.padded_vocab_size)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("perturbed", [False, True])
def test_backbone_hidden_states_are_rc_equivariant(bidirectional, perturbed):
    torch.manual_seed(0)
    config = rc_config(bidirectional=bidirectional)
    backbone = MambaLMHeadModel(config).backbone.eval()  # with the LM's initialisation
    if perturbed:
        perturb_all_parameters(backbone, seed=1)
    x = random_tokens(3, 37, seed=2)
    with torch.no_grad():
        h = backbone(x)
        h_rc = backbone(reverse_complement_ids(x, table(config)))
    assert h.shape == (3, 37, 16)
    assert h.abs().mean() > 0.1  # not a degenerate all-zero output
    torch.testing.assert_close(h_rc, reverse_complement_hidden(h), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_lm_logits_are_rc_equivariant(bidirectional, tie_embeddings):
    """logits(rc(x)) at position t = logits(x) at L-1-t with the vocabulary permuted by complement."""
    torch.manual_seed(3)
    config = rc_config(bidirectional=bidirectional, tie_embeddings=tie_embeddings)
    model = MambaLMHeadModel(config).eval()
    perturb_all_parameters(model, seed=4)
    comp = table(config)
    x = random_tokens(2, 29, seed=5)
    with torch.no_grad():
        logits = model(x)
        logits_rc = model(reverse_complement_ids(x, comp))
    assert logits.shape == (2, 29, config.padded_vocab_size)
    torch.testing.assert_close(logits_rc, logits.flip(1)[..., comp], atol=ATOL, rtol=0)
    # so the predicted distribution over A C G T at a base is that of its complement on the other strand
    p, p_rc = logits.softmax(-1), logits_rc.softmax(-1)
    torch.testing.assert_close(p_rc[0, 0, [5, 6, 7, 8]], p[0, -1, [8, 7, 6, 5]], atol=ATOL, rtol=0)


def test_plain_backbone_is_not_rc_equivariant():
    """Negative control: the same check fails for a model without parameter sharing, so the
    property tests above can fail."""
    torch.manual_seed(6)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=10, d_state=4, bidirectional=True)
    backbone = MambaLMHeadModel(config).backbone.eval()
    perturb_all_parameters(backbone, seed=7)
    x = random_tokens(2, 31, seed=8)
    with torch.no_grad():
        h = backbone(x)
        h_rc = backbone(reverse_complement_ids(x, table(rc_config())))
    assert (h_rc - reverse_complement_hidden(h)).abs().max() > 0.1


def test_rc_backbone_is_two_strands_of_a_half_width_backbone():
    """Independent form of the design: with the same weights, a plain backbone of d_model/2 run on
    x gives the first half, and run on rc(x) then read backwards with its channels reversed gives
    the second half."""
    torch.manual_seed(9)
    config = rc_config(bidirectional=True)
    rc_backbone = MambaLMHeadModel(config).backbone.eval()
    perturb_all_parameters(rc_backbone, seed=10)
    half = MambaBackbone(MambaConfig(d_model=8, n_layer=2, vocab_size=10, d_state=4, dt_rank=config.dt_rank,
                                     bidirectional=True)).eval()
    half.load_state_dict(rc_backbone.state_dict())
    x = random_tokens(2, 21, seed=11)
    with torch.no_grad():
        h = rc_backbone(x)
        forward_strand = half(x)
        reverse_strand = half(reverse_complement_ids(x, table(config)))
    torch.testing.assert_close(h[..., :8], forward_strand, atol=ATOL, rtol=0)
    torch.testing.assert_close(h[..., 8:], reverse_strand.flip(1).flip(-1), atol=ATOL, rtol=0)


def test_causal_rc_backbone_sees_the_right_through_its_reverse_strand():
    """A causal RC model's first half at position t depends on x[:t+1] only; its second half (the
    reverse strand) on x[t:] only."""
    torch.manual_seed(12)
    backbone = MambaLMHeadModel(rc_config()).backbone.eval()
    x = random_tokens(1, 24, seed=13, specials=False)
    y = x.clone()
    y[0, 15] = 5 if x[0, 15] != 5 else 6
    with torch.no_grad():
        hx, hy = backbone(x), backbone(y)
    changed = (hx - hy).abs().amax(-1) > 1e-6  # (1, L) per position, either half
    forward_changed = (hx[..., :8] - hy[..., :8]).abs().amax(-1) > 1e-6
    reverse_changed = (hx[..., 8:] - hy[..., 8:]).abs().amax(-1) > 1e-6
    assert changed[0].all()
    assert not forward_changed[0, :15].any() and forward_changed[0, 15:].all()
    assert reverse_changed[0, :16].all() and not reverse_changed[0, 16:].any()


def right_padded(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.zeros(len(lengths), L, dtype=torch.long)  # [PAD] = 0
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    ids[mask] = torch.randint(5, 10, (int(mask.sum()),), generator=g)
    return ids, mask


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_equals_each_sequence_alone_and_stays_equivariant(bidirectional):
    """Right-padded batches: at real positions each row equals the sequence scored alone (the
    reverse strand is laid out right-padded too, so padding never enters a real position), and
    rc of a padded batch (each sequence reverse-complemented, padding kept on the right) commutes
    with the backbone."""
    torch.manual_seed(14)
    config = rc_config(bidirectional=bidirectional)
    backbone = MambaLMHeadModel(config).backbone.eval()
    perturb_all_parameters(backbone, seed=15)
    lengths = [19, 11, 4]
    ids, mask = right_padded(lengths, seed=16)
    comp = table(config)
    with torch.no_grad():
        h = backbone(ids, mask)
        for i, n in enumerate(lengths):
            alone = backbone(ids[i : i + 1, :n])
            torch.testing.assert_close(h[i, :n], alone[0], atol=ATOL, rtol=0)
        ids_rc = reverse_complement_ids(ids, comp, mask)
        assert torch.equal(ids_rc[~mask], ids[~mask])  # padding stays on the right
        h_rc = backbone(ids_rc, mask)
    torch.testing.assert_close(h_rc[mask], reverse_complement_hidden(h, mask)[mask], atol=ATOL, rtol=0)


def test_left_padded_mask_is_refused_with_a_clear_error():
    backbone = MambaBackbone(rc_config(bidirectional=True))
    ids, mask = right_padded([6, 3], seed=17)
    with pytest.raises(ValueError, match="right-padded"):
        backbone(ids, mask.flip(-1))


def test_weights_are_shared_between_strands_and_tied_to_the_head():
    model = MambaLMHeadModel(rc_config())
    assert model.backbone.embedding.weight.shape == (16, 8)  # padded vocab x d_model/2
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert model.backbone.layers[0].mixer.in_proj.in_features == 8
    assert model.backbone.norm_f.weight.shape == (8,)
    plain = MambaLMHeadModel(MambaConfig(d_model=8, n_layer=2, vocab_size=10, d_state=4, dt_rank=1))
    assert model.num_parameters() == plain.num_parameters()  # no second copy for the reverse strand


def test_config_round_trips_and_validates():
    config = rc_config()
    assert MambaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="d_model must be even"):
        rc_config(d_model=15)
    with pytest.raises(ValueError, match="needs complement_map"):
        rc_config(complement_map=None)
    with pytest.raises(ValueError, match="9 entries for vocab_size 10"):
        rc_config(complement_map=COMPLEMENT[:9])
    with pytest.raises(ValueError, match=r"involution.*ids \[5, 6, 8\]"):
        rc_config(complement_map=[0, 1, 2, 3, 4, 6, 8, 7, 5, 9])  # A->C but C->T
    with pytest.raises(ValueError, match="involution"):
        rc_config(complement_map=[0, 1, 2, 3, 4, 8, 7, 6, 5, 10])  # out of range
