"""Statistics of GA progression: least-squares growth rates, Bland–Altman agreement, ICC.

Small, dependency-light helpers used by :mod:`enface.progression`:

* :func:`fit_rate` — slope of a value over time by ordinary least squares, with its
  two-sided 95 % t-interval when there are at least three points;
* :func:`bland_altman` — mean difference (bias) and 95 % limits of agreement;
* :func:`icc_a1` — the intraclass correlation ICC(A,1) of McGraw & Wong (= ICC(2,1) of
  Shrout & Fleiss): two-way random effects, absolute agreement, single measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

__all__ = ["BlandAltman", "RateFit", "bland_altman", "fit_rate", "icc_a1", "mean_sd", "mean_sd_text"]

LOA_Z = 1.96
"""Multiplier of the SD of the differences for the 95 % limits of agreement."""


@dataclass(frozen=True)
class RateFit:
    """A straight line ``value = intercept + slope * t`` fitted by least squares.

    Attributes:
        slope: change per unit of ``t`` (NaN with fewer than two points).
        intercept: value at ``t = 0``.
        lo: lower end of the 95 % t-interval of the slope (NaN with fewer than three points).
        hi: upper end of the interval.
        se: standard error of the slope (NaN with fewer than three points).
        n: number of points.
    """

    slope: float
    intercept: float
    lo: float
    hi: float
    se: float
    n: int


def fit_rate(t: Sequence[float], values: Sequence[float], level: float = 0.95) -> RateFit:
    """Ordinary least-squares slope of ``values`` over ``t`` with its t-interval.

    ``slope = sum((t - t̄)(y - ȳ)) / sum((t - t̄)²)``; with ``n >= 3`` points,
    ``se = sqrt(sum(residual²) / (n - 2) / sum((t - t̄)²))`` and the interval is
    ``slope ± t_{(1 + level)/2, n-2} * se``.

    Args:
        t: ``(n,)`` times (e.g. years); at least two distinct values for a slope.
        values: ``(n,)`` observations.
        level: coverage of the interval.

    Returns:
        The fit; fields that need more points are NaN.

    Raises:
        ValueError: lengths differ, or two or more points share every time value.
    """
    x = np.asarray(t, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"t and values must be 1D of the same length, got {x.shape} and {y.shape}")
    n = int(x.size)
    if n < 2:
        return RateFit(math.nan, float(y[0]) if n else math.nan, math.nan, math.nan, math.nan, n)
    sxx = float(((x - x.mean()) ** 2).sum())
    if sxx <= 0.0:
        raise ValueError("all points have the same time: no slope can be fitted")
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    if n < 3:
        return RateFit(slope, intercept, math.nan, math.nan, math.nan, n)

    residual = y - (intercept + slope * x)
    se = math.sqrt(float((residual**2).sum()) / (n - 2) / sxx)
    half = float(student_t.ppf(0.5 + level / 2.0, n - 2)) * se
    return RateFit(slope, intercept, slope - half, slope + half, se, n)


@dataclass(frozen=True)
class BlandAltman:
    """Agreement of two measurements of the same quantity.

    Attributes:
        n: pairs.
        bias: mean of ``test - reference``.
        sd: sample SD (ddof 1) of the differences (NaN with fewer than two pairs).
        loa_low: ``bias - 1.96 sd``.
        loa_high: ``bias + 1.96 sd``.
    """

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float

    def to_json(self) -> dict[str, float | int]:
        return {"n": self.n, "bias": self.bias, "sd_diff": self.sd, "loa_low": self.loa_low, "loa_high": self.loa_high}


def bland_altman(test: Sequence[float], reference: Sequence[float]) -> BlandAltman:
    """Bias and 95 % limits of agreement of ``test`` against ``reference``.

    Args:
        test: ``(n,)`` values of the method under test (e.g. rates from predictions).
        reference: ``(n,)`` reference values of the same subjects.

    Raises:
        ValueError: lengths differ.
    """
    a = np.asarray(test, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"test and reference must be 1D of the same length, got {a.shape} and {b.shape}")
    d = a - b
    n = int(d.size)
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return BlandAltman(n, bias, sd, bias - LOA_Z * sd, bias + LOA_Z * sd)


def icc_a1(ratings: np.ndarray) -> float:
    """ICC(A,1): two-way random effects, absolute agreement, single measures.

    With ``n`` subjects (rows) rated by ``k`` raters (columns), from the two-way ANOVA
    mean squares (subjects ``MSR``, raters ``MSC``, residual ``MSE``)::

        ICC = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

    (McGraw & Wong 1996, case 2A; Shrout & Fleiss 1979, ICC(2,1)).

    Args:
        ratings: ``(n, k)`` array, ``n >= 2`` subjects, ``k >= 2`` raters, all finite.

    Returns:
        The ICC, or NaN when it is undefined (fewer than two subjects, or no variance).

    Raises:
        ValueError: not a 2D array with at least two columns, or non-finite values.
    """
    r = np.asarray(ratings, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"ratings must be (subjects, raters) with >= 2 raters, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("ratings must be finite")
    n, k = r.shape
    if n < 2:
        return math.nan
    grand = r.mean()
    ss_rows = k * float(((r.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((r.mean(axis=0) - grand) ** 2).sum())
    ss_err = float(((r - grand) ** 2).sum()) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denom) if denom > 0 else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample SD (ddof 1) and count of the finite ``values`` (NaN where undefined)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    mean = float(v.mean()) if v.size else math.nan
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return mean, sd, int(v.size)


def mean_sd_text(summary: dict, unit: str, digits: int = 3) -> str:
    """``"0.512 ± 0.104 mm²/year (n = 4)"`` from ``{"mean", "sd", "n"}``.

    With one value there is no spread: ``"0.512 mm²/year (n = 1, no spread)"``; with none,
    ``"n/a (no eye with two or more visits)"`` — never ``± nan``.
    """
    n, mean, sd = int(summary.get("n", 0)), summary.get("mean"), summary.get("sd")
    if n == 0 or mean is None or not math.isfinite(mean):
        return "n/a (no eye with two or more visits)"
    if n == 1 or sd is None or not math.isfinite(sd):
        return f"{mean:.{digits}f} {unit} (n = {n}, no spread)"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} {unit} (n = {n})"
