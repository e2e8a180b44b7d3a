"""Running a study: its phantom datasets, its runs in plan order (resumable), their evaluations.

A run whose record is in the study's ledger (:mod:`enface.study.ledger`) is done, wherever it
was trained; every other run trains (resuming a killed one), is evaluated on every test set
and leaves its record. A run that needs another one's checkpoints (an SSL arm its
pre-training, an active round the round before) trains that one here first when this machine
does not have it, even if the ledger records it: the same config and seed give the same
weights, and the ledger's record stays as it was.

The study folder is locked while it runs (two processes on one study would train the same
runs twice and race on its tables); ``--run-index`` runs of a scheduler lock only the run
folder they train, so an array of them can run side by side.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from enface.data.folder import is_dataset
from enface.engine.checkpoint import topk_checkpoints
from enface.errors import ConfigError
from enface.fileio import FolderLock, atomic_write_json, atomic_write_text, path_under, read_json_object
from enface.study.config import StudyConfig, study_as_dict
from enface.study.ledger import RECORD_METRICS, overlay_cases, pack_mask, read_record, record_number, write_record
from enface.study.plan import PlannedRun, check_index, plan_study, run_config, run_folder
from enface.targets import Target, binary

__all__ = ["ensure_datasets", "execute_run", "pretrained_checkpoint", "run_study"]

log = logging.getLogger(__name__)


def pretrained_checkpoint(study: StudyConfig, model: str, target: str, progress: bool = False) -> str:
    """The best checkpoint of the study's pre-training of ``model`` on ``target``, trained here
    first when this machine has not (see the module description).

    Raises:
        ConfigError: that pre-training left no ranked checkpoint.
    """
    pretraining = PlannedRun(-1, "pretrain", model, target, seed=study.pretrain_seed)
    folder = run_folder(study, pretraining)
    if not (folder / "done.json").is_file():
        log.info("pre-training %s -> %s first: its checkpoints are not on this machine", model, target)
    execute_run(study, pretraining, progress=progress)  # a finished one is checked against the rule, not retrained
    best = topk_checkpoints(folder, 1)
    if not best:
        raise ConfigError(f"{folder}: pre-training finished but left no ranked checkpoint")
    return str(best[0])


def ensure_datasets(study: StudyConfig) -> None:
    """Generate the study's phantom datasets (training and test sets) that are missing.

    The training dataset is generated from the study's ``synth`` section, a test set from
    its own ``synth`` entry (e.g. an external phantom cohort from another seed). Then every
    test set's split must hold cases with a mask of the study's task.

    Raises:
        ConfigError: a dataset is missing (without a ``synth`` entry), or a test set's split
            is missing or has no case with a mask of the task (the test set named).
    """
    from enface.synth.cohort import synthesize_dataset

    wanted = [("dataset", study.dataset, study.synth)]
    wanted += [(f"test set {name!r}", ts["dataset"], ts.get("synth")) for name, ts in study.test_sets.items()]
    for what, folder, synth in wanted:
        if is_dataset(folder):
            continue
        if not synth:
            raise ConfigError(f"study: {what} {folder} not found (and no 'synth' entry to generate it)")
        log.info("generating phantom %s in %s", what, folder)
        # no dataset.json: nothing there, or a generation that was killed -> (re)generate it
        synthesize_dataset(Path(folder), **{"overwrite": True, **synth})
    for name, ts in study.test_sets.items():
        _check_test_set_cases(study, name, ts)


def _check_test_set_cases(study: StudyConfig, name: str, ts: dict[str, Any]) -> None:
    """A test set's split holds cases with a mask of the task (checked before anything trains).

    Raises:
        ConfigError: naming the test set: no such split, or no case in it has the mask.
    """
    from enface.data.splits import select_cases
    from enface.errors import DatasetError

    split = ts.get("split", "test")
    try:
        ids = select_cases(ts["dataset"], split, requires=(f"mask:{study.task}",))
    except (DatasetError, ValueError) as e:
        raise ConfigError(f"study: test set {name!r} ({ts['dataset']}, split {split!r}): {e}") from None
    if not ids:
        raise ConfigError(
            f"study: test set {name!r}: no case of split {split!r} of {ts['dataset']} has a {study.task!r} mask"
        )


def _train_quietly(study: StudyConfig, run: PlannedRun) -> str:
    """Train a run an active round needs (its round before), without progress output."""
    return execute_run(study, run, progress=False)


def execute_run(study: StudyConfig, run: PlannedRun, progress: bool = True) -> str:
    """Train one planned run (resuming it when killed earlier), evaluate it on every test set
    and leave its record in the ledger unless one is there already.

    Returns:
        ``"finished"``, ``"skipped"`` (already trained here) or ``"interrupted"``.
    """
    from enface.engine.fit import fit

    clock = (time.time(), time.process_time())
    init_ckpt, patients = None, None
    source = Target.from_init_label(run.init) if run.stage != "pretrain" else None
    if source is not None:
        init_ckpt = pretrained_checkpoint(study, run.model, source.name, progress)
    if run.stage == "active":  # its patients: drawn (round 0) or selected with the round before
        from enface.study.active import round_patients

        patients = round_patients(study, run, _train_quietly)
    config = run_config(study, run, init_ckpt, patients)
    result = fit(config, resume=True, progress=progress)
    if result.status == "interrupted":
        return "interrupted"
    evaluations = _evaluations(study, run, result.run_dir, config) if run.stage != "pretrain" else {}
    if read_record(study, run) is None:
        cost = {"seconds": time.time() - clock[0], "cpu_seconds": time.process_time() - clock[1]}
        if result.status == "skipped":  # trained by an earlier process: its training time from done.json
            done = read_json_object(result.run_dir / "done.json")
            cost = {k: v + float(done.get(k) or done.get("seconds", 0.0)) for k, v in cost.items()}
        write_record(study, run, result.run_dir, evaluations, cost, _active_record(study, run))
    return result.status


def _evaluations(study: StudyConfig, run: PlannedRun, run_dir: Path, config: Any) -> dict[str, dict[str, Any]]:
    """Evaluate a segmentation run on every test set (once) and summarise each for its record."""
    from enface.engine.fit import run_device
    from enface.evaluate import evaluate

    out: dict[str, dict[str, Any]] = {}
    for name, ts in study.test_sets.items():
        folder = path_under(run_dir, "eval", name)
        if not (folder / "summary.json").is_file():
            evaluate(
                run_dir,
                split=ts.get("split", "test"),
                dataset=ts["dataset"],
                task=study.task,
                top_k=study.top_k,
                out_dir=folder,
                progress=False,
                fast=config.fast,
                device=run_device(config),  # where it trained: a study on a GPU evaluates on it
            )
        out[name] = _evaluation_record(study, run, name, folder)
    return out


def _evaluation_record(study: StudyConfig, run: PlannedRun, name: str, folder: Path) -> dict[str, Any]:
    """What a ledger record keeps of one evaluation (see :mod:`enface.study.ledger`)."""
    from enface.evaluate import read_cases_csv
    from enface.study.convergence import collapse_flag
    from enface.study.growth import seed_growth

    ts = study.test_sets[name]
    rows = [r for r in read_cases_csv(folder / "cases.csv") if r["grader"] == ""]
    npz = folder / "predictions.npz"
    record: dict[str, Any] = {
        "cases": [{"case_id": r["case_id"], **{m: record_number(r[m]) for m in RECORD_METRICS}} for r in rows],
        "collapse": collapse_flag(rows, npz),
        "growth": seed_growth(npz, ts["dataset"], study.task) if run.stage == "train" and npz.is_file() else None,
    }
    first = name == next(iter(study.test_sets))
    if run.stage == "train" and first and run.fraction == min(study.fractions) and run.seed == study.seeds[0]:
        ids = overlay_cases(Path(ts["dataset"]), [r["case_id"] for r in rows], study.task, study.overlay_cases)
        with np.load(npz) as data:
            record["overlay"] = {c: pack_mask(binary(data[c] / 255)) for c in ids}  # stored as round(p * 255)
    return record


def _active_record(study: StudyConfig, run: PlannedRun) -> dict[str, Any] | None:
    """An active round's patients and, from round 1, its selection and what it picked."""
    if run.stage != "active":
        return None
    from enface.study.active import round_patients, selection_diagnostics, selection_path

    out: dict[str, Any] = {"patients": list(round_patients(study, run, _train_quietly))}
    path = selection_path(study, run)
    if run.round > 0 and path.is_file():
        selection = read_json_object(path)
        out["selection"] = {k: selection[k] for k in ("picked", "labeled_before", "patients")}
        out["diagnostics"] = selection_diagnostics(study, selection)
    return out


