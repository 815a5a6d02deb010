"""The Mamba mixer (S6 block) of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (2023), with the reference initialisation.

    x, z = in_proj(h)                       expand 2: two (d_inner) streams
    x = silu(causal depthwise conv_k4(x))
    dt, B, C = x_proj(x)                    dt is low rank (dt_rank), B and C are (d_state)
    dt = dt_proj(dt)                        its bias goes into the scan (softplus inside)
    y = selective_scan(x, dt, -exp(A_log), B, C, D, z)   y = SSM(x) * silu(z)
    out = out_proj(y)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from kernels.selective_scan import selective_scan

from .config import MambaConfig


def mark_no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag a parameter for the optimizer's no-decay group (as mamba_ssm does for A_log and D)."""
    param._no_weight_decay = True
    return param


@torch.no_grad()
def init_dt_projection(dt_proj: nn.Linear, c: MambaConfig):
    """dt_proj as in the reference: weight ~ U(+-dt_rank^-0.5 * dt_scale); bias = softplus^-1(dt)
    with dt log-uniform in [dt_min, dt_max], so the initial step sizes span that range."""
    std = dt_proj.in_features**-0.5 * c.dt_scale
    nn.init.uniform_(dt_proj.weight, -std, std)
    dt = torch.exp(
        torch.rand(dt_proj.out_features) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
    ).clamp(min=c.dt_init_floor)
    dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    dt_proj.bias._no_reinit = True  # the backbone's init must not zero it


class MambaMixer(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        d_model, d_inner, n = config.d_model, config.d_inner, config.d_state
        self.d_inner, self.d_state, self.dt_rank = d_inner, n, config.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, kernel_size=config.d_conv, groups=d_inner,
            padding=config.d_conv - 1, bias=config.conv_bias,
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=config.bias)

        # S4D-real initialisation: A_n = -(n + 1), kept as log for positivity of -A.
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, N)
        self.A_log = mark_no_weight_decay(nn.Parameter(torch.log(A)))
        self.D = mark_no_weight_decay(nn.Parameter(torch.ones(d_inner)))
        init_dt_projection(self.dt_proj, config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, L, d_model) -> (batch, L, d_model)
        L = hidden.shape[1]
        xz = rearrange(self.in_proj(hidden), "b l d -> b d l")
        x, z = xz.chunk(2, dim=1)  # (batch, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])
        x_dbl = self.x_proj(rearrange(x, "b d l -> b l d"))  # (batch, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(dt @ self.dt_proj.weight.t(), "b l d -> b d l")  # bias is applied in the scan
        B = rearrange(B, "b l n -> b n l").contiguous()
        C = rearrange(C, "b l n -> b n l").contiguous()
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            x, dt, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(rearrange(y, "b d l -> b l d"))
