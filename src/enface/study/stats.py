"""The statistics of a study's tables: paired Wilcoxon signed-rank tests and how numbers are printed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

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
        ``{"n", "statistic", "p_value", "median_difference", "signed_rank_sum"}`` (``other -
        reference``); p is NaN when fewer than 2 paired cases differ. ``signed_rank_sum`` is
        W+ - W- (the ranks of ``|other - reference|`` over the cases that differ, signed): the
        side the test finds higher is the side it favours, which the means need not agree with
        when a few cases differ a lot.
    """
    from scipy.stats import rankdata, wilcoxon

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
        "signed_rank_sum": float(np.sum(np.sign(diff[diff != 0]) * rankdata(np.abs(diff[diff != 0])))),
    }
    if np.count_nonzero(diff) >= 2:
        res = wilcoxon(b, a, alternative=alternative)
        result["statistic"] = float(res.statistic)
        result["p_value"] = float(res.pvalue)
    return result


def format_number(value: Any, digits: int = 3) -> str:
    """``0.912`` (``digits`` decimals), or ``n/a`` for None and non-finite values."""
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def format_p(p: float | None) -> str:
    """A p-value as tables print it: ``0.013``, ``3.2e-05`` below 0.001, ``n/a`` when undefined."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
