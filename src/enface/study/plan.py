"""A study's plan: every run it needs, pre-training first, and where each one lives.

A planned run becomes a :class:`~enface.config.RunConfig` and a
:class:`~enface.engine.runs.RunSpec` through the same functions ``enface train`` uses, so the
study and a hand-started run agree on the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enface.config import RunConfig, load_config
from enface.data.folder import read_dataset_info
from enface.engine.runs import RunSpec
from enface.errors import ConfigError
from enface.study.active_config import START
from enface.study.config import StudyConfig
from enface.targets import SCRATCH, Target

__all__ = [
    "PlannedRun",
    "active_runs_dir",
    "check_index",
    "plan_study",
    "run_config",
    "run_folder",
    "run_label",
    "run_spec",
]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study.

    Attributes:
        index: position in the plan.
        stage: ``"pretrain"``, ``"train"`` or ``"active"`` (a round of the active-learning
            simulation, :mod:`enface.study.active`).
        model: model name.
        target: reconstruction target (pretrain) or mask task (train, active).
        init: ``"scratch"`` or ``"ssl-<target>"`` (train, active).
        fraction: label fraction (1.0 for pretrain and active).
        seed: random seed.
        strategy: selection strategy of an active round (``"start"`` for round 0).
        round: the active round (0 for other stages).
    """

    index: int
    stage: str
    model: str
    target: str
    init: str = SCRATCH
    fraction: float = 1.0
    seed: int = 0
    strategy: str = ""
    round: int = 0

    @property
    def target_spec(self) -> Target:
        return Target.for_stage(self.stage, self.target)  # "active" segments, as "train"


def plan_study(study: StudyConfig) -> list[PlannedRun]:
    """All runs of a study: pre-training runs first, then segmentation runs (arm by arm)."""
    runs: list[PlannedRun] = []
    for model, target in study.pretrainings:
        runs.append(PlannedRun(len(runs), "pretrain", model, target.name, seed=study.pretrain_seed))
    for arm in study.arm_list:
        for init in arm.inits:
            for fraction in arm.fractions:
                for seed in study.seeds:
                    runs.append(PlannedRun(len(runs), "train", arm.model, study.task, init, fraction, seed))
    active = study.active_config
    if active is not None:  # round by round: a round selects with the run of the round before
        for r in range(active.rounds + 1):
            for strategy in active.strategies if r else (START,):
                for seed in study.seeds:
                    runs.append(
                        PlannedRun(len(runs), "active", active.model, study.task, active.init, 1.0, seed, strategy, r)
                    )
    return runs


def active_runs_dir(study: StudyConfig, run: PlannedRun) -> Path:
    """The runs root of an active round: ``<runs>/active-learning/<strategy>/round-<r>``."""
    return study.runs_dir / "active-learning" / run.strategy / f"round-{run.round}"


def run_label(study: StudyConfig, run: PlannedRun) -> str:
    """A planned run in words: ``train fpn ssl-faf_inv 5% seed 0``, ``active fpn ... uncertainty round 2 ...``."""
    spec = run_spec(study, run)
    if run.stage != "active":
        return spec.label
    active = study.active_config
    n = active.patients_at(run.round) if active else "?"
    return f"active {spec.model_dir} {run.init} {run.strategy} round {run.round} ({n} patients) seed {run.seed}"


def run_config(
    study: StudyConfig, run: PlannedRun, init_ckpt: str | None = None, patients: tuple[str, ...] | None = None
) -> RunConfig:
    """The :class:`RunConfig` of a planned run (``init_ckpt``: its pre-trained checkpoint;
    ``patients``: the labeled patients of an active round, None while they are not known)."""
    overrides: dict[str, Any] = {**study.common, **(study.pretrain if run.stage == "pretrain" else study.train)}
    overrides.update(
        dataset=study.dataset,
        target=run.target,
        model=run.model,
        seed=run.seed,
        runs_dir=str(study.runs_dir),
        top_k=study.top_k,
    )
    if study.model_kwargs(run.model):
        overrides["model_kwargs"] = study.model_kwargs(run.model)
    if run.stage != "pretrain":
        overrides.update(fraction=run.fraction, init=init_ckpt)
    if run.stage == "active":
        overrides.update(runs_dir=str(active_runs_dir(study, run)), patients=patients)
    return load_config(None, "pretrain" if run.stage == "pretrain" else "train", overrides)


def run_spec(study: StudyConfig, run: PlannedRun, dataset_name: str | None = None) -> RunSpec:
    """The :class:`RunSpec` of a planned run (``dataset_name`` read from ``dataset.json`` when not given)."""
    name = dataset_name or str(read_dataset_info(study.dataset)["name"])
    return RunSpec.from_config(run_config(study, run), name, run.init)


def run_folder(study: StudyConfig, run: PlannedRun, dataset_name: str | None = None) -> Path:
    """The run folder of a planned run."""
    root = active_runs_dir(study, run) if run.stage == "active" else study.runs_dir
    return run_spec(study, run, dataset_name).folder(root)


def check_index(index: int, plan: list[PlannedRun]) -> int:
    """``index`` if it is a position of the plan.

    Raises:
        ConfigError: outside the plan.
    """
    if not 0 <= index < len(plan):
        raise ConfigError(f"--run-index {index} is outside the plan (0..{len(plan) - 1})")
    return index
