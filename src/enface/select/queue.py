"""``enface select``: a labeling queue of a dataset's unlabeled scans, ranked by a run's ensemble.

The pool is the cases of one split that have no mask of the run's task. Each is scored
(:mod:`enface.select.scoring`) and ranked (:mod:`enface.select.strategies`); the first ``n``
are written as a CSV with the columns :data:`QUEUE_COLUMNS`, which the review page and other
tools read. Everything is checked before anything is written, and the file is written
atomically: a failed call leaves no file and never a half one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enface.config import FAST_DEFAULT
from enface.data.folder import QUEUE_COLUMNS, Case, is_dataset, list_cases, load_case, read_dataset_info
from enface.data.splits import select_cases
from enface.engine.inference import Ensemble, read_run_config
from enface.errors import DatasetError
from enface.fileio import atomic_write_csv
from enface.select.scoring import AREA_FLOOR_MM2, score_cases
from enface.select.strategies import Pick, check_strategy, rank_cases
from enface.targets import Target

__all__ = ["QUEUE_COLUMNS", "QueueResult", "check_queue_path", "select_queue"]

log = logging.getLogger(__name__)

_SPACING_RTOL = 0.01


@dataclass
class QueueResult:
    """Outcome of :func:`select_queue`.

    Attributes:
        rows: the queue's rows (columns :data:`QUEUE_COLUMNS`).
        path: the queue file.
        pool: cases in the pool (unlabeled cases of the split).
        requested: the ``n`` asked for.
    """

    rows: list[dict[str, Any]]
    path: Path
    pool: int
    requested: int

    def summary(self) -> str:
        """One line: how many were selected out of what, and where they are."""
        short = (
            f" (fewer than the {self.requested} asked for: the pool ran out)" if len(self.rows) < self.requested else ""
        )
        return f"{len(self.rows)} of {self.pool} unlabeled case(s) queued{short}: {self.path}"


def check_queue_path(out: str | os.PathLike, dataset: str | os.PathLike) -> Path:
    """The queue file ``out``, refused where writing it would touch a dataset file.

    Raises:
        DatasetError: ``out`` is a folder, an existing file inside the dataset folder, or any
            path inside its ``cases/`` folder.
    """
    path = Path(out)
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder; give the queue file's name (e.g. {path / 'queue.csv'})")
    real, root = path.resolve(), Path(dataset).resolve()
    inside = real == root or root in real.parents
    if inside and (real.exists() or (root / "cases") in real.parents):
        raise DatasetError(
            f"{path}: writing the queue there would overwrite a file of the dataset {root}; choose another path"
        )
    return path


def _run_task(run: Path, cfg: dict[str, Any], task: str | None) -> Target:
    if cfg.get("stage") != "train":
        raise DatasetError(
            f"{run}: select needs a segmentation run; this one is a {cfg.get('stage')!r} run "
            f"(target {cfg.get('target')!r})"
        )
    target = Target.segment(str(cfg["target"]))
    if task is not None and task != target.name:
        raise DatasetError(f"{run}: the run segments {target.name!r}, not {task!r}; use a run trained on {task!r}")
    return target


def _grid(case: Case) -> tuple[int, int, int, float, float]:
    h, w, d = case.oct_shape()
    return int(h), int(w), int(d), float(case.spacing[0]), float(case.spacing[1])


def _fmt_grid(g: tuple[int, int, int, float, float]) -> str:
    return f"{g[0]} x {g[1]} x {g[2]} at {g[3]:.4g} x {g[4]:.4g} mm"


def _same_grid(a: tuple[int, int, int, float, float], b: tuple[int, int, int, float, float]) -> bool:
    return a[:3] == b[:3] and all(math.isclose(x, y, rel_tol=_SPACING_RTOL) for x, y in zip(a[3:], b[3:]))


def _check_grids(run: Path, cfg: dict[str, Any], cases: Iterable[Case]) -> None:
    """Every case on a grid (H x W x D and en-face spacing) that the run was trained on.

    Raises:
        DatasetError: naming the first case that differs, its grid and the run's.
    """
    train_root = Path(str(cfg.get("dataset") or ""))
    if not is_dataset(train_root):
        log.warning(
            "%s: the run's training dataset %s is not found here: only the depth is checked against the model",
            run,
            train_root,
        )
        return
    known: list[tuple[int, int, int, float, float]] = []
    for c in list_cases(train_root):
        g = _grid(c)
        if not any(_same_grid(g, k) for k in known):
            known.append(g)
    for case in cases:
        g = _grid(case)
        if not any(_same_grid(g, k) for k in known):
            depths = sorted({k[2] for k in known})
            what = "depth" if g[2] not in depths else "grid"
            raise DatasetError(
                f"case {case.case_id} ({case.path}): its {what} differs from the run's training data: "
                f"{_fmt_grid(g)}, the run {run} was trained on {'; '.join(_fmt_grid(k) for k in known)} "
                "(prepare the scans as the training data were, e.g. enface prepare --depth)"
            )


def _pool(root: Path, split: str, target: Target) -> tuple[list[Case], list[Case]]:
    """``(unlabeled, labeled)`` cases of a split for a task."""
    ids = select_cases(root, split)
    cases = [load_case(root / "cases" / cid) for cid in ids]
    unlabeled = [c for c in cases if not c.has_mask(target.name)]
    labeled = [c for c in cases if c.has_mask(target.name)]
    if not unlabeled:
        raise DatasetError(
            f"{root}: every one of the {len(cases)} case(s) of split {split!r} has a {target.filename}: "
            "no unlabeled case left to select"
        )
    return unlabeled, labeled


def queue_rows(picks: Sequence[Pick], strategy: str) -> list[dict[str, Any]]:
    """Rows of a queue file for ranked picks."""
    return [
        {
            "rank": i + 1,
            "case_id": p.case.case_id,
            "patient_id": p.case.patient_id,
            "eye": p.case.eye,
            "visit": "" if p.case.visit is None else p.case.visit,
            "score": p.score,
            "predicted_area_mm2": p.case.predicted_area_mm2,
            "area_sd_mm2": p.case.area_sd_mm2,
            "strategy": strategy,
        }
        for i, p in enumerate(picks)
    ]


def select_queue(
    run: str | os.PathLike,
    dataset: str | os.PathLike,
    n: int,
    out: str | os.PathLike,
    strategy: str = "uncertainty",
    split: str = "train",
    per: str = "case",
    seed: int = 0,
    task: str | None = None,
    top_k: int = 5,
    tta: bool = True,
    area_floor_mm2: float = AREA_FLOOR_MM2,
    device: str = "cpu",
    fast: bool = FAST_DEFAULT,
) -> QueueResult:
    """Rank the unlabeled cases of a split and write the first ``n`` as a queue CSV.

    Args:
        run: segmentation run folder (its top-k checkpoints are the ensemble).
        dataset: dataset folder whose cases are ranked.
        n: cases to queue (>= 1); more than the pool holds selects the whole pool (logged).
        out: the queue CSV.
        strategy: ``random``, ``uncertainty`` or ``diverse`` (:mod:`enface.select.strategies`).
        split: ``train``, ``val``, ``test`` or ``all``.
        per: ``case``, or ``patient`` (no patient twice).
        seed: seed of ``random``.
        task: the task the labels are for (default the run's; another one is refused).
        top_k: checkpoints of the run in the ensemble.
        tta: add mirrored views to the ensemble's samples.
        area_floor_mm2: see :func:`enface.select.scoring.uncertainty_score`.
        device: torch device.
        fast: the fast inference path.

    Raises:
        DatasetError: not a segmentation run, a run of another task, a case on another grid
            or depth than the run's training data, no unlabeled case, or an ``out`` that
            would overwrite a dataset file.
        ValueError: unknown strategy, unit or split, ``n`` < 1.
    """
    check_strategy(strategy, per)
    if int(n) < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    run, root = Path(run), Path(dataset)
    out_path = check_queue_path(out, root)
    cfg = read_run_config(run)
    target = _run_task(run, cfg, task)
    read_dataset_info(root)
    unlabeled, labeled = _pool(root, split, target)
    _check_grids(run, cfg, unlabeled + (labeled if strategy == "diverse" else []))
    units = len({c.patient_id for c in unlabeled}) if per == "patient" else len(unlabeled)
    if n > units:
        log.warning(
            "asked for %d, but the pool holds %d unlabeled %s(s) of split %r: selecting all of them",
            n,
            units,
            "patient" if per == "patient" else "case",
            split,
        )
    ensemble = Ensemble.from_run(run, top_k, device, fast=fast)
    need_features = strategy == "diverse"
    log.info(
        "scoring %d unlabeled case(s) with %d member(s)%s",
        len(unlabeled),
        len(ensemble.models),
        " x 4 mirrored views" if tta else "",
    )
    scores = score_cases(ensemble, root, [c.case_id for c in unlabeled], tta, need_features, area_floor_mm2)
    centers = score_cases(ensemble, root, [c.case_id for c in labeled], False, True) if need_features else []
    picks = rank_cases(scores, strategy, n, per, seed, centers)
    rows = queue_rows(picks, strategy)
    atomic_write_csv(out_path, rows, QUEUE_COLUMNS)
    return QueueResult(rows, out_path, len(unlabeled), int(n))
