"""GA progression: lesion masks over visits → areas, lesion features and growth rates per eye.

What a GA study reports is how fast the atrophy grows. Per visit (one mask of one eye):

* area ``A`` in mm² = pixel count × ``sh`` × ``sw`` (the case's en-face spacing);
* square root of the area ``sqrt(A)`` in mm;
* foci: 8-connected components of at least :data:`MIN_FOCUS_MM2` mm² (smaller specks
  still count towards the area and perimeter, not towards the foci);
* perimeter ``P`` in mm by the Cauchy–Crofton formula (:func:`crofton_perimeter`);
* circularity ``4 π A / P²`` (1 for a disc, smaller for irregular or multifocal lesions).

Per eye (all visits of one ``patient_id`` and ``eye``), with ``t = day / 365.25`` years,
the growth rates are the least-squares slopes of ``A`` and of ``sqrt(A)`` over ``t``
(mm²/year and mm/year), with a 95 % t-interval from three visits on
(:func:`enface.progression.stats.fit_rate`). Areas are physical, so visits of one eye
scanned with different spacings remain comparable (this is noted, not refused).

This module computes and holds no files; :mod:`enface.progression.run` reads reference
masks and ``enface predict`` folders into :class:`Visit` objects and writes the tables,
figures and report of ``enface progression``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import label

from enface.errors import DatasetError
from enface.metrics import area_mm2
from enface.progression.stats import RateFit, bland_altman, fit_rate, icc_a1, mean_sd

__all__ = [
    "DAYS_PER_YEAR",
    "EYE_COLUMNS",
    "MIN_FOCUS_MM2",
    "VISIT_COLUMNS",
    "EyeRates",
    "LesionFeatures",
    "Skipped",
    "Visit",
    "VisitSet",
    "check_visits",
    "cohort_summary",
    "crofton_perimeter",
    "eye_rates",
    "lesion_features",
    "rate_agreement",
]

log = logging.getLogger(__name__)

MIN_FOCUS_MM2 = 0.05
"""Smallest connected component (mm²) counted as a focus: about the area of a disc 250 µm
across (0.049 mm²), the smallest extent of complete RPE and outer retinal atrophy (cRORA)
in the CAM consensus; smaller specks still count towards area and perimeter."""

DAYS_PER_YEAR = 365.25
"""Years are days / 365.25."""

VISIT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "eye",
    "day",
    "area_mm2",
    "sqrt_area_mm",
    "foci",
    "perimeter_mm",
    "circularity",
)
"""Columns of ``visits.csv`` (ensembles add ``area_sd_mm2``, ``sqrt_area_sd_mm``, ``members``)."""

EYE_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "eye",
    "visits",
    "years",
    "baseline_area_mm2",
    "growth_mm2_per_year",
    "sqrt_growth_mm_per_year",
    "growth_mm2_per_year_ci_low",
    "growth_mm2_per_year_ci_high",
    "sqrt_growth_mm_per_year_ci_low",
    "sqrt_growth_mm_per_year_ci_high",
    "baseline_sqrt_area_mm",
    "baseline_foci",
    "baseline_focality",
    "first_day",
    "last_day",
)
"""Columns of ``eyes.csv`` (intervals need three visits; an eye with one visit has no rate)."""


# --------------------------------------------------------------------------- one mask


def _crofton_directions(sh: float, sw: float) -> tuple[np.ndarray, np.ndarray]:
    """Angular weights (radians, summing to π) and line spacings (mm) of the four grid directions.

    Directions, in this order: along a row (step ``(0, 1)``), the diagonal ``(1, 1)``,
    along a column ``(1, 0)`` and the anti-diagonal ``(1, -1)``; physical angles from the
    row direction are ``0``, ``a``, ``π/2``, ``π - a`` with ``a = atan2(sh, sw)``. Each
    direction stands for the angles closer to it than to its neighbours.
    """
    a = math.atan2(sh, sw)
    angles = np.array([0.0, a, math.pi / 2, math.pi - a])
    order = np.argsort(angles)
    s = angles[order]
    ext = np.concatenate([s[-1:] - math.pi, s, s[:1] + math.pi])
    weights = np.empty(4)
    weights[order] = (ext[2:] - ext[:-2]) / 2.0
    diag = sh * sw / math.hypot(sh, sw)
    return weights, np.array([sh, diag, sw, diag])


def crofton_perimeter(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Boundary length (mm) of a binary mask on an anisotropic grid (Cauchy–Crofton formula).

    ``P = 1/2 ∫∫ n(θ, p) dp dθ`` (``n`` = crossings of the line at angle ``θ``, offset
    ``p`` with the boundary) is discretised over the lines through the pixel centres in
    four directions (rows, columns, both pixel diagonals), each with its physical line
    spacing ``d_k`` and the angular weight ``w_k`` it represents:
    ``P ≈ 1/2 Σ_k w_k d_k N_k``. For a disc this is unbiased on any grid (its width is
    the same in every direction); the count of lines is off by at most one on each side
    per direction, so the error stays within about ``2 Σ_k w_k d_k``. Marching-squares
    contours, in contrast, overestimate a disc's perimeter by ~5 % on square pixels and
    by 15–25 % on the 4:1 to 20:1 grids of OCT cubes. The image border closes lesions
    that touch it.

    Args:
        mask: ``(H, W)`` binary mask.
        spacing: ``(sh, sw)`` or ``(sh, sw, sd)`` in mm.
    """
    sh, sw = float(spacing[0]), float(spacing[1])
    m = np.pad(np.asarray(mask).astype(bool), 1).astype(np.int8)
    crossings = np.array(
        [
            np.count_nonzero(m[:, 1:] != m[:, :-1]),
            np.count_nonzero(m[1:, 1:] != m[:-1, :-1]),
            np.count_nonzero(m[1:, :] != m[:-1, :]),
            np.count_nonzero(m[1:, :-1] != m[:-1, 1:]),
        ],
        dtype=np.float64,
    )
    weights, spacings = _crofton_directions(sh, sw)
    return float(0.5 * (weights * spacings * crossings).sum())


