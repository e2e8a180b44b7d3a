"""``enface progression``: visits read (:mod:`~enface.progression.sources`), rates computed,
tables, figures and the report written.

Inputs are reference masks of a dataset or predictions of ``enface predict``; failed
predictions and cases without a reference mask are listed in ``skipped.csv`` and left out.

Everything is read and validated before the first file is written, and the output folder
is written whole: into a temporary sibling folder that is then renamed into place.
Outputs (``--out``): ``visits.csv``, ``eyes.csv``, ``cohort.json``, ``skipped.csv``,
``sqrt_area.png``, ``report.html`` and, when predictions meet reference masks,
``reference_visits.csv``, ``reference_eyes.csv``, ``agreement.csv`` and
``bland_altman.png``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enface.data.folder import list_cases, mask_filename, read_dataset_info, read_splits
from enface.errors import DatasetError
from enface.fileio import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    replace_folder,
    temp_dir,
    writable_folder,
)
from enface.progression.core import (
    EYE_COLUMNS,
    MIN_FOCUS_MM2,
    VISIT_COLUMNS,
    EyeRates,
    VisitSet,
    check_visits,
    cohort_summary,
    eye_rates,
    rate_agreement,
)
from enface.progression.figures import figure_png, plot_bland_altman, plot_sqrt_area, progression_html
from enface.progression.sources import prediction_visits, reference_visits, resolve_task
from enface.progression.stats import mean_sd_text

__all__ = ["ProgressionResult", "prediction_visits", "reference_visits", "resolve_task", "run_progression"]

log = logging.getLogger(__name__)


@dataclass
class ProgressionResult:
    """What :func:`run_progression` computed and wrote.

    Attributes:
        out: the output folder.
        visits: the visits the rates come from (predictions or reference masks).
        eyes: per-eye rates of ``visits``.
        cohort: the content of ``cohort.json``.
        reference: reference visits beside predictions (``None`` in reference mode or
            when the dataset has no masks of the task).
        agreement: per-eye rows of the rate agreement (``None`` when not computed).
    """

    out: Path
    visits: VisitSet
    eyes: list[EyeRates]
    cohort: dict[str, Any]
    reference: VisitSet | None = None
    agreement: list[dict[str, Any]] | None = None


AGREEMENT_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "eye",
    "visits",
    "years",
    "reference_growth_mm2_per_year",
    "predicted_growth_mm2_per_year",
    "diff_growth_mm2_per_year",
    "reference_sqrt_growth_mm_per_year",
    "predicted_sqrt_growth_mm_per_year",
    "diff_sqrt_growth_mm_per_year",
)
"""Columns of ``agreement.csv`` (differences are predicted − reference)."""


OUTPUT_FILES: frozenset[str] = frozenset(
    {
        "visits.csv",
        "eyes.csv",
        "cohort.json",
        "skipped.csv",
        "sqrt_area.png",
        "report.html",
        "reference_visits.csv",
        "reference_eyes.csv",
        "agreement.csv",
        "bland_altman.png",
    }
)
"""Every file that :func:`run_progression` writes into ``--out``."""


def _check_out(out: Path) -> list[str]:
    """The files of an earlier output in ``out`` that a new run replaces.

    Raises:
        ValueError: ``out`` is not a folder, or not an earlier output of this command (no
            ``cohort.json``), or holds anything else than that command's files (named):
            replacing the folder would delete them.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; choose another --out")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return []
    if "cohort.json" not in present:
        raise ValueError(
            f"{out}: exists and is not an output folder of `enface progression` (no cohort.json); choose another --out"
        )
    foreign = [
        n + ("/" if (out / n).is_dir() else "") for n in present if n not in OUTPUT_FILES or not (out / n).is_file()
    ]
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise ValueError(
            f"{out}: an earlier output of `enface progression` that also holds files it did not write ({shown}); "
            "a new run replaces the whole folder, so move them elsewhere or choose another --out (nothing was written)"
        )
    return present


