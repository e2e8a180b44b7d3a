"""The output folder of ``enface predict``: its file names, one scan's writer, its readers.

Written by :mod:`enface.predict`; read back by ``enface progression``
(:mod:`enface.progression.sources`) and ``enface review`` (:mod:`enface.review.predictions`).
No other module names these files::

    <out>/
      summary.csv          one row per scan (SUMMARY_COLUMNS), failed ones with their reason
      <scan id>/
        mask.png           the binary prediction (probability >= threshold), 0/255
        probability.npy    float32 (H, W) mean probability of the ensemble
        probability.png    16-bit, p * 65535
        uncertainty.npy    float32 (H, W) standard deviation of the members' probabilities
        uncertainty.png    16-bit, std / 0.5 * 65535 (0.5: the largest std of probabilities)
        overlay.png        the mask over an en-face projection of the OCT (and the SLO)
        prediction.json    the record: scan_id, source, task, area_mm2, member_areas_mm2,
                           n_pixels, mean_uncertainty_in_mask, threshold, shape, spacing,
                           patient_id, eye, visit, visit_date, checkpoints, precision
                           (bf16 or 32), grid, notes
                           (and dicom_files with --dicom-seg)
        enface.dcm         --dicom-seg, a DICOM scan: the en-face image (Secondary Capture)
        seg.dcm            --dicom-seg, a DICOM scan: the mask as a DICOM Segmentation
    timings.csv            --timings: seconds of each scan's stages (one row per scan)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError
from enface.fileio import (
    atomic_save_npy,
    atomic_save_png,
    atomic_write_csv,
    atomic_write_json,
    load_npy,
    path_under,
    read_json_object,
)
from enface.io.images import read_mask

__all__ = [
    "MAPS",
    "MASK_FILE",
    "MAX_STD",
    "RECORD_FILE",
    "SUMMARY_COLUMNS",
    "SUMMARY_FILE",
    "TIMINGS_FILE",
    "PredictionRecord",
    "read_record",
    "read_summary",
    "write_scan_outputs",
    "write_timings",
]

SUMMARY_FILE = "summary.csv"
TIMINGS_FILE = "timings.csv"
MASK_FILE = "mask.png"
RECORD_FILE = "prediction.json"
OVERLAY_FILE = "overlay.png"
MAPS: tuple[str, ...] = ("probability", "uncertainty")
"""The maps of a scan, each as ``<name>.npy`` (float32) and ``<name>.png`` (16-bit)."""

MAX_STD = 0.5
"""The largest standard deviation of probabilities: ``uncertainty.png`` spans 0 .. MAX_STD."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "scan_id",
    "source",
    "status",
    "area_mm2",
    "n_pixels",
    "mean_uncertainty_in_mask",
    "reason",
)
"""Columns of ``summary.csv``."""


def write_scan_outputs(
    folder: Path,
    mask: np.ndarray,
    probability: np.ndarray,
    uncertainty: np.ndarray,
    overlay: np.ndarray,
    record: Mapping[str, Any],
) -> None:
    """Write one scan's files into ``folder`` (each atomically).

    Args:
        folder: the scan's folder (``predict`` writes a temporary one and renames it).
        mask: ``(H, W)`` bool prediction.
        probability: ``(H, W)`` mean probability.
        uncertainty: ``(H, W)`` standard deviation of the members' probabilities.
        overlay: ``(h, w, 3)`` uint8 figure.
        record: what ``prediction.json`` holds.
    """
    atomic_save_png(folder / MASK_FILE, mask.astype(np.uint8) * 255)
    for name, values, top in (("probability", probability, 1.0), ("uncertainty", uncertainty, MAX_STD)):
        atomic_save_npy(folder / f"{name}.npy", values.astype(np.float32))
        atomic_save_png(folder / f"{name}.png", np.round(np.clip(values / top, 0, 1) * 65535).astype(np.uint16))
    atomic_save_png(folder / OVERLAY_FILE, overlay)
    atomic_write_json(folder / RECORD_FILE, dict(record))


