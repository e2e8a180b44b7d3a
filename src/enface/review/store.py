"""The grader's masks on disk: versioned, atomic writes of ``mask_<task>.<grader>.png``.

A mask's *version* is a short SHA-256 of its file (``"none"`` when absent). A save names
the version it started from; when the file changed since (another tab, another server on
the same dataset), the save is refused as a :class:`Conflict` carrying the current version,
and nothing is written. The check and the replacement happen under the lock of the
dataset's ``annotations.jsonl`` (:meth:`enface.review.log.AnnotationLog.locked`), and the
file is written to a temporary sibling and renamed over the old one, so a reader only ever
sees a whole mask.

The store writes nothing but this grader's mask files, in the format every reader of the
dataset folder takes as that grader's (``enface check``, ``evaluate``, ``progression
--grader``): an 8-bit grey PNG, 0 and 255, on the case's en-face grid and in its orientation
(row ``r`` = B-scan ``r`` of ``oct.npy``). :meth:`MaskStore.promote` is the one explicit
action that writes a reference ``mask_<task>.png``, and only where the case has none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enface.data.folder import mask_filename, read_dataset_info, write_dataset_info
from enface.errors import DatasetError
from enface.fileio import atomic_write_bytes, path_under
from enface.io.images import read_mask
from enface.review.log import AnnotationLog
from enface.review.render import png_bytes

__all__ = [
    "GRADER_RE",
    "STARTS",
    "Conflict",
    "MaskStore",
    "ReadOnly",
    "SaveResult",
    "UploadError",
    "file_version",
    "parse_mask_upload",
]

GRADER_RE = re.compile(r"^[A-Za-z0-9_-]+$")
"""Grader names, as ``mask_<task>.<grader>.png`` allows them."""

STARTS: tuple[str, ...] = ("empty", "prediction", "saved")
"""What an edit started from: an empty mask, the prediction, or this grader's saved mask."""


class Conflict(Exception):
    """The mask changed on disk since the client loaded it; ``current`` is its version now."""

    def __init__(self, what: str, current: str) -> None:
        super().__init__(f"{what} was saved elsewhere since this page loaded it (version {current})")
        self.current = current


class ReadOnly(Exception):
    """The server was started without ``--grader``, or the write is not allowed."""


class UploadError(Exception):
    """An uploaded mask is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def file_version(path: Path) -> str:
    """A short SHA-256 of the file's bytes, or ``"none"`` when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return "none"


def parse_mask_upload(body: bytes, content_type: str, shape: tuple[int, int]) -> np.ndarray:
    """An uploaded mask: ``H * W`` bytes of 0/1, row-major, as ``application/octet-stream``.

    Raises:
        UploadError: wrong type (415), wrong size (400) or values other than 0 and 1 (400).
    """
    if content_type.split(";")[0].strip().lower() != "application/octet-stream":
        raise UploadError(415, f"a mask is sent as application/octet-stream, not {content_type or 'no type'}")
    h, w = shape
    if len(body) != h * w:
        raise UploadError(400, f"a mask of this case is {h} x {w} = {h * w} bytes, got {len(body)}")
    mask = np.frombuffer(body, dtype=np.uint8).reshape(h, w)
    if mask.max(initial=0) > 1:
        raise UploadError(400, "a mask holds 0 and 1 only")
    return mask.copy()


@dataclass(frozen=True)
class SaveResult:
    """What a save wrote: the new version, the pixels that differ from the start, the area."""

    version: str
    pixels_changed: int
    area_mm2: float
    path: Path


