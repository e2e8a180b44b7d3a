"""A study's ledger: one small record per finished run, the results that outlive a machine.

Run folders hold checkpoints and die with the machine that trained them; the ledger is what a
study keeps. When a planned run has trained and been evaluated, :func:`write_record` leaves
``<ledger>/<run key>.json`` (a few KB, plain JSON, meant to be committed with the study's
docs)::

    {"format": 1, "run": {label, stage, model, target, init, fraction, seed, strategy, round},
     "identity": what the run is (below),
     "fingerprints": {"dataset": ..., "init_sha256": ...},   # of the files it used, for the record
     "outcome": {epochs_run, stopped, metric, best, seconds, cpu_seconds, layout, precision,
                 threads, machine, enface},
     "history": [{epoch, train_loss, <metric>}, ...],
     "evaluations": {<test set>: {cases: [{case_id, dice, area_diff_mm2, hd95_mm, area_pred_mm2,
                                   area_true_mm2}], collapse, growth, overlay}},
     "active": {patients, selection, diagnostics}             # an active-learning round only

``enface experiment`` treats a planned run whose record is in the ledger as done, so several
sessions, machines or array tasks finish one study, and its tables, figures and report are
built from the ledger alone (:mod:`enface.study.results`).

A record's *identity* is the run's config as the study plans it (every field that changes what
a run learns: model, width, budget, patience, crops, ...), the study's data (its ``synth``
settings, or the dataset's folder name) and, for a run started from a pre-training, that
pre-training's identity. It is computed from the study YAML alone, so a fresh clone can tell
which runs are done without training anything. A record whose identity differs from the
study's plan is refused, naming the fields that differ. The fingerprints of the files a run
read are kept beside it but not compared: a phantom regenerated on another CPU may differ in
the last bit of a voxel.
"""

from __future__ import annotations

import base64
import logging
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface import __version__
from enface.data.splits import fraction_key
from enface.engine.history import history_values, read_history
from enface.engine.runs import OPERATIONAL_FIELDS, identity_diff
from enface.errors import ConfigError
from enface.fileio import atomic_write_json, read_json_object
from enface.study.config import StudyConfig
from enface.study.plan import PlannedRun, run_config, run_label

__all__ = [
    "LEDGER_FORMAT",
    "RECORD_METRICS",
    "ledger_records",
    "overlay_cases",
    "pack_mask",
    "planned_identity",
    "read_record",
    "record_number",
    "record_path",
    "unpack_mask",
    "write_record",
]

log = logging.getLogger(__name__)

LEDGER_FORMAT = 1
"""Version of a record's layout."""
RECORD_METRICS: tuple[str, ...] = ("dice", "area_diff_mm2", "hd95_mm", "area_pred_mm2", "area_true_mm2")
"""Per-case columns a record keeps of each evaluation (the primary grader's rows)."""


def record_path(study: StudyConfig, run: PlannedRun) -> Path:
    """``<ledger>/<stage>/[<strategy>/round-<r>/]<model>/<target>/<init>/frac-<f>/seed-<s>.json``."""
    width = run_config(study, run).width
    model_dir = run.model if width == 1.0 else f"{run.model}-w{width:g}"
    parts = [run.stage]
    if run.stage == "active":
        parts += [run.strategy, f"round-{run.round}"]
    parts += [model_dir, run.target, run.init, f"frac-{fraction_key(run.fraction)}"]
    return study.ledger_dir.joinpath(*parts, f"seed-{run.seed}.json")


def _data_identity(study: StudyConfig) -> dict[str, Any]:
    data: dict[str, Any] = {"synth": study.synth} if study.synth else {"dataset": Path(study.dataset).name}
    return {**data, "task": study.task}


def planned_identity(study: StudyConfig, run: PlannedRun) -> dict[str, Any]:
    """What a planned run is, from the study YAML alone (see the module description)."""
    config = run_config(study, run).to_dict()
    ident: dict[str, Any] = {k: v for k, v in config.items() if k not in OPERATIONAL_FIELDS | {"patients"}}
    ident["data"] = _data_identity(study)
    source = _pretraining(study, run)
    ident["init"] = run.init if source is None else {"label": run.init, **planned_identity(study, source)}
    if run.stage != "pretrain":
        ident["evaluation"] = {"top_k": study.top_k, "test_sets": _test_sets(study)}
    if run.stage == "active":
        # how many rounds follow, and which other strategies run, is no part of a round: a study
        # given more rounds later keeps the rounds it has recorded
        ident["active"] = {k: v for k, v in (study.active or {}).items() if k not in ("strategies", "rounds")}
        ident["strategy"], ident["round"] = run.strategy, run.round
    return ident


def _test_sets(study: StudyConfig) -> dict[str, Any]:
    return {
        name: {"split": ts.get("split", "test"), **({"synth": ts["synth"]} if ts.get("synth") else {})}
        for name, ts in study.test_sets.items()
    }


def _pretraining(study: StudyConfig, run: PlannedRun) -> PlannedRun | None:
    """The pre-training a run starts from (None from scratch or for a pre-training)."""
    from enface.targets import Target

    target = Target.from_init_label(run.init) if run.stage != "pretrain" else None
    return None if target is None else PlannedRun(-1, "pretrain", run.model, target.name, seed=study.pretrain_seed)


