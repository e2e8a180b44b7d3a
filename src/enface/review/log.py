"""``annotations.jsonl``: the dataset's record of what graders saved and decided.

One JSON object per line, appended, never rewritten. Every line has ``event``
(``save``, ``review`` or ``promote``), ``case_id``, ``grader``, ``task`` and ``time`` (ISO 8601,
UTC); a ``save`` adds ``seconds`` (time spent on the case since it was opened or last
saved), ``pixels_changed``, ``started_from`` (``empty``, ``prediction`` or ``saved``),
``area_mm2`` and ``version``; a ``review`` adds ``decision`` (``accept``, ``correct``,
``reject``), ``predicted_area_mm2`` and ``area_sd_mm2``.

Appends hold an exclusive ``flock`` on the log and write each line with one ``write`` on a
file opened for appending, so two servers on one dataset never interleave or tear lines.
The same lock is what :class:`enface.review.store.MaskStore` holds while it checks a
mask's version and replaces the file.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DECISIONS", "LOG_NAME", "REVIEW_COLUMNS", "AnnotationLog", "utc_now"]

log = logging.getLogger(__name__)

LOG_NAME = "annotations.jsonl"
"""File name of the log, at the top of the dataset folder."""

DECISIONS: tuple[str, ...] = ("accept", "correct", "reject")
"""Decisions a grader can record on a prediction."""

REVIEW_COLUMNS: tuple[str, ...] = (
    "case_id",
    "grader",
    "task",
    "decision",
    "time",
    "predicted_area_mm2",
    "area_sd_mm2",
    "saved_area_mm2",
    "saved_time",
)
"""Columns of the review export: the latest decision per (case, grader) and the latest saved mask's area."""


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class AnnotationLog:
    """The log of one dataset.

    Args:
        dataset: the dataset folder; the log is ``<dataset>/annotations.jsonl``.
    """

    def __init__(self, dataset: str | Path) -> None:
        self.path = Path(dataset) / LOG_NAME

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """Hold the log's exclusive lock (across processes); yields its file descriptor (append mode)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, entry: dict[str, Any], fd: int | None = None) -> dict[str, Any]:
        """Append one entry (``time`` added when missing); ``fd``: a descriptor from :meth:`locked`."""
        entry = {"time": utc_now(), **{k: _json_value(v) for k, v in entry.items()}}
        line = (json.dumps(entry, allow_nan=False, separators=(", ", ": ")) + "\n").encode("utf-8")
        if fd is not None:
            os.write(fd, line)
        else:
            with self.locked() as own:
                os.write(own, line)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every readable entry, in order; unreadable lines are skipped with a warning naming them."""
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    entry = None
                if not isinstance(entry, dict) or not isinstance(entry.get("case_id"), str):
                    log.warning("%s:%d: not a log entry; skipped", self.path, number)
                    continue
                out.append(entry)
        return out

    def latest(self, event: str, grader: str | None, task: str) -> dict[str, dict[str, Any]]:
        """The latest entry of ``event`` per case, of ``grader`` (None: any) and ``task``."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.entries():
            if e.get("event") == event and e.get("task") == task and (grader is None or e.get("grader") == grader):
                out[e["case_id"]] = e
        return out

    def review_rows(self, task: str) -> list[dict[str, Any]]:
        """Rows of the review export (:data:`REVIEW_COLUMNS`), sorted by case and grader."""
        decisions: dict[tuple[str, str], dict[str, Any]] = {}
        saves: dict[tuple[str, str], dict[str, Any]] = {}
        for e in self.entries():
            if e.get("task") != task:
                continue
            key = (e["case_id"], str(e.get("grader", "")))
            if e.get("event") == "review":
                decisions[key] = e
            elif e.get("event") == "save":
                saves[key] = e
        rows = []
        for key in sorted(decisions):
            d, s = decisions[key], saves.get(key, {})
            rows.append(
                {
                    **{c: d.get(c) for c in REVIEW_COLUMNS[:7]},
                    "saved_area_mm2": s.get("area_mm2"),
                    "saved_time": s.get("time"),
                }
            )
        return rows
