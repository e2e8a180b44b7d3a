"""The study's statistics and how its reports write numbers: the paired Wilcoxon test, p-values.

Used by the tables of :mod:`enface.study.results` and :mod:`enface.study.active_results`,
the report (:mod:`enface.study.report`) and the demo's headline (:mod:`enface.study.demo`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

__all__ = ["format_number", "format_p", "paired_wilcoxon"]


def paired_wilcoxon(
    reference: Mapping[str, float], other: Mapping[str, float], alternative: str = "two-sided"
) -> dict[str, float]:
    """Wilcoxon signed-rank test on per-case values paired by case id.

    Args:
        reference: ``{case_id: value}`` of the reference configuration.
        other: ``{case_id: value}`` of the compared configuration.
        alternative: passed to :func:`scipy.stats.wilcoxon`.

    Returns:
        ``{"n", "statistic", "p_value", "median_difference"}`` (``other - reference``);
        p is NaN when fewer than 2 paired cases differ.
    """
    common = sorted(set(reference) & set(other))
    a = np.array([reference[c] for c in common], dtype=float)
    b = np.array([other[c] for c in common], dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    diff = b - a
    result = {
        "n": int(a.size),
        "statistic": math.nan,
        "p_value": math.nan,
        "median_difference": float(np.median(diff)) if diff.size else math.nan,
    }
    if np.count_nonzero(diff) >= 2:
        res = wilcoxon(b, a, alternative=alternative)
        result["statistic"] = float(res.statistic)
        result["p_value"] = float(res.pvalue)
    return result


def format_p(p: float | None) -> str:
    """A p-value for a table: ``0.042``, ``3.1e-05`` below 0.001, ``n/a`` when undefined."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def format_number(v: Any, digits: int = 3) -> str:
    """A value for a table with ``digits`` decimals, ``n/a`` when missing or not finite."""
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
