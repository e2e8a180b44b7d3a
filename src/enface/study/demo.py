"""``enface demo``: a realistic phantom and a reduced study, sized for a laptop CPU.

The headline states what the study is about, with its uncertainty: at the lowest label
fraction, the test Dice of FPN pre-trained on inverted FAF minus that of FPN from scratch,
paired by test case (mean difference, a 95 % interval from a bootstrap over training *seeds*
and test *patients*, and the Wilcoxon signed-rank p-value); and how much each arm gains from
the lowest fraction to 100 % of the labels. Runs that did not converge or collapsed are named
(:mod:`enface.study.convergence`). Every run stops when its validation Dice has plateaued
(the same rule for every arm), and its numbers depend on the config, the seeds and the
hardware only, not on what else the machine is doing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.splits import fraction_key
from enface.study.config import StudyConfig
from enface.study.stats import format_p, paired_wilcoxon

__all__ = ["DEMO_PATIENTS", "DEMO_SEEDS", "demo_study", "headline", "paired_difference"]

DEMO_PATIENTS = 16
"""Phantom patients of the demo dataset (about 55 scans at the ``demo`` preset, 32 x 128 x 64)."""
DEMO_SEEDS = 2
"""Training seeds of every demo configuration: the headline's interval covers training randomness."""


def demo_study(out: str | os.PathLike, seed: int = 0) -> StudyConfig:
    """The reduced study of ``enface demo``.

    FPN (width 0.25) from scratch vs pre-trained on inverted FAF, at 10 % of the labeled
    training patients (one patient) and at 100 %, :data:`DEMO_SEEDS` training seeds from
    ``seed``, on the realistic phantom; budgets by convergence.
    """
    out = Path(out)
    data = out / "data"
    return StudyConfig(
        name="demo",
        dataset=str(data),
        synth={"patients": DEMO_PATIENTS, "seed": seed, "preset": "demo", "task": "ga"},
        task="ga",
        test_sets={"phantom-test": {"dataset": str(data), "split": "test"}},
        models=("fpn",),
        inits=("scratch", "ssl-faf_inv"),
        fractions=(0.1, 1.0),
        seeds=tuple(range(seed, seed + DEMO_SEEDS)),
        pretrain_seed=seed,
        reference={"model": "fpn", "init": "ssl-faf_inv"},
        common={"width": 0.25, "crop": (32, 64), "num_workers": 0, "accelerator": "cpu"},
        pretrain={"epochs": 8, "batch_size": 4, "samples_per_epoch": 32},
        train={
            "epochs": 11,
            "patience": 4,
            "min_delta": 0.002,
            "min_epochs": 6,
            "batch_size": 8,
            "samples_per_epoch": 32,
        },
        top_k=3,
        overlay_cases=3,
        out=str(out / "study"),
    ).validate()


