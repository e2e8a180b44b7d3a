"""Budgets set by convergence: stop a run once its validation metric has stopped improving.

A run with ``patience`` in its config stops when its validation metric (higher is better)
has not improved by at least ``min_delta`` for ``patience`` validations in a row, once it has
trained ``min_epochs`` epochs, and after ``epochs`` epochs at the latest. Without
``patience`` it trains all ``epochs`` (the paper's fixed budget).

A run that has not started is not on a plateau: while every validation gives exactly the
value of the first (within :data:`UNMOVED`), as a network whose output lies below the
threshold everywhere does (empty masks score the same whatever it learns meanwhile), the
counter waits. The FPN pre-trained on SLO showed why: at 5 % labels its validation Dice stayed
at 0.400 for 10 epochs while its training loss fell, then rose to 0.94 by epoch 12 — the rule
without this stopped it after epoch 11, empty (docs/phantom-study/slo-budget/report.md, docs/study.md).

The counter is part of the run's checkpoints (Lightning stores the callback's state), so a
killed run resumes it where the last epoch left it, and a run killed after it had decided
to stop stops again at once. ``done.json`` records how the run ended (:data:`PLATEAU` or
:data:`MAX_EPOCHS`) and the epochs it ran.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import Callback

from enface.config import RunConfig
from enface.engine.history import history_values, read_history
from enface.errors import RunFolderError

__all__ = [
    "MAX_EPOCHS",
    "PLATEAU",
    "UNMOVED",
    "PlateauStop",
    "check_finished_run",
    "how_stopped",
    "plateau_stop",
    "replay",
]

log = logging.getLogger(__name__)

PLATEAU, MAX_EPOCHS = "plateau", "max_epochs"
"""How a run ended: its metric stopped improving, or it used its whole budget of epochs."""
UNMOVED = 1e-6
"""Largest difference from the first validation value of a metric that has not moved yet."""


class PlateauStop(Callback):
    """Stop training when the validation metric has stopped improving.

    Args:
        metric: the validation metric (higher is better), e.g. ``val_dice``.
        patience: validations without an improvement of at least ``min_delta`` before stopping.
        min_delta: the smallest gain over the best value so far that counts as an improvement.
        min_epochs: epochs trained before a stop is allowed.

    Attributes:
        best: the best value so far (None before the first validation).
        first: the first finite value (None before it).
        moved: whether a value has differed from the first (the counter runs only once it has).
        wait: validations since the last improvement (once the metric has moved).
        stopped_epoch: the epoch after which the run stopped (None while it runs on).
    """

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0, min_epochs: int = 1) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.metric = metric
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.min_epochs = int(min_epochs)
        self.best: float | None = None
        self.first: float | None = None
        self.moved = False
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._validated = False

    @property
    def state_key(self) -> str:
        return f"PlateauStop[{self.metric}]"

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "first": self.first,
            "moved": self.moved,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.wait = int(state_dict["wait"])
        self.stopped_epoch = state_dict["stopped_epoch"]
        # a checkpoint written before the counter waited for a start counts as started
        self.first = state_dict.get("first", self.best)
        self.moved = bool(state_dict.get("moved", True))

    def update(self, value: float, epoch: int) -> bool:
        """Take one validation's value (after epoch ``epoch``, 0-based); whether to stop now."""
        if not math.isfinite(value):
            self.moved = True  # a broken validation is no start to wait for
        elif self.first is None:
            self.first = value
        elif abs(value - self.first) > UNMOVED:
            self.moved = True
        if math.isfinite(value) and (self.best is None or value > self.best + self.min_delta):
            self.best, self.wait = value, 0
        elif self.moved:
            self.wait += 1
        return self.wait >= self.patience and epoch + 1 >= self.min_epochs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_epoch is not None:  # resumed from the checkpoint of the epoch it stopped after
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the epoch's validation (Lightning validates before this hook, and writes the
        epoch's checkpoints after it, so they hold the updated counter)."""
        if not self._validated:
            return
        self._validated = False
        value = trainer.callback_metrics.get(self.metric)
        stop = self.update(float(value) if value is not None else math.nan, int(trainer.current_epoch))
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            self.stopped_epoch = int(trainer.current_epoch)
            trainer.should_stop = True
            log.info(
                "%s has not improved by %g for %d validations (best %.4f): stopping after epoch %d",
                self.metric,
                self.min_delta,
                self.wait,
                self.best if self.best is not None else math.nan,
                trainer.current_epoch,
            )


def plateau_stop(config: RunConfig, metric: str) -> list[Callback]:
    """A run's :class:`PlateauStop` as its config sets it (``patience``), else none: a fixed budget."""
    if config.patience is None:
        return []
    given: dict[str, Any] = {"min_delta": config.min_delta, "min_epochs": config.min_epochs}
    return [PlateauStop(metric, config.patience, **{k: v for k, v in given.items() if v is not None})]


def replay(rule: PlateauStop, history: Iterable[tuple[int, float | None]]) -> int | None:
    """The epochs a run with this validation history trains under ``rule``: the number of the
    epoch after which the rule stops it, or None where it never stops (it runs to ``epochs``).

    Args:
        rule: a fresh :class:`PlateauStop` (it is updated in place).
        history: ``(epoch, value)`` per trained epoch, 0-based epochs in order; ``None`` for an
            epoch without validation, which counts nothing (as in training).
    """
    for epoch, value in history:
        if value is not None and rule.update(float(value), int(epoch)):
            return int(epoch) + 1
    return None


def check_finished_run(config: RunConfig, metric: str, folder: Path, summary: Mapping[str, Any]) -> None:
    """A finished run is reused only where the current rule, replayed on its own validation
    history (``logs/metrics.csv``), stops it where it stopped (``done.json``: ``summary``): the
    rule is not part of a run's identity, so a folder trained under an earlier rule would
    otherwise stand for a run it is not.

    Raises:
        RunFolderError: the rule stops the run elsewhere (both epochs named).
    """
    rules = plateau_stop(config, metric)
    if not rules:  # a fixed budget: its epochs are part of the identity
        return
    history = history_values(read_history(folder / "logs" / "metrics.csv"), metric)
    ran = int(summary.get("epochs_run", summary.get("epochs", 0)))
    expected = ran if summary.get("stopped") == PLATEAU else None
    stop = replay(cast(PlateauStop, rules[0]), history)
    if stop != expected:
        now = f"stops it after epoch {stop}" if stop is not None else "would not have stopped it yet"
        raise RunFolderError(
            f"{folder}: this finished run ran {ran} epochs ({summary.get('stopped')}), but the current "
            f"plateau rule {now}: it was trained under another rule; remove the folder to train it again"
        )


def how_stopped(callbacks: Iterable[Callback]) -> str:
    """:data:`PLATEAU` when a :class:`PlateauStop` among a finished run's callbacks stopped it,
    else :data:`MAX_EPOCHS`."""
    stopped = any(isinstance(c, PlateauStop) and c.stopped_epoch is not None for c in callbacks)
    return PLATEAU if stopped else MAX_EPOCHS
