"""``enface predict``: a segmentation model (or a run's top-k ensemble) applied to new scans.

Inputs may be mixed freely:

* a case folder of a dataset (``<dataset>/cases/<id>/`` with ``oct.npy``): used as stored
  (it is already flattened and depth-resampled);
* a dataset folder (``dataset.json`` / ``cases/``): every case in it;
* a device export file, or a folder of them, in any format ``enface prepare`` reads: each
  scan goes through :func:`enface.data.prepare.scan_to_case`, i.e. exactly the preparation
  of ``enface prepare`` (flattening along Bruch's membrane, depth window and resampling, SLO
  onto the en-face grid), with the depth and window the model's training data were prepared
  with (read from the training dataset's ``dataset.json``, or given explicitly).

Every volume is then z-scored per B-scan (as in training) and passed through every member
of the ensemble; the member probabilities are averaged (the prediction) and their standard
deviation kept (the uncertainty). Per scan, ``<out>/<scan id>/`` receives:

* ``mask.png``: the binary prediction (``probability >= threshold``), 0/255;
* ``probability.npy`` (float32 ``(H, W)``) and ``probability.png`` (16-bit, ``p * 65535``);
* ``uncertainty.npy`` (float32 ensemble standard deviation) and ``uncertainty.png``
  (16-bit, ``std / 0.5 * 65535``: 0.5 is the largest possible std of probabilities);
* ``overlay.png``: the mask (tinted, outlined) over an en-face projection of the OCT, and
  over the SLO beside it when the scan has one, with physically square pixels;
* ``prediction.json``: area in mm² (and each ensemble member's area, for the spread that
  ``enface progression`` reports), pixel count, spacing, patient, eye, visit, threshold,
  checkpoints, the precision the networks computed in (``bf16`` or ``32``), notes, and
  ``grid``: the maps are in the SLO's orientation (as the prepared cases);
  ``flipped_bscans`` / ``flipped_ascans`` say whether row ``r`` is B-scan ``H - 1 - r`` of
  the file (column ``c`` its A-scan ``W - 1 - c``), e.g. for Spectralis exports stored
  bottom-up.

``<out>/summary.csv`` has one row per scan (failed ones included, with the reason), after
the rows an earlier run into ``<out>`` left for other scans (:mod:`enface.predict.output`:
where ``<out>`` may lie, its lock, ``overwrite``). A scan that cannot be read or predicted,
or runs out of memory, is reported and the others still run; a full disk stops the batch. Only segmentation
checkpoints are accepted: a reconstruction checkpoint is refused with a clear error.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enface.config import FAST_DEFAULT, INFERENCE_PRECISION_DEFAULT, INFERENCE_PRECISIONS
from enface.data.folder import load_case
from enface.data.options import BM_CHOICES, DEFAULT_BM, BMChoice
from enface.data.prepare import PrepareOptions, discover_sources, scan_to_case
from enface.engine.inference import EnsembleOutput
from enface.engine.predictor import Predictor
from enface.errors import DatasetError, EnfaceError
from enface.fileio import atomic_save_npy, atomic_save_png, atomic_write_json, is_disk_full
from enface.io.base import unique_ids
from enface.io.formats import FORMATS, infer_format
from enface.predict.output import OutputFolder, check_out_placement

__all__ = [
    "SUMMARY_COLUMNS",
    "PredictInput",
    "PredictOptions",
    "PredictReport",
    "Predictor",
    "PreparedScan",
    "ScanResult",
    "find_inputs",
    "predict",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class PredictOptions:
    """Settings of :func:`predict`.

    Attributes:
        fmt: format of device exports (one of :data:`enface.io.formats.FORMATS`); ``None``
            infers it from the file suffixes (``octa500`` must be given).
        threshold: probability threshold of the binary mask.
        depth: depth samples of prepared exports (default: the model's training depth).
        window_mm: ``(above, below)`` flattening window around BM in mm (default: the
            training dataset's).
        bm: BM for flattening, as in ``enface prepare`` (``auto``, ``export``, ``estimate``).
        axes: stored axis order of NumPy/NIfTI volumes without a sidecar ``axes``.
        spacing: ``(sh, sw, sd)`` in mm for inputs that do not state it.
        device: torch device of the ensemble.
        fast: the fast inference path (see :mod:`enface.engine.inference`); False: each
            network's own forward on the whole volume.
        precision: what the fast path computes in: ``"auto"`` (bf16 where the device
            computes it natively, else float32), ``"bf16"`` or ``"32"``.
    """

    fmt: str | None = None
    threshold: float = 0.5
    depth: int | None = None
    window_mm: tuple[float, float] | None = None
    bm: BMChoice = DEFAULT_BM
    axes: str | None = None
    spacing: tuple[float, float, float] | None = None
    device: str = "cpu"
    fast: bool = FAST_DEFAULT
    precision: str = INFERENCE_PRECISION_DEFAULT

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r} (known: {', '.join(FORMATS)})")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.depth is not None and self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.bm not in BM_CHOICES:
            raise ValueError(f"bm must be 'auto', 'export' or 'estimate', got {self.bm!r}")
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {self.precision!r}")
        if self.precision == "bf16" and not self.fast:
            raise ValueError("precision bf16 runs on the fast path; the plain path (fast=False) is float32")


@dataclass
class PreparedScan:
    """One scan ready for the network.

    Attributes:
        volumes: ``(C, H, W, D)`` flattened, depth-resampled input channels (not normalised).
        spacing: ``(sh, sw, sd)`` in mm.
        slo: ``(H, W)`` SLO on the en-face grid in [0, 1], or ``None``.
        notes: remarks worth keeping (flattening, depth mismatch, ...).
        meta: ``patient_id``, ``eye``, ``visit`` (days, or None) and ``visit_date`` (or None),
            as far as the case or the export tells them.
        flips: ``{"flipped_bscans": bool, "flipped_ascans": bool}``: how the grid (SLO
            orientation) relates to the file's stored order.
    """

    volumes: np.ndarray
    spacing: tuple[float, float, float]
    slo: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    flips: dict[str, bool] = field(default_factory=dict)


def _flips(extra: dict[str, Any]) -> dict[str, bool]:
    return {k: bool(extra.get(k, False)) for k in ("flipped_bscans", "flipped_ascans")}


@dataclass
class PredictInput:
    """One scan to predict: its id, where it comes from and how to load it."""

    scan_id: str
    source: str
    load: Callable[[], PreparedScan]


@dataclass
class ScanResult:
    """The outcome for one scan (one row of ``summary.csv``)."""

    scan_id: str
    source: str
    status: str
    area_mm2: float | None = None
    n_pixels: int | None = None
    mean_uncertainty_in_mask: float | None = None
    reason: str = ""
    out_dir: Path | None = None

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


# --------------------------------------------------------------------------- the model


# --------------------------------------------------------------------------- inputs


def _load_case(path: Path, predictor: Predictor) -> PreparedScan:
    case = load_case(path)
    names = list(predictor.channels)
    missing = [n for n in names if not (path / f"{n}.npy").is_file()]
    if missing:
        raise DatasetError(
            f"{path}: the model needs input channels {names}; missing {', '.join(m + '.npy' for m in missing)}"
        )
    vols = [np.asarray(case.load_volume(n, mmap=True)) for n in names]
    shapes = {v.shape for v in vols}
    if len(shapes) > 1:
        raise DatasetError(f"{path}: input channels {names} differ in shape {sorted(shapes)}")
    slo = case.load_image("slo") if case.has_image("slo") else None
    meta = {
        "patient_id": case.patient_id,
        "eye": case.meta.eye,
        "visit": case.meta.visit,
        "visit_date": case.meta.extra.get("visit_date"),
    }
    return PreparedScan(np.stack(vols), case.spacing, slo, meta=meta, flips=_flips(case.meta.extra))


def _prepare_options(opts: PredictOptions, fmt: str, predictor: Predictor) -> PrepareOptions:
    return PrepareOptions(
        fmt=fmt,
        flatten=predictor.flatten,
        bm=opts.bm,
        axes=opts.axes,
        spacing=opts.spacing,
        octa=fmt == "octa500" and predictor.in_channels > 1,
        tasks=(),
    )


def _load_export(read: Callable[[], Any], scan_id: str, popts: PrepareOptions) -> PreparedScan:
    scan = read()
    # no FAF (only the SLO is shown) and no masks: nothing to register, nothing to validate
    scan = replace(scan, faf=None, faf_to_slo=None, masks={}, mask_spaces={})
    arrays = scan_to_case(scan, scan_id, popts)
    vols = [arrays.oct, *(arrays.volumes[k] for k in sorted(arrays.volumes))]
    notes = [n for n in arrays.notes if not n.startswith("no patient id")]
    m = arrays.meta
    dated = m.extra.get("visit_date")  # a visit date: its day is counted per patient later (progression)
    meta = {"patient_id": m.patient_id, "eye": m.eye, "visit": None if dated else m.visit, "visit_date": dated}
    return PreparedScan(np.stack(vols), m.spacing, arrays.images.get("slo"), notes, meta, flips=_flips(m.extra))


def _failing(reason: str) -> Callable[[], PreparedScan]:
    def load() -> PreparedScan:
        raise DatasetError(reason)

    return load


def find_inputs(inputs: Sequence[str | os.PathLike], predictor: Predictor, opts: PredictOptions) -> list[PredictInput]:
    """Expand the inputs into scans; inputs that cannot be expanded become failing scans.

    Args:
        inputs: case folders, dataset folders, export files or folders.
        predictor: the model (its depth, window and channels drive the preparation).
        opts: prediction settings.

    Returns:
        One :class:`PredictInput` per scan, ids made unique across inputs.
    """
    items: list[PredictInput] = []
    for raw in inputs:
        path = Path(raw)
        if path.name == "cases" and (path.parent / "dataset.json").is_file():
            path = path.parent  # the cases folder of a dataset: the dataset
        if not path.exists():
            items.append(PredictInput(path.name or str(path), str(path), _failing(f"{path}: input not found")))
        elif path.is_dir() and (path / "oct.npy").is_file():
            items.append(PredictInput(path.name, str(path), functools.partial(_load_case, path, predictor)))
        elif path.is_dir() and ((path / "cases").is_dir() or (path / "dataset.json").is_file()):
            cases = path / "cases"
            dirs = (
                sorted(p for p in cases.iterdir() if p.is_dir() and not p.name.startswith("."))
                if cases.is_dir()
                else []
            )
            if not dirs:
                items.append(PredictInput(path.name, str(path), _failing(f"{path}: dataset folder without cases")))
            items += [PredictInput(d.name, str(d), functools.partial(_load_case, d, predictor)) for d in dirs]
        else:
            try:
                fmt = opts.fmt or infer_format(path)
                popts = _prepare_options(opts, fmt, predictor)
                sources = discover_sources(path, popts)
            except (DatasetError, ValueError) as e:
                items.append(PredictInput(path.stem or str(path), str(path), _failing(str(e))))
                continue
            items += [
                PredictInput(s.case_id, str(s.source), functools.partial(_load_export, s.read, s.case_id, popts))
                for s in sources
            ]
    unique = unique_ids([it.scan_id for it in items])
    return [replace(it, scan_id=uid) for it, uid in zip(items, unique)]


# --------------------------------------------------------------------------- one scan, the batch


def _write_outputs(
    folder: OutputFolder,
    scan: PreparedScan,
    result: EnsembleOutput,
    predictor: Predictor,
    item: PredictInput,
    threshold: float,
) -> ScanResult:
    from enface.viz import scan_overlay

    prob, std = result.mean[0], result.std[0]
    mask = prob >= threshold
    n = int(mask.sum())
    px_area = float(scan.spacing[0]) * float(scan.spacing[1])
    area = n * px_area
    member_areas = [float((m[0] >= threshold).sum()) * px_area for m in result.members]
    mean_unc = float(std[mask].mean()) if n else math.nan
    overlay = scan_overlay(scan.volumes[0], mask, scan.spacing[:2], scan.slo)  # before anything is written
    with folder.scan_folder(item.scan_id) as out:  # renamed into place once complete
        atomic_save_png(out / "mask.png", mask.astype(np.uint8) * 255)
        atomic_save_npy(out / "probability.npy", prob.astype(np.float32))
        atomic_save_png(out / "probability.png", np.round(np.clip(prob, 0, 1) * 65535).astype(np.uint16))
        atomic_save_npy(out / "uncertainty.npy", std.astype(np.float32))
        atomic_save_png(out / "uncertainty.png", np.round(np.clip(std / 0.5, 0, 1) * 65535).astype(np.uint16))
        atomic_save_png(out / "overlay.png", overlay)
        atomic_write_json(
            out / "prediction.json",
            {
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
            },
        )
    return ScanResult(item.scan_id, item.source, "ok", area, n, mean_unc, out_dir=folder.out / item.scan_id)


def _predict_one(
    item: PredictInput, predictor: Predictor, folder: OutputFolder, threshold: float
) -> tuple[ScanResult, list[str]]:
    scan = item.load()
    scan.notes += predictor.check_input(scan.volumes)
    result = predictor(scan.volumes)
    return _write_outputs(folder, scan, result, predictor, item, threshold), scan.notes


def _out_of_memory(e: BaseException) -> bool:
    """A failed allocation: ``MemoryError``, torch's out of memory (CUDA or CPU allocator)."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _failure(e: BaseException, item: PredictInput, device: str) -> str:
    """The reason of a failed scan, its source left out (the summary names it)."""
    if _out_of_memory(e):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return f"out of memory on {device} (the scan is too large for it; the other scans still run)"
    if is_disk_full(e):
        return "the disk is full (nothing of this scan was kept)"
    reason = str(e) if isinstance(e, (EnfaceError, ValueError)) else f"{type(e).__name__}: {e}"
    return reason.removeprefix(f"{item.source}: ")


def _run_batch(
    items: list[PredictInput], predictor: Predictor, folder: OutputFolder, options: PredictOptions, progress: bool
) -> list[ScanResult]:
    """Predict every scan; a failing one is recorded and the others still run, except on a full
    disk: then the batch stops and the scans not reached are recorded as not predicted."""
    results: list[ScanResult] = []
    for i, item in enumerate(items, 1):
        try:
            res, notes = _predict_one(item, predictor, folder, options.threshold)
        except (EnfaceError, ValueError, OSError, MemoryError, RuntimeError) as e:  # a bad scan must not stop the batch
            if isinstance(e, RuntimeError) and not _out_of_memory(e):
                raise  # a bug: it surfaces
            reason = _failure(e, item, options.device)
            if folder.overwrite and (folder.out / item.scan_id).is_dir():
                reason += f" (the earlier prediction in {folder.out / item.scan_id} was left as it was)"
            log.warning("[%d/%d] %s: failed: %s (%s)", i, len(items), item.scan_id, reason, item.source)
            results.append(ScanResult(item.scan_id, item.source, "failed", reason=reason))
            if is_disk_full(e):
                results += [
                    ScanResult(it.scan_id, it.source, "failed", reason="not predicted: the disk is full")
                    for it in items[i:]
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
    first = next((r.scan_id for r in results if "disk is full" in r.reason), None)
    return DatasetError(
        f"{folder.out}: the disk is full{f' (while writing {first})' if first else ''}; {n_ok} of {len(results)} "
        f"scan(s) predicted, each complete, nothing of the others kept; summary.csv {summary}. Free space and "
        "run again (with --overwrite to redo the scans already predicted)"
    )


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
        raise DatasetError(f"{out}: --out is a file, not a folder")
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
        full = any("disk is full" in r.reason for r in results)
        try:
            summary_csv = folder.write_summary([r.row() for r in results], SUMMARY_COLUMNS)
        except OSError as e:
            if full or is_disk_full(e):
                raise _disk_full_error(folder, results, "could not be written") from None
            raise DatasetError(f"{out / 'summary.csv'}: cannot be written ({e.strerror or e})") from None
        if full:
            raise _disk_full_error(folder, results, f"lists them ({summary_csv})")
    report = PredictReport(out, results, summary_csv)
    log.debug("%s", report.summary())  # the CLI prints it
    return report