def _run_plan(study: StudyConfig, todo: list[PlannedRun], progress: bool) -> dict[int, str]:
    statuses: dict[int, str] = {}
    t0 = time.time()
    for n, run in enumerate(todo, 1):
        label = run_folder(study, run).relative_to(study.runs_dir)
        if read_record(study, run) is not None:
            log.info("[run %d/%d, plan index %d] %s: recorded in the ledger", n, len(todo), run.index, label)
            statuses[run.index] = "recorded"
            continue
        log.info("[run %d/%d, plan index %d] %s", n, len(todo), run.index, label)
        statuses[run.index] = execute_run(study, run, progress=progress)
        if statuses[run.index] == "interrupted":
            log.warning("study interrupted at plan index %d; re-run the same command to resume", run.index)
            break
        log.info("[run %d/%d] %s (%.0f s elapsed)", n, len(todo), statuses[run.index], time.time() - t0)
    return statuses


def run_study(
    study: StudyConfig, run_index: int | None = None, progress: bool = True, report: bool = True
) -> dict[str, Any]:
    """Run the whole study (or one run of it) and write results, figures and report.

    Args:
        study: the study.
        run_index: run only this index of the plan (no report is written then).
        progress: show per-epoch progress bars.
        report: write tables, figures and the report after the runs.

    Returns:
        ``{"plan": [...], "statuses": {index: status}, "report": path or None}``.

    Raises:
        RunFolderError: another process is running the same study (or the same run).
    """
    from enface.study.report import write_report
    from enface.study.results import collect_results

    plan = plan_study(study)
    if run_index is not None:
        check_index(run_index, plan)
    ensure_datasets(study)
    lock = FolderLock(study.out_dir, "study") if run_index is None else contextlib.nullcontext()
    with lock:
        atomic_write_json(study.out_dir / "plan.json", [r.__dict__ for r in plan])
        atomic_write_text(study.out_dir / "study.yaml", yaml.safe_dump(study_as_dict(study), sort_keys=False))
        todo = plan if run_index is None else [plan[run_index]]
        statuses = _run_plan(study, todo, progress)
        report_path = None
        if report and run_index is None and "interrupted" not in statuses.values():
            report_path = write_report(study, plan, collect_results(study, plan))
    return {"plan": plan, "statuses": statuses, "report": report_path}
