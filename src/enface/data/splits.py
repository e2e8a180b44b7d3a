"""Patient-wise splits of a dataset folder (train / val / test)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["make_splits"]


def make_splits(
    patient_ids: Iterable[str],
    seed: int = 0,
    ratios: Sequence[float] = (0.6, 0.1, 0.3),
) -> dict[str, list[str]]:
    """Split patients into train / val / test, patient-wise, from a seed.

    Counts are rounded so that they add up to the number of patients; when there are at
    least three patients, every split gets at least one.

    Args:
        patient_ids: patient identifiers (duplicates are ignored).
        seed: random seed of the permutation.
        ratios: fractions of train, val and test (normalised to sum 1).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.
    """
    pids = sorted(set(patient_ids))
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, got {tuple(ratios)}")
    r = np.asarray(ratios, dtype=float) / float(sum(ratios))
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
