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

from .config import MambaConfig
from .mixer import MambaMixer, add_ssm_branch, project_in, project_out


class BiMambaMixer(MambaMixer):
    def __init__(self, config: MambaConfig, layer_idx: int | None = None):
        super().__init__(config, layer_idx)
        self.rev = nn.Module()  # the reverse direction's conv, x_proj, dt_proj, A_log, D
        add_ssm_branch(self.rev, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # hidden: (batch, L, d_model); mask: (batch, L) bool, True at real tokens -> (batch, L, d_model)
        x, z = project_in(self.in_proj, hidden).chunk(2, dim=1)  # (batch, d_inner, L) each
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)  # conv inputs beyond the sequence are zero
        y = self.ssm(x, z, self, mask) + self.ssm(x, z, self.rev, mask, reverse=True)
        return project_out(self.out_proj, y)
