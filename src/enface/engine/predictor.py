"""A segmentation ensemble with the preparation its training data had (what ``predict`` applies).

:class:`Predictor` loads a checkpoint or a run's top-k ensemble, refuses what is not a
single-output segmentation model, settles the depth and window that device exports are
prepared with (the training dataset's, unless told otherwise) and predicts one scan.
:func:`is_out_of_memory` tells a failed allocation from other errors of a forward pass.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from enface.config import FAST_DEFAULT, INFERENCE_PRECISION_DEFAULT
from enface.data.normalize import zscore_per_bscan
from enface.data.preprocess import FlattenParams
from enface.engine.inference import Ensemble, EnsembleOutput, depth_note, training_preparation
from enface.errors import CheckpointError

__all__ = ["Predictor", "is_out_of_memory"]

_UNTYPED_OOM: tuple[str, ...] = ("can't allocate memory", "out of memory")
"""What torch's CPU allocator and its MPS backend say when an allocation fails (a plain RuntimeError)."""

log = logging.getLogger(__name__)


class Predictor:
    """A segmentation ensemble with the preparation its training data had.

    Args:
        ensemble: the checkpoints (all of task ``segment``, one output channel).
        flatten: flattening window and depth applied to device exports.

    Raises:
        CheckpointError: a member is not a single-output segmentation checkpoint.
    """

    def __init__(self, ensemble: Ensemble, flatten: FlattenParams) -> None:
        if ensemble.task != "segment":
            info = ensemble.infos[0]
            target = (info.get("config") or {}).get("target")
            task = ensemble.task
            what = (
                f"a {task} checkpoint" + (f" (target {target!r})" if target else "")
                if task
                else "a checkpoint without a task"
            )
            raise CheckpointError(
                f"{ensemble.paths[0]}: {what}; predict needs a segmentation model (a checkpoint of `enface train`)"
            )
        if ensemble.out_channels != 1:
            raise CheckpointError(
                f"{ensemble.paths[0]}: predict supports single-output models, this one has "
                f"{ensemble.out_channels} output channels"
            )
        self.ensemble = ensemble
        self.flatten = flatten
        self.task = str(ensemble.config.get("target") or "lesion")

    @property
    def channels(self) -> tuple[str, ...]:
        return self.ensemble.channels

    @property
    def in_channels(self) -> int:
        return self.ensemble.in_channels

    @property
    def fixed_depth(self) -> int | None:
        return self.ensemble.fixed_depth

    @property
    def precision(self) -> str:
        """What the members compute in, ``"bf16"`` or ``"32"``."""
        return self.ensemble.precision

    @property
    def checkpoints(self) -> list[Path]:
        return list(self.ensemble.paths)

    @classmethod
    def load(
        cls,
        model_or_run: str | os.PathLike,
        top_k: int = 5,
        device: str = "cpu",
        depth: int | None = None,
        window_mm: tuple[float, float] | None = None,
        fast: bool = FAST_DEFAULT,
        precision: str = INFERENCE_PRECISION_DEFAULT,
    ) -> Predictor:
        """Load a checkpoint file or the top-k checkpoints of a run folder.

        The depth of prepared exports is, in order: ``depth``; the fixed depth of the
        network (ReSensNet); the training dataset's preparation depth (its ``dataset.json``,
        else its first case); 128. The window is ``window_mm``, else the training dataset's,
        else the ``enface prepare`` default. ``fast`` and ``precision``: how the members run
        (:class:`~enface.engine.inference.Ensemble`).

        Raises:
            CheckpointError: missing or unusable checkpoint(s), not a segmentation model.
            ValueError: ``depth`` contradicts the network's fixed depth.
        """
        path = Path(model_or_run)
        if path.is_dir():
            ensemble = Ensemble.from_run(path, top_k, device, fast, precision)
        elif path.is_file():
            ensemble = Ensemble([path], device, fast, precision)
        else:
            raise CheckpointError(f"{path}: no such checkpoint file or run folder")
        predictor = cls(ensemble, FlattenParams())
        fixed = ensemble.fixed_depth
        if depth is not None and fixed is not None and depth != fixed:
            raise ValueError(f"--depth {depth} contradicts the model, which only accepts depth {fixed}")
        train_depth, train_window, where = training_preparation(ensemble.config)
        chosen = depth or fixed or train_depth
        if chosen is None:
            chosen = FlattenParams().depth
            log.warning("training depth unknown (%s): exports are resampled to depth %d (use --depth)", where, chosen)
        elif depth is None and fixed is None:
            log.info("depth %d (from %s)", chosen, where)
        above, below = window_mm or train_window or (FlattenParams().above_mm, FlattenParams().below_mm)
        predictor.flatten = FlattenParams(above_mm=above, below_mm=below, depth=int(chosen))
        return predictor

    def check_input(self, volumes: np.ndarray) -> list[str]:
        """Check a ``(C, H, W, D)`` input against the network; returns notes.

        Raises:
            DatasetError: wrong number of channels, depth other than a fixed-depth network's,
                depth below the network's minimum.
        """
        self.ensemble.check_input(volumes)
        note = depth_note(volumes.shape[-1], self.flatten.depth)
        return [note] if note else []

    def __call__(self, volumes: np.ndarray) -> EnsembleOutput:
        """Predict one scan.

        Args:
            volumes: ``(C, H, W, D)`` input channels, not normalised.

        Returns:
            The members' ``(M, 1, H, W)`` probabilities (``.mean``, ``.std`` give the
            prediction and its uncertainty).
        """
        x = np.stack([zscore_per_bscan(np.asarray(v, dtype=np.float32)) for v in volumes])
        return self.ensemble.run(torch.from_numpy(x)[None])


def is_out_of_memory(e: BaseException) -> bool:
    """Whether an error of a forward pass is a failed allocation: ``MemoryError``,
    ``torch.OutOfMemoryError`` (CUDA), or a failure of torch's CPU allocator or MPS backend.
    Those last two are plain ``RuntimeError`` that torch gives no type of their own, so their
    text is the only mark: this is the one place that reads an error's text, and only torch's."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(mark in str(e) for mark in _UNTYPED_OOM)
