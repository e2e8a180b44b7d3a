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
    active: {strategies: [random, uncertainty, diverse], rounds: 4}  # optional: simulated active
                                              # learning (enface.study.active_config); fractions may then be []
    arms:                            # optional, instead of models x inits x fractions: per model its own
      - {model: fpn, inits: [scratch, ssl-faf_inv], fractions: [0.05, 1.0]}
      - {model: ipnv2, inits: [scratch], fractions: [0.05, 1.0], model_kwargs: {depth: 64}}
    ledger: docs/my-study/ledger     # where each finished run leaves its record (default <out>/ledger)

Names that become folder names (``name``, the test-set names) must be safe folder names.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enface.config import RunConfig, read_yaml_mapping
from enface.data.splits import fraction_key
from enface.errors import ConfigError
from enface.study.active_config import ActiveConfig, parse_active
from enface.targets import Target, check_name

__all__ = [
    "ARM_KEYS",
    "STUDY_KEYS",
    "TEST_SET_KEYS",
    "TEST_SET_SPLITS",
    "Arm",
    "StudyConfig",
    "load_study",
    "study_as_dict",
]

ARM_KEYS: tuple[str, ...] = ("model", "inits", "fractions", "model_kwargs", "train")
"""Keys of one entry of a study's ``arms:`` list."""


@dataclass(frozen=True)
class Arm:
    """One model of a study with its initialisations and label fractions.

    Attributes:
        model: registered model name.
        inits: ``scratch`` or ``ssl-<target>`` each.
        fractions: label fractions, each in (0, 1].
        model_kwargs: extra constructor arguments of the model (e.g. ``{depth: 64}``).
        train: training settings of this arm's segmentation runs that differ from the study's
            ``train:`` block (e.g. ``{lr: 0.01}`` for a baseline that diverges at the paper's
            learning rate); its pre-trainings keep the study's ``pretrain:`` block.
    """

    model: str
    inits: tuple[str, ...]
    fractions: tuple[float, ...]
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    train: tuple[tuple[str, Any], ...] = ()


ARM_PLANNED: tuple[str, ...] = (
    "dataset",
    "target",
    "model",
    "model_kwargs",
    "seed",
    "fraction",
    "init",
    "patients",
    "runs_dir",
    "top_k",
)
"""Run settings that the study's plan sets for every run, which an arm's ``train:`` cannot."""


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
    "active",
    "arms",
    "ledger",
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
    active: dict[str, Any] | None = None
    arms: tuple[Arm, ...] | None = None
    ledger: str = ""

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"

    @property
    def ledger_dir(self) -> Path:
        """Where each finished run leaves its record (``ledger``, default ``<out>/ledger``)."""
        return Path(self.ledger) if self.ledger else self.out_dir / "ledger"

    @property
    def arm_list(self) -> tuple[Arm, ...]:
        """The study's arms: ``arms`` as given, else every model with every init and fraction."""
        if self.arms:
            return self.arms
        return tuple(Arm(m, tuple(self.inits), tuple(sorted(self.fractions))) for m in self.models)

    def arm_of(self, model: str) -> Arm | None:
        """``model``'s arm (one per model), None for a model the study does not train."""
        return next((a for a in self.arm_list if a.model == model), None)

    def model_kwargs(self, model: str) -> dict[str, Any]:
        """The constructor arguments the study gives ``model`` (its arm's ``model_kwargs``)."""
        arm = self.arm_of(model)
        return dict(arm.model_kwargs) if arm else {}

    def arm_train(self, model: str) -> dict[str, Any]:
        """The training settings ``model``'s arm sets over the study's ``train:`` block."""
        arm = self.arm_of(model)
        return dict(arm.train) if arm else {}

    @property
    def active_config(self) -> ActiveConfig | None:
        """The ``active:`` block, checked (None without one)."""
        if self.active is None:
            return None
        return parse_active(self.active, tuple(self.models), self.reference.get("model", "fpn"))

    @property
    def pretrainings(self) -> list[tuple[str, Target]]:
        """``(model, target)`` of every pre-training the study needs (one per model and ``ssl-*``
        init of its arms, the active learning's too), in the order of the arms."""
        active = self.active_config
        wanted = [(a.model, i) for a in self.arm_list for i in a.inits]
        wanted += [(active.model, active.init)] if active else []
        found: list[tuple[str, Target]] = []
        for model, init in wanted:
            target = Target.from_init_label(init)
            if target is not None and (model, target) not in found:
                found.append((model, target))
        return found

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
        active = self.active_config
        if (not self.fractions and active is None) or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"study: fractions must lie in (0, 1], got {list(self.fractions)}")
        if not self.seeds:
            raise ConfigError("study: at least one seed is needed")
        if set(self.reference) != {"model", "init"}:
            raise ConfigError(f"study: reference must give 'model' and 'init', got {self.reference}")
        if int(self.top_k) < 1:
            raise ConfigError(f"study: top_k must be >= 1, got {self.top_k}")
        for name, ts in self.test_sets.items():
            _check_test_set(name, ts)
        for arm in self.arms or ():
            _check_arm(arm, list_models())
        return self


_LISTS: dict[str, type] = {"models": str, "inits": str, "fractions": float, "seeds": int}
"""The list fields of a study and the type of their items."""
_INTS = ("pretrain_seed", "top_k", "overlay_cases")
_MAPPINGS = ("test_sets", "reference", "common", "pretrain", "train", "synth", "active")
_STRINGS = ("name", "dataset", "task", "out", "ledger")
TEST_SET_KEYS = ("dataset", "split", "synth")
TEST_SET_SPLITS = ("train", "val", "test", "all")


