"""A label-efficiency study described in one YAML file (see ``configs/phantom-study.yaml``)::

    name: phantom-study
    dataset: data/phantom            # training dataset folder (with splits.json)
    synth: {patients: 40, seed: 0, preset: demo}   # optional: generate it when missing
    task: ga
    test_sets:                       # name -> dataset folder + split (+ optional synth)
      phantom: {dataset: data/phantom, split: test}
    models: [fpn, lachinov]
    inits: [scratch, ssl-faf_inv, ssl-slo]
    fractions: [0.05, 0.1, 0.2, 1.0]
    seeds: [0, 1, 2]
    reference: {model: fpn, init: ssl-faf_inv}
    common: {width: 0.25, crop: [16, 64]}    # RunConfig fields for every run
    pretrain: {epochs: 30}                    # ... for pre-training runs
    train: {epochs: 40}                       # ... for segmentation runs

Names that become folder names (``name``, the test-set names) must be safe folder names.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enface.config import read_yaml_mapping
from enface.errors import ConfigError
from enface.targets import Target, check_name

__all__ = ["STUDY_KEYS", "StudyConfig", "load_study", "study_as_dict"]

STUDY_KEYS: tuple[str, ...] = (
    "name",
    "dataset",
    "synth",
    "task",
    "test_sets",
    "models",
    "inits",
    "fractions",
    "seeds",
    "pretrain_seed",
    "reference",
    "common",
    "pretrain",
    "train",
    "top_k",
    "out",
    "overlay_cases",
)
"""Keys a study YAML may hold (``name`` and ``dataset`` are required)."""


@dataclass
class StudyConfig:
    """A label-efficiency study (see the module docstring for the YAML form)."""

    name: str
    dataset: str
    task: str = "ga"
    test_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: tuple[str, ...] = ("fpn",)
    inits: tuple[str, ...] = ("scratch", "ssl-faf_inv")
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 1.0)
    seeds: tuple[int, ...] = (0,)
    pretrain_seed: int = 0
    reference: dict[str, str] = field(default_factory=lambda: {"model": "fpn", "init": "ssl-faf_inv"})
    common: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    top_k: int = 5
    synth: dict[str, Any] | None = None
    out: str = ""
    overlay_cases: int = 2

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"

    @property
    def targets(self) -> list[Target]:
        """The reconstruction targets the study pre-trains (one per ``ssl-*`` init), sorted."""
        found = {t for i in self.inits if (t := Target.from_init_label(i)) is not None}
        return sorted(found, key=lambda t: t.name)

    def validate(self) -> StudyConfig:
        """Check every field's value; raise :class:`ConfigError` naming the first bad one."""
        from enface.models import list_models

        check_name(self.name, "study: name")
        if not self.dataset:
            raise ConfigError("study: 'dataset' is required")
        Target.segment(self.task)
        unknown = [m for m in self.models if m not in list_models()]
        if not self.models or unknown:
            raise ConfigError(f"study: unknown models {unknown or '(none given)'}; known: {', '.join(list_models())}")
        for init in self.inits:
            Target.from_init_label(init)  # raises naming the init
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"study: fractions must lie in (0, 1], got {list(self.fractions)}")
        if not self.seeds:
            raise ConfigError("study: at least one seed is needed")
        if set(self.reference) != {"model", "init"}:
            raise ConfigError(f"study: reference must give 'model' and 'init', got {self.reference}")
        if int(self.top_k) < 1:
            raise ConfigError(f"study: top_k must be >= 1, got {self.top_k}")
        for name, ts in self.test_sets.items():
            check_name(str(name), "study: test set name")
            if not isinstance(ts, dict) or "dataset" not in ts:
                raise ConfigError(f"study: test set {name!r} needs a 'dataset'")
        return self


def _coerce(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    try:
        for key in ("models", "inits"):
            if key in doc:
                doc[key] = tuple(str(v) for v in doc[key])
        doc["fractions"] = tuple(float(f) for f in doc.get("fractions", (0.05, 0.1, 0.2, 1.0)))
        doc["seeds"] = tuple(int(s) for s in doc.get("seeds", (0,)))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: models/inits/fractions/seeds must be lists ({e})") from None
    return doc


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None) -> StudyConfig:
    """Read a study YAML. Relative dataset paths are taken relative to the current folder.

    Args:
        path: the YAML file.
        out: study folder (default: the YAML's ``out`` or ``studies/<name>``).

    Raises:
        ConfigError: naming the file and the missing, unknown or invalid key.
    """
    p = Path(path)
    doc = read_yaml_mapping(p, "study file")
    extra = set(doc) - set(STUDY_KEYS)
    if extra:
        raise ConfigError(f"{p}: unknown study keys {sorted(extra)}; known: {sorted(STUDY_KEYS)}")
    missing = [k for k in ("name", "dataset") if not doc.get(k)]
    if missing:
        raise ConfigError(
            f"{p}: the study needs {' and '.join(repr(k) for k in missing)} "
            f"(an empty file is not a study; see configs/phantom-study.yaml)"
        )
    study = StudyConfig(**_coerce(doc, p))
    study.out = str(out or study.out or Path("studies") / study.name)
    if not study.test_sets:
        study.test_sets = {"test": {"dataset": study.dataset, "split": "test"}}
    try:
        return study.validate()
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def study_as_dict(study: StudyConfig) -> dict[str, Any]:
    """Plain values of a study (for ``study.yaml`` in the study folder)."""
    d = dataclasses.asdict(study)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
