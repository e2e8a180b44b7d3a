"""Simulated active learning: rounds of select -> label (the oracle) -> train -> evaluate.

The ``active:`` block of a study (:mod:`enface.study.active_config`) adds these runs to its
plan, per seed:

* **round 0** trains on ``start_patients`` patients drawn at random (from the seed) among the
  labeled training patients; it is the same run for every strategy;
* **round r** of a strategy: the top-k ensemble of that strategy's round r-1 run scores the
  pool — the labeled training patients not selected yet, whose reference masks exist but are
  hidden: nothing reads them to select (:mod:`enface.select`), training reads only the
  selected patients' masks — and the strategy picks ``patients_per_round`` patients (a patient
  ranks by its best case; no patient twice). The run then trains on every labeled case of the
  patients selected so far and is evaluated on the study's test sets.

Every round trains **from the study's init** (``scratch`` or an SSL checkpoint) with the
study's training settings, exactly like a label-fraction run with the same number of steps
(``samples_per_epoch``), and is not warm-started from the round before: a round's score then
depends on *which* patients are labeled, not on how many rounds of training came before, so
strategies are compared at equal training, and each round is the run a lab would train if it
had labeled those patients.

A round's run lives in ``<runs>/active-learning/<strategy>/round-<r>/<run folder>``; its config
names its patients (``patients``), so its identity covers the cases it trained on. What each
round selected, from which run and with which scores, is kept in
``<study>/active/selections/<strategy>/round-<r>/seed-<s>.json``; the pool's scores of a run are
kept beside its evaluations (``<run>/select/pool-scores.json``), with the oracle's Dice of
each pool case for the report's diagnostics only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import load_case
from enface.engine.inference import read_run_config
from enface.errors import ConfigError
from enface.fileio import atomic_write_json, read_json_object
from enface.study.active_config import START, ActiveConfig
from enface.study.config import StudyConfig
from enface.study.plan import PlannedRun, run_config, run_folder

__all__ = [
    "labeled_training_patients",
    "pool_scores",
    "round_patients",
    "selection_diagnostics",
    "selection_path",
    "start_patients",
]

Trainer = Callable[[StudyConfig, PlannedRun], str]
"""Trains a planned run (:func:`enface.study.run.execute_run`, handed in: the study's runner calls
this module, so this module does not import it back)."""

log = logging.getLogger(__name__)


def _active(study: StudyConfig) -> ActiveConfig:
    active = study.active_config
    if active is None:
        raise ConfigError(f"study {study.name}: no 'active' block")
    return active


def labeled_training_patients(study: StudyConfig) -> dict[str, list[str]]:
    """``{patient: [case ids with a mask of the task]}`` of the training split (the oracle's patients)."""
    from enface.data.splits import select_cases

    root = Path(study.dataset)
    out: dict[str, list[str]] = {}
    for cid in select_cases(root, "train", requires=(f"mask:{study.task}",)):
        out.setdefault(load_case(root / "cases" / cid).patient_id, []).append(cid)
    return out


def start_patients(study: StudyConfig, seed: int) -> tuple[str, ...]:
    """The labeled patients of round 0 for a seed (drawn from ``[seed, 0]``).

    Raises:
        ConfigError: the training split has fewer labeled patients than the last round needs.
    """
    active = _active(study)
    patients = sorted(labeled_training_patients(study))
    if len(patients) < active.final_patients:
        raise ConfigError(
            f"study {study.name}: active learning needs {active.final_patients} labeled training patients "
            f"({active.start_patients} + {active.rounds} rounds x {active.patients_per_round}); "
            f"{study.dataset} has {len(patients)}"
        )
    order = np.random.default_rng([int(seed), 0]).permutation(len(patients))
    return tuple(sorted(patients[i] for i in order[: active.start_patients]))


def selection_path(study: StudyConfig, run: PlannedRun) -> Path:
    """Where the selection of an active round (round >= 1) is recorded."""
    return study.out_dir / "active" / "selections" / run.strategy / f"round-{run.round}" / f"seed-{run.seed}.json"


def source_run(run: PlannedRun) -> PlannedRun:
    """The run whose ensemble selects for round ``run.round`` (>= 1): the round before, same strategy."""
    previous = run.round - 1
    return PlannedRun(
        -1, "active", run.model, run.target, run.init, 1.0, run.seed, run.strategy if previous else START, previous
    )


def _run_patients(folder: Path) -> tuple[str, ...]:
    patients = read_run_config(folder).get("patients")
    if not patients:
        raise ConfigError(f"{folder / 'config.yaml'}: an active round's run must name its patients")
    return tuple(sorted(str(p) for p in patients))


def round_patients(study: StudyConfig, run: PlannedRun, train: Trainer) -> tuple[str, ...]:
    """The labeled patients of an active round: drawn (round 0), recorded (by its selection here,
    or in its ledger record), or made by its selection now (``train`` trains the round before
    when the ledger records it but this machine lacks it).

    Raises:
        ConfigError: the round before has not finished and is not recorded in the ledger.
    """
    from enface.study.ledger import read_record

    if run.round == 0:
        return start_patients(study, run.seed)
    path = selection_path(study, run)
    if path.is_file():
        return tuple(read_json_object(path)["patients"])
    recorded = read_record(study, run)
    if recorded is not None and recorded.get("active", {}).get("selection"):
        atomic_write_json(path, {**recorded["active"]["selection"], "strategy": run.strategy, "round": run.round})
        return tuple(recorded["active"]["patients"])
    return tuple(_select_round(study, run, path, train)["patients"])


def _source_folder(study: StudyConfig, run: PlannedRun, train: Trainer) -> Path:
    """The finished run folder of the round before ``run``, trained here first when the ledger
    records it but this machine does not have it.

    Raises:
        ConfigError: the round before has neither finished here nor been recorded.
    """
    from enface.study.ledger import read_record

    source = source_run(run)
    src = run_folder(study, source)
    if not (src / "done.json").is_file():
        if read_record(study, source) is None:
            raise ConfigError(
                f"active round {run.round} ({run.strategy}, seed {run.seed}) selects with round {run.round - 1}, "
                f"which has not finished ({src}); run the earlier plan indices first"
            )
        log.info("training round %d again here: the round after it selects with its ensemble", source.round)
        train(study, source)
    return src


def _select_round(study: StudyConfig, run: PlannedRun, path: Path, train: Trainer) -> dict[str, Any]:
    from enface.select import rank_cases

    active = _active(study)
    src = _source_folder(study, run, train)
    labeled = _run_patients(src)
    by_patient = labeled_training_patients(study)
    pool_cases = sorted(c for p, cases in by_patient.items() if p not in labeled for c in cases)
    if run.strategy == "random":
        from enface.select.scoring import CaseScore

        scores = [_bare_score(load_case(Path(study.dataset) / "cases" / c)) for c in pool_cases]
        centers: list[CaseScore] = []
    else:
        cache = pool_scores(study, source_run(run), pool_cases, [c for p in labeled for c in by_patient[p]], active.tta)
        scores, centers = cache["scores"], cache["labeled"]
    picks = rank_cases(scores, run.strategy, active.patients_per_round, "patient", [run.seed, run.round], centers)
    picked: list[dict[str, Any]] = [
        {"patient_id": p.case.patient_id, "case_id": p.case.case_id, "score": p.score} for p in picks
    ]
    record: dict[str, Any] = {
        "strategy": run.strategy,
        "round": run.round,
        "seed": run.seed,
        "source_run": str(src),
        "labeled_before": list(labeled),
        "picked": picked,
        "patients": sorted({*labeled, *(p.case.patient_id for p in picks)}),
    }
    atomic_write_json(path, record)
    log.info(
        "active round %d (%s, seed %d): picked %s",
        run.round,
        run.strategy,
        run.seed,
        ", ".join(p["patient_id"] for p in picked),
    )
    return record


def _bare_score(case: Any) -> Any:
    """A score without an ensemble (the random strategy needs none)."""
    from enface.select.scoring import CaseScore

    visit = None if case.meta.visit is None else int(case.meta.visit)
    return CaseScore(case.case_id, case.patient_id, case.meta.eye, visit, float("nan"), float("nan"), float("nan"))


def pool_scores(
    study: StudyConfig, source: PlannedRun, pool: Sequence[str], labeled: Sequence[str], tta: bool
) -> dict[str, Any]:
    """Scores (with features) of a pool and of the labeled cases by a run's ensemble, cached in the run.

    The ensemble runs where the run trained and on its path (fast or plain), from the run's
    resolved config (its ``train:`` settings over ``common:``), as its evaluation does. The
    cache ``<run>/select/pool-scores.json`` is reused when it holds the same pool, labeled
    cases, ensemble size and views. It also records the oracle's Dice of each pool case
    (reference masks, for the report's diagnostics; the selection never reads it).

    Returns:
        ``{"scores": [CaseScore], "labeled": [CaseScore], "oracle_dice": {case_id: Dice}}``.
    """
    from enface.engine.fit import run_device  # Lightning: only where a study trains anyway
    from enface.engine.inference import Ensemble
    from enface.metrics import dice_score
    from enface.select.scoring import CaseScore, score_cases
    from enface.targets import binary

    run_dir = run_folder(study, source)
    path = run_dir / "select" / "pool-scores.json"
    key = {"pool": sorted(pool), "labeled": sorted(labeled), "top_k": study.top_k, "tta": bool(tta)}
    if path.is_file():
        cached = read_json_object(path)
        if all(cached.get(k) == v for k, v in key.items()):
            return {
                "scores": [CaseScore.from_json(s) for s in cached["scores"]],
                "labeled": [CaseScore.from_json(s) for s in cached["labeled_scores"]],
                "oracle_dice": cached["oracle_dice"],
            }
    root = Path(study.dataset)
    config = run_config(study, source)
    ensemble = Ensemble.from_run(run_dir, study.top_k, run_device(config), config.fast)
    oracle: dict[str, float] = {}

    def dice_of(cid: str, prob: np.ndarray) -> None:
        oracle[cid] = dice_score(binary(prob), load_case(root / "cases" / cid).load_mask(study.task))

    scores = score_cases(ensemble, root, sorted(pool), tta, True, on_case=dice_of, progress=False)
    centers = score_cases(ensemble, root, sorted(labeled), False, True, progress=False)
    atomic_write_json(
        path,
        {
            **key,
            "scores": [s.to_json() for s in scores],
            "labeled_scores": [s.to_json() for s in centers],
            "oracle_dice": oracle,
        },
    )
    return {"scores": scores, "labeled": centers, "oracle_dice": oracle}


def _reference_areas(study: StudyConfig, case_ids: Sequence[str]) -> list[float]:
    from enface.metrics import area_mm2

    root = Path(study.dataset)
    out = []
    for cid in case_ids:
        case = load_case(root / "cases" / cid)
        out.append(area_mm2(case.load_mask(study.task), case.spacing))
    return out


def selection_diagnostics(study: StudyConfig, selection: dict[str, Any]) -> dict[str, float]:
    """What one recorded selection picked, for the report's diagnostics: the mean reference
    lesion area of the picked patients' cases against the pool's, the oracle Dice of the
    selecting ensemble on the picked cases and on the pool, and the Spearman correlation of the
    uncertainty score with the ensemble's error (1 - Dice) over the pool (the oracle's masks,
    read here for the report only; nothing selects with them)."""
    from scipy.stats import spearmanr

    cases_of = labeled_training_patients(study)
    picked = {p["patient_id"] for p in selection["picked"]}
    before = set(selection["labeled_before"])
    pool = [c for p, cs in cases_of.items() if p not in before for c in cs]
    picked_cases = [c for p in sorted(picked) for c in cases_of.get(p, [])]
    nan = float("nan")
    out = {
        "picked_area_mm2": float(np.mean(_reference_areas(study, picked_cases))) if picked_cases else nan,
        "pool_area_mm2": float(np.mean(_reference_areas(study, pool))) if pool else nan,
        "picked_oracle_dice": nan,
        "pool_oracle_dice": nan,
        "spearman_uncertainty_error": nan,
    }
    cache = Path(selection["source_run"]) / "select" / "pool-scores.json"
    if selection["strategy"] != "random" and cache.is_file():
        scores = read_json_object(cache)
        dice = scores["oracle_dice"]
        unc = {s["case_id"]: s["uncertainty"] for s in scores["scores"]}
        common = sorted(set(dice) & set(unc))
        out["picked_oracle_dice"] = float(np.mean([dice[c] for c in picked_cases if c in dice] or [nan]))
        out["pool_oracle_dice"] = float(np.mean([dice[c] for c in common] or [nan]))
        x, y = [unc[c] for c in common], [1.0 - dice[c] for c in common]
        if len(common) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0:  # else undefined
            out["spearman_uncertainty_error"] = float(spearmanr(x, y).statistic)
    return out
