"""Visit days of a prepared dataset: from visit dates, one origin per patient.

A case's ``visit`` is a day: given as such (sidecar ``visit``), or counted from the patient's
first dated visit (sidecar ``visit_date`` or the export's visit date) once every case is
written. An eye whose visits are given partly one way and partly the other (or not at all) is
refused: the two kinds of day do not share an origin (a 2023 date at day 0 before a day-400
visit).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path

from enface.data.folder import Case, list_cases
from enface.errors import DatasetError
from enface.fileio import atomic_write_json

__all__ = ["assign_visit_days", "refuse_mixed_visits"]


def _parse_date(text: str) -> _dt.date | None:
    try:
        return _dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        return None


def assign_visit_days(out: Path) -> int:
    """Visit day = days since the patient's first dated visit (cases with a visit date only).

    Returns:
        Number of ``meta.json`` files updated.
    """
    cases = list_cases(out)
    first: dict[str, _dt.date] = {}
    dated = []
    for c in cases:
        d = _parse_date(c.meta.extra.get("visit_date", "")) if c.meta.extra.get("visit_date") else None
        if d is not None:
            dated.append((c, d))
            first[c.patient_id] = min(d, first.get(c.patient_id, d))
    refuse_mixed_visits(out, cases, {c.case_id for c, _ in dated})
    n = 0
    for c, d in dated:
        day = (d - first[c.patient_id]).days
        if day != c.meta.visit:
            atomic_write_json(c.path / "meta.json", replace(c.meta, visit=day).to_json())
            n += 1
    return n


def refuse_mixed_visits(out: Path, cases: list[Case], dated: set[str]) -> None:
    """Refuse an eye whose visits are given partly as dates and partly as days (or not at all):
    days counted from the first date and days given by hand do not share an origin.

    Raises:
        DatasetError: naming the patient, the eye and one case of each kind.
    """
    eyes: dict[tuple[str, str], tuple[list[Case], list[Case]]] = {}
    for c in cases:
        with_date, without = eyes.setdefault((c.patient_id, c.meta.eye), ([], []))
        (with_date if c.case_id in dated else without).append(c)
    for (patient, eye), (with_date, without) in sorted(eyes.items()):
        if with_date and without:
            raise DatasetError(
                f"patient {patient!r} eye {eye}: visits given both as dates (case {with_date[0].case_id}) "
                f"and as days or not at all (case {without[0].case_id}, day {without[0].meta.visit}); "
                "give every visit of an eye the same way (visit_date in each sidecar, or visit), then re-run "
                "prepare with --overwrite (the cases are written; dataset.json and splits.json are not)",
                path=out,
            )
