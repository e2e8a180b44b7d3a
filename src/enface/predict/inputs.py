"""What ``enface predict`` reads: its inputs expanded into scans, each loaded ready for the network.

An input is a case folder of a dataset (used as stored: already flattened and
depth-resampled), a dataset folder (every case in it), or device exports (a file, or a
folder of them) of any registered format (:mod:`enface.io.formats`), each prepared exactly
as ``enface prepare`` would (:func:`enface.data.prepare.scan_to_case`) with the depth and
window of the model's training data. An input that cannot be expanded becomes one scan that
fails with the reason, so that the others still run.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import dataset_of, is_case, is_dataset, load_case
from enface.data.prepare import PrepareOptions, discover_sources, scan_to_case
from enface.engine.predictor import Predictor
from enface.errors import DatasetError
from enface.io.base import Scan, unique_ids
from enface.io.formats import get_format, infer_format
from enface.predict.options import PredictOptions

__all__ = ["PredictInput", "PreparedScan", "find_inputs"]


@dataclass
class PreparedScan:
    """One scan ready for the network.

    Attributes:
        volumes: ``(C, H, W, D)`` flattened, depth-resampled input channels (not normalised).
        spacing: ``(sh, sw, sd)`` in mm.
        slo: ``(H, W)`` SLO on the en-face grid in [0, 1], or ``None``.
        notes: remarks worth keeping (flattening, depth mismatch, ...).
        meta: ``patient_id``, ``eye``, ``visit`` (days, or None), ``visit_date`` (or None),
            ``dicom`` (a DICOM scan's UIDs and files, or None),
            as far as the case or the export tells them.
        flips: ``{"flipped_bscans": bool, "flipped_ascans": bool}``: how the grid (SLO
            orientation) relates to the file's stored order.
        seconds: wall seconds of loading it, per stage: ``read``, and for an export
            ``bm``, ``flatten`` and ``enface`` (:data:`enface.data.scan_case.STEPS`).
    """

    volumes: np.ndarray
    spacing: tuple[float, float, float]
    slo: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    flips: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _flips(extra: dict[str, Any]) -> dict[str, bool]:
    return {k: bool(extra.get(k, False)) for k in ("flipped_bscans", "flipped_ascans")}


@dataclass
class PredictInput:
    """One scan to predict: its id, where it comes from and how to load it."""

    scan_id: str
    source: str
    load: Callable[[], PreparedScan]


def _load_case(path: Path, channels: tuple[str, ...]) -> PreparedScan:
    start = time.perf_counter()
    case = load_case(path)
    names = list(channels)
    missing = [n for n in names if not (path / f"{n}.npy").is_file()]
    if missing:
        raise DatasetError(
            f"the model needs input channels {names}; missing {', '.join(m + '.npy' for m in missing)}", path=path
        )
    vols = [np.asarray(case.load_volume(n, mmap=True)) for n in names]
    shapes = {v.shape for v in vols}
    if len(shapes) > 1:
        raise DatasetError(f"input channels {names} differ in shape {sorted(shapes)}", path=path)
    slo = case.load_image("slo") if case.has_image("slo") else None
    meta = {
        "patient_id": case.patient_id,
        "eye": case.meta.eye,
        "visit": case.meta.visit,
        "visit_date": case.meta.extra.get("visit_date"),
        "dicom": case.meta.extra.get("dicom"),
    }
    volumes = np.stack(vols)
    seconds = {"read": time.perf_counter() - start}
    return PreparedScan(volumes, case.spacing, slo, meta=meta, flips=_flips(case.meta.extra), seconds=seconds)


def _prepare_options(opts: PredictOptions, fmt: str, predictor: Predictor) -> PrepareOptions:
    return PrepareOptions(
        fmt=fmt,
        flatten=predictor.flatten,
        bm=opts.bm,
        axes=opts.axes,
        spacing=opts.spacing,
        octa="octa" in predictor.channels and "octa" in get_format(fmt).channels,
        tasks=(),
    )


def _load_export(read: Callable[[], Scan], scan_id: str, popts: PrepareOptions) -> PreparedScan:
    start = time.perf_counter()
    scan = read()
    seconds = {"read": time.perf_counter() - start}
    # no FAF (only the SLO is shown) and no masks: nothing to register, nothing to validate
    scan = replace(scan, faf=None, faf_to_slo=None, masks={}, mask_spaces={})
    arrays = scan_to_case(scan, scan_id, popts)
    vols = [arrays.oct, *(arrays.volumes[k] for k in sorted(arrays.volumes))]
    notes = [n for n in arrays.notes if not n.startswith("no patient id")]
    m = arrays.meta
    dated = m.extra.get("visit_date")  # a visit date: its day is counted per patient later (progression)
    meta = {"patient_id": m.patient_id, "eye": m.eye, "visit": None if dated else m.visit, "visit_date": dated}
    meta["dicom"] = m.extra.get("dicom")  # where a DICOM scan came from (--dicom-seg writes back to it)
    seconds.update(arrays.seconds)
    slo = arrays.images.get("slo")
    return PreparedScan(np.stack(vols), m.spacing, slo, notes, meta, flips=_flips(m.extra), seconds=seconds)


def _raise(error: Exception) -> PreparedScan:
    raise error


def _failing(error: Exception) -> Callable[[], PreparedScan]:
    """A load that fails with ``error`` (a partial, so that it travels to worker processes)."""
    return functools.partial(_raise, error)


def _case_inputs(dirs: list[Path], predictor: Predictor) -> list[PredictInput]:
    channels = tuple(predictor.channels)
    return [PredictInput(d.name, str(d), functools.partial(_load_case, d, channels)) for d in dirs]


def _export_inputs(path: Path, predictor: Predictor, opts: PredictOptions) -> list[PredictInput]:
    """The scans of an export file or folder (its format given, or told by its suffixes)."""
    try:
        fmt = opts.fmt or infer_format(path)
        popts = _prepare_options(opts, fmt, predictor)
        sources = discover_sources(path, popts)
    except (DatasetError, ValueError) as e:
        return [PredictInput(path.stem or str(path), str(path), _failing(e))]
    return [
        PredictInput(s.case_id, str(s.source), functools.partial(_load_export, s.read, s.case_id, popts))
        for s in sources
    ]


def _expand(path: Path, predictor: Predictor, opts: PredictOptions) -> list[PredictInput]:
    """The scans of one input: a case, every case of a dataset (or of its ``cases`` folder), or exports."""
    if not path.exists():
        return [PredictInput(path.name or str(path), str(path), _failing(DatasetError("input not found", path=path)))]
    if path.is_dir() and is_case(path):
        return _case_inputs([path], predictor)
    dataset = dataset_of(path) if path.name == "cases" else path if is_dataset(path, unfinished=True) else None
    if dataset is None or not path.is_dir():
        return _export_inputs(path, predictor, opts)
    cases = dataset / "cases"
    dirs = sorted(p for p in cases.iterdir() if p.is_dir() and not p.name.startswith(".")) if cases.is_dir() else []
    if not dirs:
        return [
            PredictInput(dataset.name, str(dataset), _failing(DatasetError("dataset folder without cases", dataset)))
        ]
    return _case_inputs(dirs, predictor)


def find_inputs(inputs: Sequence[str | os.PathLike], predictor: Predictor, opts: PredictOptions) -> list[PredictInput]:
    """Expand the inputs into scans; inputs that cannot be expanded become failing scans.

    Args:
        inputs: case folders, dataset folders (or their ``cases`` folder), export files or
            folders.
        predictor: the model (its depth, window and channels drive the preparation).
        opts: prediction settings.

    Returns:
        One :class:`PredictInput` per scan, ids made unique across inputs.
    """
    items = [item for raw in inputs for item in _expand(Path(raw), predictor, opts)]
    unique = unique_ids([it.scan_id for it in items])
    return [replace(it, scan_id=uid) for it, uid in zip(items, unique)]
