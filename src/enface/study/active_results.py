"""Results of the simulated active learning: tables, paired tests, selection diagnostics, report section.

* ``results/active.csv`` — one row per test set, strategy and round: labeled patients, Dice
  and absolute area difference (mean ± std over test cases of per-case values averaged over
  seeds, and the std over seeds of the per-seed means). Round 0 is the same run for every
  strategy and appears once per strategy;
* ``results/active-wilcoxon.csv`` — per test set and round >= 1, each strategy against
  ``random``: Wilcoxon signed-rank tests on the seed-averaged per-case Dice and area difference;
* ``results/active-selection.csv`` — per strategy and round >= 1, what was picked: the mean
  reference lesion area of the picked patients' cases against the pool's, the oracle Dice of
  the selecting ensemble on the picked cases and the pool, and the Spearman correlation of
  the uncertainty score with the ensemble's error (1 - Dice) over the pool (the oracle's
  masks, read here for the report only);
* ``figures/<test set>-active-learning.png`` and a report section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface.evaluate import read_cases_csv, summarize
from enface.fileio import atomic_write_csv, atomic_write_text, path_under, read_json_object
from enface.study.active_config import START
from enface.study.config import StudyConfig
from enface.study.plan import PlannedRun, run_folder
from enface.study.stats import format_number as _fmt
from enface.study.stats import format_p as _fmt_p
from enface.study.stats import paired_wilcoxon

__all__ = ["ACTIVE_COLUMNS", "active_markdown", "active_results", "write_active_report"]

ACTIVE_METRICS: tuple[str, ...] = ("dice", "area_diff_mm2")

ACTIVE_COLUMNS: tuple[str, ...] = (
    "test_set",
    "strategy",
    "round",
    "n_patients",
    "n_seeds",
    "n_cases",
    *(f"{m}_{s}" for m in ACTIVE_METRICS for s in ("mean", "std", "seed_std")),
    "dice_per_seed",
    "n_flagged",
    "flags",
)
"""Columns of ``results/active.csv`` (``flags``: seeds whose run did not converge or collapsed)."""

Key = tuple[str, str, int]
"""(test set, strategy, round)."""


def _gather(study: StudyConfig, plan: Sequence[PlannedRun]) -> tuple[dict, dict, list[str], dict]:
    """Per-case values per (key, case) over seeds, per-seed means and the seeds' convergence flags
    (:mod:`enface.study.convergence`), from the rounds' cases.csv and metrics.csv."""
    from enface.study.convergence import collapse_flag, rising_flag

    active = study.active_config
    assert active is not None
    per_case: dict[Key, dict[str, dict[str, list[float]]]] = {}
    seed_means: dict[Key, dict[str, list[float]]] = {}
    flags: dict[Key, dict[int, list[str]]] = {}
    missing: list[str] = []
    for run in plan:
        if run.stage != "active":
            continue
        folder = run_folder(study, run)
        rising = rising_flag(folder)
        strategies = active.strategies if run.strategy == START else (run.strategy,)
        for ts in study.test_sets:
            path = folder / "eval" / ts / "cases.csv"
            if not path.is_file():
                missing.append(f"{folder.relative_to(study.runs_dir)} on {ts}")
                continue
            rows = [r for r in read_cases_csv(path) if r["grader"] == ""]
            means = summarize(rows, ACTIVE_METRICS)
            run_flags = [f for f in (collapse_flag(rows, path.parent / "predictions.npz"), rising) if f]
            for strategy in strategies:
                key = (ts, strategy, run.round)
                flags.setdefault(key, {})[run.seed] = run_flags
                cases = per_case.setdefault(key, {})
                for r in rows:
                    slot = cases.setdefault(r["case_id"], {m: [] for m in ACTIVE_METRICS})
                    for m in ACTIVE_METRICS:
                        slot[m].append(float(r[m]))
                sm = seed_means.setdefault(key, {m: [] for m in ACTIVE_METRICS})
                for m in ACTIVE_METRICS:
                    sm[m].append(means[m]["mean"])
    return per_case, seed_means, missing, flags


