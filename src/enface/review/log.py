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
mask's version and replaces the file. The log is never opened through a symbolic link
(``O_NOFOLLOW``) and must be a regular file: a log that links out of the dataset is neither
read nor written.

The page asks for the latest save and decision per case on every case list, case open and
export; the log is read once, then only what was appended since (by this server or another
one on the same dataset), into an index of the latest entry per (event, task, grader, case):
a request's time does not grow with the log. A log that was rewritten rather than appended
to (shorter, another file, other bytes where the last read ended) is read again from the start.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from enface.errors import DatasetError, UnsafePathError

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


_TAIL_BYTES = 64  # bytes before the read position compared on each refresh: was the log rewritten?
_Key = tuple[str, str, str]  # (event, task, grader)


class AnnotationLog:
    """The log of one dataset, and an index of its latest entries.

    Args:
        dataset: the dataset folder; the log is ``<dataset>/annotations.jsonl``.

    Attributes:
        lines_read: non-empty lines parsed so far (each line once, unless the log is rewritten).
    """

    def __init__(self, dataset: str | Path) -> None:
        self.path = Path(dataset) / LOG_NAME
        self.lines_read = 0
        self._lock = threading.Lock()
        self._reset(None)

    def check(self) -> None:
        """Refuse a log that is a symbolic link or not a regular file.

        Raises:
            DatasetError: naming the file and what it is.
        """
        if self.path.is_symlink():
            raise DatasetError(
                f"{self.path}: a symbolic link (to {os.readlink(self.path)}); the annotation log must be a "
                "regular file of the dataset: nothing is read or written through a link"
            )
        if os.path.lexists(self.path) and not self.path.is_file():
            raise DatasetError(f"{self.path}: not a regular file; the annotation log must be one")

    def _open(self, flags: int) -> int:
        """``os.open`` of the log that never follows a link and accepts only a regular file."""
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePathError(
                    f"{LOG_NAME} of the dataset is a symbolic link: nothing is read or written through it ({self.path})"
                ) from None
            if e.errno in (errno.EISDIR, errno.ENXIO):
                raise DatasetError(f"{self.path}: not a regular file; the annotation log must be one") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DatasetError(f"{self.path}: not a regular file; the annotation log must be one")
        return fd

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """Hold the log's exclusive lock (across processes); yields its file descriptor (append mode)."""
        fd = self._open(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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

    # ------------------------------------------------------------------ the index

    def load(self) -> None:
        """Take in what was appended since the last read (all of it the first time): the server
        calls it when it starts, so its first request does not read a long log."""
        with self._lock:
            self._refresh()

    def _reset(self, file: tuple[int, int] | None) -> None:
        self._file = file
        self._offset = 0
        self._tail = b""
        self._line = 0
        self._seq = 0
        self._latest: dict[_Key, dict[str, tuple[int, dict[str, Any]]]] = {}

    def _refresh(self) -> None:
        """Take in what was appended since the last call (all of it the first time); hold ``_lock``."""
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            self._reset(None)
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            file = (st.st_dev, st.st_ino)
            tail_at = self._offset - len(self._tail)
            if file != self._file or st.st_size < self._offset or os.pread(fd, len(self._tail), tail_at) != self._tail:
                self._reset(file)
            if st.st_size == self._offset:
                return
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is taken next time
        for raw in data[:end].splitlines():
            self._take(raw)
        self._offset += end
        self._tail = (self._tail + data[:end])[-_TAIL_BYTES:]

    def _take(self, raw: bytes) -> None:
        self._line += 1
        if not raw.strip():
            return
        self.lines_read += 1
        try:
            entry = json.loads(raw.decode("utf-8", errors="replace"))
        except (json.JSONDecodeError, RecursionError):
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("case_id"), str):
            log.warning("%s:%d: not a log entry; skipped", self.path, self._line)
            return
        event, task, grader = entry.get("event"), entry.get("task"), entry.get("grader")
        if isinstance(event, str) and isinstance(task, str):
            self._seq += 1
            key = (event, task, grader if isinstance(grader, str) else "")
            self._latest.setdefault(key, {})[entry["case_id"]] = (self._seq, entry)

    def _matching(self, event: str, task: str) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
        """``(grader, case_id, sequence number, entry)`` of the latest entries of ``event`` and ``task``."""
        for (ev, t, grader), per_case in self._latest.items():
            if ev == event and t == task:
                for case_id, (seq, entry) in per_case.items():
                    yield grader, case_id, seq, entry

    def latest(self, event: str, grader: str | None, task: str) -> dict[str, dict[str, Any]]:
        """The latest entry of ``event`` per case, of ``grader`` (None: any) and ``task`` (do not modify)."""
        with self._lock:
            self._refresh()
            found: dict[str, tuple[int, dict[str, Any]]] = {}
            for g, case_id, seq, entry in self._matching(event, task):
                if (grader is None or g == grader) and seq > found.get(case_id, (0, {}))[0]:
                    found[case_id] = (seq, entry)
        return {case_id: entry for case_id, (_, entry) in found.items()}

    def review_rows(self, task: str) -> list[dict[str, Any]]:
        """Rows of the review export (:data:`REVIEW_COLUMNS`), sorted by case and grader."""
        with self._lock:
            self._refresh()
            decisions = {(c, g): e for g, c, _, e in self._matching("review", task)}
            saves = {(c, g): e for g, c, _, e in self._matching("save", task)}
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
