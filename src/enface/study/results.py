"""A study's results: per-case evaluations of every run gathered into tables and paired tests.

Per configuration (model, init, fraction) and test set, per-case values are first averaged
over seeds; the table reports mean ± std over test cases of those, plus the standard
deviation over seeds of the per-seed means. Wilcoxon signed-rank tests pair the
seed-averaged per-case Dice of the reference configuration with every other configuration
at the same fraction and test set, and each pre-trained model with the same model from
scratch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from enface.evaluate import METRICS, read_cases_csv, summarize
from enface.study.config import StudyConfig
from enface.study.plan import PlannedRun, plan_study, run_folder
from enface.study.stats import paired_wilcoxon

__all__ = ["collect_results", "config_label"]

ConfigKey = tuple[str, str, str, float]
"""(test set, model, init, fraction)."""


def config_label(model: str, init: str) -> str:
    """``"fpn (ssl-faf_inv)"``: a configuration as tables and figures name it."""
    return f"{model} ({init})"


def _gather(study: StudyConfig, plan: Sequence[PlannedRun]) -> tuple[dict, dict, list[str], dict]:
    """Per-case values per (configuration, case), per-seed means and the convergence flags of
    each seed (:mod:`enface.study.convergence`), from every run's cases.csv and metrics.csv."""
    from enface.study.convergence import collapse_flag, rising_flag

    per_case: dict[ConfigKey, dict[str, dict[str, list[float]]]] = {}
    seed_means: dict[ConfigKey, dict[str, list[float]]] = {}
    flags: dict[ConfigKey, dict[int, list[str]]] = {}
    missing: list[str] = []
    for run in plan:
        if run.stage != "train":
            continue
        folder = run_folder(study, run)
        rising = rising_flag(folder)
        for ts in study.test_sets:
            csv_path = folder / "eval" / ts / "cases.csv"
            if not csv_path.is_file():
                missing.append(f"{folder.relative_to(study.runs_dir)} on {ts}")
                continue
            rows = [r for r in read_cases_csv(csv_path) if r["grader"] == ""]
            key = (ts, run.model, run.init, run.fraction)
            cases = per_case.setdefault(key, {})
            for r in rows:
                slot = cases.setdefault(r["case_id"], {m: [] for m in METRICS})
                for m in METRICS:
                    slot[m].append(float(r[m]))
            means = summarize(rows)
            sm = seed_means.setdefault(key, {m: [] for m in METRICS})
            for m in METRICS:
                sm[m].append(means[m]["mean"])
            collapsed = collapse_flag(rows, csv_path.parent / "predictions.npz")
            flags.setdefault(key, {})[run.seed] = [f for f in (collapsed, rising) if f]
    return per_case, seed_means, missing, flags


def _table(
    averaged: Mapping[ConfigKey, dict], seed_means: Mapping[ConfigKey, dict], flags: Mapping[ConfigKey, dict]
) -> list[dict[str, Any]]:
    table = []
    for key in sorted(averaged):
        ts, model, init, fraction = key
        rows = [{"case_id": c, **vals} for c, vals in averaged[key].items()]
        summ = summarize(rows)
        row: dict[str, Any] = {
            "test_set": ts,
            "model": model,
            "init": init,
            "fraction": fraction,
            "n_seeds": len(seed_means[key]["dice"]),
            "n_cases": len(rows),
        }
        for m in METRICS:
            row[f"{m}_mean"] = summ[m]["mean"]
            row[f"{m}_std"] = summ[m]["std"]
            row[f"{m}_undefined"] = summ[m]["n_undefined"]
            finite = [v for v in seed_means[key][m] if math.isfinite(v)]
            row[f"{m}_seed_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
        row["dice_per_seed"] = "/".join(f"{v:.3f}" for v in seed_means[key]["dice"])
        seeds = flags.get(key, {})
        ok = [v for v, f in zip(seed_means[key]["dice"], seeds.values()) if not f]
        row["flags"] = "; ".join(f"seed {s}: {', '.join(f)}" for s, f in seeds.items() if f)
        row["n_flagged"] = sum(1 for f in seeds.values() if f)
        row["dice_mean_unflagged"] = float(np.mean(ok)) if ok else math.nan
        table.append(row)
    return table


def _wilcoxon_rows(study: StudyConfig, averaged: Mapping[ConfigKey, dict]) -> list[dict[str, Any]]:
    ref_model, ref_init = study.reference["model"], study.reference["init"]
    pairs = [((k[0], ref_model, ref_init, k[3]), k) for k in sorted(averaged)]
    pairs += [((k[0], k[1], "scratch", k[3]), k) for k in sorted(averaged) if k[2] != "scratch"]
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for ref_key, key in pairs:
        if key == ref_key or ref_key not in averaged or {(ref_key, key), (key, ref_key)} & seen:
            continue
        seen.add((ref_key, key))
        res = paired_wilcoxon(
            {c: v["dice"] for c, v in averaged[ref_key].items()}, {c: v["dice"] for c, v in averaged[key].items()}
        )
        rows.append(
            {
                "test_set": key[0],
                "fraction": key[3],
                "reference": config_label(ref_key[1], ref_key[2]),
                "other": config_label(key[1], key[2]),
                "n": res["n"],
                "median_dice_difference": res["median_difference"],
                "p_value": res["p_value"],
            }
        )
    return rows


def collect_results(study: StudyConfig, plan: Sequence[PlannedRun] | None = None) -> dict[str, Any]:
    """Aggregate the per-case evaluations of every finished training run of a study.

    Each table row also names its flagged seeds (``flags``: not converged or collapsed, see
    :mod:`enface.study.convergence`), counts them (``n_flagged``) and gives the mean test
    Dice over the other seeds (``dice_mean_unflagged``).

    Returns:
        ``{"table": [rows], "wilcoxon": [rows], "growth": [rows], "per_case": {...},
        "missing": [labels]}``; ``growth`` is :func:`enface.study.growth.growth_agreement`; with
        an ``active:`` block also ``"active"`` (:func:`enface.study.active_results.active_results`).
    """
    from enface.study.growth import growth_agreement

    plan = plan or plan_study(study)
    per_case, seed_means, missing, flags = _gather(study, plan)
    averaged = {
        key: {cid: {m: float(np.mean(v[m])) if v[m] else math.nan for m in METRICS} for cid, v in cases.items()}
        for key, cases in per_case.items()
    }
    out = {
        "table": _table(averaged, seed_means, flags),
        "wilcoxon": _wilcoxon_rows(study, averaged),
        "growth": growth_agreement(study, plan),
        "per_case": {"|".join(map(str, k)): v for k, v in averaged.items()},
        "missing": missing,
    }
    if study.active is not None:
        from enface.study.active_results import active_results

        out["active"] = active_results(study, plan)
    return out
