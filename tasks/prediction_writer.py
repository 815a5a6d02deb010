"""Writes what a task's `predict_step` returns (a dict of equal-length lists) as rows of a TSV."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter


class TSVPredictionWriter(BasePredictionWriter):
    """One row per predicted item, columns in the order of the predict_step dict. The file is
    written under a temporary name and renamed when prediction ends, so a killed run never
    leaves a partial file behind the final name.

    Several processes: each writes its own part (`<name>.rank<r>.partial`); when prediction ends,
    rank 0 joins the parts in rank order, which is the split's order (the data modules give each
    process a contiguous part: data_modules/sharding.py). The ranks of a sequence-parallel group
    predict the same items, so only the first of each group writes."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self._file = None
        self._columns: list[str] | None = None
        self.rows_written = 0

    def _part(self, rank: int, world: int) -> Path:
        suffix = ".partial" if world == 1 else f".rank{rank}.partial"
        return self.path.with_name(self.path.name + suffix)

    @staticmethod
    def _writes(trainer, pl_module) -> bool:
        group = int(getattr(pl_module, "sequence_parallel_size", 1) or 1)
        return trainer.global_rank % group == 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not self._writes(trainer, pl_module):
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._part(trainer.global_rank, trainer.world_size), "w")
            self._columns = list(prediction)
            self._file.write("\t".join(self._columns) + "\n")
        elif list(prediction) != self._columns:
            raise ValueError(f"predict_step returned columns {list(prediction)}, expected {self._columns}")
        n = len(prediction[self._columns[0]])
        for i in range(n):
            self._file.write("\t".join(_fmt(prediction[c][i]) for c in self._columns) + "\n")
        self.rows_written += n

    def on_predict_end(self, trainer, pl_module):
        if self._file is not None:
            self._file.close()
            self._file = None
        world = trainer.world_size
        if world == 1:
            if self._part(0, 1).exists():
                os.replace(self._part(0, 1), self.path)
            return
        trainer.strategy.barrier("predictions_written")  # every part is complete before rank 0 joins them
        if trainer.global_rank == 0:
            tmp, header = self._part(0, 1), None
            with open(tmp, "w") as out:
                for rank in range(world):
                    part = self._part(rank, world)
                    if not part.exists():  # a sequence-parallel rank that does not write, or an empty shard
                        continue
                    with open(part) as f:
                        first = f.readline()
                        if header is None:
                            header = first
                            out.write(first)
                        elif first != header:
                            raise ValueError(f"{part}: columns {first.strip()!r} differ from rank 0's {header.strip()!r}")
                        out.writelines(f)
                    part.unlink()
            os.replace(tmp, self.path)
        trainer.strategy.barrier("predictions_joined")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