@dataclass(frozen=True)
class LesionFeatures:
    """Features of one lesion mask (all in physical units).

    Attributes:
        area_mm2: area in mm².
        sqrt_area_mm: square root of the area in mm.
        foci: connected components of at least ``min_focus_mm2``.
        perimeter_mm: boundary length in mm (Cauchy–Crofton).
        circularity: ``4 π A / P²`` (NaN for an empty mask).
    """

    area_mm2: float
    sqrt_area_mm: float
    foci: int
    perimeter_mm: float
    circularity: float


def lesion_features(mask: np.ndarray, spacing: Sequence[float], min_focus_mm2: float = MIN_FOCUS_MM2) -> LesionFeatures:
    """Area, sqrt area, foci, perimeter and circularity of a binary ``(H, W)`` mask.

    Args:
        mask: ``(H, W)`` binary lesion mask.
        spacing: ``(sh, sw)`` or ``(sh, sw, sd)`` in mm.
        min_focus_mm2: smallest 8-connected component counted as a focus.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {m.shape}")
    area = area_mm2(m, spacing)
    labels, n = label(m, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(spacing[0]) * float(spacing[1])
    foci = int(np.count_nonzero(sizes >= min_focus_mm2 - 1e-12))
    perimeter = crofton_perimeter(m, spacing)
    circ = 4.0 * math.pi * area / perimeter**2 if perimeter > 0 else math.nan
    return LesionFeatures(area, math.sqrt(area), foci, perimeter, circ)


# --------------------------------------------------------------------------- visits


@dataclass(frozen=True)
class Visit:
    """One eye at one visit: where it comes from and its lesion features.

    Attributes:
        case_id: dataset case id or predicted scan id.
        patient_id: patient.
        eye: ``"OD"`` or ``"OS"``.
        day: visit day.
        spacing: en-face spacing ``(sh, sw)`` in mm.
        features: the lesion features.
        member_areas_mm2: areas of the ensemble members' own masks (empty when unknown).
    """

    case_id: str
    patient_id: str
    eye: str
    day: int
    spacing: tuple[float, float]
    features: LesionFeatures
    member_areas_mm2: tuple[float, ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.patient_id, self.eye, self.day)

    @property
    def years(self) -> float:
        return self.day / DAYS_PER_YEAR

    @property
    def area_sd_mm2(self) -> float:
        """Spread (population SD) of the members' areas; NaN with fewer than two members."""
        return float(np.std(self.member_areas_mm2)) if len(self.member_areas_mm2) > 1 else math.nan

    @property
    def sqrt_area_sd_mm(self) -> float:
        """Spread of the members' sqrt areas; NaN with fewer than two members."""
        a = np.sqrt(np.asarray(self.member_areas_mm2, dtype=np.float64))
        return float(a.std()) if a.size > 1 else math.nan

    def row(self) -> dict[str, Any]:
        f = self.features
        out: dict[str, Any] = {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "eye": self.eye,
            "day": self.day,
            "area_mm2": f.area_mm2,
            "sqrt_area_mm": f.sqrt_area_mm,
            "foci": f.foci,
            "perimeter_mm": f.perimeter_mm,
            "circularity": f.circularity,
        }
        if len(self.member_areas_mm2) > 1:
            out.update(
                area_sd_mm2=self.area_sd_mm2, sqrt_area_sd_mm=self.sqrt_area_sd_mm, members=len(self.member_areas_mm2)
            )
        out.update(years=self.years, spacing_h_mm=self.spacing[0], spacing_w_mm=self.spacing[1])
        return out