def write_timings(out: Path, scans: Sequence[tuple[str, str, Mapping[str, float]]], stages: Sequence[str]) -> Path:
    """Write ``timings.csv``: per scan its id, status, the wall seconds of each of ``stages``
    (empty where the stage did not run) and their total.

    Args:
        out: the output folder.
        scans: ``(scan_id, status, {stage: seconds})`` per scan.
        stages: the column order of the stages.
    """
    rows = [
        {
            "scan_id": sid,
            "status": status,
            **{k: round(float(v), 4) for k, v in sec.items()},
            "total": round(sum(float(v) for v in sec.values()), 4),
        }
        for sid, status, sec in scans
    ]
    return atomic_write_csv(out / TIMINGS_FILE, rows, ["scan_id", "status", *stages, "total"])


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of a ``summary.csv``.

    Raises:
        DatasetError: missing, unreadable, without the ``scan_id`` and ``status`` columns, or
            listing a scan twice.
    """
    if not path.is_file():
        raise DatasetError(f"file not found (is {path.parent} an output folder of `enface predict`?)", path=path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            missing = {"scan_id", "status"} - set(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"unreadable ({e})", path=path) from None
    if missing:
        raise DatasetError(
            f"not a summary of `enface predict` (missing column(s) {', '.join(sorted(missing))})", path=path
        )
    ids = [r["scan_id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DatasetError(f"scan id(s) listed twice: {', '.join(dup)}", path=path)
    return rows


def _finite_areas(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a >= 0 for a in values
    )


@dataclass(frozen=True)
class PredictionRecord:
    """One scan's ``prediction.json``, checked, with its folder.

    Attributes:
        folder: ``<out>/<scan id>/``.
        info: the whole record.
        member_areas_mm2: each ensemble member's area (empty when not recorded).
    """

    folder: Path
    info: dict[str, Any]
    member_areas_mm2: tuple[float, ...]

    @property
    def path(self) -> Path:
        """The ``prediction.json`` file."""
        return self.folder / RECORD_FILE

    def spacing(self) -> tuple[float, float]:
        """``(sh, sw)`` in mm.

        Raises:
            DatasetError: missing or not positive numbers.
        """
        value = self.info.get("spacing")
        try:
            sp = [float(s) for s in value]  # type: ignore[union-attr]
            if len(sp) < 2 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise ValueError
        except (TypeError, ValueError):
            raise DatasetError(
                f"'spacing' must list the positive voxel spacing in mm, got {value!r}", path=self.path
            ) from None
        return sp[0], sp[1]

    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the maps.

        Raises:
            DatasetError: missing or not whole numbers.
        """
        shape = self.info.get("shape")
        if not (isinstance(shape, list) and len(shape) >= 2 and all(isinstance(s, int) for s in shape[:2])):
            raise DatasetError("missing or invalid 'shape'", path=self.path)
        return int(shape[0]), int(shape[1])

    def load_mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The predicted mask ``(H, W)`` uint8 {0, 1} (of ``shape`` when given)."""
        mask = read_mask(path_under(self.folder, MASK_FILE))
        if shape is not None and mask.shape != shape:
            raise DatasetError(f"shape {mask.shape}, expected {shape}", path=self.folder / MASK_FILE)
        return mask

    def load_map(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """``probability`` or ``uncertainty`` as a float32 ``(H, W)`` array of ``shape``."""
        if name not in MAPS:
            raise ValueError(f"no map {name!r} (maps: {', '.join(MAPS)})")
        arr = np.asarray(load_npy(path_under(self.folder, f"{name}.npy")), dtype=np.float32)
        if arr.shape != shape:
            raise DatasetError(f"shape {arr.shape}, expected {shape}", path=self.folder / f"{name}.npy")
        return arr


def read_record(folder: Path) -> PredictionRecord:
    """A scan folder's ``prediction.json``.

    Raises:
        DatasetError: missing, not a JSON object, or ``member_areas_mm2`` not a list of areas.
    """
    info = read_json_object(folder / RECORD_FILE)
    members = info.get("member_areas_mm2") or []
    if not _finite_areas(members):
        raise DatasetError(
            f"'member_areas_mm2' must be a list of areas in mm², got {members!r}", path=folder / RECORD_FILE
        )
    return PredictionRecord(folder, info, tuple(float(a) for a in members))
