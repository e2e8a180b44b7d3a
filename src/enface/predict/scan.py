"""One scan of ``enface predict``: loaded, through the ensemble, its folder written, its result.

:func:`attempt` is what every way of going through the batch (:mod:`enface.predict.pipeline`)
does with a scan: a scan that cannot be read or predicted, or runs out of memory, becomes a
failed :class:`ScanResult` with its reason and kind; anything else (a bug) is raised. Each
result carries the seconds of the scan's stages (:data:`STAGES`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from enface.data.predictions import SUMMARY_COLUMNS, write_scan_outputs
from enface.data.scan_case import STEPS
from enface.engine.inference import EnsembleOutput
from enface.engine.predictor import Predictor, is_out_of_memory
from enface.errors import EnfaceError, failure
from enface.predict.dicom_seg import dicom_outputs
from enface.predict.inputs import PredictInput, PreparedScan
from enface.predict.options import PredictOptions
from enface.predict.output import OutputFolder
from enface.targets import binary
from enface.viz import scan_overlay

__all__ = ["NOT_REACHED", "OUT_OF_MEMORY", "STAGES", "ScanResult", "attempt", "not_reached"]

OUT_OF_MEMORY = "out of memory"
"""The kind of a scan that ran out of memory (the batch goes on)."""

NOT_REACHED = "not predicted"
"""The kind of the scans a full disk kept the batch from reaching."""

STAGES = ("read", *STEPS, "inference", "write")
"""The stages of a scan, timed in :attr:`ScanResult.seconds`: reading the file (or case),
the BM, flattening, the en-face images (exports only: :data:`enface.data.scan_case.STEPS`),
the ensemble (z-score included), the outputs (overlay and files)."""


@dataclass
class ScanResult:
    """The outcome for one scan (one row of ``summary.csv``).

    Attributes:
        kind: ``"ok"``, or what kind of failure (``"error"``, :data:`OUT_OF_MEMORY`,
            :data:`~enface.errors.DISK_FULL`, a reader's kind such as ``"line scan"``).
        seconds: wall seconds of the scan's stages (:data:`STAGES`) that ran.
    """

    scan_id: str
    source: str
    status: str
    area_mm2: float | None = None
    n_pixels: int | None = None
    mean_uncertainty_in_mask: float | None = None
    reason: str = ""
    out_dir: Path | None = None
    kind: str = "ok"
    seconds: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The ``summary.csv`` row (empty cells for missing values)."""
        out: dict[str, Any] = {}
        for c in SUMMARY_COLUMNS:
            v = getattr(self, c)
            out[c] = (
                ""
                if v is None or (isinstance(v, float) and math.isnan(v))
                else (f"{v:.6g}" if isinstance(v, float) else v)
            )
        return out


def _write_outputs(
    folder: OutputFolder,
    scan: PreparedScan,
    result: EnsembleOutput,
    predictor: Predictor,
    item: PredictInput,
    options: PredictOptions,
) -> ScanResult:
    threshold = options.threshold
    prob, std = result.mean[0], result.std[0]
    mask = binary(prob, threshold)
    n = int(mask.sum())
    px_area = float(scan.spacing[0]) * float(scan.spacing[1])
    area = n * px_area
    member_areas = [float(binary(m[0], threshold).sum()) * px_area for m in result.members]
    mean_unc = float(std[mask].mean()) if n else math.nan
    overlay = scan_overlay(scan.volumes[0], mask, scan.spacing[:2], scan.slo)  # before anything is written
    record = {
        "scan_id": item.scan_id,
        "source": item.source,
        "task": predictor.task,
        "area_mm2": area,
        "member_areas_mm2": member_areas,
        "n_pixels": n,
        "mean_uncertainty_in_mask": None if math.isnan(mean_unc) else mean_unc,
        "threshold": threshold,
        "shape": [int(s) for s in scan.volumes.shape[1:]],
        "spacing": [float(s) for s in scan.spacing],
        **{k: scan.meta.get(k) for k in ("patient_id", "eye", "visit", "visit_date")},
        "checkpoints": [str(p) for p in predictor.checkpoints],
        "precision": predictor.precision,
        "grid": {"orientation": "SLO: row 0 = topmost B-scan on the SLO", **scan.flips},
        "notes": scan.notes,
    }
    with folder.scan_folder(item.scan_id) as out:  # renamed into place once complete
        if options.dicom_seg:  # the mask as a DICOM Segmentation into the scan's study
            model = str(predictor.ensemble.infos[0]["model"]["name"])
            files, notes = dicom_outputs(out, mask, scan.volumes[0], scan.spacing, scan.meta.get("dicom"), model)
            record["dicom_files"], record["notes"] = files, scan.notes + notes
        write_scan_outputs(out, mask, prob, std, overlay, record)
    return ScanResult(item.scan_id, item.source, "ok", area, n, mean_unc, out_dir=folder.out / item.scan_id)


def _predict_one(
    item: PredictInput,
    load: Callable[[], PreparedScan],
    predictor: Predictor,
    folder: OutputFolder,
    options: PredictOptions,
) -> tuple[ScanResult, list[str]]:
    start = time.perf_counter()
    scan = load()
    seconds = dict(scan.seconds) or {"read": time.perf_counter() - start}
    scan.notes += predictor.check_input(scan.volumes)
    start = time.perf_counter()
    result = predictor(scan.volumes)
    seconds["inference"] = time.perf_counter() - start
    start = time.perf_counter()
    res = _write_outputs(folder, scan, result, predictor, item, options)
    seconds["write"] = time.perf_counter() - start
    res.seconds = seconds
    return res, scan.notes


def _failed(e: BaseException, item: PredictInput, folder: OutputFolder, device: str) -> ScanResult:
    """The failed result of a scan: its reason (its source left out) and kind."""
    if is_out_of_memory(e):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        reason, kind = (
            f"out of memory on {device} (the scan is too large for it; the other scans still run)",
            OUT_OF_MEMORY,
        )
    else:
        reason, kind = failure(e, item.source)
    if folder.overwrite and (folder.out / item.scan_id).is_dir():
        reason += f" (the earlier prediction in {folder.out / item.scan_id} was left as it was)"
    return ScanResult(item.scan_id, item.source, "failed", reason=reason, kind=kind)


def attempt(
    item: PredictInput,
    load: Callable[[], PreparedScan],
    predictor: Predictor,
    folder: OutputFolder,
    options: PredictOptions,
) -> tuple[ScanResult, list[str]]:
    """Predict one scan (loaded by ``load``) and write its folder: its result and notes.

    A scan that cannot be read or predicted, runs out of memory or meets a full disk is a
    failed result (the batch decides what a full disk stops); a bug is raised.
    """
    try:
        return _predict_one(item, load, predictor, folder, options)
    except (EnfaceError, ValueError, OSError, MemoryError, RuntimeError) as e:  # a bad scan must not stop the batch
        if isinstance(e, RuntimeError) and not is_out_of_memory(e):
            raise  # a bug: it surfaces
        return _failed(e, item, folder, options.device), []


def not_reached(items: list[PredictInput]) -> list[ScanResult]:
    """The results of the scans a full disk kept the batch from reaching."""
    reason = "not predicted: the disk is full"
    return [ScanResult(it.scan_id, it.source, "failed", reason=reason, kind=NOT_REACHED) for it in items]