def read_record(study: StudyConfig, run: PlannedRun) -> dict[str, Any] | None:
    """The ledger's record of a planned run, or None when there is none.

    Raises:
        ConfigError: the record is unreadable or holds another run (the differing fields named).
    """
    path = record_path(study, run)
    if not path.is_file():
        return None
    record = read_json_object(path)
    if record.get("format") != LEDGER_FORMAT:
        raise ConfigError(f"{path}: ledger record of format {record.get('format')!r}, expected {LEDGER_FORMAT}")
    diff = identity_diff(_flat(record.get("identity", {})), _flat(planned_identity(study, run)))
    if diff:
        raise ConfigError(
            f"{path}: this record is of another run than the study plans ({'; '.join(diff)}); "
            "remove the record to train the run again, or restore the study's settings"
        )
    return record


def _flat(ident: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested identity fields as ``a.b.c`` keys, so that a difference names the field itself."""
    out: dict[str, Any] = {}
    for key, value in ident.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key not in ("synth", "model_kwargs"):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def ledger_records(study: StudyConfig, plan: Sequence[PlannedRun]) -> dict[int, dict[str, Any]]:
    """``{plan index: record}`` of every planned run the ledger holds (each checked)."""
    return {run.index: rec for run in plan if (rec := read_record(study, run)) is not None}


def record_number(value: Any) -> float | str:
    """A per-case value as a record keeps it: rounded to 5 decimals, or ``"inf"`` / ``"nan"``
    (strict JSON has no such numbers; an infinite HD95 must stay apart from a missing one)."""
    v = float(value)
    return round(v, 5) if math.isfinite(v) else str(v)


def pack_mask(mask: np.ndarray) -> dict[str, Any]:
    """A binary ``(H, W)`` mask as ``{"shape", "bits"}`` (packed bits, base64)."""
    bits = np.packbits(np.asarray(mask, dtype=bool).ravel())
    return {"shape": list(mask.shape), "bits": base64.b64encode(bits.tobytes()).decode("ascii")}


def unpack_mask(packed: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`pack_mask`."""
    shape = tuple(int(s) for s in packed["shape"])
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)


def _history(run_dir: Path, metric: str) -> list[dict[str, Any]]:
    rows = read_history(run_dir / "logs" / "metrics.csv")
    losses, values = history_values(rows, "train_loss"), history_values(rows, metric)
    return [
        {"epoch": epoch, "train_loss": _rounded(loss), metric: _rounded(value)}
        for (epoch, loss), (_, value) in zip(losses, values)
    ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def _machine() -> dict[str, Any]:
    import torch

    from enface.engine.fastpath import native_bf16

    return {
        "cpu": platform.processor() or platform.machine(),
        "bf16": native_bf16("cpu"),
        "torch": torch.__version__.split("+")[0],
    }


def write_record(
    study: StudyConfig,
    run: PlannedRun,
    run_dir: Path,
    evaluations: Mapping[str, Mapping[str, Any]],
    cost: Mapping[str, float],
    active: Mapping[str, Any] | None = None,
) -> Path:
    """Leave the record of a finished (and evaluated) run in the ledger (atomically).

    Args:
        study, run: the study and the planned run.
        run_dir: its run folder (``done.json``, ``identity.json``, ``logs/metrics.csv``).
        evaluations: per test set ``{"cases", "collapse", "growth", "overlay"}`` (see the module).
        cost: ``{"seconds", "cpu_seconds"}`` of the whole run (training and evaluations).
        active: an active round's ``{"patients", "selection", "diagnostics"}``.
    """
    done = read_json_object(run_dir / "done.json")
    fingerprints = read_json_object(run_dir / "identity.json")
    metric = str(done.get("metric", "val_dice"))
    record: dict[str, Any] = {
        "format": LEDGER_FORMAT,
        "run": {"label": run_label(study, run), **{k: v for k, v in vars(run).items() if k != "index"}},
        "identity": planned_identity(study, run),
        "fingerprints": {k: fingerprints.get(k) for k in ("dataset_fingerprint", "init_sha256")},
        "outcome": {
            "epochs_run": int(done.get("epochs_run", done.get("epochs", 0))),
            "stopped": str(done.get("stopped", "max_epochs")),
            "metric": metric,
            "best": [round(float(v), 5) for _, v in done.get("best", [])],
            "seconds": round(float(cost["seconds"]), 1),
            "cpu_seconds": round(float(cost["cpu_seconds"]), 1),
            "train_cpu_seconds": done.get("cpu_seconds"),
            **{k: done.get(k) for k in ("layout", "precision", "threads")},
            "machine": _machine(),
            "enface": __version__,
        },
        "history": _history(run_dir, metric),
        "evaluations": dict(evaluations),
    }
    if active is not None:
        record["active"] = dict(active)
    path = record_path(study, run)
    atomic_write_json(path, record)
    log.info("ledger: %s -> %s", run_label(study, run), path)
    return path


def overlay_cases(dataset: Path, case_ids: Sequence[str], task: str, n: int) -> list[str]:
    """The ``n`` test cases whose predictions a record keeps for the report's overlay figure:
    spread from the smallest to the largest reference lesion (cases without one only when too
    few have one)."""
    from enface.data.folder import load_case

    areas = {c: int(load_case(dataset / "cases" / c).load_mask(task).sum()) for c in case_ids}
    with_lesion = sorted((a, c) for c, a in areas.items() if a > 0)
    if len(with_lesion) < n:
        return [c for _, c in with_lesion] + [c for c in case_ids if areas[c] == 0][: n - len(with_lesion)]
    picks = np.linspace(0, len(with_lesion) - 1, n).round().astype(int)
    return [with_lesion[i][1] for i in sorted(set(picks.tolist()))]
