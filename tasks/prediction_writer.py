"""Writes what a task's `predict_step` returns (a dict of equal-length lists) as rows of a TSV."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter


class TSVPredictionWriter(BasePredictionWriter):
    """One row per predicted item, columns in the order of the predict_step dict. The file is
    written under a temporary name and renamed when prediction ends, so a killed run never
    leaves a partial file behind the final name."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._file = None
        self._columns: list[str] | None = None
        self.rows_written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "w")
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
            os.replace(self._tmp, self.path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