def _table(
    study: StudyConfig, averaged: Mapping[Key, dict], seed_means: Mapping[Key, dict], flags: Mapping[Key, dict]
) -> list[dict[str, Any]]:
    active = study.active_config
    assert active is not None
    rows = []
    for key in sorted(averaged, key=lambda k: (k[0], k[1] != "random", k[1], k[2])):
        ts, strategy, rnd = key
        summ = summarize([{"case_id": c, **v} for c, v in averaged[key].items()], ACTIVE_METRICS)
        row: dict[str, Any] = {
            "test_set": ts,
            "strategy": strategy,
            "round": rnd,
            "n_patients": active.patients_at(rnd),
            "n_seeds": len(seed_means[key]["dice"]),
            "n_cases": len(averaged[key]),
        }
        for m in ACTIVE_METRICS:
            finite = [v for v in seed_means[key][m] if math.isfinite(v)]
            row[f"{m}_mean"] = summ[m]["mean"]
            row[f"{m}_std"] = summ[m]["std"]
            row[f"{m}_seed_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
        row["dice_per_seed"] = "/".join(f"{v:.3f}" for v in seed_means[key]["dice"])
        flagged = {seed: f for seed, f in sorted(flags.get(key, {}).items()) if f}
        row["n_flagged"] = len(flagged)
        row["flags"] = "; ".join(f"seed {seed}: {', '.join(f)}" for seed, f in flagged.items())
        rows.append(row)
    return rows


def _wilcoxon(study: StudyConfig, averaged: Mapping[Key, dict]) -> list[dict[str, Any]]:
    active = study.active_config
    assert active is not None
    rows = []
    for ts, strategy, rnd in sorted(averaged):
        ref_key = (ts, "random", rnd)
        if strategy == "random" or rnd == 0 or ref_key not in averaged:
            continue
        row: dict[str, Any] = {
            "test_set": ts,
            "round": rnd,
            "n_patients": active.patients_at(rnd),
            "strategy": strategy,
            "reference": "random",
        }
        for m in ACTIVE_METRICS:
            res = paired_wilcoxon(
                {c: v[m] for c, v in averaged[ref_key].items()},
                {c: v[m] for c, v in averaged[(ts, strategy, rnd)].items()},
            )
            row["n"] = res["n"]
            row[f"median_{m}_difference"] = res["median_difference"]
            row[f"p_{m}"] = res["p_value"]
        rows.append(row)
    return rows


def _reference_areas(study: StudyConfig, case_ids: Sequence[str]) -> list[float]:
    from enface.data.folder import load_case
    from enface.metrics import area_mm2

    root = Path(study.dataset)
    out = []
    for cid in case_ids:
        case = load_case(root / "cases" / cid)
        out.append(area_mm2(case.load_mask(study.task), case.spacing))
    return out


def _selection_stats(study: StudyConfig, record: Mapping[str, Any], cases_of: Mapping[str, list[str]]) -> dict:
    """Diagnostics of one recorded selection (see the module description)."""
    from scipy.stats import spearmanr

    picked = {p["patient_id"] for p in record["picked"]}
    pool = [c for p, cs in cases_of.items() if p not in set(record["labeled_before"]) for c in cs]
    picked_cases = [c for p in sorted(picked) for c in cases_of.get(p, [])]
    out = {
        "picked_area_mm2": float(np.mean(_reference_areas(study, picked_cases))) if picked_cases else math.nan,
        "pool_area_mm2": float(np.mean(_reference_areas(study, pool))) if pool else math.nan,
        "picked_oracle_dice": math.nan,
        "pool_oracle_dice": math.nan,
        "spearman_uncertainty_error": math.nan,
    }
    cache = Path(record["source_run"]) / "select" / "pool-scores.json"
    if record["strategy"] != "random" and cache.is_file():
        scores = read_json_object(cache)
        dice = scores["oracle_dice"]
        unc = {s["case_id"]: s["uncertainty"] for s in scores["scores"]}
        common = sorted(set(dice) & set(unc))
        out["picked_oracle_dice"] = float(np.mean([dice[c] for c in picked_cases if c in dice] or [math.nan]))
        out["pool_oracle_dice"] = float(np.mean([dice[c] for c in common] or [math.nan]))
        x, y = [unc[c] for c in common], [1.0 - dice[c] for c in common]
        if len(common) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0:  # else undefined
            out["spearman_uncertainty_error"] = float(spearmanr(x, y).statistic)
    return out


def _selection_rows(study: StudyConfig, plan: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    from enface.study.active import labeled_training_patients, selection_path

    cases_of = labeled_training_patients(study)
    per_key: dict[tuple[str, int], list[dict]] = {}
    for run in plan:
        path = selection_path(study, run) if run.stage == "active" and run.round > 0 else None
        if path is not None and path.is_file():
            per_key.setdefault((run.strategy, run.round), []).append(
                _selection_stats(study, read_json_object(path), cases_of)
            )
    rows = []
    for (strategy, rnd), stats in sorted(per_key.items(), key=lambda kv: (kv[0][0] != "random", *kv[0])):
        row: dict[str, Any] = {"strategy": strategy, "round": rnd, "n_seeds": len(stats)}
        for k in stats[0]:
            vals = [s[k] for s in stats if math.isfinite(s[k])]
            row[k] = float(np.mean(vals)) if vals else math.nan
        rows.append(row)
    return rows


def active_results(study: StudyConfig, plan: Sequence[PlannedRun]) -> dict[str, Any]:
    """``{"table", "wilcoxon", "selection", "missing"}`` of a study's active-learning rounds."""
    per_case, seed_means, missing, flags = _gather(study, plan)
    averaged = {
        key: {cid: {m: float(np.mean(v[m])) for m in ACTIVE_METRICS} for cid, v in cases.items()}
        for key, cases in per_case.items()
    }
    return {
        "table": _table(study, averaged, seed_means, flags),
        "wilcoxon": _wilcoxon(study, averaged),
        "selection": _selection_rows(study, plan),
        "missing": missing,
    }


def active_markdown(results: Mapping[str, Any]) -> str:
    """The three tables as Markdown (results, paired tests, selection diagnostics)."""
    lines = [
        "| test set | strategy | round | patients | seeds | cases | Dice | Dice per seed | area diff (mm²) | flagged |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in results["table"]:
        lines.append(
            f"| {r['test_set']} | {r['strategy']} | {r['round']} | {r['n_patients']} | {r['n_seeds']} | "
            f"{r['n_cases']} | {_fmt(r['dice_mean'])} ± {_fmt(r['dice_std'])} | {r['dice_per_seed']} | "
            f"{_fmt(r['area_diff_mm2_mean'])} ± {_fmt(r['area_diff_mm2_std'])} | {r['flags'] or '–'} |"
        )
    lines += [
        "",
        "| test set | round | patients | strategy | n | median ΔDice vs random | p | median Δarea diff (mm²) | p |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["wilcoxon"]:
        lines.append(
            f"| {r['test_set']} | {r['round']} | {r['n_patients']} | {r['strategy']} | {r['n']} | "
            f"{_fmt(r['median_dice_difference'])} | {_fmt_p(r['p_dice'])} | "
            f"{_fmt(r['median_area_diff_mm2_difference'])} | {_fmt_p(r['p_area_diff_mm2'])} |"
        )
    lines += [
        "",
        "| strategy | round | seeds | picked area (mm²) | pool area (mm²) | picked oracle Dice | pool oracle Dice | "
        "Spearman ρ(score, 1 − Dice) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["selection"]:
        lines.append(
            f"| {r['strategy']} | {r['round']} | {r['n_seeds']} | {_fmt(r['picked_area_mm2'])} | "
            f"{_fmt(r['pool_area_mm2'])} | {_fmt(r['picked_oracle_dice'])} | {_fmt(r['pool_oracle_dice'])} | "
            f"{_fmt(r['spearman_uncertainty_error'], 2)} |"
        )
    return "\n".join(lines)


def write_active_report(study: StudyConfig, results: Mapping[str, Any], res_dir: Path, fig_dir: Path) -> str:
    """Write the active-learning tables and figures; return the report's Markdown section."""
    from enface import viz

    atomic_write_csv(res_dir / "active.csv", results["table"], ACTIVE_COLUMNS)
    atomic_write_csv(res_dir / "active-wilcoxon.csv", results["wilcoxon"])
    atomic_write_csv(res_dir / "active-selection.csv", results["selection"])
    tables = active_markdown(results)
    atomic_write_text(res_dir / "active.md", tables + "\n")
    active = study.active_config
    assert active is not None
    md = [
        "## Active learning",
        "",
        f"{active.model} from `{active.init}`, "
        f"{active.start_patients} starting patients (drawn per seed) + {active.patients_per_round} per round for "
        f"{active.rounds} rounds; strategies {', '.join(active.strategies)}; seeds "
        f"{', '.join(map(str, study.seeds))}. Each round trains from the init with the study's training settings "
        "and is evaluated with its top-k ensemble; the pool is scored by the round before "
        f"(top-{study.top_k} checkpoints{' x 4 mirrored views' if active.tta else ''}). Values are per-case values "
        "averaged over seeds (mean ± std over test cases); paired Wilcoxon tests against `random` at each round. "
        "The last table describes what each strategy picked (oracle masks, for diagnosis only).",
        "",
        tables,
        "",
    ]
    if results["missing"]:
        md += ["Missing evaluations:", "", *[f"- {m}" for m in results["missing"]], ""]
    for ts in study.test_sets:
        rows = [r for r in results["table"] if r["test_set"] == ts]
        if rows:
            p = viz.plot_active_learning(rows, path_under(fig_dir, f"{ts}-active-learning.png"), title=ts)
            md += [f"### Dice and area difference vs labeled patients ({ts})", "", f"![{ts}](figures/{p.name})", ""]
    return "\n".join(md)
