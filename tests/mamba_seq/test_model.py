import math

import pytest
import torch
import torch.nn.functional as F

from mamba_seq import MambaConfig, MambaLMHeadModel, MambaMixer, no_weight_decay_param_names


def small_config(**kw) -> MambaConfig:
    base = dict(d_model=16, n_layer=2, vocab_size=10, d_state=4)
    base.update(kw)
    return MambaConfig(**base)


def mixer_by_steps(m: MambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """Independent float64 form of the mixer: one time step at a time, the conv as an explicit
    sum over the last d_conv inputs and the SSM as its recurrence (no scan code is shared)."""
    f64 = torch.float64
    W_in, W_x, W_dt, b_dt = (t.detach().to(f64) for t in (m.in_proj.weight, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias))
    conv_w, conv_b = m.conv1d.weight.detach().to(f64)[:, 0], m.conv1d.bias.detach().to(f64)  # (d_inner, k)
    W_out = m.out_proj.weight.detach().to(f64)
    A = -torch.exp(m.A_log.detach().to(f64))
    D = m.D.detach().to(f64)
    batch, L, _ = hidden.shape
    k = conv_w.shape[1]
    h = torch.zeros(batch, m.d_inner, m.d_state, dtype=f64)
    xs = []  # conv inputs seen so far
    outs = []
    for t in range(L):
        xz = hidden[:, t].to(f64) @ W_in.t()
        x, z = xz[:, : m.d_inner], xz[:, m.d_inner :]
        xs.append(x)
        window = xs[-k:]
        window = [torch.zeros_like(x)] * (k - len(window)) + window
        xc = conv_b + sum(conv_w[:, j] * window[j] for j in range(k))
        xc = F.silu(xc)
        dbl = xc @ W_x.t()
        dt, B, C = dbl[:, : m.dt_rank], dbl[:, m.dt_rank : m.dt_rank + m.d_state], dbl[:, m.dt_rank + m.d_state :]
        dt = F.softplus(dt @ W_dt.t() + b_dt)  # (batch, d_inner)
        h = torch.exp(dt[..., None] * A) * h + dt[..., None] * B[:, None, :] * xc[..., None]
        y = (h * C[:, None, :]).sum(-1) + D * xc
        outs.append((y * F.silu(z)) @ W_out.t())
    return torch.stack(outs, dim=1)


def test_mixer_matches_step_by_step_oracle():
    torch.manual_seed(0)
    model = MambaLMHeadModel(small_config())
    mixer = model.backbone.layers[0].mixer
    hidden = torch.randn(2, 37, 16)
    out = mixer(hidden)
    ref = mixer_by_steps(mixer, hidden)
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 1e-5, err


def test_mixer_is_causal():
    torch.manual_seed(1)
    mixer = MambaLMHeadModel(small_config()).backbone.layers[1].mixer
    hidden = torch.randn(1, 50, 16)
    base = mixer(hidden)
    for t in (0, 17, 49):
        pert = hidden.clone()
        pert[:, t] += torch.randn(16)
        out = mixer(pert)
        assert torch.equal(out[:, :t], base[:, :t]), f"output before {t} changed"
        assert not torch.allclose(out[:, t], base[:, t]), f"output at {t} ignores its own input"


def test_lm_is_causal_in_tokens():
    torch.manual_seed(2)
    model = MambaLMHeadModel(small_config())
    ids = torch.randint(0, 10, (2, 40))
    base = model(ids)
    pert = ids.clone()
    pert[:, 25] = (pert[:, 25] + 1) % 10
    out = model(pert)
    assert torch.equal(out[:, :25], base[:, :25])
    assert not torch.allclose(out[:, 25:], base[:, 25:])


def test_reference_initialisation():
    torch.manual_seed(3)
    c = small_config(d_model=64, d_state=16)
    model = MambaLMHeadModel(c)
    mixer = model.backbone.layers[0].mixer
    assert c.dt_rank == math.ceil(64 / 16)
    assert mixer.in_proj.out_features == 2 * 2 * 64
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= c.dt_init_floor - 1e-7 and dt.max() <= c.dt_max + 1e-6
    # log-uniform in [dt_min, dt_max]: the median of log dt sits near the middle of the log range
    mid = (math.log(c.dt_min) + math.log(c.dt_max)) / 2
    assert abs(dt.log().median().item() - mid) < 0.6
    assert torch.allclose(mixer.A_log.detach(), torch.log(torch.arange(1, 17.0)).expand(128, 16))
    assert torch.equal(mixer.D.detach(), torch.ones(128))
    assert model.lm_head.weight.data_ptr() == model.backbone.embedding.weight.data_ptr()
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.003
    assert model.lm_head.out_features % 8 == 0 and model.lm_head.out_features >= 10


def test_no_weight_decay_marks():
    model = MambaLMHeadModel(small_config())
    names = no_weight_decay_param_names(model)
    for i in range(2):
        assert f"backbone.layers.{i}.mixer.A_log" in names
        assert f"backbone.layers.{i}.mixer.D" in names
        assert f"backbone.layers.{i}.mixer.dt_proj.bias" in names
        assert f"backbone.layers.{i}.norm.weight" in names
        assert f"backbone.layers.{i}.mixer.in_proj.weight" not in names
        assert f"backbone.layers.{i}.mixer.out_proj.weight" not in names
    assert "backbone.embedding.weight" in names


def test_residual_stream_stays_fp32_under_bf16_weights():
    torch.manual_seed(4)
    model = MambaLMHeadModel(small_config()).to(torch.bfloat16)
    block = model.backbone.layers[0]
    hidden = model.backbone.embedding(torch.randint(0, 10, (1, 8)))
    _, residual = block(hidden, None)
    assert residual.dtype == torch.float32


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="d_model"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="unknown MambaConfig keys"):
        MambaConfig.from_dict({"d_modle": 8})
