"""Label efficiency on the clinical endpoint: GA growth rates from each configuration's predictions.

For every test set, model, initialisation and label fraction, the masks each seed's ensemble
predicted on the test cases (``eval/<test set>/predictions.npz``, thresholded at 0.5) give
per-eye growth rates over the visits; they are compared with the rates of the reference
masks on the same visits (:func:`enface.progression.rate_agreement`: eyes with >= 2 paired
visits, Bland-Altman bias and limits of agreement, ICC(A,1)). :func:`seed_growth` computes
that agreement when a run finishes (its ledger record keeps it); :func:`growth_agreement`
reports the mean over seeds of each statistic, from the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import Case, load_case
from enface.progression import Visit, lesion_features, rate_agreement
from enface.targets import binary

__all__ = ["GROWTH_COLUMNS", "growth_agreement", "seed_growth"]

RATES: tuple[tuple[str, str], ...] = (("sqrt_growth_mm_per_year", "sqrt"), ("growth_mm2_per_year", "area"))
GROWTH_COLUMNS: tuple[str, ...] = (
    "test_set",
    "model",
    "init",
    "fraction",
    "n_seeds",
    "eyes",
    *(f"{short}_{stat}" for _, short in RATES for stat in ("bias", "loa_low", "loa_high", "icc")),
)
"""Columns of ``results/growth.csv``: per configuration, seed means of the agreement statistics
(``sqrt_*`` in mm/year, ``area_*`` in mm²/year)."""


def _visit(case: Case, mask: np.ndarray) -> Visit | None:
    if case.meta.visit is None:
        return None
    sp = (float(case.spacing[0]), float(case.spacing[1]))
    return Visit(case.case_id, case.patient_id, case.meta.eye, int(case.meta.visit), sp, lesion_features(mask, sp))


class _TestSetCases:
    """The cases of one test set, loaded once, with their reference visits."""

    def __init__(self, dataset: str, task: str) -> None:
        self.root = Path(dataset)
        self.task = task
        self.cases: dict[str, Case] = {}
        self.reference: dict[str, Visit] = {}

    def case(self, case_id: str) -> Case:
        if case_id not in self.cases:
            self.cases[case_id] = case = load_case(self.root / "cases" / case_id)
            ref = _visit(case, case.load_mask(self.task)) if case.has_mask(self.task) else None
            if ref is not None:
                self.reference[case_id] = ref
        return self.cases[case_id]


def seed_growth(npz: Path, dataset: str, task: str) -> dict[str, Any] | None:
    """Agreement of one run's predicted growth rates with the reference on one test set
    (:func:`enface.progression.rate_agreement`), or None without an eye with two paired visits.

    Args:
        npz: the evaluation's ``predictions.npz`` (probabilities as uint8, one array per case).
        dataset: the test set's dataset folder.
        task: the mask task.
    """
    cases = _TestSetCases(dataset, task)
    predicted: list[Visit] = []
    with np.load(npz) as data:
        for cid in data.files:
            v = _visit(cases.case(cid), binary(data[cid] / 255))  # stored as round(p * 255)
            if v is not None and cid in cases.reference:
                predicted.append(v)
    _, summary = rate_agreement(predicted, [cases.reference[v.case_id] for v in predicted])
    return summary if summary["eyes"] else None


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _row(key: tuple[str, str, str, float], summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ts, model, init, fraction = key
    row: dict[str, Any] = {
        "test_set": ts,
        "model": model,
        "init": init,
        "fraction": fraction,
        "n_seeds": len(summaries),
        "eyes": max(s["eyes"] for s in summaries),
    }
    for rate, short in RATES:
        for stat in ("bias", "loa_low", "loa_high", "icc"):
            row[f"{short}_{stat}"] = _mean([s[rate][stat] for s in summaries])
    return row


def growth_agreement(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Growth-rate agreement with the reference per test set and configuration (seed means),
    from the ledger records of the label-fraction runs (each evaluation's ``growth``).

    Configurations whose test cases hold no eye with two labeled visits are left out.
    """
    per_key: dict[tuple[str, str, str, float], list[Mapping[str, Any]]] = {}
    for rec in records:
        run = rec["run"]
        if run["stage"] != "train":
            continue
        for name, ev in rec["evaluations"].items():
            if ev.get("growth"):
                per_key.setdefault((name, run["model"], run["init"], float(run["fraction"])), []).append(ev["growth"])
    return [_row(key, per_key[key]) for key in sorted(per_key)]
