import torch
import torch.nn.functional as F

from kernels.selective_scan import selective_scan_oracle
from mamba_seq import MambaConfig
from mamba_seq.bidirectional import BiMambaMixer

CFG = MambaConfig(d_model=16, n_layer=1, vocab_size=10, d_state=4)


def direction_by_flipping(m, x, z, conv, x_proj, dt_proj, A_log, D, reverse):
    """Independent form: the reverse direction as the forward computation on flipped tensors,
    with the float64 oracle scan."""
    if reverse:
        x, z = x.flip(-1), z.flip(-1)
    L = x.shape[-1]
    xc = F.silu(conv(x)[..., :L])
    dbl = x_proj(xc.transpose(1, 2))
    dt, B, C = torch.split(dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = (dt @ dt_proj.weight.t()).transpose(1, 2)
    y = selective_scan_oracle(xc, dt, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D=D, z=z,
                              delta_bias=dt_proj.bias, delta_softplus=True)
    return y.flip(-1) if reverse else y


def test_bidirectional_equals_forward_plus_flipped_reverse():
    torch.manual_seed(0)
    m = BiMambaMixer(CFG).double()
    hidden = torch.randn(2, 33, 16, dtype=torch.float64)
    x, z = m.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    r = m.rev
    y = direction_by_flipping(m, x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D, False) + \
        direction_by_flipping(m, x, z, r.conv1d, r.x_proj, r.dt_proj, r.A_log, r.D, True)
    ref = m.out_proj(y.transpose(1, 2))
    out = m(hidden)
    assert ((out - ref).norm() / ref.norm()) < 1e-10


def test_every_position_sees_both_sides():
    torch.manual_seed(1)
    m = BiMambaMixer(CFG)
    hidden = torch.randn(1, 20, 16)
    base = m(hidden)
    pert = hidden.clone()
    pert[:, 15] += 1.0
    out = m(pert)
    assert not torch.allclose(out[:, :15], base[:, :15])  # the past changes: information flows backwards
    assert not torch.allclose(out[:, 16:], base[:, 16:])


def test_padding_mask_makes_a_padded_batch_equal_each_sequence_alone():
    torch.manual_seed(2)
    m = BiMambaMixer(CFG)
    lengths = [20, 13, 5]
    hidden = torch.randn(3, 20, 16)
    mask = torch.arange(20)[None] < torch.tensor(lengths)[:, None]
    batched = m(hidden, mask)
    for i, n in enumerate(lengths):
        alone = m(hidden[i : i + 1, :n])
        assert torch.allclose(batched[i, :n], alone[0], atol=1e-5), i
