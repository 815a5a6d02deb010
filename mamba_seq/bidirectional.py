"""Bidirectional Mamba mixer (as in Caduceus's BiMamba with tied projections).

One in_proj and one out_proj serve both directions; each direction has its own conv, x_proj,
dt_proj, A_log and D. The reverse direction uses an anti-causal conv and the scan's
`reverse=True`, so no flipped copy of the sequence is made:

    y = out_proj( SSM_fwd(causal_conv(x)) + SSM_rev(anticausal_conv(x)) )

A padding mask keeps padded positions out of both directions: their conv inputs are zero (as if
the sequence ended there) and their step size is zero, so they leave the state untouched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from kernels.selective_scan import selective_scan

from .config import MambaConfig
from .mixer import MambaMixer, init_dt_projection, mark_no_weight_decay


class _Direction(nn.Module):
    """The per-direction half of a mixer: conv, x_proj, dt_proj, A_log, D."""

    def __init__(self, config: MambaConfig, source: MambaMixer):
        super().__init__()
        self.conv1d = nn.Conv1d(source.d_inner, source.d_inner, config.d_conv, groups=source.d_inner,
                                padding=config.d_conv - 1, bias=config.conv_bias)
        self.x_proj = nn.Linear(source.d_inner, source.dt_rank + 2 * source.d_state, bias=False)
        self.dt_proj = nn.Linear(source.dt_rank, source.d_inner, bias=True)
        self.A_log = mark_no_weight_decay(nn.Parameter(source.A_log.detach().clone()))
        self.D = mark_no_weight_decay(nn.Parameter(torch.ones(source.d_inner)))
        init_dt_projection(self.dt_proj, config)  # the same reference initialisation as forward


class BiMambaMixer(MambaMixer):
    def __init__(self, config: MambaConfig, layer_idx: int | None = None):
        super().__init__(config, layer_idx)
        self.rev = _Direction(config, self)

    def _ssm(self, x, z, mask, conv, x_proj, dt_proj, A_log, D, reverse: bool):
        # x, z: (batch, d_inner, L); mask: (batch, L) bool or None -> y (batch, d_inner, L)
        L = x.shape[-1]
        k = conv.kernel_size[0]
        if reverse:  # anti-causal: position t sees t..t+k-1 (the mirror image of the causal conv)
            x = F.conv1d(F.pad(x, (0, k - 1)), conv.weight.flip(-1), conv.bias, groups=conv.groups)
        else:
            x = conv(x)[..., :L]
        x = F.silu(x)
        dbl = x_proj(rearrange(x, "b d l -> b l d"))
        dt, B, C = torch.split(dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(dt @ dt_proj.weight.t(), "b l d -> b d l")
        B = rearrange(B, "b l n -> b n l").contiguous()
        C = rearrange(C, "b l n -> b n l").contiguous()
        if mask is not None:  # padded steps: dt = 0 -> decay 1 and no input: the state passes through
            dt = F.softplus(dt.float() + dt_proj.bias.float()[:, None]) * mask[:, None, :]
            bias, softplus = None, False
        else:
            bias, softplus = dt_proj.bias.float(), True
        return selective_scan(x, dt, -torch.exp(A_log.float()), B, C, D=D.float(), z=z, delta_bias=bias,
                              delta_softplus=softplus, reverse=reverse)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # hidden: (batch, L, d_model); mask: (batch, L) bool, True at real tokens -> (batch, L, d_model)
        xz = rearrange(self.in_proj(hidden), "b l d -> b d l")
        x, z = xz.chunk(2, dim=1)
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)  # conv inputs beyond the sequence are zero
        y = self._ssm(x, z, mask, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=False)
        r = self.rev
        y = y + self._ssm(x, z, mask, r.conv1d, r.x_proj, r.dt_proj, r.A_log, r.D, reverse=True)
        return self.out_proj(rearrange(y, "b d l -> b l d"))
