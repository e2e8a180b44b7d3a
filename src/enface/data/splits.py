"""Patient-wise splits of a dataset folder (train / val / test) and label fractions.

``splits.json`` holds::

    {"train": [patient ids], "val": [...], "test": [...], "seed": 0, "ratios": [0.6, 0.1, 0.3],
     "fractions": {"<task>": {"5": [patient ids], "10": [...], "20": [...], "100": [...]}}}

Label fractions are nested subsets of the *labeled* training patients of each task (a
patient is labeled for a task when at least one of its cases has that task's mask). Every
fraction holds at least one patient: ``n = max(1, round(f * n_labeled))``, rounded half up.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from enface.data.folder import MODALITIES, list_cases, list_ids, read_splits, split_coverage, write_splits
from enface.errors import DatasetError
from enface.targets import Target

__all__ = ["SPLITS", "fraction_key", "label_fractions", "make_splits", "select_cases", "split_dataset"]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def make_splits(
    patient_ids: Iterable[str], seed: int = 0, ratios: Sequence[float] = (0.6, 0.1, 0.3)
) -> dict[str, list[str]]:
    """Split patients into train / val / test, patient-wise, from a seed.

    Counts are rounded so that they add up to the number of patients; when there are at
    least three patients, every split gets at least one.

    Args:
        patient_ids: patient identifiers (duplicates are ignored).
        seed: random seed of the permutation.
        ratios: fractions of train, val and test, summing to 1.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: not three non-negative finite numbers that sum to 1.
    """
    pids = sorted(set(patient_ids))
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios):
        raise ValueError(f"ratios must be three non-negative numbers (train, val, test), got {tuple(ratios)}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1 (train, val, test), got {tuple(ratios)} summing to {sum(ratios):g}")
    r = np.asarray(ratios, dtype=float)
    n = len(pids)
    counts = np.floor(r * n).astype(int)
    # hand out the remainder by largest fractional part
    for i in np.argsort(-(r * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            if counts[i] == 0 and r[i] > 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[i] += 1
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [pids[i] for i in order]
    n_train, n_val = int(counts[0]), int(counts[1])
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def fraction_key(fraction: float) -> str:
    """The ``splits.json`` key of a label fraction: its percentage, e.g. 0.05 -> ``"5"``.

    Raises:
        ValueError: the fraction is not in (0, 1].
    """
    f = float(fraction)
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise ValueError(f"label fraction must lie in (0, 1], got {fraction!r}")
    return f"{round(f * 100.0, 6):g}"


def _fraction_count(fraction: float, n: int) -> int:
    # round half up (Python's round() would give round(0.5) == 0), at least one, at most n
    return min(n, max(1, int(math.floor(fraction * n + 0.5 + 1e-9))))


def label_fractions(
    patients: Sequence[str], fractions: Sequence[float] = (0.05, 0.1, 0.2, 1.0), seed: int = 0
) -> dict[str, list[str]]:
    """Nested subsets of patients, one per label fraction.

    The patients are shuffled once with ``seed``; the subset of fraction ``f`` is the first
    ``max(1, round(f * len(patients)))`` of that order, so a smaller fraction is always
    contained in a larger one.

    Args:
        patients: patient ids (duplicates ignored; order irrelevant).
        fractions: fractions in (0, 1].
        seed: seed of the shuffle.

    Returns:
        ``{fraction_key(f): sorted patient ids}`` in increasing order of ``f``.

    Raises:
        ValueError: no patients, a fraction outside (0, 1], or two fractions with one key.
    """
    pids = sorted(set(patients))
    if not pids:
        raise ValueError("label fractions need at least one patient")
    fracs = sorted(float(f) for f in fractions)
    if not fracs:
        raise ValueError("no label fractions given")
    keys = [fraction_key(f) for f in fracs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"label fractions must be distinct, got {list(fractions)}")
    order = [pids[i] for i in np.random.default_rng(seed).permutation(len(pids))]
    return {k: sorted(order[: _fraction_count(f, len(pids))]) for k, f in zip(keys, fracs)}


def split_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    ratios: Sequence[float] = (0.6, 0.1, 0.3),
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 1.0),
    tasks: Sequence[str] | None = None,
    redo: bool = False,
) -> dict[str, Any]:
    """Write ``splits.json`` of a dataset folder: patient-wise splits and label fractions.

    An existing train/val/test assignment (e.g. the official split written by
    ``enface prepare``) is kept unless ``redo`` is set; the label fractions are always
    recomputed from ``seed``. Other keys of an existing ``splits.json`` are preserved when
    its assignment is kept, dropped when it is redone.

    Args:
        root: dataset folder.
        seed: seed of the patient split (when made) and of the label fractions.
        ratios: train / val / test fractions of patients, used when a split is made.
        fractions: label fractions in (0, 1].
        tasks: tasks to make label fractions for; ``None``: every task with a mask in any
            case (tasks without a labeled training patient are then skipped with a warning).
        redo: make a new train/val/test assignment even when one exists.

    Returns:
        The written content.

    Raises:
        DatasetError: unreadable dataset or splits, or a requested task has no labeled
            training patient.
    """
    cases = list_cases(root)
    if not cases:
        raise DatasetError("dataset has no cases", path=root)
    patients = sorted({c.patient_id for c in cases})
    existing: dict[str, Any] = {}
    if not redo and os.path.isfile(os.path.join(root, "splits.json")):
        existing = read_splits(root)
        assignment, used_ratios = _kept_assignment(root, existing, patients)
    else:
        assignment = make_splits(patients, seed=seed, ratios=ratios)
        used_ratios = [float(r) for r in ratios]
    labeled = _labeled_training_patients(root, cases, set(assignment["train"]), tasks)
    out: dict[str, Any] = {k: v for k, v in existing.items() if k not in (*SPLITS, "seed", "ratios", "fractions")}
    out.update(assignment)
    out["seed"] = int(seed)
    out["ratios"] = list(used_ratios)
    out["fractions"] = {t: label_fractions(sorted(pids), fractions, seed=seed) for t, pids in labeled.items()}
    write_splits(root, out)
    log.info("splits of %s: %s", root, ", ".join(f"{k} {len(out[k])} patients" for k in SPLITS))
    return out


def _kept_assignment(
    root: str | os.PathLike, existing: dict[str, Any], patients: Sequence[str]
) -> tuple[dict[str, list[str]], list[float]]:
    """The train/val/test assignment of an existing ``splits.json`` and its ratios (warns about gaps)."""
    assignment = {k: sorted(existing[k]) for k in SPLITS}
    missing, unknown = split_coverage(assignment, patients)
    if missing:
        log.warning(
            "%d patient(s) of %s are in no split and will not be used: %s (use redo to re-split)",
            len(missing),
            root,
            list_ids(missing, 5),
        )
    if unknown:
        log.warning("%d patient(s) in splits.json have no case in %s: %s", len(unknown), root, list_ids(unknown, 5))
    n = max(1, sum(len(v) for v in assignment.values()))
    log.info("keeping the existing train/val/test assignment of %s", root)
    return assignment, existing.get("ratios") or [round(len(assignment[k]) / n, 3) for k in SPLITS]


def _labeled_training_patients(
    root: str | os.PathLike, cases: Sequence[Any], train: set[str], tasks: Sequence[str] | None
) -> dict[str, set[str]]:
    """``{task: training patients with a mask of it}`` for the tasks that get label fractions.

    ``tasks=None``: every task with a mask in any case; tasks without a labeled training
    patient are skipped with a warning. Given tasks must all have one.

    Raises:
        DatasetError: a requested task has no labeled training patient.
    """
    labeled: dict[str, set[str]] = {}
    for case in cases:
        if case.patient_id in train:
            for task in case.tasks():
                labeled.setdefault(task, set()).add(case.patient_id)
    if tasks is None:
        for t in sorted({t for c in cases for t in c.tasks()} - set(labeled)):
            log.warning("task %r has no labeled training patient: no label fractions for it", t)
        return {t: labeled[t] for t in sorted(labeled)}
    wanted = list(dict.fromkeys(tasks))
    for t in wanted:
        if t not in labeled:
            raise DatasetError(f"task {t!r} has no labeled case among the training patients", path=root)
    return {t: labeled[t] for t in wanted}


def _parse_requirement(req: str) -> tuple[str, str]:
    if req in MODALITIES or req == "oct":
        return "image", req
    if req.startswith("mask:"):
        return "mask", Target.parse(req).name
    raise ValueError(f"unknown requirement {req!r}: expected 'oct', one of {MODALITIES} or 'mask:<task>'")


def select_cases(
    root: str | os.PathLike,
    split: str,
    requires: Sequence[str] = (),
    fraction: float | None = None,
    task: str | None = None,
) -> list[str]:
    """Case ids of a split, filtered by the files they carry and by a label fraction.

    Args:
        root: dataset folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every case, no
            ``splits.json`` needed).
        requires: what every case must have: ``"slo"``, ``"faf"``, ``"oct"`` or
            ``"mask:<task>"``. Give ``"mask:<task>"`` too when training on a label
            fraction: a labeled patient may also have unlabeled visits.
        fraction: keep only the patients of this label fraction of ``task`` (train only).
        task: the task whose label fractions ``fraction`` refers to.

    Returns:
        Sorted case ids.

    Raises:
        ValueError: unknown split or requirement, or ``fraction`` without ``task`` or
            outside the train split.
        DatasetError: unreadable dataset, a patient in two splits (named), or the label
            fraction is not in ``splits.json``.
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS + ('all',)}")
    parsed = [_parse_requirement(r) for r in requires]
    if fraction is not None:
        if task is None:
            raise ValueError("a label fraction needs the task it refers to (task=...)")
        if split != "train":
            raise ValueError(f"label fractions apply to the train split only, not {split!r}")
    cases = list_cases(root)
    if split == "all":
        allowed: set[str] | None = None
    else:
        splits = read_splits(root)
        allowed = set(splits[split])
        if fraction is not None:
            key = fraction_key(fraction)
            table = splits.get("fractions", {}).get(task)
            if not isinstance(table, dict) or key not in table:
                raise DatasetError(
                    f"no {key}% label fraction for task {task!r} (run `enface split` with that fraction)",
                    path=os.path.join(root, "splits.json"),
                )
            allowed &= set(table[key])
    out = []
    for case in cases:
        if allowed is not None and case.patient_id not in allowed:
            continue
        ok = True
        for kind, name in parsed:
            if kind == "mask":
                ok = case.has_mask(name)
            elif name == "oct":
                ok = (case.path / "oct.npy").is_file()
            else:
                ok = case.has_image(name)
            if not ok:
                break
        if ok:
            out.append(case.case_id)
    return sorted(out)