@dataclass(frozen=True)
class Skipped:
    """A scan or case left out, and why."""

    case_id: str
    source: str
    reason: str


@dataclass
class VisitSet:
    """Visits read from one source (reference masks or predictions) of one task.

    Attributes:
        visits: the visits, sorted by patient, eye, day.
        skipped: cases or scans left out (no mask, failed prediction).
        task: mask task.
        source: what was read, in words.
        notes: remarks for the report (e.g. mixed spacings).
    """

    visits: list[Visit]
    skipped: list[Skipped]
    task: str
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def ensemble(self) -> bool:
        return any(len(v.member_areas_mm2) > 1 for v in self.visits)


def raise_problems(problems: Sequence[str], what: str) -> None:
    """Raise one :class:`DatasetError` listing ``problems`` (the first eight), if there are any."""
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise DatasetError(f"{what}: {shown}")


# --------------------------------------------------------------------------- eyes, cohort


def _by_eye(visits: Iterable[Visit]) -> dict[tuple[str, str], list[Visit]]:
    groups: dict[tuple[str, str], list[Visit]] = {}
    for v in sorted(visits, key=lambda v: v.key):
        groups.setdefault((v.patient_id, v.eye), []).append(v)
    return groups


def check_visits(visit_set: VisitSet) -> None:
    """Refuse two visits of one eye on the same day; note eyes scanned with several spacings.

    Raises:
        DatasetError: naming every eye and the cases that share a day.
    """
    problems: list[str] = []
    for (patient, eye), vs in _by_eye(visit_set.visits).items():
        days: dict[int, list[str]] = {}
        for v in vs:
            days.setdefault(v.day, []).append(v.case_id)
        problems += [f"patient {patient} {eye} day {d}: {', '.join(ids)}" for d, ids in days.items() if len(ids) > 1]
        spacings = list(dict.fromkeys(v.spacing for v in vs))  # in visit order
        if len(spacings) > 1:
            shown = ", ".join(f"{a:.4g} x {b:.4g}" for a, b in spacings)
            note = (
                f"patient {patient} {eye}: visits scanned with different en-face spacings ({shown} mm); "
                "areas are in mm², so the visits remain comparable"
            )
            log.info("%s", note)
            visit_set.notes.append(note)
    raise_problems(problems, f"{visit_set.source}: two visits of one eye on the same day")


@dataclass(frozen=True)
class EyeRates:
    """Growth of one eye's lesion over its visits.

    Attributes:
        patient_id: patient.
        eye: ``"OD"`` or ``"OS"``.
        visits: the eye's visits in day order.
        area: least-squares fit of area (mm²) over years.
        sqrt_area: least-squares fit of sqrt area (mm) over years.
    """

    patient_id: str
    eye: str
    visits: tuple[Visit, ...]
    area: RateFit
    sqrt_area: RateFit

    @property
    def years(self) -> float:
        return (self.visits[-1].day - self.visits[0].day) / DAYS_PER_YEAR

    @property
    def focality(self) -> str:
        """At baseline: ``"unifocal"``, ``"multifocal"`` or ``"none"`` (no focus)."""
        n = self.visits[0].features.foci
        return "none" if n == 0 else "unifocal" if n == 1 else "multifocal"

    def row(self) -> dict[str, Any]:
        base = self.visits[0].features
        return {
            "patient_id": self.patient_id,
            "eye": self.eye,
            "visits": len(self.visits),
            "years": self.years,
            "baseline_area_mm2": base.area_mm2,
            "growth_mm2_per_year": self.area.slope,
            "sqrt_growth_mm_per_year": self.sqrt_area.slope,
            "growth_mm2_per_year_ci_low": self.area.lo,
            "growth_mm2_per_year_ci_high": self.area.hi,
            "sqrt_growth_mm_per_year_ci_low": self.sqrt_area.lo,
            "sqrt_growth_mm_per_year_ci_high": self.sqrt_area.hi,
            "baseline_sqrt_area_mm": base.sqrt_area_mm,
            "baseline_foci": base.foci,
            "baseline_focality": self.focality,
            "first_day": self.visits[0].day,
            "last_day": self.visits[-1].day,
        }


