"""``enface predict``'s batch: each scan through the ensemble, its outputs written, the summary.

A scan that cannot be read or predicted, or runs out of memory, is recorded as failed with
its reason and the others still run; a full disk stops the batch with one message. The
files of the output folder are :mod:`enface.data.predictions`'; where it may lie, its lock
and an earlier run's outputs are :mod:`enface.predict.output`'s.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from enface.data.predictions import SUMMARY_COLUMNS, write_scan_outputs
from enface.engine.inference import EnsembleOutput
from enface.engine.predictor import Predictor, is_out_of_memory
from enface.errors import DISK_FULL, DatasetError, EnfaceError, failure, is_disk_full
from enface.predict.dicom_seg import dicom_outputs
from enface.predict.inputs import PredictInput, PreparedScan, find_inputs
from enface.predict.options import PredictOptions
from enface.predict.output import OutputFolder, check_out_placement
from enface.targets import binary
from enface.viz import scan_overlay

__all__ = ["OUT_OF_MEMORY", "PredictReport", "ScanResult", "predict"]

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out of memory"
"""The kind of a scan that ran out of memory (the batch goes on)."""

NOT_REACHED = "not predicted"
"""The kind of the scans a full disk kept the batch from reaching."""


@dataclass
class ScanResult:
    """The outcome for one scan (one row of ``summary.csv``).

    Attributes:
        kind: ``"ok"``, or what kind of failure (``"error"``, :data:`OUT_OF_MEMORY`,
            :data:`~enface.errors.DISK_FULL`, a reader's kind such as ``"line scan"``).
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


@dataclass
class PredictReport:
    """What :func:`predict` did.

    Attributes:
        out: the output folder.
        results: one :class:`ScanResult` per scan, in input order.
        summary_csv: path of ``summary.csv``.
    """

    out: Path
    results: list[ScanResult]
    summary_csv: Path

    @property
    def failed(self) -> list[ScanResult]:
        return [r for r in self.results if r.status != "ok"]

    @property
    def ok(self) -> bool:
        """Every scan was predicted."""
        return not self.failed

    def summary(self) -> str:
        """One line: counts and where the outputs are."""
        n_ok = len(self.results) - len(self.failed)
        return (
            f"predicted {n_ok} of {len(self.results)} scan(s) ({len(self.failed)} failed); "
            f"outputs in {self.out}/<scan id>/, summary {self.summary_csv}"
        )


# --------------------------------------------------------------------------- one scan


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
    item: PredictInput, predictor: Predictor, folder: OutputFolder, options: PredictOptions
) -> tuple[ScanResult, list[str]]:
    scan = item.load()
    scan.notes += predictor.check_input(scan.volumes)
    result = predictor(scan.volumes)
    return _write_outputs(folder, scan, result, predictor, item, options), scan.notes


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


# --------------------------------------------------------------------------- the batch


def _run_batch(
    items: list[PredictInput], predictor: Predictor, folder: OutputFolder, options: PredictOptions, progress: bool
) -> list[ScanResult]:
    """Predict every scan; a failing one is recorded and the others still run, except on a full
    disk: then the batch stops and the scans not reached are recorded as not predicted."""
    results: list[ScanResult] = []
    for i, item in enumerate(items, 1):
        try:
            res, notes = _predict_one(item, predictor, folder, options)
        except (EnfaceError, ValueError, OSError, MemoryError, RuntimeError) as e:  # a bad scan must not stop the batch
            if isinstance(e, RuntimeError) and not is_out_of_memory(e):
                raise  # a bug: it surfaces
            failed = _failed(e, item, folder, options.device)
            log.warning("[%d/%d] %s: failed: %s (%s)", i, len(items), item.scan_id, failed.reason, item.source)
            results.append(failed)
            if failed.kind == DISK_FULL:
                reason = "not predicted: the disk is full"
                results += [
                    ScanResult(it.scan_id, it.source, "failed", reason=reason, kind=NOT_REACHED) for it in items[i:]
                ]
                break
            continue
        for note in notes:
            log.warning("%s: %s", item.scan_id, note)
        if progress:
            unc = "" if res.n_pixels == 0 else f", mean uncertainty {res.mean_uncertainty_in_mask:.3f}"
            log.info("[%d/%d] %s: %.3f mm² (%d px)%s", i, len(items), item.scan_id, res.area_mm2, res.n_pixels, unc)
        results.append(res)
    return results


