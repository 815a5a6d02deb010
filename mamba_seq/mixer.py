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


def add_ssm_branch(module: nn.Module, c: MambaConfig) -> None:
    """Give `module` the parameters of one scan direction, with the reference initialisation:
    depthwise causal conv, x_proj (-> dt_rank + 2N), dt_proj, S4D-real A_log (A_n = -(n + 1),
    kept as a log so -A stays positive) and the skip D."""
    d_inner, n = c.d_inner, c.d_state
    module.conv1d = nn.Conv1d(d_inner, d_inner, kernel_size=c.d_conv, groups=d_inner, padding=c.d_conv - 1,
                              bias=c.conv_bias)
    module.x_proj = nn.Linear(d_inner, c.dt_rank + 2 * n, bias=False)
    module.dt_proj = nn.Linear(c.dt_rank, d_inner, bias=True)
    init_dt_projection(module.dt_proj, c)
    A = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, N)
    module.A_log = mark_no_weight_decay(nn.Parameter(torch.log(A)))
    module.D = mark_no_weight_decay(nn.Parameter(torch.ones(d_inner)))


class MambaMixer(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        d_model, d_inner, n = config.d_model, config.d_inner, config.d_state
        self.d_inner, self.d_state, self.dt_rank = d_inner, n, config.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=config.bias)
        add_ssm_branch(self, config)
        self.out_proj = nn.Linear(d_inner, d_model, bias=config.bias)

    def ssm(self, x, z, branch: nn.Module, mask: torch.Tensor | None = None, reverse: bool = False):
        """conv -> SiLU -> x_proj -> selective scan with `branch`'s parameters (conv1d, x_proj,
        dt_proj, A_log, D). x, z: (batch, d_inner, L); mask: (batch, L) bool or None -> (batch, d_inner, L).
        reverse: an anti-causal conv (position t sees t..t+k-1) and a right-to-left scan."""
        L = x.shape[-1]
        conv = branch.conv1d
        if reverse:  # the mirror image of the causal conv, with no flipped copy of x
            k = conv.kernel_size[0]
            x = F.conv1d(F.pad(x, (0, k - 1)), conv.weight.flip(-1), conv.bias, groups=conv.groups)
        else:
            x = conv(x)[..., :L]
        x = F.silu(x)
        x_dbl = branch.x_proj(rearrange(x, "b d l -> b l d"))  # (batch, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(dt @ branch.dt_proj.weight.t(), "b l d -> b d l")  # bias is applied in the scan
        B = rearrange(B, "b l n -> b n l").contiguous()
        C = rearrange(C, "b l n -> b n l").contiguous()
        bias, softplus = branch.dt_proj.bias.float(), True
        if mask is not None:  # padded steps: dt = 0 -> decay 1 and no input: the state passes through
            dt = F.softplus(dt.float() + bias[:, None]) * mask[:, None, :]
            bias, softplus = None, False
        return selective_scan(
            x, dt, -torch.exp(branch.A_log.float()), B, C, D=branch.D.float(), z=z, delta_bias=bias,
            delta_softplus=softplus, reverse=reverse,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, L, d_model) -> (batch, L, d_model)
        xz = rearrange(self.in_proj(hidden), "b l d -> b d l")
        x, z = xz.chunk(2, dim=1)  # (batch, d_inner, L) each
        return self.out_proj(rearrange(self.ssm(x, z, self), "b d l -> b l d"))
