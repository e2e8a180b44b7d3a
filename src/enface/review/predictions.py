"""The output folder of ``enface predict`` read back for review, and a queue of ``enface select``.

``enface predict --out DIR`` writes, per scan, ``DIR/<scan id>/`` (its files and their
reader: :mod:`enface.data.predictions`); the maps are on the case's grid and in its
orientation. A scan predicted from a dataset case has the case's id, which is how a
prediction is matched to its case here.

``enface select`` writes a queue CSV with the columns ``rank, case_id, patient_id, eye,
visit, score, predicted_area_mm2, area_sd_mm2, strategy``; only ``case_id`` is required
here, the others are shown when present.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import QUEUE_COLUMNS
from enface.data.predictions import RECORD_FILE, PredictionRecord, read_record
from enface.errors import DatasetError, UnsafePathError
from enface.fileio import path_under

__all__ = ["QUEUE_COLUMNS", "Prediction", "PredictionFolder", "QueueEntry", "read_queue"]


@dataclass(frozen=True)
class Prediction:
    """What ``prediction.json`` says about one case.

    Attributes:
        record: the checked ``prediction.json`` (:mod:`enface.data.predictions`).
        area_mm2: predicted lesion area.
        area_sd_mm2: population SD of the ensemble members' areas (NaN with < 2 members).
        shape: ``(H, W)`` of the maps.
    """

    record: PredictionRecord
    area_mm2: float
    area_sd_mm2: float
    shape: tuple[int, int]

    @property
    def folder(self) -> Path:
        """``DIR/<case id>/``."""
        return self.record.folder

    def load_map(self, name: str) -> np.ndarray:
        """``probability`` or ``uncertainty`` as a float32 ``(H, W)`` array."""
        return self.record.load_map(name, self.shape)

    def load_mask(self) -> np.ndarray:
        """The predicted binary mask ``(H, W)`` uint8 {0, 1}."""
        return self.record.load_mask(self.shape)


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


class PredictionFolder:
    """The predictions of ``enface predict`` for the cases of one dataset.

    Args:
        root: the ``--out`` folder of ``enface predict``.
        task: the task under review; a prediction of another task is an error.
        case_ids: the dataset's cases; at least one must have a prediction.

    Raises:
        DatasetError: the folder is missing, holds no prediction of a case of the dataset,
            or a ``prediction.json`` is unreadable or of another task (naming the file).
    """

    def __init__(self, root: str | Path, task: str, case_ids: Collection[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: predictions folder not found")
        self._items: dict[str, Prediction] = {}
        for case_id in sorted(case_ids):
            try:
                folder = path_under(self.root, case_id)
            except UnsafePathError:
                continue
            if (folder / RECORD_FILE).is_file():
                self._items[case_id] = self._read(folder, task)
        if not self._items:
            raise DatasetError(
                f"{self.root}: no prediction of a case of this dataset (expected <case id>/prediction.json, "
                "as written by `enface predict DATASET`)"
            )

    @staticmethod
    def _read(folder: Path, task: str) -> Prediction:
        record = read_record(folder)
        info = record.info
        if info.get("task", task) != task:
            raise DatasetError(
                f"a prediction of task {info.get('task')!r}, not of {task!r} (give --task)", path=record.path
            )
        members = record.member_areas_mm2
        sd = float(np.std(members)) if len(members) > 1 else math.nan
        return Prediction(record, _number(info.get("area_mm2")), sd, record.shape())

    def get(self, case_id: str) -> Prediction | None:
        """The prediction of a case, or None."""
        return self._items.get(case_id)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class QueueEntry:
    """One row of a queue CSV: its rank and what ``enface select`` said about the case."""

    rank: int
    case_id: str
    score: float
    predicted_area_mm2: float
    area_sd_mm2: float
    strategy: str


def read_queue(path: str | Path, case_ids: Collection[str]) -> list[QueueEntry]:
    """Read a queue CSV (by column names), in rank order.

    Args:
        path: the CSV (``enface select``'s output or any CSV with a ``case_id`` column).
        case_ids: the dataset's cases; every queued case must be one of them.

    Raises:
        DatasetError: unreadable file, no ``case_id`` column, a case twice, or cases that
            are not in the dataset (listed).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "case_id" not in reader.fieldnames:
                raise DatasetError(f"{path}: no 'case_id' column (columns: {', '.join(reader.fieldnames or [])})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: unreadable queue ({e})") from None
    entries = []
    for i, row in enumerate(rows):
        rank = _number(row.get("rank"))
        entries.append(
            QueueEntry(
                rank=int(rank) if not math.isnan(rank) else i + 1,
                case_id=(row.get("case_id") or "").strip(),
                score=_number(row.get("score")),
                predicted_area_mm2=_number(row.get("predicted_area_mm2")),
                area_sd_mm2=_number(row.get("area_sd_mm2")),
                strategy=(row.get("strategy") or "").strip(),
            )
        )
    ids = [e.case_id for e in entries]
    unknown = sorted({c for c in ids if c not in case_ids})
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} queued case(s) not in the dataset: {', '.join(unknown[:8])}")
    twice = sorted({c for c in ids if ids.count(c) > 1})
    if twice:
        raise DatasetError(f"{path}: case(s) queued twice: {', '.join(twice[:8])}")
    return sorted(entries, key=lambda e: e.rank)
