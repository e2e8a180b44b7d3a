"""The paper's four claims, each put to the study's data with a paired test.

From the seed-averaged per-case Dice of each configuration (:func:`enface.study.results.collect_results`),
per test set:

1. **FPN above the baselines with few labels**: at the lowest label fraction, FPN against every
   other model with the same initialisation;
2. **SSL helps FPN and Lachinov**: each ``ssl-*`` initialisation against the same model from
   scratch, at every fraction;
3. **FAF ≥ SLO**: FPN pre-trained on inverted FAF against FPN pre-trained on SLO, at every fraction;
4. **the gain shrinks as labels grow**: per case, the SSL − scratch gain at the lowest fraction
   against the gain at the highest.

Each comparison is a Wilcoxon signed-rank test on the cases both sides have (two-sided) and is
answered ``yes`` (the claimed direction, p < :data:`ALPHA`), ``no`` (the opposite direction,
p < :data:`ALPHA`; the direction is the one the signed ranks favour, W+ > W-, not the means',
which a few cases with large differences can pull the other way) or ``not shown`` (no
significant difference). A comparison whose configurations the study lacks is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from enface.study.stats import paired_wilcoxon

__all__ = ["ALPHA", "CLAIMS", "claim_rows", "claim_summary"]

ALPHA = 0.05
"""Significance level of the answers."""
CLAIMS: tuple[str, ...] = (
    "FPN above the baselines with few labels",
    "SSL helps FPN and Lachinov",
    "FAF ≥ SLO",
    "the gain shrinks as labels grow",
)

Values = Mapping[str, float]


def _answer(diff: Mapping[str, Any]) -> str:
    if not math.isfinite(diff["p_value"]) or diff["p_value"] >= ALPHA:
        return "not shown"
    return "yes" if diff["signed_rank_sum"] > 0 else "no"


def _compare(claim: int, ts: str, what: str, reference: Values, other: Values) -> dict[str, Any]:
    """``other`` against ``reference`` (the claim says ``other`` is higher)."""
    res = paired_wilcoxon(reference, other)
    common = [c for c in set(reference) & set(other) if math.isfinite(reference[c] + other[c])]
    mean_ref = float(np.mean([reference[c] for c in common])) if common else math.nan
    mean_other = float(np.mean([other[c] for c in common])) if common else math.nan
    row = {
        "claim": CLAIMS[claim],
        "test_set": ts,
        "comparison": what,
        "n": res["n"],
        "mean_reference": mean_ref,
        "mean_other": mean_other,
        "mean_difference": mean_other - mean_ref,
        "median_difference": res["median_difference"],
        "p_value": res["p_value"],
        "signed_rank_sum": res["signed_rank_sum"],
    }
    row["answer"] = _answer(row)
    return row


def claim_rows(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """Every comparison of the four claims the study's configurations allow.

    Args:
        per_case: ``{"<test set>|<model>|<init>|<fraction>": {case_id: {"dice": ...}}}``.
    """
    dice: dict[tuple[str, str, str, float], dict[str, float]] = {}
    for key, cases in per_case.items():
        ts, model, init, fraction = key.split("|")
        dice[(ts, model, init, float(fraction))] = {c: float(v["dice"]) for c, v in cases.items()}
    rows: list[dict[str, Any]] = []
    for ts in sorted({k[0] for k in dice}):
        mine = {k[1:]: v for k, v in dice.items() if k[0] == ts}
        rows += _baselines(ts, mine) + _ssl_gains(ts, mine) + _faf_vs_slo(ts, mine) + _shrinking(ts, mine)
    return rows


def _baselines(ts: str, dice: Mapping[tuple[str, str, float], Values]) -> list[dict[str, Any]]:
    fractions = sorted({f for m, _, f in dice if m == "fpn"})
    if not fractions:
        return []
    low, rows = fractions[0], []
    for (model, init, fraction), values in sorted(dice.items()):
        if model != "fpn" and fraction == low and ("fpn", init, low) in dice:
            what = f"fpn vs {model}, both {init}, {100 * low:g} %"
            rows.append(_compare(0, ts, what, values, dice[("fpn", init, low)]))
    return rows


def _ssl_gains(ts: str, dice: Mapping[tuple[str, str, float], Values]) -> list[dict[str, Any]]:
    rows = []
    for (model, init, fraction), values in sorted(dice.items()):
        if init.startswith("ssl-") and (model, "scratch", fraction) in dice:
            what = f"{model}: {init} vs scratch, {100 * fraction:g} %"
            rows.append(_compare(1, ts, what, dice[(model, "scratch", fraction)], values))
    return rows


def _faf_vs_slo(ts: str, dice: Mapping[tuple[str, str, float], Values]) -> list[dict[str, Any]]:
    rows = []
    for (model, init, fraction), values in sorted(dice.items()):
        slo = (model, "ssl-slo", fraction)
        if init == "ssl-faf_inv" and slo in dice:
            rows.append(_compare(2, ts, f"{model}: ssl-faf_inv vs ssl-slo, {100 * fraction:g} %", dice[slo], values))
    return rows


def _shrinking(ts: str, dice: Mapping[tuple[str, str, float], Values]) -> list[dict[str, Any]]:
    rows = []
    for model, init in sorted({(m, i) for m, i, _ in dice if i.startswith("ssl-")}):
        fractions = sorted(f for m, i, f in dice if (m, i) == (model, init) and (m, "scratch", f) in dice)
        if len(fractions) < 2:
            continue
        lo, hi = fractions[0], fractions[-1]

        def gain(f: float, m: str = model, i: str = init) -> dict[str, float]:
            ssl, scratch = dice[(m, i, f)], dice[(m, "scratch", f)]
            return {c: ssl[c] - scratch[c] for c in set(ssl) & set(scratch)}

        what = f"{model}: {init} − scratch at {100 * lo:g} % vs at {100 * hi:g} %"
        rows.append(_compare(3, ts, what, gain(hi), gain(lo)))
    return rows


def claim_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per claim (in :data:`CLAIMS` order, those with comparisons): how its comparisons were
    answered, ``{"claim", "n", "yes": [...], "no": [...], "not shown": [...]}``, each list
    holding ``"<comparison> (<test set>, p = ...)"``."""
    from enface.study.stats import format_p

    out = []
    for claim in CLAIMS:
        mine = [r for r in rows if r["claim"] == claim]
        if not mine:
            continue
        summary: dict[str, Any] = {"claim": claim, "n": len(mine), "yes": [], "no": [], "not shown": []}
        for r in mine:
            summary[r["answer"]].append(f"{r['comparison']} ({r['test_set']}, p = {format_p(r['p_value'])})")
        out.append(summary)
    return out
