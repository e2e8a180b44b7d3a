"""``enface predict``'s batch: the model and the inputs checked, the scans predicted, the summary.

A scan that cannot be read or predicted, or runs out of memory, is recorded as failed with
its reason and the others still run; a full disk stops the batch with one message. What is
done with each scan is :mod:`enface.predict.scan`'s, in which order and in how many
processes :mod:`enface.predict.pipeline`'s. The files of the output folder are
:mod:`enface.data.predictions`'; where it may lie, its lock and an earlier run's outputs are
:mod:`enface.predict.output`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from enface.data.predictions import SUMMARY_COLUMNS, write_timings
from enface.engine.predictor import Predictor
from enface.errors import DISK_FULL, DatasetError, is_disk_full
from enface.predict.inputs import find_inputs
from enface.predict.options import PredictOptions
from enface.predict.output import OutputFolder, check_out_placement
from enface.predict.pipeline import run_batch
from enface.predict.scan import OUT_OF_MEMORY, STAGES, ScanResult

__all__ = ["OUT_OF_MEMORY", "PredictReport", "ScanResult", "predict"]

log = logging.getLogger(__name__)


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

    def stage_seconds(self) -> dict[str, float]:
        """Wall seconds of each stage (:data:`~enface.predict.scan.STAGES`) summed over the
        scans predicted (stages that ran in a background thread or another process
        included: their sum can exceed the batch's wall time)."""
        ok = [r for r in self.results if r.status == "ok"]
        return {k: sum(r.seconds.get(k, 0.0) for r in ok) for k in STAGES if any(k in r.seconds for r in ok)}

    def summary(self) -> str:
        """One line: counts and where the outputs are."""
        n_ok = len(self.results) - len(self.failed)
        return (
            f"predicted {n_ok} of {len(self.results)} scan(s) ({len(self.failed)} failed); "
            f"outputs in {self.out}/<scan id>/, summary {self.summary_csv}"
        )


# --------------------------------------------------------------------------- the batch


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
        results = run_batch(items, predictor, folder, options, progress)
        if options.timings:
            write_timings(folder.out, [(r.scan_id, r.status, r.seconds) for r in results], STAGES)
        summary_csv = _write_summary(folder, results)
    report = PredictReport(out, results, summary_csv)
    log.debug("%s", report.summary())  # the CLI prints it
    return report
