"""A phantom cohort written as a dataset folder.

Like the paper's data: patients with one or two eyes, each seen at one to three visits
months apart (lesions grow in between); some visits are labeled (the others form the
unlabeled pool for pre-training), some lack FAF, some labeled ones have a second grader.
Every patient has at least one labeled visit, so every split can be evaluated. Cases are
generated and written one at a time (bounded memory); ``dataset.json`` is written last,
so a folder that has it is complete.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import CaseMeta, is_dataset, write_case, write_dataset_info
from enface.data.splits import split_dataset
from enface.fileio import writable_folder
from enface.progress import Progress
from enface.synth.eye import TASKS, EyeModel, make_grid
from enface.synth.presets import get_preset
from enface.synth.realism import get_difficulty

__all__ = ["CohortCase", "plan_cohort", "synthesize_dataset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortCase:
    """One planned scan.

    Attributes:
        case_id: folder name, ``<patient>_<eye>_V<k>``.
        patient_id: ``P0001``, ...
        eye: ``"OD"`` or ``"OS"``.
        visit_index: 0 for the first visit of the eye.
        day: days since the eye's first visit.
        eye_seed: seed of the eye (``generate_case(eye_seed, eye=eye, day=day)`` renders it).
        labeled: masks are written.
        has_faf: the FAF image is written.
        grader2: a second grader's masks are written (labeled cases only).
    """

    case_id: str
    patient_id: str
    eye: str
    visit_index: int
    day: int
    eye_seed: int
    labeled: bool
    has_faf: bool
    grader2: bool


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def plan_cohort(
    patients: int,
    seed: int,
    label_fraction: float = 0.7,
    faf_fraction: float = 0.85,
    grader2_fraction: float = 0.3,
    max_visits: int = 3,
) -> list[CohortCase]:
    """Draw the cohort's structure (cheap: no images).

    Patient ``p`` depends only on ``(seed, p)``: adding patients keeps the earlier ones.

    Args:
        patients: number of patients (at least 1).
        seed: non-negative integer.
        label_fraction: probability that a visit is labeled (at least one per patient
            when positive).
        faf_fraction: probability that a visit has an FAF image.
        grader2_fraction: probability that a labeled visit has a second grader's masks.
        max_visits: visits per eye are drawn from 1..max_visits.

    Returns:
        The cases, grouped by patient and eye, in visit order.
    """
    if int(patients) != patients or patients < 1:
        raise ValueError(f"patients must be a positive integer, got {patients!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(max_visits) != max_visits or max_visits < 1:
        raise ValueError(f"max_visits must be a positive integer, got {max_visits!r}")
    label_fraction = _check_fraction("label_fraction", label_fraction)
    faf_fraction = _check_fraction("faf_fraction", faf_fraction)
    grader2_fraction = _check_fraction("grader2_fraction", grader2_fraction)
    plan: list[CohortCase] = []
    for p in range(int(patients)):
        rng = np.random.default_rng([int(seed), 7, p])
        pid = f"P{p + 1:04d}"
        eyes = ["OD", "OS"] if rng.random() < 0.6 else [str(rng.choice(["OD", "OS"]))]
        rows: list[dict] = []
        for eye in eyes:
            entropy = [int(seed), p, eyes.index(eye), len(eyes)]
            eye_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
            day = 0
            for v in range(int(rng.integers(1, int(max_visits) + 1))):
                if v:
                    day += int(rng.integers(150, 420))
                rows.append(
                    dict(
                        case_id=f"{pid}_{eye}_V{v + 1}",
                        patient_id=pid,
                        eye=eye,
                        visit_index=v,
                        day=day,
                        eye_seed=eye_seed,
                        labeled=bool(rng.random() < label_fraction),
                        has_faf=bool(rng.random() < faf_fraction),
                        grader2=bool(rng.random() < grader2_fraction),
                    )
                )
        if label_fraction > 0 and not any(r["labeled"] for r in rows):
            rows[int(rng.integers(len(rows)))]["labeled"] = True
        for r in rows:
            r["grader2"] = r["grader2"] and r["labeled"]
            plan.append(CohortCase(**r))
    return plan


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to mix with existing content; with ``overwrite`` replace an earlier dataset."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_dataset(out, unfinished=True):
        raise ValueError(f"{out}: folder is not empty and is not a dataset folder; choose another output")
    if not overwrite:
        raise ValueError(f"{out}: already holds a dataset (pass overwrite=True / --overwrite to replace it)")
    for name in ("dataset.json", "splits.json"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "cases", ignore_errors=True)


def synthesize_dataset(
    out: str | Path,
    patients: int,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    task: str = "ga",
    preset: str = "demo",
    *,
    label_fraction: float = 0.7,
    faf_fraction: float = 0.85,
    grader2_fraction: float = 0.3,
    max_visits: int = 3,
    difficulty: str = "realistic",
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a phantom dataset folder (the layout of :mod:`enface.data.folder`).

    Args:
        out: dataset folder (created; must be empty or absent unless ``overwrite``).
        patients: number of patients.
        seed: non-negative integer; same arguments give identical files.
        shape: ``(H, W, D)``; default: the preset's shape (spacing scales with it).
        task: ``"ga"``, ``"rpd"`` or ``"both"``.
        preset: acquisition preset (``enface.synth.PRESETS``).
        label_fraction, faf_fraction, grader2_fraction: probabilities that a visit is labeled,
            has FAF, has a second grader (labeled visits only).
        max_visits: at most this many visits per eye.
        difficulty: ``"realistic"`` (default) or ``"easy"`` (unit tests); see
            :mod:`enface.synth.realism`.
        name: dataset name; default ``phantom-<preset>-<task>``.
        overwrite, progress: replace an existing dataset in ``out``; show a progress bar.

    Returns:
        The dataset folder.

    Raises:
        ValueError: bad arguments, or ``out`` holds something that would be overwritten.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    p = get_preset(preset)
    get_difficulty(difficulty)  # unknown names fail before anything is written
    grid = make_grid(shape, None, preset)
    plan = plan_cohort(patients, seed, label_fraction, faf_fraction, grader2_fraction, max_visits)
    out = writable_folder(out, "synth output")
    _prepare_output(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    source = f"enface synth --preset {preset} --seed {seed} --difficulty {difficulty}"
    written = _write_cases(out, plan, grid, task, difficulty, p.device, source, progress)

    # patient-wise 60/10/30 split plus the nested label fractions of every task
    split_dataset(out, seed=seed)
    generator = {
        "name": "enface.synth",
        "seed": int(seed),
        "preset": preset,
        "shape": list(grid.shape),
        "task": task,
        "patients": int(patients),
        **dict(label_fraction=label_fraction, faf_fraction=faf_fraction, grader2_fraction=grader2_fraction),
        **dict(max_visits=int(max_visits), difficulty=difficulty),
    }
    counts = _write_info(out, name or f"phantom-{preset}-{task}", plan, written, grid.spacing, generator)
    _log_summary(counts, out, time.perf_counter() - t0)
    return out


def _log_summary(counts: dict[str, int], out: Path, seconds: float) -> None:
    what = ("cases", "patients", "labeled", "with_faf", "second_grader")
    log.info(
        "wrote %d cases of %d patients (%d labeled, %d with FAF, %d with a second grader) to %s in %.1f s",
        *(counts[k] for k in what),
        out,
        seconds,
    )


def _write_cases(
    out: Path,
    plan: list[CohortCase],
    grid: Any,
    task: str,
    difficulty: str,
    device: str,
    source: str,
    progress: bool,
) -> list[dict[str, Any]]:
    """Render and write every planned case, one eye model at a time; what each holds."""
    model: EyeModel | None = None
    written: list[dict[str, Any]] = []
    with Progress(len(plan), "enface synth", "case", progress, log) as bar:
        for case in plan:
            if model is None or model.seed != case.eye_seed:
                model = EyeModel(case.eye_seed, grid, task=task, eye=case.eye, difficulty=difficulty)
            written.append(_write_phantom_case(out, model, case, device, source))
            bar.step(case.case_id)
    return written


def _write_info(
    out: Path, name: str, plan: list[CohortCase], written: list[dict[str, Any]], spacing: Any, generator: dict[str, Any]
) -> dict[str, int]:
    """Write ``dataset.json`` of a phantom; returns its counts."""
    counts = {
        "patients": len({c.patient_id for c in plan}),
        "cases": len(plan),
        "labeled": sum(w["labeled"] for w in written),
        "with_faf": sum(w["faf"] for w in written),
        "second_grader": sum(w["grader2"] for w in written),
    }
    write_dataset_info(
        out,
        name=name,
        modalities=["oct", "slo"] + (["faf"] if counts["with_faf"] else []),
        tasks=sorted(set().union(*(w["tasks"] for w in written))),
        spacing=spacing,
        generator=generator,
        counts=counts,
    )
    return counts


def _write_phantom_case(out: Path, model: EyeModel, case: CohortCase, device: str, source: str) -> dict[str, Any]:
    """Render one planned visit of an eye and write it as a case; what it holds, for the counts."""
    ph = model.render(day=case.day, flattened=True)
    images = {"slo": ph.slo, **({"faf": ph.faf} if case.has_faf else {})}
    masks = {k: m for k, m in ph.masks.items() if "." not in k or case.grader2} if case.labeled else {}
    extra: dict[str, Any] = {
        "visit_index": case.visit_index,
        "eye_seed": case.eye_seed,
        "flattened": True,
        "bm_depth": ph.info["bm_flat"],
        "generator": "enface.synth",
    }
    if case.labeled:
        extra.update({k: v for k, v in ph.info.items() if k.endswith("_mm2") or k == "rpd_deposits"})
    meta = CaseMeta(
        case_id=case.case_id,
        patient_id=case.patient_id,
        eye=case.eye,
        visit=case.day,
        spacing=ph.spacing,
        device=device,
        source=source,
        extra=extra,
    )
    write_case(out, meta, ph.oct, images=images, masks=masks)
    return {
        "labeled": bool(masks),
        "faf": bool(case.has_faf),
        "grader2": bool(case.labeled and case.grader2),
        "tasks": {k for k in masks if "." not in k},
    }
