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
from enface.study.config import StudyConfig
from enface.targets import SCRATCH, Target

__all__ = ["PlannedRun", "check_index", "plan_study", "run_config", "run_folder", "run_spec"]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study.

    Attributes:
        index: position in the plan.
        stage: ``"pretrain"`` or ``"train"``.
        model: model name.
        target: reconstruction target (pretrain) or mask task (train).
        init: ``"scratch"`` or ``"ssl-<target>"`` (train only).
        fraction: label fraction (1.0 for pretrain).
        seed: random seed.
    """

    index: int
    stage: str
    model: str
    target: str
    init: str = SCRATCH
    fraction: float = 1.0
    seed: int = 0

    @property
    def target_spec(self) -> Target:
        return Target.for_stage(self.stage, self.target)


def plan_study(study: StudyConfig) -> list[PlannedRun]:
    """All runs of a study: pre-training runs first, then segmentation runs."""
    runs: list[PlannedRun] = []
    for model in study.models:
        for target in study.targets:
            runs.append(PlannedRun(len(runs), "pretrain", model, target.name, seed=study.pretrain_seed))
    for model in study.models:
        for init in study.inits:
            for fraction in sorted(study.fractions):
                for seed in study.seeds:
                    runs.append(PlannedRun(len(runs), "train", model, study.task, init, fraction, seed))
    return runs


def run_config(study: StudyConfig, run: PlannedRun, init_ckpt: str | None = None) -> RunConfig:
    """The :class:`RunConfig` of a planned run (``init_ckpt``: its pre-trained checkpoint)."""
    overrides: dict[str, Any] = {**study.common, **(study.pretrain if run.stage == "pretrain" else study.train)}
    overrides.update(
        dataset=study.dataset,
        target=run.target,
        model=run.model,
        seed=run.seed,
        runs_dir=str(study.runs_dir),
        top_k=study.top_k,
    )
    if run.stage == "train":
        overrides.update(fraction=run.fraction, init=init_ckpt)
    return load_config(None, run.stage, overrides)


def run_spec(study: StudyConfig, run: PlannedRun, dataset_name: str | None = None) -> RunSpec:
    """The :class:`RunSpec` of a planned run (``dataset_name`` read from ``dataset.json`` when not given)."""
    name = dataset_name or str(read_dataset_info(study.dataset)["name"])
    return RunSpec.from_config(run_config(study, run), name, run.init)


def run_folder(study: StudyConfig, run: PlannedRun, dataset_name: str | None = None) -> Path:
    """The run folder of a planned run."""
    return run_spec(study, run, dataset_name).folder(study.runs_dir)


def check_index(index: int, plan: list[PlannedRun]) -> int:
    """``index`` if it is a position of the plan.

    Raises:
        ConfigError: outside the plan.
    """
    if not 0 <= index < len(plan):
        raise ConfigError(f"--run-index {index} is outside the plan (0..{len(plan) - 1})")
    return index
