"""``enface demo``: a realistic phantom and a reduced study, sized for a laptop CPU.

The headline states what the study is about, with its uncertainty: at the lowest label
fraction, the test Dice of FPN pre-trained on inverted FAF minus that of FPN from scratch,
paired by test case (mean difference, a 95 % interval from a bootstrap over test *patients*,
and the Wilcoxon signed-rank p-value); and how much each arm gains from the lowest fraction
to 100 % of the labels. Runs that did not converge or collapsed are named
(:mod:`enface.study.convergence`). One seed: the interval is over test cases, not over
training seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from enface.data.splits import fraction_key
from enface.study.config import StudyConfig
from enface.study.stats import format_p, paired_wilcoxon

__all__ = ["DEMO_PATIENTS", "demo_study", "headline", "paired_difference"]

DEMO_PATIENTS = 20
"""Phantom patients of the demo dataset (about 65 scans at the ``demo`` preset, 32 x 128 x 64)."""


def demo_study(out: str | os.PathLike, seed: int = 0) -> StudyConfig:
    """The reduced study of ``enface demo``.

    FPN (width 0.25) from scratch vs pre-trained on inverted FAF, at 10 % of the labeled
    training patients (one patient) and at 100 %, one seed, on the realistic phantom.
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
        seeds=(seed,),
        pretrain_seed=seed,
        reference={"model": "fpn", "init": "ssl-faf_inv"},
        common={"width": 0.25, "crop": (32, 64), "num_workers": 0, "accelerator": "cpu"},
        pretrain={"epochs": 10, "batch_size": 4, "samples_per_epoch": 32},
        train={"epochs": 16, "batch_size": 8, "samples_per_epoch": 32},
        top_k=3,
        overlay_cases=3,
        out=str(out / "study"),
    ).validate()


def paired_difference(
    reference: Mapping[str, float],
    other: Mapping[str, float],
    groups: Mapping[str, str],
    n_boot: int = 4000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of ``other - reference`` over paired cases, a 95 % cluster-bootstrap interval and Wilcoxon's p.

    Args:
        reference, other: ``{case_id: value}``.
        groups: ``{case_id: patient_id}``: the bootstrap resamples patients, so that the
            visits and eyes of one patient move together.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{"n", "patients", "mean", "low", "high", "p_value"}`` (NaN where undefined).
    """
    common = sorted(c for c in set(reference) & set(other) if math.isfinite(reference[c] + other[c]))
    diff = {c: other[c] - reference[c] for c in common}
    patients = sorted({groups.get(c, c) for c in common})
    out = {"n": len(common), "patients": len(patients), "mean": math.nan, "low": math.nan, "high": math.nan}
    out["p_value"] = paired_wilcoxon(reference, other)["p_value"]
    if not common:
        return out
    out["mean"] = float(np.mean(list(diff.values())))
    sums = np.array([sum(d for c, d in diff.items() if groups.get(c, c) == p) for p in patients])
    counts = np.array([sum(1 for c in diff if groups.get(c, c) == p) for p in patients])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(patients), (n_boot, len(patients)))
    boot = sums[idx].sum(1) / counts[idx].sum(1)
    out["low"], out["high"] = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return out


def _fmt_diff(d: Mapping[str, float]) -> str:
    return f"{d['mean']:+.3f} Dice [95 % CI {d['low']:+.3f}, {d['high']:+.3f}], Wilcoxon p = {format_p(d['p_value'])}"


def headline(study: StudyConfig) -> str:
    """What the demo measured: SSL − scratch at the lowest fraction and each arm's gain to 100 %."""
    from enface.data.folder import list_cases

    res = study.out_dir / "results"
    if not (res / "per_case.json").is_file() or not (res / "table.csv").is_file():
        return "no results yet"
    per_case = json.loads((res / "per_case.json").read_text(encoding="utf-8"))
    with open(res / "table.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    ts_name, ts = next(iter(study.test_sets.items()))
    groups = {c.case_id: c.patient_id for c in list_cases(ts["dataset"])}
    lo, hi = min(study.fractions), max(study.fractions)
    model = study.reference["model"]
    ssl, scratch = study.reference["init"], "scratch"

    def dice(init: str, fraction: float) -> dict[str, float]:
        values = per_case.get("|".join((ts_name, model, init, str(float(fraction)))), {})
        return {c: v["dice"] for c, v in values.items()}

    lines = [f"headline ({ts_name}, seed {', '.join(map(str, study.seeds))}):"]
    for r in table:
        if r["test_set"] == ts_name:
            lines.append(
                f"  {r['model']} {r['init']:<12} {fraction_key(float(r['fraction'])):>4} % labels: "
                f"Dice {float(r['dice_mean']):.3f} ± {float(r['dice_std']):.3f} over {r['n_cases']} test cases"
                + (f"  [flagged: {r['flags']}]" if r.get("flags") else "")
            )
    d = paired_difference(dice(scratch, lo), dice(ssl, lo), groups)
    lines.append(
        f"  SSL ({ssl}) - scratch at {fraction_key(lo)} % labels: {_fmt_diff(d)} "
        f"({d['n']} test cases of {d['patients']} patients)"
    )
    for init in (scratch, ssl):
        g = paired_difference(dice(init, lo), dice(init, hi), groups)
        lines.append(f"  {init} from {fraction_key(lo)} % to {fraction_key(hi)} % labels: {_fmt_diff(g)}")
    return "\n".join(lines)