class MaskStore:
    """Reads every mask of a case; writes only ``grader``'s (and a promoted reference).

    Args:
        log: the dataset's annotation log (its lock guards every write).
        task: the mask task, e.g. ``"ga"``.
        grader: the grader's name; None: read-only.

    Raises:
        ValueError: a grader name that ``mask_<task>.<grader>.png`` cannot hold.
    """

    def __init__(self, log: AnnotationLog, task: str, grader: str | None) -> None:
        if grader is not None and not GRADER_RE.match(grader):
            raise ValueError(f"grader name {grader!r}: use letters, digits, '_' and '-' only")
        self.log = log
        self.task = task
        self.grader = grader
        self.saved: list[Path] = []

    def path(self, case_dir: Path, grader: str | None) -> Path:
        """The mask file of ``grader`` (None: the reference) in a case folder, refusing links out of it."""
        return path_under(case_dir, mask_filename(self.task, grader))

    def version(self, case_dir: Path, grader: str | None) -> str:
        return file_version(self.path(case_dir, grader))

    def load(self, case_dir: Path, grader: str | None) -> np.ndarray | None:
        """The ``(H, W)`` {0, 1} mask of ``grader`` (None: the reference), or None when absent."""
        path = self.path(case_dir, grader)
        return read_mask(path) if path.is_file() else None

    def writer(self) -> str:
        """The grader who may write.

        Raises:
            ReadOnly: the store has no grader.
        """
        if self.grader is None:
            raise ReadOnly("read-only: start `enface review` with --grader NAME to save masks")
        return self.grader

    @staticmethod
    def _expect(path: Path, base_version: str) -> None:
        current = file_version(path)
        if current != base_version:
            raise Conflict(path.name, current)

    def save(
        self,
        case_dir: Path,
        mask: np.ndarray,
        base_version: str,
        spacing: tuple[float, float],
        start: np.ndarray | None = None,
        started_from: str = "empty",
        seconds: float = 0.0,
    ) -> SaveResult:
        """Write the grader's mask atomically if it is still at ``base_version``, and log it.

        Whatever is refused is refused before anything is created (the version is checked
        once before taking the log's lock, which creates the log, and again under it).

        Args:
            case_dir: the case folder.
            mask: ``(H, W)`` {0, 1} mask on the case's grid.
            base_version: the version the client loaded (``"none"``: it saw no file).
            spacing: ``(sh, sw)`` in mm, for the logged area.
            start: what the edit started from when there was no saved mask (the prediction),
                for ``pixels_changed``; default empty.
            started_from: one of :data:`STARTS`.
            seconds: time the grader spent on the case since opening or last saving it.

        Raises:
            ReadOnly: no grader. Conflict: the file is at another version. ValueError: ``started_from``.
        """
        grader = self.writer()
        if started_from not in STARTS:
            raise ValueError(f"started_from must be one of {', '.join(STARTS)}, got {started_from!r}")
        path = self.path(case_dir, grader)
        self._expect(path, base_version)
        data = png_bytes((np.asarray(mask) > 0).astype(np.uint8) * 255)
        with self.log.locked() as fd:
            self._expect(path, base_version)
            before = read_mask(path) if path.is_file() else start
            before = np.zeros_like(mask) if before is None else before
            atomic_write_bytes(path, data)
            changed = int(np.count_nonzero((before > 0) != (mask > 0)))
            area = float(np.count_nonzero(mask)) * spacing[0] * spacing[1]
            version = hashlib.sha256(data).hexdigest()[:16]
            self.log.append(
                {
                    "event": "save",
                    "case_id": case_dir.name,
                    "grader": grader,
                    "task": self.task,
                    "seconds": round(float(seconds), 1),
                    "pixels_changed": changed,
                    "started_from": started_from,
                    "area_mm2": round(area, 6),
                    "version": version,
                },
                fd,
            )
        if path not in self.saved:
            self.saved.append(path)
        return SaveResult(version, changed, area, path)

    def _promotable(self, source: Path, target: Path, base_version: str) -> str:
        if target.exists():
            raise ReadOnly(f"{target.name} exists: a reference mask is never replaced from here")
        current = file_version(source)
        if current == "none":
            raise ReadOnly(f"no saved {source.name} to promote: save first")
        if current != base_version:
            raise Conflict(source.name, current)
        return current

    def promote(self, case_dir: Path, dataset: Path, base_version: str) -> Path:
        """Copy the grader's saved mask to the case's reference ``mask_<task>.png`` (an explicit action).

        Only a case without a reference mask is promoted, so no reference is ever lost;
        the task is added to ``dataset.json`` when it is not declared yet.

        Raises:
            ReadOnly: no grader, no saved mask, or the case has a reference already.
            Conflict: the grader's mask is at another version than ``base_version``.
        """
        grader = self.writer()
        source, target = self.path(case_dir, grader), self.path(case_dir, None)
        self._promotable(source, target, base_version)
        with self.log.locked() as fd:
            current = self._promotable(source, target, base_version)
            self._declare_task(dataset)
            atomic_write_bytes(target, png_bytes(read_mask(source) * np.uint8(255)))
            entry = {"event": "promote", "case_id": case_dir.name, "grader": grader, "task": self.task}
            self.log.append({**entry, "version": current}, fd)
        self.saved.append(target)
        return target

    def _declare_task(self, dataset: Path) -> None:
        info = read_dataset_info(dataset)
        if self.task in info["tasks"]:
            return
        rest = {k: v for k, v in info.items() if k not in ("name", "modalities", "tasks", "spacing", "format_version")}
        if "spacing" not in info:
            raise DatasetError(f"{dataset / 'dataset.json'}: missing key 'spacing'")
        write_dataset_info(
            dataset, info["name"], info["modalities"], [*info["tasks"], self.task], info["spacing"], **rest
        )