def eye_rates(visits: Iterable[Visit]) -> list[EyeRates]:
    """Per eye: least-squares growth of area and of sqrt area over ``day / 365.25`` years."""
    out = []
    for (patient, eye), vs in _by_eye(visits).items():
        t = [v.years for v in vs]
        out.append(
            EyeRates(
                patient,
                eye,
                tuple(vs),
                fit_rate(t, [v.features.area_mm2 for v in vs]),
                fit_rate(t, [v.features.sqrt_area_mm for v in vs]),
            )
        )
    return out


def cohort_summary(eyes: Sequence[EyeRates]) -> dict[str, Any]:
    """Mean ± SD (ddof 1) of both rates over the eyes with a rate, and baseline focality counts."""
    out: dict[str, Any] = {
        "eyes": len(eyes),
        "eyes_with_rate": sum(len(e.visits) > 1 for e in eyes),
        "visits": sum(len(e.visits) for e in eyes),
    }
    for name, get in (
        ("growth_mm2_per_year", lambda e: e.area.slope),
        ("sqrt_growth_mm_per_year", lambda e: e.sqrt_area.slope),
    ):
        mean, sd, n = mean_sd([get(e) for e in eyes])
        out[name] = {"mean": mean, "sd": sd, "n": n}
    out["baseline_focality"] = {k: sum(e.focality == k for e in eyes) for k in ("unifocal", "multifocal", "none")}
    return out


def rate_agreement(test: Sequence[Visit], reference: Sequence[Visit]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Agreement of growth rates from ``test`` visits (predictions) with ``reference`` visits.

    Visits are paired by (patient, eye, day); per eye with at least two paired visits both
    rates are fitted on the paired visits only, so both sides see the same time points.

    Returns:
        ``(rows, summary)``: one row per eye (both rates, their difference test − reference)
        and, per rate, Bland–Altman bias / limits of agreement and ICC(A,1).
    """
    ref_by_key = {v.key: v for v in reference}
    test_pairs = [v for v in test if v.key in ref_by_key]
    rows = []
    for (patient, eye), vs in _by_eye(test_pairs).items():
        if len(vs) < 2:
            continue
        pair = {"test": eye_rates(vs)[0], "reference": eye_rates([ref_by_key[v.key] for v in vs])[0]}
        row: dict[str, Any] = {"patient_id": patient, "eye": eye, "visits": len(vs), "years": pair["test"].years}
        for rate, get in (
            ("growth_mm2_per_year", lambda e: e.area.slope),
            ("sqrt_growth_mm_per_year", lambda e: e.sqrt_area.slope),
        ):
            r, p = get(pair["reference"]), get(pair["test"])
            row.update({f"reference_{rate}": r, f"predicted_{rate}": p, f"diff_{rate}": p - r})
        rows.append(row)
    summary: dict[str, Any] = {
        "eyes": len(rows),
        "pairing": "visits matched by patient, eye and day; rates refitted on the matched visits",
        "icc_form": "ICC(A,1): two-way random, absolute agreement, single measures (= Shrout & Fleiss ICC(2,1))",
    }
    for rate in ("growth_mm2_per_year", "sqrt_growth_mm_per_year"):
        p = [r[f"predicted_{rate}"] for r in rows]
        ref = [r[f"reference_{rate}"] for r in rows]
        ba = bland_altman(p, ref).to_json()
        ba["icc"] = icc_a1(np.column_stack([ref, p])) if len(rows) >= 2 else math.nan
        summary[rate] = ba
    return rows, summary