def paired_difference(
    reference: Mapping[int, Mapping[str, float]],
    other: Mapping[int, Mapping[str, float]],
    groups: Mapping[str, str],
    n_boot: int = 4000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``other - reference`` over paired test cases, with a 95 % interval that covers
    both the test cases and the training randomness, and Wilcoxon's p.

    Each bootstrap draw resamples the training seeds of each side (with replacement: the two
    sides are trained independently), averages each case over the drawn seeds, then resamples
    test *patients* (the visits and eyes of one patient move together) and takes the mean
    difference. With one seed per side the interval covers the test cases only.

    Args:
        reference, other: ``{training seed: {case_id: value}}``.
        groups: ``{case_id: patient_id}``.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{"n", "patients", "seeds", "mean", "low", "high", "p_value"}`` (NaN where undefined);
        ``p_value`` pairs the seed-averaged per-case values.
    """
    ref_seeds, other_seeds = sorted(reference), sorted(other)
    common = sorted(
        set.intersection(*(set(v) for v in (*reference.values(), *other.values())))
        if ref_seeds and other_seeds
        else set()
    )
    common = [c for c in common if all(math.isfinite(d[c]) for d in (*reference.values(), *other.values()))]
    patients = sorted({groups.get(c, c) for c in common})
    out: dict[str, float] = {
        "n": len(common),
        "patients": len(patients),
        "seeds": min(len(ref_seeds), len(other_seeds)),
    }
    out.update(mean=math.nan, low=math.nan, high=math.nan, p_value=math.nan)
    if not common:
        return out
    a = np.array([[reference[s][c] for c in common] for s in ref_seeds])  # (seeds, cases)
    b = np.array([[other[s][c] for c in common] for s in other_seeds])
    out["p_value"] = paired_wilcoxon(dict(zip(common, a.mean(0))), dict(zip(common, b.mean(0))))["p_value"]
    out["mean"] = float(b.mean(0).mean() - a.mean(0).mean())
    member = np.array([[groups.get(c, c) == p for c in common] for p in patients], dtype=float)  # (patients, cases)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        diff = b[rng.integers(0, len(b), len(b))].mean(0) - a[rng.integers(0, len(a), len(a))].mean(0)
        weight = member[rng.integers(0, len(patients), len(patients))].sum(0)  # cases counted per drawn patient
        boot[i] = float(weight @ diff / weight.sum())
    out["low"], out["high"] = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return out


def _fmt_diff(d: Mapping[str, float]) -> str:
    ci = f"[95 % CI {d['low']:+.3f}, {d['high']:+.3f}]"
    return f"{d['mean']:+.3f} Dice {ci}, Wilcoxon p = {format_p(d['p_value'])}"


def _per_seed_dice(records: Sequence[Mapping[str, Any]], test_set: str) -> dict[tuple, dict[int, dict[str, float]]]:
    """``{(model, init, fraction): {seed: {case_id: Dice}}}`` of the segmentation records."""
    out: dict[tuple, dict[int, dict[str, float]]] = {}
    for rec in records:
        run, ev = rec["run"], rec["evaluations"].get(test_set)
        if run["stage"] == "train" and ev is not None:
            key = (run["model"], run["init"], float(run["fraction"]))
            out.setdefault(key, {})[int(run["seed"])] = {r["case_id"]: float(r["dice"]) for r in ev["cases"]}
    return out


def headline(study: StudyConfig) -> str:
    """What the demo measured: SSL − scratch at the lowest fraction and each arm's gain to 100 %,
    with intervals over training seeds and test patients (from the study's ledger)."""
    from enface.data.folder import list_cases
    from enface.study.results import collect_results

    results = collect_results(study)
    if not results["table"]:
        return "no results yet"
    ts_name, ts = next(iter(study.test_sets.items()))
    groups = {c.case_id: c.patient_id for c in list_cases(ts["dataset"])}
    lo, hi = min(study.fractions), max(study.fractions)
    model, ssl, scratch = study.reference["model"], study.reference["init"], "scratch"
    dice = _per_seed_dice(results["records"], ts_name)
    seeds = ", ".join(map(str, study.seeds))
    lines = [f"headline ({ts_name}, training seeds {seeds}; intervals over seeds and test patients):"]
    for r in results["table"]:
        if r["test_set"] == ts_name:
            lines.append(
                f"  {r['model']} {r['init']:<12} {fraction_key(float(r['fraction'])):>4} % labels: "
                f"Dice {float(r['dice_mean']):.3f} ± {float(r['dice_std']):.3f} over {r['n_cases']} test cases "
                f"(per seed {r['dice_per_seed']}; epochs {r['epochs_run']})"
                + (f"  [flagged: {r['flags']}]" if r.get("flags") else "")
            )
    d = paired_difference(dice.get((model, scratch, lo), {}), dice.get((model, ssl, lo), {}), groups)
    lines.append(
        f"  SSL ({ssl}) - scratch at {fraction_key(lo)} % labels: {_fmt_diff(d)} "
        f"({d['n']} test cases of {d['patients']} patients, {d['seeds']} seeds per arm)"
    )
    for init in (scratch, ssl):
        g = paired_difference(dice.get((model, init, lo), {}), dice.get((model, init, hi), {}), groups)
        lines.append(f"  {init} from {fraction_key(lo)} % to {fraction_key(hi)} % labels: {_fmt_diff(g)}")
    return "\n".join(lines)
