"""Where ``enface progression`` reads its visits from: reference masks or predictions.

Inputs are the reference masks of a dataset folder (``mask_<task>.png``, or
``mask_<task>.<grader>.png`` with a grader) or a predictions folder of ``enface predict``
(``summary.csv`` + ``<scan id>/mask.png`` + ``prediction.json``). A predicted scan's
patient, eye and visit day come from its ``prediction.json`` when it has them (device
exports), else from the dataset case of the same id. Failed predictions and cases without
a reference mask are listed as skipped and left out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import Case, dataset_of, list_cases, mask_filename, read_dataset_info
from enface.data.predictions import RECORD_FILE, SUMMARY_FILE, PredictionRecord, read_record, read_summary
from enface.errors import DatasetError
from enface.progression.core import MIN_FOCUS_MM2, Skipped, Visit, VisitSet, lesion_features, raise_problems

__all__ = ["prediction_visits", "reference_visits", "resolve_task"]


# --------------------------------------------------------------------------- reading


def _case_day(case: Case) -> int | None:
    """The visit day of a case, or ``None`` when its ``meta.json`` gives none."""
    return case.meta.visit


def _as_day(value: Any, where: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise DatasetError(f"{where}: visit must be a whole number of days, got {value!r}")
    return int(value)


def resolve_task(dataset: str | os.PathLike, task: str | None) -> str:
    """The mask task: ``task`` when given (it must be one of the dataset's), else its only one.

    Raises:
        DatasetError: unknown task, or several tasks and none chosen.
    """
    tasks = [str(t) for t in read_dataset_info(dataset).get("tasks", [])]
    if task is not None:
        if task not in tasks:
            raise DatasetError(
                f"{Path(dataset) / 'dataset.json'}: no task {task!r} (tasks: {', '.join(tasks) or 'none'})"
            )
        return task
    if len(tasks) != 1:
        raise DatasetError(
            f"{Path(dataset) / 'dataset.json'}: the dataset has tasks {', '.join(tasks) or 'none'}; "
            "choose one with --task"
        )
    return tasks[0]


def reference_visits(
    dataset: str | os.PathLike, task: str, grader: str | None = None, min_focus_mm2: float = MIN_FOCUS_MM2
) -> VisitSet:
    """The visits of every case of ``dataset`` with a reference mask of ``task``.

    Cases without that mask are listed in ``skipped``.

    Raises:
        DatasetError: a case used has no ``visit`` in its ``meta.json``, or a mask is unreadable.
    """
    visits: list[Visit] = []
    skipped: list[Skipped] = []
    problems: list[str] = []
    name = mask_filename(task, grader)
    for case in list_cases(dataset):
        if not case.has_mask(task, grader):
            skipped.append(Skipped(case.case_id, str(case.path), f"no reference mask {name}"))
            continue
        day = _case_day(case)
        if day is None:
            problems.append(f"{case.path / 'meta.json'}: no 'visit' (day of the visit)")
            continue
        sp = (float(case.spacing[0]), float(case.spacing[1]))
        feats = lesion_features(case.load_mask(task, grader), sp, min_focus_mm2)
        visits.append(Visit(case.case_id, case.patient_id, case.meta.eye, day, sp, feats))
    raise_problems(problems, f"{dataset}: cases without a visit day")
    if not visits:
        raise DatasetError(f"{dataset}: no case has a mask {name}")
    what = f"reference masks {name}" if grader is None else f"grader {grader!r} masks {name}"
    return VisitSet(sorted(visits, key=lambda v: v.key), skipped, task, what)


# --------------------------------------------------------------------------- predictions


def _read_prediction(scan_dir: Path) -> tuple[PredictionRecord, tuple[float, float]]:
    """A scan's checked ``prediction.json`` and its ``(sh, sw)`` spacing."""
    if not (scan_dir / RECORD_FILE).is_file():
        raise DatasetError("file not found (summary.csv lists the scan as predicted)", path=scan_dir / RECORD_FILE)
    record = read_record(scan_dir)
    return record, record.spacing()


def _check_member_areas(pj: Mapping[str, Any], field_mm2: float, where: str) -> None:
    """Each ensemble member's area fits in the scan's en-face field (1e308 was edited by hand)."""
    big = [a for a in pj.get("member_areas_mm2") or () if a > field_mm2 * (1 + 1e-6)]
    if big:
        raise DatasetError(
            f"{where}: 'member_areas_mm2' {big[0]!r} exceeds the scan's whole en-face field of "
            f"{field_mm2:.4g} mm² (edited by hand?)"
        )


def _model_of(pj: Mapping[str, Any]) -> str:
    """The model a scan was predicted with, in words (its checkpoints); ``""`` when not recorded."""
    ckpts = pj.get("checkpoints")
    if not isinstance(ckpts, list) or not ckpts:
        return ""
    paths = sorted(str(c) for c in ckpts)
    if len(paths) == 1:
        return paths[0]
    try:
        common = os.path.commonpath(paths)
    except ValueError:
        common = ""
    return f"{len(paths)} checkpoints in {common}" if common else ", ".join(paths)


def _one_model(models: Mapping[str, list[str]], pred_dir: Path) -> None:
    """Refuse predictions of different models mixed in one folder (scans without a record pass)."""
    known = {m: ids for m, ids in models.items() if m}
    if len(known) > 1:
        (a, ids_a), (b, ids_b) = sorted(known.items())[:2]
        raise DatasetError(
            f"{pred_dir}: predictions of different models mixed in one folder ({a}: {', '.join(ids_a[:3])}; "
            f"{b}: {', '.join(ids_b[:3])}{'; ...' if len(known) > 2 else ''}); predict each model into its own --out"
        )


def _meta_of_scan(
    scan_id: str, pj: Mapping[str, Any], source: str, case: Case | None, dataset: Path, where: str
) -> tuple[str, str, int]:
    """Patient, eye and day of a predicted scan: its own (exports) or its dataset case's.

    Raises:
        DatasetError: the scan belongs to another dataset, or its visit day is unknown.
    """
    origin = dataset_of(source) if Path(source).parent.name == "cases" else None
    if origin is not None and not os.path.samefile(origin, dataset):
        raise DatasetError(
            f"{where}: predicted from {source}, a case of the dataset {origin}, not of {dataset} "
            "(predictions of another dataset?)"
        )
    own = {k: pj.get(k) for k in ("patient_id", "eye", "visit")}
    if case is None:
        if any(v is None for v in own.values()):
            lacking = ", ".join(k for k, v in own.items() if v is None)
            raise DatasetError(
                f"{where}: scan {scan_id!r} is not a case of {dataset} and its prediction.json has no "
                f"{lacking} (predictions of another dataset?)"
            )
        patient, eye, day = str(own["patient_id"]), str(own["eye"]), _as_day(own["visit"], where)
    else:
        case_day = _case_day(case)
        if own["visit"] is not None:
            day = _as_day(own["visit"], where)
        elif case_day is not None:
            day = case_day
        else:
            raise DatasetError(f"{where}: no visit day, and {case.path / 'meta.json'} has no 'visit' either")
        patient, eye = str(own["patient_id"] or case.patient_id), str(own["eye"] or case.meta.eye)
        if (patient, eye) != (case.patient_id, case.meta.eye) or (case_day is not None and day != case_day):
            raise DatasetError(
                f"{where}: scan {scan_id!r} is patient {patient} {eye} day {day}, but case {case.case_id} "
                f"of {dataset} is patient {case.patient_id} {case.meta.eye} day {case_day} "
                "(predictions of another dataset?)"
            )
    if eye not in ("OD", "OS"):
        raise DatasetError(f"{where}: eye must be 'OD' or 'OS', got {eye!r}")
    return patient, eye, day


def _check_against_case(mask: np.ndarray, spacing: tuple[float, float], case: Case, where: str) -> None:
    cs = (float(case.spacing[0]), float(case.spacing[1]))
    if not np.allclose(spacing, cs, rtol=1e-5, atol=0):
        raise DatasetError(f"{where}: spacing {spacing} differs from case {case.case_id}'s {cs} (another dataset?)")
    grid = tuple(case.oct_shape()[:2])
    if mask.shape != grid:
        raise DatasetError(f"{where}: mask shape {mask.shape} differs from case {case.case_id}'s en-face grid {grid}")


def prediction_visits(
    pred_dir: str | os.PathLike,
    dataset: str | os.PathLike,
    task: str | None = None,
    min_focus_mm2: float = MIN_FOCUS_MM2,
) -> VisitSet:
    """The visits of a predictions folder written by ``enface predict``.

    A scan's patient, eye and day come from its ``prediction.json`` when it has them
    (device exports), else from the dataset case of the same id. Failed scans are listed
    in ``skipped``. Checks: every scan resolves to a visit, a scan that is a case of
    ``dataset`` agrees with it (patient, eye, day, spacing, grid), a scan predicted from
    ``<other dataset>/cases/<id>`` is refused, and all scans share one task (``task``
    when given).

    Raises:
        DatasetError: any of the checks fails (every problem found is listed).
    """
    pred_dir, dataset = Path(pred_dir), Path(dataset)
    cases = {c.case_id: c for c in list_cases(dataset)}
    rows = read_summary(pred_dir / SUMMARY_FILE)
    visits: list[Visit] = []
    skipped: list[Skipped] = []
    problems: list[str] = []
    tasks: dict[str, list[str]] = {}
    models: dict[str, list[str]] = {}
    for row in rows:
        scan_id, source = row["scan_id"], row.get("source", "")
        if row["status"] != "ok":
            skipped.append(Skipped(scan_id, source, f"prediction failed: {row.get('reason') or row['status']}"))
            continue
        scan_dir = pred_dir / scan_id
        try:
            record, sp = _read_prediction(scan_dir)
            pj, where = record.info, str(record.path)
            tasks.setdefault(str(pj.get("task")), []).append(scan_id)
            mask = record.load_mask()
            case = cases.get(scan_id)
            patient, eye, day = _meta_of_scan(scan_id, pj, str(pj.get("source") or source), case, dataset, where)
            if case is not None:
                _check_against_case(mask, sp, case, where)
            _check_member_areas(pj, mask.size * sp[0] * sp[1], where)
            models.setdefault(_model_of(pj), []).append(scan_id)
        except DatasetError as e:
            problems.append(str(e))
            continue
        feats = lesion_features(mask, sp, min_focus_mm2)
        visits.append(Visit(scan_id, patient, eye, day, sp, feats, record.member_areas_mm2))
    raise_problems(problems, f"{pred_dir}: unusable predictions")
    if len(tasks) > 1:
        shown = "; ".join(
            f"{t}: {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}" for t, ids in sorted(tasks.items())
        )
        raise DatasetError(f"{pred_dir}: predictions of several tasks ({shown}); predict one task per folder")
    _one_model(models, pred_dir)
    found = next(iter(tasks), task or "lesion")
    if task is not None and tasks and found != task:
        raise DatasetError(f"{pred_dir}: predictions are of task {found!r}, not {task!r}")
    if not visits:
        raise DatasetError(f"{pred_dir}: no successfully predicted scan")
    return VisitSet(sorted(visits, key=lambda v: v.key), skipped, found, f"predictions in {pred_dir}")


# --------------------------------------------------------------------------- the command
