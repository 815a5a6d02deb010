"""The state a causal Mamba model carries between decode steps, and the checks for who may decode.

Per layer: conv_state (batch, d_inner, d_conv), the last d_conv inputs of the depthwise conv (newest
last), in the model's dtype; ssm_state (batch, d_inner, d_state), always fp32 (it accumulates over
every position, as the scan does). seqlen_offset counts the positions consumed so far.

Memory is constant in the number of steps: stepping updates these tensors in place, so they can
also be the static buffers of a captured CUDA graph (generation.py).

    cache = model.allocate_inference_cache(batch_size)
    logits = model.prefill(prompt_ids, cache)        # (batch, vocab) at the prompt's last position
    logits = model.step(next_ids, cache)             # one position per call

A decode step runs few kernels (on CUDA, per block: add+RMSNorm, in_proj, conv step, x_proj,
state update with dt_proj inside, out_proj; see kernels/selective_state_update): the constants of
a step that are functions of the parameters (A = -exp(A_log), fp32 copies of D, the dt bias and
dt_proj, the conv weight and bias) are computed once per mixer (`StepConstants`) and reused until
a parameter changes (its storage or version counter). A captured CUDA graph reads them at fixed
addresses, so it sees a refresh (done in place) only if an eager step runs after the change:
capture a new graph (generate does, each call) after changing the weights.
`count_step_ops` counts the aten ops and Triton launches of one step (tests and the benchmark).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch

from .config import MambaConfig

__all__ = ["InferenceCache", "StepConstants", "check_can_decode", "count_step_ops"]


@dataclass
class StepConstants:
    """A mixer's per-step constants, all fp32, computed from its parameters once (not every step)."""

    A: torch.Tensor  # (d_inner, d_state) = -exp(A_log)
    D: torch.Tensor  # (d_inner,)
    dt_bias: torch.Tensor  # (d_inner,)
    dt_proj_weight: torch.Tensor  # (d_inner, dt_rank)
    conv_weight: torch.Tensor  # (d_inner, d_conv)
    conv_bias: torch.Tensor | None  # (d_inner,) or None (conv_bias=False)
    key: tuple = ()  # the parameters' (data_ptr, version) they were computed from

    def tensors(self) -> tuple:
        return self.A, self.D, self.dt_bias, self.dt_proj_weight, self.conv_weight, self.conv_bias


def check_can_decode(config: MambaConfig) -> None:
    """Recurrent inference needs a causal model: raise ValueError saying why otherwise."""
    if config.bidirectional:
        raise ValueError("recurrent inference needs a causal model: this one is bidirectional (its reverse scan reads "
                         "positions after the current one, which do not exist yet while generating)")
    if config.rc_equivariant:
        raise ValueError("recurrent inference needs a causal model: this one is rc_equivariant (its reverse-complement "
                         "strand is scanned from the sequence's end, which does not exist yet while generating)")


@dataclass
class InferenceCache:
    conv_states: list[torch.Tensor]  # per layer (batch, d_inner, d_conv), model dtype
    ssm_states: list[torch.Tensor]  # per layer (batch, d_inner, d_state), fp32
    seqlen_offset: int = 0  # positions consumed (prefill + steps)
    extra: dict = field(default_factory=dict)  # room for callers (e.g. a captured graph's buffers)

    @property
    def batch_size(self) -> int:
        return self.ssm_states[0].shape[0]

    @property
    def n_layer(self) -> int:
        return len(self.ssm_states)

    def __len__(self) -> int:
        return self.n_layer

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv_states[layer], self.ssm_states[layer]

    def __iter__(self):
        return iter(zip(self.conv_states, self.ssm_states))

    def reset(self) -> "InferenceCache":
        """Zero every state in place (the buffers stay the same tensors) and the offset."""
        for conv_state, ssm_state in self:
            conv_state.zero_()
            ssm_state.zero_()
        self.seqlen_offset = 0
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.conv_states, *self.ssm_states))


def _launches_no_kernel(func) -> bool:
    """An aten op that launches no device kernel: allocations, and views (its outputs alias an
    input without writing it: t, slice, split, view, ...)."""
    if func.__name__.startswith(("empty", "new_empty")):
        return True
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write for r in rets)


@torch.no_grad()
def count_step_ops(model, cache: InferenceCache, input_ids: torch.Tensor) -> dict:
    """Run model.step(input_ids, cache) once (the cache advances) and count what it dispatched:
    aten_ops (every aten op), kernels (aten ops that launch a kernel, i.e. neither a view nor an
    allocation, plus Triton launches), triton (Triton launches), and `ops`, a Counter by op name.
    An estimate of the kernels a CUDA step launches (cuBLAS may split one matmul into two)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from kernels.selective_state_update import TRITON_LAUNCHES

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops, self.free = collections.Counter(), 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            self.free += _launches_no_kernel(func)
            return func(*args, **(kwargs or {}))

    before = sum(TRITON_LAUNCHES.values())
    with _Count() as mode:
        model.step(input_ids, cache)
    triton_launches = sum(TRITON_LAUNCHES.values()) - before
    aten = sum(mode.ops.values())
    return dict(aten_ops=aten, kernels=aten - mode.free + triton_launches, triton=triton_launches, ops=mode.ops)