def _blank(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with NaN/None as empty cells."""
    return [
        {k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v) for k, v in r.items()}
        for r in rows
    ]


def _visit_columns(vs: VisitSet) -> tuple[str, ...]:
    extra = ("area_sd_mm2", "sqrt_area_sd_mm", "members") if vs.ensemble else ()
    return VISIT_COLUMNS + extra + ("years", "spacing_h_mm", "spacing_w_mm")


def _reference_beside(
    dataset: Path, task: str, grader: str | None, min_focus_mm2: float
) -> tuple[VisitSet | None, str]:
    """Reference visits for the agreement, or ``None`` and why not."""
    if task not in [str(t) for t in read_dataset_info(dataset).get("tasks", [])]:
        return None, f"{dataset} has no reference masks of task {task!r}: no agreement computed"
    if not any(case.has_mask(task, grader) for case in list_cases(dataset)):
        return None, f"{dataset}: no case has a mask {mask_filename(task, grader)}: no agreement computed"
    ref = reference_visits(dataset, task, grader, min_focus_mm2)
    check_visits(ref)
    return ref, ""


def _summary_lines(result: ProgressionResult, agreement: Mapping[str, Any] | None) -> list[str]:
    c = result.cohort
    g, s = c["growth_mm2_per_year"], c["sqrt_growth_mm_per_year"]
    lines = [
        f"Source: {result.visits.source}; task {result.visits.task}.",
        f"{c['visits']} visits of {c['eyes']} eyes; {c['eyes_with_rate']} eyes with two or more visits "
        f"({len(result.visits.skipped)} scans or cases left out{', listed below' if result.visits.skipped else ''}).",
        f"Growth: {mean_sd_text(g, 'mm²/year')}; √area growth {mean_sd_text(s, 'mm/year')} (mean ± SD over eyes).",
        f"Baseline: {c['baseline_focality']['unifocal']} unifocal, {c['baseline_focality']['multifocal']} multifocal, "
        f"{c['baseline_focality']['none']} without a focus of ≥ {c['min_focus_mm2']} mm².",
        "Area = pixels × sh × sw; √area; rates = least-squares slopes over day/365.25 (95 % t-interval from 3 visits); "
        "perimeter by the Cauchy–Crofton formula (4 grid directions); circularity = 4πA/P²; foveal involvement is "
        "not reported (the dataset does not record the fovea's position).",
    ]
    if agreement is not None:
        for rate, unit in (("sqrt_growth_mm_per_year", "mm/year"), ("growth_mm2_per_year", "mm²/year")):
            a = agreement[rate]
            lines.append(
                f"Agreement of {rate} over {a['n']} eyes: bias {a['bias']:.3f} {unit}, 95 % limits of agreement "
                f"[{a['loa_low']:.3f}, {a['loa_high']:.3f}], ICC(A,1) {a['icc']:.3f}."
            )
    return lines


def _report(result: ProgressionResult, figures: Mapping[str, bytes]) -> str:
    vs, agreement = result.visits, result.cohort["agreement"]
    sections: list[tuple[str, list[Any]]] = [("Summary", [*_summary_lines(result, agreement), *vs.notes])]
    sections.append(("√area over time", [figures["sqrt_area.png"]]))
    if result.agreement is not None:
        sections.append(
            (
                "Agreement of growth rates with the reference",
                [
                    f"{agreement['pairing']}; differences are predicted − reference; {agreement['icc_form']}.",
                    figures["bland_altman.png"],
                    (result.agreement, AGREEMENT_COLUMNS),
                ],
            )
        )
    sections.append(("Eyes", [([e.row() for e in result.eyes], EYE_COLUMNS)]))
    sections.append(("Visits", [([v.row() for v in vs.visits], _visit_columns(vs))]))
    if vs.skipped:
        sections.append(("Left out", [([s.__dict__ for s in vs.skipped], ("case_id", "source", "reason"))]))
    return progression_html(f"GA progression: {vs.task}", sections)


def _write_folder(out: Path, write: Any) -> None:
    """Call ``write(tmp_folder)``, then put the folder in place of ``out`` (whole or not at all)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, f".{out.name}.")
    try:
        write(tmp)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _split_patients(dataset: Path, split: str) -> set[str]:
    splits = read_splits(dataset)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    return {str(p) for p in splits[split]}


def _only(visit_set: VisitSet, patients: set[str], split: str) -> None:
    visit_set.visits = [v for v in visit_set.visits if v.patient_id in patients]
    visit_set.source += f", patients of split {split!r}"
    if not visit_set.visits:
        raise DatasetError(f"{visit_set.source}: no visit of the {len(patients)} patients of split {split!r}")


