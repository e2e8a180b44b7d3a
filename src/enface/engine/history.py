"""``logs/metrics.csv``: one row per epoch, appended, surviving any number of resumes.

Lightning's CSV logger starts a new file when a run is resumed, so a run killed at epoch
359 would keep only the epochs after it. :class:`MetricsHistory` instead keeps the rows of
every epoch whose checkpoint survived: on (re)start it drops the rows of epochs that will be
trained again (those after the checkpoint the run resumes from), and after each epoch it
rewrites the file atomically with the new row appended.

:class:`EpochLines` is training's progress where standard output is no terminal (``make demo >
demo.log``): one line per epoch with those numbers, in place of the bar that redraws itself
every batch.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar

from enface.errors import RunFolderError
from enface.fileio import atomic_write_csv

__all__ = ["EpochLines", "MetricsHistory", "history_values", "read_history"]

log = logging.getLogger(__name__)


def read_history(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` (an empty list when the file does not exist).

    Raises:
        RunFolderError: the file is not a metrics history (no ``epoch`` column).
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            raise RunFolderError(f"{path}: not a metrics history (no 'epoch' column)")
        return list(reader)


def history_values(rows: Sequence[Mapping[str, Any]], name: str) -> list[tuple[int, float | None]]:
    """``(epoch, value)`` of column ``name`` per row of a metrics history (the rows of
    :func:`read_history`, or the history a study's ledger keeps); ``None`` where the row has
    no value (an epoch without validation)."""
    return [(int(float(r["epoch"])), float(r[name]) if r.get(name) not in (None, "") else None) for r in rows]


class MetricsHistory(Callback):
    """Append ``epoch, step, train_loss, val_loss, <metric>, seconds`` per epoch to ``path``.

    Args:
        path: the CSV file (``<run>/logs/metrics.csv``).
        metric: the validation metric column (``val_dice`` or ``val_ssim``).
    """

    def __init__(self, path: str | Path, metric: str) -> None:
        self.path = Path(path)
        self.columns = ("epoch", "step", "train_loss", "val_loss", metric, "seconds")
        self.rows: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._validated = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = int(trainer.current_epoch)  # restored from the checkpoint on resume (before this hook), else 0
        old = read_history(self.path)
        self.rows = [r for r in old if r.get("epoch", "") != "" and int(float(r["epoch"])) < start]
        if len(self.rows) < len(old):
            log.info("%s: dropping %d row(s) of epochs that are trained again", self.path, len(old) - len(self.rows))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._validated = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
        for name in self.columns[2:-1]:
            value = metrics.get(name) if name == "train_loss" or self._validated else None
            row[name] = "" if value is None else float(value)
        row["seconds"] = round(time.perf_counter() - self._t0, 3)
        self.rows.append(row)
        atomic_write_csv(self.path, self.rows, self.columns)


class EpochLines(ProgressBar):
    """Training's progress as one line per epoch on standard output (Lightning's progress bar
    when the output is no terminal)::

        train fpn-w0.25 scratch 10% seed 0: epoch 3/15  train_loss 0.2710  val_loss 0.3012  val_dice 0.9720  (92.1 s)

    Args:
        label: what is trained (the run's label).
        epochs: the epochs of the whole run.
        stream: where the lines go (standard output when not given).
    """

    def __init__(self, label: str, epochs: int, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.label, self.epochs = label, epochs
        self._stream = stream
        self._enabled = True
        self._t0 = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero or trainer.sanity_checking:
            return
        numbers = "  ".join(
            f"{name} {float(value):.4f}"
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(("train_", "val_")) and value.numel() == 1
        )
        line = (
            f"{self.label}: epoch {trainer.current_epoch + 1}/{self.epochs}  {numbers}  "
            f"({time.perf_counter() - self._t0:.1f} s)"
        )
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()
