"""Selection strategies: which scored cases to label first.

* ``random`` — a seeded shuffle (the baseline every other strategy must beat);
* ``uncertainty`` — highest uncertainty score first (:mod:`enface.select.scoring`);
* ``diverse`` — greedy k-center (core-set) on the cases' feature vectors: each pick is the
  case farthest (Euclidean) from every labeled case and every earlier pick, so a round covers
  the appearance variety of the pool instead of many near-copies of one hard scan. Without
  labeled cases the first pick is the most uncertain one.

With ``per="patient"`` no patient is picked twice: after a case is picked, the other cases
of its patient leave the candidates (a patient's rank is that of its best case). Ties are
broken by case id, so every strategy is a pure function of the scores and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from enface.select.scoring import CaseScore

__all__ = ["PER", "STRATEGIES", "Pick", "rank_cases"]

STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "diverse")
"""Known strategies."""

PER: tuple[str, ...] = ("case", "patient")
"""Units of a queue: every case, or at most one case per patient."""


@dataclass(frozen=True)
class Pick:
    """One selected case and the value it was ranked by.

    Attributes:
        case: the case's scores.
        score: the strategy's ranking value: a uniform draw (random), the uncertainty score
            (uncertainty), the feature distance to the nearest labeled or earlier pick (diverse).
    """

    case: CaseScore
    score: float


def check_strategy(strategy: str, per: str = "case") -> None:
    """Raise :class:`ValueError` naming the known values for an unknown strategy or unit."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if per not in PER:
        raise ValueError(f"--per must be one of {', '.join(PER)}, got {per!r}")


def _greedy(order: Sequence[tuple[float, CaseScore]], n: int, per: str) -> list[Pick]:
    picks: list[Pick] = []
    seen: set[str] = set()
    for value, case in order:
        if len(picks) == n:
            break
        if per == "patient" and case.patient_id in seen:
            continue
        seen.add(case.patient_id)
        picks.append(Pick(case, float(value)))
    return picks


def _feature_matrix(cases: Sequence[CaseScore], what: str) -> np.ndarray:
    if any(c.features is None for c in cases):
        raise ValueError(f"the diverse strategy needs feature vectors of the {what} (score them with features=True)")
    return np.stack([np.asarray(c.features, dtype=np.float64) for c in cases])


def _k_center(cases: Sequence[CaseScore], n: int, per: str, centers: Sequence[CaseScore]) -> list[Pick]:
    x = _feature_matrix(cases, "pool")
    if centers:
        c = _feature_matrix(centers, "labeled cases")
        if c.shape[1] != x.shape[1]:
            raise ValueError(f"feature vectors differ in length: pool {x.shape[1]}, labeled cases {c.shape[1]}")
        d_min = np.sqrt(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)).min(axis=1)
    else:
        d_min = np.full(len(cases), np.inf)
    alive = np.ones(len(cases), dtype=bool)
    unc = np.array([c.uncertainty for c in cases])
    picks: list[Pick] = []
    while len(picks) < n and alive.any():
        # farthest first; among equal distances (e.g. no centers yet) the most uncertain
        candidates = np.flatnonzero(alive)
        best = int(max(candidates, key=lambda i: (d_min[i], unc[i], -i)))  # cases are sorted by id: first id wins ties
        picks.append(Pick(cases[best], float(d_min[best]) if np.isfinite(d_min[best]) else float("nan")))
        alive[best] = False
        if per == "patient":
            alive &= np.array([c.patient_id != cases[best].patient_id for c in cases])
        d_min = np.minimum(d_min, np.sqrt(((x - x[best]) ** 2).sum(-1)))
    return picks


def rank_cases(
    cases: Sequence[CaseScore],
    strategy: str,
    n: int,
    per: str = "case",
    seed: int | Sequence[int] = 0,
    labeled: Sequence[CaseScore] = (),
) -> list[Pick]:
    """The first ``n`` picks of a strategy among scored cases.

    Args:
        cases: the pool's scores.
        strategy: one of :data:`STRATEGIES`.
        n: how many to pick (fewer when the pool, or its patients with ``per="patient"``, run out).
        per: ``"case"`` or ``"patient"`` (no patient twice).
        seed: seed of ``random`` (an int or a sequence of ints for ``np.random.default_rng``).
        labeled: scores (with features) of the labeled cases, the initial centers of ``diverse``.

    Returns:
        Picks in rank order.

    Raises:
        ValueError: unknown strategy or unit, ``n`` < 1, or ``diverse`` without features.
    """
    check_strategy(strategy, per)
    if int(n) < 1:
        raise ValueError(f"the number of cases to select must be >= 1, got {n}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    if strategy == "random":
        draws = np.random.default_rng(seed).random(len(ordered))
        pairs = sorted(zip(draws.tolist(), ordered), key=lambda t: t[0])
        return _greedy(pairs, int(n), per)
    if strategy == "uncertainty":
        pairs = sorted(((c.uncertainty, c) for c in ordered), key=lambda t: -t[0])
        return _greedy(pairs, int(n), per)
    return _k_center(ordered, int(n), per, list(labeled))
