"""A study's results, from its ledger alone: tables, paired tests, growth and cost.

One aggregator serves both kinds of run a study holds:

* **label-fraction runs** (``train``), grouped by configuration ``(test set, model, init,
  fraction)``;
* **active-learning rounds** (``active``), grouped by ``(test set, strategy, round)``; round 0
  is one run shared by every strategy and counts for each.

Per group, per-case values are first averaged over seeds; a table row reports mean ± std over
test cases of those, the standard deviation over seeds of the per-seed means, each seed's
flags (:mod:`enface.study.convergence`), the epochs each seed ran and how it stopped, and its
CPU time. Wilcoxon signed-rank tests pair the seed-averaged per-case values of two groups:
the reference configuration against every other one at the same fraction, each pre-trained
model against the same model from scratch, and each selection strategy against ``random``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from enface.evaluate import summarize
from enface.study.active_config import START
from enface.study.config import StudyConfig
from enface.study.convergence import rising_flag, stalled_flag
from enface.study.ledger import ledger_records
from enface.study.plan import PlannedRun, plan_study, run_label
from enface.study.stats import paired_wilcoxon

__all__ = ["ACTIVE_COLUMNS", "ACTIVE_METRICS", "TRAIN_METRICS", "collect_results", "config_label"]

TRAIN_METRICS: tuple[str, ...] = ("dice", "area_diff_mm2", "hd95_mm")
"""Per-case metrics of the label-fraction table."""
ACTIVE_METRICS: tuple[str, ...] = ("dice", "area_diff_mm2")
"""Per-case metrics of the active-learning table."""
_RUN_COLUMNS: tuple[str, ...] = ("n_seeds", "n_cases")
_SEED_COLUMNS: tuple[str, ...] = (
    "dice_per_seed",
    "n_flagged",
    "flags",
    "dice_mean_unflagged",
    "epochs_run",
    "stopped",
    "cpu_seconds_mean",
)
ACTIVE_COLUMNS: tuple[str, ...] = (
    "test_set",
    "strategy",
    "round",
    "n_patients",
    *_RUN_COLUMNS,
    *(f"{m}_{s}" for m in ACTIVE_METRICS for s in ("mean", "std", "seed_std")),
    *_SEED_COLUMNS,
)
"""Columns of ``results/active.csv``."""

Key = tuple[Any, ...]


def config_label(model: str, init: str) -> str:
    """``"fpn (ssl-faf_inv)"``: a configuration as tables and figures name it."""
    return f"{model} ({init})"


class _Groups:
    """Per-case values, per-seed means, flags and costs of the records of each group."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.metrics = tuple(metrics)
        self.per_case: dict[Key, dict[str, dict[str, list[float]]]] = {}
        self.seed_means: dict[Key, dict[str, list[float]]] = {}
        self.seeds: dict[Key, dict[int, dict[str, Any]]] = {}

    def add(self, key: Key, record: Mapping[str, Any], test_set: str) -> None:
        ev = record["evaluations"].get(test_set)
        if ev is None:
            return
        rows = ev["cases"]
        cases = self.per_case.setdefault(key, {})
        for r in rows:
            slot = cases.setdefault(r["case_id"], {m: [] for m in self.metrics})
            for m in self.metrics:
                slot[m].append(float(r[m]))
        means = summarize(rows, self.metrics)
        sm = self.seed_means.setdefault(key, {m: [] for m in self.metrics})
        for m in self.metrics:
            sm[m].append(means[m]["mean"])
        outcome = record["outcome"]
        rising = rising_flag(record["history"], outcome["stopped"], outcome["metric"])
        stalled = stalled_flag(record["history"], outcome["stopped"], outcome["metric"])
        self.seeds.setdefault(key, {})[int(record["run"]["seed"])] = {
            "dice": means["dice"]["mean"],
            "flags": [f for f in (ev.get("collapse"), rising, stalled) if f],
            "epochs_run": outcome["epochs_run"],
            "stopped": outcome["stopped"],
            "cpu_seconds": outcome["cpu_seconds"],
        }

    def averaged(self) -> dict[Key, dict[str, dict[str, float]]]:
        """``{key: {case_id: {metric: seed mean}}}``."""
        return {
            key: {
                cid: {m: float(np.mean(v[m])) if v[m] else math.nan for m in self.metrics} for cid, v in cases.items()
            }
            for key, cases in self.per_case.items()
        }

    def row(self, key: Key, averaged: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
        """The table columns of one group (after the columns that name it)."""
        summ = summarize([{"case_id": c, **v} for c, v in averaged.items()], self.metrics)
        seeds = dict(sorted(self.seeds[key].items()))
        row: dict[str, Any] = {"n_seeds": len(seeds), "n_cases": len(averaged)}
        for m in self.metrics:
            finite = [v for v in self.seed_means[key][m] if math.isfinite(v)]
            row[f"{m}_mean"], row[f"{m}_std"] = summ[m]["mean"], summ[m]["std"]
            row[f"{m}_undefined"] = summ[m]["n_undefined"]
            row[f"{m}_seed_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
        row["dice_per_seed"] = "/".join(f"{s['dice']:.3f}" for s in seeds.values())
        flagged = {seed: s["flags"] for seed, s in seeds.items() if s["flags"]}
        row["n_flagged"] = len(flagged)
        row["flags"] = "; ".join(f"seed {seed}: {', '.join(f)}" for seed, f in flagged.items())
        ok = [s["dice"] for seed, s in seeds.items() if seed not in flagged]
        row["dice_mean_unflagged"] = float(np.mean(ok)) if ok else math.nan
        row["epochs_run"] = "/".join(str(s["epochs_run"]) for s in seeds.values())
        stops = [s["stopped"] for s in seeds.values()]
        row["stopped"] = ", ".join(f"{kind} {stops.count(kind)}" for kind in sorted(set(stops)))
        row["cpu_seconds_mean"] = float(np.mean([s["cpu_seconds"] for s in seeds.values()]))
        return row


def _group(
    records: Sequence[Mapping[str, Any]], test_sets: Sequence[str], metrics: Sequence[str], keys: Callable
) -> _Groups:
    groups = _Groups(metrics)
    for rec in records:
        for ts in test_sets:
            for key in keys(rec["run"], ts):
                groups.add(key, rec, ts)
    return groups


def _wilcoxon(
    averaged: Mapping[Key, Mapping[str, Mapping[str, float]]],
    pairs: Sequence[tuple[Key, Key]],
    metrics: Sequence[str],
    describe: Callable[[Key, Key], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Paired tests of ``(reference, other)`` groups that both exist; each unordered pair once."""
    rows: list[dict[str, Any]] = []
    seen: set[frozenset[Hashable]] = set()
    for ref, other in pairs:
        if ref == other or ref not in averaged or other not in averaged or frozenset((ref, other)) in seen:
            continue
        seen.add(frozenset((ref, other)))
        row = describe(ref, other)
        for m in metrics:
            res = paired_wilcoxon(
                {c: v[m] for c, v in averaged[ref].items()}, {c: v[m] for c, v in averaged[other].items()}
            )
            row["n"] = res["n"]
            row[f"median_{m}_difference"] = res["median_difference"]
            row[f"p_{m}"] = res["p_value"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- label fractions


def _train_results(study: StudyConfig, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def keys(run: Mapping[str, Any], ts: str) -> list[Key]:
        return [(ts, run["model"], run["init"], float(run["fraction"]))] if run["stage"] == "train" else []

    groups = _group(records, list(study.test_sets), TRAIN_METRICS, keys)
    averaged = groups.averaged()
    table = []
    for key in sorted(averaged):
        ts, model, init, fraction = key
        table.append(
            {"test_set": ts, "model": model, "init": init, "fraction": fraction, **groups.row(key, averaged[key])}
        )
    ref_model, ref_init = study.reference["model"], study.reference["init"]
    pairs = [((k[0], ref_model, ref_init, k[3]), k) for k in sorted(averaged)]
    pairs += [((k[0], k[1], "scratch", k[3]), k) for k in sorted(averaged) if k[2] != "scratch"]

    def describe(ref: Key, other: Key) -> dict[str, Any]:
        return {
            "test_set": other[0],
            "fraction": other[3],
            "reference": config_label(ref[1], ref[2]),
            "other": config_label(other[1], other[2]),
        }

    wilcoxon = _wilcoxon(averaged, pairs, ("dice",), describe)
    for row in wilcoxon:  # the column the tables and reports have always used
        row["p_value"] = row.pop("p_dice")
    return {
        "table": table,
        "wilcoxon": wilcoxon,
        "per_case": {"|".join(map(str, k)): v for k, v in averaged.items()},
    }


# --------------------------------------------------------------------------- active learning


def _active_results(study: StudyConfig, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    active = study.active_config
    assert active is not None

    def keys(run: Mapping[str, Any], ts: str) -> list[Key]:
        if run["stage"] != "active":
            return []
        strategies = active.strategies if run["strategy"] == START else (run["strategy"],)
        return [(ts, s, int(run["round"])) for s in strategies]

    groups = _group(records, list(study.test_sets), ACTIVE_METRICS, keys)
    averaged = groups.averaged()
    table = []
    for key in sorted(averaged, key=lambda k: (k[0], k[1] != "random", k[1], k[2])):
        ts, strategy, rnd = key
        row = {"test_set": ts, "strategy": strategy, "round": rnd, "n_patients": active.patients_at(rnd)}
        table.append({**row, **groups.row(key, averaged[key])})
    pairs = [((k[0], "random", k[2]), k) for k in sorted(averaged) if k[1] != "random" and k[2] > 0]

    def describe(ref: Key, other: Key) -> dict[str, Any]:
        n = active.patients_at(other[2])
        return {"test_set": other[0], "round": other[2], "n_patients": n, "strategy": other[1], "reference": "random"}

    return {
        "table": table,
        "wilcoxon": _wilcoxon(averaged, pairs, ACTIVE_METRICS, describe),
        "selection": _selection_rows(records),
    }


def _selection_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per strategy and round >= 1: the seed means of what each selection picked (its record's
    ``active.diagnostics``, see :func:`enface.study.active.selection_diagnostics`)."""
    per_key: dict[tuple[str, int], list[Mapping[str, float]]] = {}
    for rec in records:
        diag = (rec.get("active") or {}).get("diagnostics")
        if diag:
            per_key.setdefault((rec["run"]["strategy"], int(rec["run"]["round"])), []).append(diag)
    rows = []
    for (strategy, rnd), stats in sorted(per_key.items(), key=lambda kv: (kv[0][0] != "random", *kv[0])):
        row: dict[str, Any] = {"strategy": strategy, "round": rnd, "n_seeds": len(stats)}
        for k in stats[0]:
            vals = [float(s[k]) for s in stats if s.get(k) is not None and math.isfinite(float(s[k]))]
            row[k] = float(np.mean(vals)) if vals else math.nan
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the study


def _cost(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """CPU time the recorded runs took, per stage and in all."""
    per_stage: dict[str, float] = {}
    for rec in records:
        stage = rec["run"]["stage"]
        per_stage[stage] = per_stage.get(stage, 0.0) + float(rec["outcome"]["cpu_seconds"])
    return {
        "cpu_hours": sum(per_stage.values()) / 3600,
        "per_stage_cpu_hours": {k: v / 3600 for k, v in per_stage.items()},
    }


def collect_results(study: StudyConfig, plan: Sequence[PlannedRun] | None = None) -> dict[str, Any]:
    """Tables and tests of every run the study's ledger records (nothing else is read).

    Returns:
        ``{"table", "wilcoxon", "growth", "per_case", "missing", "cost", "records"}`` and, with
        an ``active:`` block, ``"active": {"table", "wilcoxon", "selection"}``. ``missing``
        names the planned runs without a record.

    Raises:
        ConfigError: a record holds another run than the study plans.
    """
    from enface.study.growth import growth_agreement

    plan = plan or plan_study(study)
    by_index = ledger_records(study, plan)
    records = [by_index[i] for i in sorted(by_index)]
    out: dict[str, Any] = {
        **_train_results(study, records),
        "growth": growth_agreement(records),
        "missing": [run_label(study, run) for run in plan if run.index not in by_index],
        "cost": _cost(records),
        "records": records,
    }
    if study.active is not None:
        out["active"] = _active_results(study, records)
    return out