def _read_inputs(
    dataset: Path,
    predictions: str | os.PathLike | None,
    grader: str | None,
    task: str | None,
    min_focus_mm2: float,
    split: str | None,
) -> tuple[VisitSet, VisitSet | None]:
    """The visits to report and, beside predictions, the reference visits (all checked)."""
    patients = _split_patients(dataset, split) if split is not None else None
    reference: VisitSet | None = None
    if predictions is not None:
        visits = prediction_visits(predictions, dataset, task, min_focus_mm2)
        reference, why_not = _reference_beside(dataset, visits.task, grader, min_focus_mm2)
        visits.notes += [why_not] if why_not else [f"reference: {n}" for n in reference.notes]  # type: ignore[union-attr]
    else:
        visits = reference_visits(dataset, resolve_task(dataset, task), grader, min_focus_mm2)
    if patients is not None:
        _only(visits, patients, str(split))
        if reference is not None:
            reference.visits = [v for v in reference.visits if v.patient_id in patients]
    check_visits(visits)
    return visits, reference


def _write_files(folder: Path, result: ProgressionResult, figures: Mapping[str, bytes], html_text: str) -> None:
    visits, reference = result.visits, result.reference
    atomic_write_csv(folder / "visits.csv", _blank([v.row() for v in visits.visits]), _visit_columns(visits))
    atomic_write_csv(folder / "eyes.csv", _blank([e.row() for e in result.eyes]), EYE_COLUMNS)
    atomic_write_csv(folder / "skipped.csv", [s.__dict__ for s in visits.skipped], ("case_id", "source", "reason"))
    if reference is not None:
        atomic_write_csv(
            folder / "reference_visits.csv", _blank([v.row() for v in reference.visits]), _visit_columns(reference)
        )
        atomic_write_csv(
            folder / "reference_eyes.csv", _blank([e.row() for e in eye_rates(reference.visits)]), EYE_COLUMNS
        )
    if result.agreement is not None:
        atomic_write_csv(folder / "agreement.csv", _blank(result.agreement), AGREEMENT_COLUMNS)
    for name, png in figures.items():
        atomic_write_bytes(folder / name, png)
    atomic_write_text(folder / "report.html", html_text)
    atomic_write_json(folder / "cohort.json", result.cohort)


def run_progression(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    predictions: str | os.PathLike | None = None,
    grader: str | None = None,
    task: str | None = None,
    min_focus_mm2: float = MIN_FOCUS_MM2,
    split: str | None = None,
) -> ProgressionResult:
    """``enface progression``: visits → features → per-eye rates → cohort, agreement, report.

    Args:
        dataset: dataset folder (its reference masks; the case meta of predicted scans).
        out: output folder (created; a previous output of this command is replaced).
        predictions: a folder written by ``enface predict``; ``None`` uses the reference
            masks. With predictions, the dataset's reference masks (of ``grader``), when
            present, give the agreement of the growth rates.
        grader: extra grader of the reference masks (``mask_<task>.<grader>.png``).
        task: mask task (default: the predictions' task, else the dataset's only task).
        min_focus_mm2: smallest component counted as a focus.
        split: only the patients of this split of ``splits.json`` (``train``, ``val``, ``test``).

    Raises:
        DatasetError: bad input (every check runs before anything is written).
        ValueError: ``out`` is something else than a previous output of this command.
    """
    dataset, out = Path(dataset), Path(out)
    if not min_focus_mm2 >= 0:
        raise ValueError(f"min_focus_mm2 must be >= 0, got {min_focus_mm2}")
    replaced = _check_out(writable_folder(out))
    visits, reference = _read_inputs(dataset, predictions, grader, task, min_focus_mm2, split)
    eyes = eye_rates(visits.visits)
    cohort = {
        "task": visits.task,
        "source": visits.source,
        "dataset": str(dataset),
        "split": split,
        "grader": grader,
        "min_focus_mm2": min_focus_mm2,
        **cohort_summary(eyes),
        "skipped": len(visits.skipped),
        "notes": visits.notes,
        "agreement": None,
    }
    result = ProgressionResult(out, visits, eyes, cohort, reference)
    figures = {
        "sqrt_area.png": figure_png(
            plot_sqrt_area(eyes, eye_rates(reference.visits) if reference else None, f"√area per eye ({visits.task})")
        )
    }
    if reference is not None:
        rows, agreement = rate_agreement(visits.visits, reference.visits)
        if rows:
            result.agreement, cohort["agreement"] = rows, agreement
            figures["bland_altman.png"] = figure_png(plot_bland_altman(rows, agreement))
        else:
            visits.notes.append(
                "no eye has two or more visits with both a prediction and a reference mask: no agreement computed"
            )
    html_text = _report(result, figures)
    if replaced:
        log.info("replacing the earlier progression output in %s (%s)", out, ", ".join(replaced))
    _write_folder(out, lambda folder: _write_files(folder, result, figures, html_text))
    log.info("progression of %d eyes (%d visits) written to %s", len(eyes), len(visits.visits), out)
    return result
