"""The Mamba mixer (S6 block) of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (2023), with the reference initialisation.

    x, z = in_proj(h)                       expand 2: two (d_inner) streams
    x = silu(causal depthwise conv_k4(x))   kernels/causal_conv1d (fused, Triton on CUDA)
    dt, B, C = x_proj(x)                    dt is low rank (dt_rank), B and C are (d_state)
    dt = dt_proj(dt)                        its bias goes into the scan (softplus inside)
    y = selective_scan(x, dt, -exp(A_log), B, C, D, z)   y = SSM(x) * silu(z)
    out = out_proj(y)

Recurrent inference (generation): `step` runs one position from a rolling conv state (the last
d_conv inputs of the conv) and the SSM state (fp32), both updated in place, through two fused ops
(kernels/selective_state_update: the conv step, then the state update with dt_proj inside) and
fp32 constants computed once (`step_constants`); `prefill` runs the parallel forward over a prompt and leaves both states
as they are after it. mamba_seq/inference.py allocates the states.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.causal_conv1d import causal_conv1d
from kernels.selective_scan import selective_scan
from kernels.selective_state_update import causal_conv1d_step, selective_state_update

from .config import MambaConfig
from .inference import StepConstants


# -- projections in the scan's layout ----------------------------------------------------------------
# The conv and the scan read (batch, channels, L) activations with time contiguous. The projections
# produce and consume them in that layout directly, as one GEMM over all batch x L positions (as
# mamba_ssm does), so no (batch, d_inner, L) activation is ever transposed in memory: at L = 2^20
# each such transpose is a strided copy of a GiB, and there would be several per block.

def project_in(linear: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    # hidden (batch, L, d_in) contiguous -> linear(hidden) as (batch, d_out, L), time contiguous
    # (strides (L, batch*L, 1): a view of one (d_out, batch*L) GEMM output)
    b, L, _ = hidden.shape
    h = hidden.reshape(b * L, -1).t()  # (d_in, batch*L), a view
    y = linear.weight @ h if linear.bias is None else torch.addmm(linear.bias[:, None], linear.weight, h)
    return y.view(-1, b, L).transpose(0, 1)


def project_channels(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # x (batch, d_in, L), time contiguous -> weight @ x: (batch, d_out, L) in project_in's layout.
    # A view for batch 1 or project_in's layout, else one copy of contiguous time rows.
    b, d, L = x.shape
    return (weight @ x.transpose(0, 1).reshape(d, b * L)).view(-1, b, L).transpose(0, 1)


def project_out(linear: nn.Linear, y: torch.Tensor) -> torch.Tensor:
    # y (batch, d_in, L), time contiguous -> linear over channels: (batch, L, d_out) contiguous
    b, d, L = y.shape
    y2 = y.transpose(0, 1).reshape(d, b * L).t()  # (batch*L, d_in), column-major: the GEMM reads it as is
    out = y2 @ linear.weight.t() if linear.bias is None else torch.addmm(linear.bias, y2, linear.weight.t())
    return out.view(b, L, -1)


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

    def ssm(self, x, z, branch: nn.Module, mask: torch.Tensor | None = None, reverse: bool = False,
            conv_prefix: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
            return_final_state: bool = False):
        """conv -> SiLU -> x_proj -> selective scan with `branch`'s parameters (conv1d, x_proj,
        dt_proj, A_log, D). x, z: (batch, d_inner, L); mask: (batch, L) bool or None -> (batch, d_inner, L).
        reverse: an anti-causal conv (position t sees t..t+k-1) and a right-to-left scan.
        Prefill only (causal): conv_prefix (batch, d_inner, d_conv - 1), the conv inputs just before
        x (instead of zeros); initial_state (batch, d_inner, N) fp32; return_final_state -> also the
        state after the last position."""
        conv = branch.conv1d
        if reverse:  # the mirror image of the causal conv, with no flipped copy of x
            k = conv.kernel_size[0]
            x = F.silu(F.conv1d(F.pad(x, (0, k - 1)), conv.weight.flip(-1), conv.bias, groups=conv.groups))
        else:  # one fused conv + SiLU (Triton on CUDA), linear in L, continuing from conv_prefix
            prefix = None if conv_prefix is None else conv_prefix.to(x.dtype)
            x = causal_conv1d(x, conv.weight[:, 0], conv.bias, prefix=prefix, silu=True)
        x_dbl = project_channels(branch.x_proj.weight, x)  # (batch, dt_rank + 2N, L)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)  # B, C: (batch, N, L)
        dt = project_channels(branch.dt_proj.weight, dt)  # (batch, d_inner, L); its bias is applied in the scan
        bias, softplus = branch.dt_proj.bias.float(), True
        if mask is not None:  # padded steps: dt = 0 -> decay 1 and no input: the state passes through
            dt = F.softplus(dt.float() + bias[:, None]) * mask[:, None, :]
            bias, softplus = None, False
        return selective_scan(
            x, dt, -torch.exp(branch.A_log.float()), B, C, D=branch.D.float(), z=z, delta_bias=bias,
            delta_softplus=softplus, reverse=reverse, initial_state=initial_state,
            return_final_state=return_final_state,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, L, d_model) -> (batch, L, d_model)
        x, z = project_in(self.in_proj, hidden).chunk(2, dim=1)  # (batch, d_inner, L) each, time contiguous
        return project_out(self.out_proj, self.ssm(x, z, self))

    # -- recurrent inference ---------------------------------------------------------------------

    def _check_causal(self):
        if type(self) is not MambaMixer:  # BiMambaMixer reads the future: no recurrent form
            raise ValueError(f"{type(self).__name__} is not causal: recurrent inference (step/prefill) needs a "
                             "causal MambaMixer (config.bidirectional=False)")

    def allocate_inference_cache(self, batch_size: int, dtype: torch.dtype | None = None,
                                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # -> conv_state (batch, d_inner, d_conv) in dtype (default: in_proj's), zeros;
        #    ssm_state (batch, d_inner, d_state) fp32, zeros
        self._check_causal()
        w = self.in_proj.weight
        device = w.device if device is None else device
        conv_state = torch.zeros(batch_size, self.d_inner, self.conv1d.kernel_size[0], device=device,
                                 dtype=w.dtype if dtype is None else dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv_state, ssm_state

    def step_constants(self) -> StepConstants:
        """The fp32 constants of `step` (A = -exp(A_log), D, dt bias, dt_proj, conv weight and bias),
        computed on first use and again only when a parameter's storage or version changes (a
        refresh writes into the same tensors where it can: a captured CUDA graph reads them)."""
        conv, dt_proj = self.conv1d, self.dt_proj
        params = (self.A_log, self.D, dt_proj.bias, dt_proj.weight, conv.weight, conv.bias)
        key = tuple(None if p is None else (p.data_ptr(), p._version, p.device) for p in params)
        cached = self.__dict__.get("_step_constants")
        if cached is not None and cached.key == key:
            return cached
        with torch.no_grad():
            f32 = torch.float32
            new = StepConstants(
                A=-torch.exp(self.A_log.to(f32)), D=self.D.to(f32, copy=True), dt_bias=dt_proj.bias.to(f32, copy=True),
                dt_proj_weight=dt_proj.weight.to(f32, copy=True), conv_weight=conv.weight[:, 0].to(f32, copy=True),
                conv_bias=None if conv.bias is None else conv.bias.to(f32, copy=True), key=key,
            )
            if cached is not None and all(
                (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape
                                              and a.device == b.device and not a.is_inference())
                for a, b in zip(cached.tensors(), new.tensors())
            ):
                for a, b in zip(cached.tensors(), new.tensors()):
                    if a is not None:
                        a.copy_(b)
                cached.key = key
                return cached
        self.__dict__["_step_constants"] = new
        return new

    def step(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, d_model) -> (batch, d_model); one position. conv_state (batch, d_inner, d_conv):
        # the last d_conv conv inputs, newest last; ssm_state (batch, d_inner, N) fp32. Both in place.
        # On CUDA: in_proj, the conv-step kernel (shift + conv + SiLU), x_proj, the state-update
        # kernel (dt_proj, softplus, update, D skip, SiLU(z) gate), out_proj: five kernels.
        self._check_causal()
        c = self.step_constants()
        d_inner, R, N = self.d_inner, self.dt_rank, self.d_state
        xz = self.in_proj(hidden)  # (batch, 2 d_inner)
        x = causal_conv1d_step(conv_state, xz[:, :d_inner], c.conv_weight, c.conv_bias, silu=True)
        x_dbl = self.x_proj(x)  # (batch, dt_rank + 2N): [dt_low | B | C]
        y = selective_state_update(
            ssm_state, x, x_dbl[:, :R], c.A, x_dbl[:, R:R + N], x_dbl[:, R + N:], D=c.D, z=xz[:, d_inner:],
            dt_bias=c.dt_bias, dt_softplus=True, dt_proj_weight=c.dt_proj_weight,
        )
        return self.out_proj(y)

    def forward_segment(self, hidden: torch.Tensor, conv_prefix: torch.Tensor, ssm_state: torch.Tensor):
        """The forward over a segment that continues a sequence, differentiable in everything:
        hidden (batch, L, d_model), L >= 1; conv_prefix (batch, d_inner, P), P >= d_conv - 1, the conv
        inputs of the P positions before (zeros at a sequence start); ssm_state (batch, d_inner, N)
        fp32, the state there -> (out (batch, L, d_model), the same two (P wide) for the position
        after the segment). Chained over consecutive segments it equals one forward over all of
        them (segment-wise training passes gradients back through both states)."""
        self._check_causal()
        k1 = self.conv1d.kernel_size[0] - 1
        if conv_prefix.shape[-1] < k1:
            raise ValueError(f"conv_prefix holds {conv_prefix.shape[-1]} positions; the conv needs the last {k1}")
        x, z = project_in(self.in_proj, hidden).chunk(2, dim=1)  # (batch, d_inner, L) each
        y, final = self.ssm(x, z, self, conv_prefix=conv_prefix[:, :, conv_prefix.shape[-1] - k1:],
                            initial_state=ssm_state, return_final_state=True)
        # the last P conv inputs (reaching into the old prefix when L < P), as a tensor of their own:
        # a view would keep the whole segment's x alive (segment-wise training stores these)
        L, P = x.shape[-1], conv_prefix.shape[-1]
        if L >= P:
            new_prefix = x[:, :, L - P:].clone()
        else:
            new_prefix = torch.cat([conv_prefix[:, :, L:].to(x.dtype), x], dim=-1)
        return project_out(self.out_proj, y), new_prefix, final

    def prefill(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        # hidden: (batch, L, d_model), L >= 1 -> (batch, L, d_model): the parallel forward over L
        # positions that follow the states given (zeros: a fresh start, then equal to forward), which
        # are left in place as they are after the L positions
        out, conv, final = self.forward_segment(hidden, conv_state, ssm_state)
        conv_state.copy_(conv)
        ssm_state.copy_(final)
        return out