def _item(key: str, kind: type, value: Any) -> Any:
    """One item of a study field as ``kind``; ValueError says what it is instead."""
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{value!r} is not a name")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value) if isinstance(value, str) else value  # YAML reads 5e-2 as a string
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    if kind is int:
        if float(number) != int(number):
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    return float(number)


def _coerce(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    """The study YAML's values as the field types, each bad one named (with the file)."""
    for key, kind in _LISTS.items():
        if key not in doc:
            continue
        values = doc[key]
        if not isinstance(values, list):
            raise ConfigError(f"{where}: {key} must be a list (e.g. {key}: [...]), got {values!r}")
        what = {str: "names", float: "numbers", int: "integers"}[kind]
        try:
            items = tuple(_item(key, kind, v) for v in values)
        except ValueError as e:
            raise ConfigError(f"{where}: {key} must be a list of {what}: {e}") from None
        groups: dict[str, list[str]] = {}
        for v in items:  # fractions that name one run folder (0.1, 0.1000000001) are one fraction
            groups.setdefault(fraction_key(v) if key == "fractions" and 0 < v <= 1 else str(v), []).append(str(v))
        twice = [" and ".join(g) for g in groups.values() if len(g) > 1]
        if twice:
            raise ConfigError(f"{where}: {key} lists the same value more than once ({'; '.join(twice)})")
        doc[key] = items
    for key in _INTS:
        if key in doc:
            try:
                doc[key] = _item(key, int, doc[key])
            except ValueError as e:
                raise ConfigError(f"{where}: {key} must be an integer: {e}") from None
    for key in _MAPPINGS:
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise ConfigError(f"{where}: {key} must be a mapping (key: value), got {doc[key]!r}")
    for key in _STRINGS:
        if key in doc and not isinstance(doc[key], str):
            raise ConfigError(f"{where}: {key} must be a text, got {doc[key]!r}")
    return doc


def _check_arm(arm: Arm, known: list[str]) -> None:
    if arm.model not in known:
        raise ConfigError(f"study: arm of unknown model {arm.model!r}; known: {', '.join(known)}")
    if not arm.inits or not arm.fractions:
        raise ConfigError(f"study: the {arm.model} arm needs 'inits' and 'fractions' (non-empty lists)")
    for init in arm.inits:
        Target.from_init_label(init)  # raises naming the init
    if any(not 0 < f <= 1 for f in arm.fractions):
        raise ConfigError(f"study: the {arm.model} arm's fractions must lie in (0, 1], got {list(arm.fractions)}")
    settable = sorted({f.name for f in dataclasses.fields(RunConfig)} - set(ARM_PLANNED))
    wrong = [key for key, _ in arm.train if key not in settable]
    if wrong:
        raise ConfigError(
            f"study: the {arm.model} arm's train sets {wrong}, which an arm cannot set; it can set {settable}"
        )


def _arms(values: Any, where: Path) -> tuple[Arm, ...]:
    """The ``arms:`` list as :class:`Arm` records (one per model), each bad entry named."""
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: arms must be a non-empty list of {{model, inits, fractions}} mappings")
    arms = []
    for n, entry in enumerate(values):
        if (
            not isinstance(entry, dict)
            or set(entry) - set(ARM_KEYS)
            or not {"model", "inits", "fractions"} <= set(entry)
        ):
            raise ConfigError(f"{where}: arms[{n}] must be a mapping with keys {list(ARM_KEYS)}, got {entry!r}")
        kwargs, train = entry.get("model_kwargs") or {}, entry.get("train") or {}
        for key, value in (("model_kwargs", kwargs), ("train", train)):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: arms[{n}].{key} must be a mapping, got {value!r}")
        try:
            inits = tuple(_item("inits", str, v) for v in entry["inits"])
            fractions = tuple(sorted(_item("fractions", float, v) for v in entry["fractions"]))
            model = _item("model", str, entry["model"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: arms[{n}]: {e}") from None
        arms.append(Arm(model, inits, fractions, tuple(sorted(kwargs.items())), tuple(sorted(train.items()))))
    if len({a.model for a in arms}) < len(arms):
        raise ConfigError(f"{where}: arms name a model more than once ({[a.model for a in arms]})")
    return tuple(arms)


def _check_test_set(name: str, ts: Any) -> None:
    check_name(str(name), "study: test set name")
    if not isinstance(ts, dict) or not isinstance(ts.get("dataset"), str) or not ts["dataset"]:
        raise ConfigError(f"study: test set {name!r} needs a 'dataset' (a folder)")
    unknown = sorted(set(ts) - set(TEST_SET_KEYS))
    if unknown:
        raise ConfigError(f"study: test set {name!r}: unknown keys {unknown}; known: {list(TEST_SET_KEYS)}")
    if ts.get("split", "test") not in TEST_SET_SPLITS:
        raise ConfigError(
            f"study: test set {name!r}: unknown split {ts['split']!r}; expected one of {', '.join(TEST_SET_SPLITS)}"
        )
    if ts.get("synth") is not None and not isinstance(ts["synth"], dict):
        raise ConfigError(f"study: test set {name!r}: synth must be a mapping, got {ts['synth']!r}")


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
    if "arms" in doc:  # the models, inits and fractions of the arms, for everything that lists them
        arms = _arms(doc["arms"], p)
        if any(k in doc for k in ("models", "inits", "fractions")):
            raise ConfigError(f"{p}: give either arms or models/inits/fractions, not both")
        doc["arms"] = arms
        doc["models"] = [a.model for a in arms]
        doc["inits"] = list(dict.fromkeys(i for a in arms for i in a.inits))
        doc["fractions"] = sorted({f for a in arms for f in a.fractions})
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
    d["arms"] = (
        None
        if study.arms is None
        else [{**vars(a), "model_kwargs": dict(a.model_kwargs), "train": dict(a.train)} for a in study.arms]
    )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
