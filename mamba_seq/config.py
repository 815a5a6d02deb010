"""MambaConfig: every number that defines a model, as plain data (it is stored in checkpoints)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass
class MambaConfig:
    d_model: int = 128
    n_layer: int = 4
    vocab_size: int = 10
    d_state: int = 16  # N, the SSM state size per channel
    d_conv: int = 4  # depthwise causal conv width
    expand: int = 2  # d_inner = expand * d_model
    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    bidirectional: bool = False  # BiMamba mixers (forward + reverse scan, tied in/out projections)
    # Reverse-complement parameter sharing (Caduceus-PS): the two halves of d_model are the two
    # strands, each run through the same weights; see rc_equivariant.py. Needs an even d_model.
    rc_equivariant: bool = False
    # complement_map[token_id] = id of its complement (an involution over vocab_size ids, e.g.
    # A<->T, C<->G, specials to themselves). Required when rc_equivariant; the model layer takes
    # it as data so it never depends on a tokenizer.
    complement_map: list[int] | None = None

    def __post_init__(self):
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive integer, got {value!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.complement_map is not None:
            self.complement_map = [int(i) for i in self.complement_map]  # a ListConfig or tuple -> plain data
            self._check_complement_map()
        if self.rc_equivariant:
            if self.d_model % 2:
                raise ValueError(f"MambaConfig.rc_equivariant splits d_model into two strands of d_model/2 "
                                 f"channels: d_model must be even, got {self.d_model}")
            if self.complement_map is None:
                raise ValueError("MambaConfig.rc_equivariant needs complement_map (token id -> id of its "
                                 "complement), e.g. the DNA tokenizer's [0, 1, 2, 3, 4, 8, 7, 6, 5, 9] "
                                 "(configs/model/caduceus_small.yaml sets it)")

    def _check_complement_map(self):
        cmap, n = self.complement_map, self.vocab_size
        if len(cmap) != n:
            raise ValueError(f"MambaConfig.complement_map has {len(cmap)} entries for vocab_size {n}")
        bad = [i for i, c in enumerate(cmap) if not 0 <= c < n or cmap[c] != i]
        if bad:
            raise ValueError(
                f"MambaConfig.complement_map must map every id in [0, {n}) to an id whose complement is "
                f"the id again (an involution); it fails at ids {bad}: {cmap}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MambaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MambaConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)