def _disk_full_error(folder: OutputFolder, results: list[ScanResult], summary: str) -> DatasetError:
    n_ok = sum(r.status == "ok" for r in results)
    first = next((r.scan_id for r in results if r.kind == DISK_FULL), None)
    return DatasetError(
        f"the disk is full{f' (while writing {first})' if first else ''}; {n_ok} of {len(results)} "
        f"scan(s) predicted, each complete, nothing of the others kept; summary.csv {summary}. Free space and "
        "run again (with --overwrite to redo the scans already predicted)",
        path=folder.out,
    )


def _write_summary(folder: OutputFolder, results: list[ScanResult]) -> Path:
    """Write ``summary.csv``; raise the one message of a full disk when the batch met one.

    Raises:
        DatasetError: a full disk (during the batch or now), or the file cannot be written.
    """
    full = any(r.kind == DISK_FULL for r in results)
    try:
        summary_csv = folder.write_summary([r.row() for r in results], SUMMARY_COLUMNS)
    except OSError as e:
        if full or is_disk_full(e):
            raise _disk_full_error(folder, results, "could not be written") from None
        raise DatasetError(f"cannot be written ({e.strerror or e})", path=folder.out / "summary.csv") from None
    if full:
        raise _disk_full_error(folder, results, f"lists them ({summary_csv})")
    return summary_csv


def predict(
    model_or_run: str | os.PathLike | Predictor,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    top_k: int = 5,
    options: PredictOptions = PredictOptions(),
    progress: bool = True,
    overwrite: bool = False,
) -> PredictReport:
    """Predict lesion masks, probabilities, uncertainties, overlays and areas for scans.

    The output folder is created (and locked against a second ``predict``) only once the
    model and the inputs are usable; see :mod:`enface.predict.output` for what an earlier
    run's outputs there become.

    Args:
        model_or_run: a segmentation checkpoint, a run folder (its top-k checkpoints are
            averaged) or a loaded :class:`Predictor`.
        inputs: case folders, dataset folders, export files or folders of exports.
        out: output folder: ``<out>/<scan id>/`` per scan and ``<out>/summary.csv``; neither
            inside an input folder nor holding one.
        top_k: checkpoints of a run folder averaged.
        options: preparation and threshold settings.
        progress: log one line per scan.
        overwrite: replace the folders of scans an earlier run predicted into ``out``
            (otherwise such a run is refused); ``summary.csv`` keeps the other scans' rows
            either way.

    Returns:
        The report; scans that failed carry their reason (and are logged as warnings).

    Raises:
        CheckpointError: the model cannot be loaded or is not a segmentation model.
        DatasetError: the output folder is a file, cannot be written, is nested with an
            input, holds predictions of these scans (without ``overwrite``), or the disk
            became full (the scans written are complete).
        RunFolderError: another ``predict`` is writing the output folder.
        ValueError: invalid options or no inputs.
    """
    if not inputs:
        raise ValueError("no inputs to predict")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError("--out is a file, not a folder", path=out)
    check_out_placement(out, inputs)
    predictor = (
        model_or_run
        if isinstance(model_or_run, Predictor)
        else Predictor.load(
            model_or_run,
            top_k,
            options.device,
            options.depth,
            options.window_mm,
            options.fast,
            options.precision,
        )
    )
    items = find_inputs(inputs, predictor, options)
    with OutputFolder(out, overwrite) as folder:
        folder.check_free([it.scan_id for it in items])
        log.info(
            "predicting %d scan(s) with %d checkpoint(s) (task %s, depth %d, %s)",
            len(items),
            len(predictor.checkpoints),
            predictor.task,
            predictor.flatten.depth,
            "bf16" if predictor.precision == "bf16" else "float32",
        )
        results = _run_batch(items, predictor, folder, options, progress)
        summary_csv = _write_summary(folder, results)
    report = PredictReport(out, results, summary_csv)
    log.debug("%s", report.summary())  # the CLI prints it
    return report
