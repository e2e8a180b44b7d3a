"""Typed run configuration, loaded from YAML plus command-line overrides, validated early.

A YAML file may hold a ``common:`` section and one section per stage (``pretrain:``,
``train:``); the fields of :class:`RunConfig` are resolved as
defaults ← ``common`` ← stage section ← explicit overrides. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from enface.errors import ConfigError
from enface.targets import Target

__all__ = [
    "FAST_DEFAULT",
    "INFERENCE_PRECISIONS",
    "INFERENCE_PRECISION_DEFAULT",
    "RunConfig",
    "load_config",
    "parse_overrides",
    "read_yaml_mapping",
]

FAST_DEFAULT = True
"""Whether training and inference run on the fast path (:mod:`enface.engine.fastpath`) unless
told otherwise (``fast: false``, ``--no-fast``, ``fast=False``). Every default of ``fast``
in enface is this one."""

INFERENCE_PRECISIONS = ("auto", "bf16", "32")
"""What inference may compute in (``--precision`` of ``predict`` and ``evaluate``): ``auto``
is bf16 where the hardware computes it natively, float32 elsewhere
(:func:`enface.engine.precision.inference_dtype`)."""

INFERENCE_PRECISION_DEFAULT = "auto"
"""The inference precision unless told otherwise; every default of inference ``precision`` in
enface is this one. bf16 became the default where native once its masks were measured to
agree with float32's (``docs/speed.md``, *bf16 inference*)."""


@dataclass
class RunConfig:
    """Everything one training run needs. Defaults are the paper's settings.

    Attributes:
        stage: ``"pretrain"`` (reconstruction) or ``"train"`` (segmentation).
        dataset: dataset folder.
        target: reconstruction target (``slo``, ``faf``, ``faf_inv``) for ``pretrain``;
            mask task name (e.g. ``ga``) for ``train``.
        model: registered model name.
        width: channel multiplier.
        model_kwargs: extra model constructor arguments.
        channels: input volumes stacked as channels (``("oct",)``; ``("oct", "octa")`` for
            OCTA-500 prepared with ``--octa``). None: the dataset's ``channels`` entry in
            ``dataset.json``, else ``("oct",)``.
        init: checkpoint to initialise from (``train`` only), or None for scratch.
        fraction: label fraction of the training patients (``train`` only), in (0, 1].
        patients: the labeled training patients to train on (``train`` only), instead of a
            label fraction (``fraction`` must then be 1): the study's active-learning rounds
            name the patients they selected. Part of the run's identity; the run folder is
            named like a 100 % run, so such runs need their own ``runs_dir``.
        seed: random seed (weights, sampling, augmentation).
        epochs: training epochs (at most, with ``patience``).
        patience: stop once the validation metric has not improved by ``min_delta`` for this
            many validations (:mod:`enface.engine.stopping`); None: train all ``epochs``.
        min_delta: the smallest gain that counts as an improvement (with ``patience``;
            None: any gain).
        min_epochs: epochs trained before ``patience`` may stop a run (None: no minimum).
        batch_size: batch size (paper: 4 reconstruction, 8 segmentation).
        accumulate: gradient accumulation steps.
        lr, momentum, weight_decay: SGD settings.
        crop: training crop (B-scans, A-scans), clipped to each volume.
        augment: random rotation/mirroring/intensity augmentation during training.
        samples_per_epoch: random crops drawn per epoch (None: one per training case).
        top_k: checkpoints kept by the validation metric (plus the last one).
        val_every: validate every N epochs.
        num_workers: DataLoader workers.
        runs_dir: root of the run folders.
        accelerator, devices, strategy, precision, num_nodes: passed to Lightning;
            ``precision: auto`` is ``bf16-mixed`` on the fast path where the hardware computes
            bf16 natively (CPUs with AVX512-BF16/AMX, bf16-capable GPUs), else ``32-true``.
        compile: wrap the model in ``torch.compile``.
        deterministic: ask Lightning for deterministic algorithms.
        fast: the fast path (:mod:`enface.engine.fastpath`): channels-last layout, bf16 where
            native (with ``precision: auto``), validation on a BatchNorm-folded copy; on a GPU
            also cuDNN benchmark mode and pinned memory. ``false``: plain eager float32.
    """

    stage: str = "train"
    dataset: str = ""
    target: str = "ga"
    model: str = "fpn"
    width: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    init: str | None = None
    fraction: float = 1.0
    patients: tuple[str, ...] | None = None
    seed: int = 0
    epochs: int = 800
    patience: int | None = None
    min_delta: float | None = None
    min_epochs: int | None = None
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop: tuple[int, int] = (32, 256)
    augment: bool = True
    samples_per_epoch: int | None = None
    top_k: int = 5
    val_every: int = 1
    num_workers: int = 2
    runs_dir: str = "runs"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "auto"
    num_nodes: int = 1
    compile: bool = False
    deterministic: bool = False
    fast: bool = FAST_DEFAULT

    @property
    def task(self) -> str:
        """``"reconstruct"`` or ``"segment"``."""
        return "reconstruct" if self.stage == "pretrain" else "segment"

    @property
    def target_spec(self) -> Target:
        """The :class:`~enface.targets.Target` this run learns."""
        return Target.for_stage(self.stage, self.target)

    def validate(self) -> RunConfig:
        """Check every field's value; raise :class:`ConfigError` naming the first bad one.

        Pure: nothing is read from disk and no model is built. Whether the dataset, the init
        checkpoint and the model exist is checked where a run starts
        (:func:`enface.engine.fit.resolve_run`).
        """

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field {name!r}: {why}")

        if self.stage not in ("pretrain", "train"):
            raise bad("stage", f"must be 'pretrain' or 'train', got {self.stage!r}")
        if not self.dataset:
            raise bad("dataset", "no dataset folder given")
        try:
            _ = self.target_spec
        except ConfigError as e:
            raise bad("target", str(e)) from None
        if not self.model or not isinstance(self.model, str):
            raise bad("model", f"must be a model name, got {self.model!r}")
        if not self.width > 0:
            raise bad("width", f"must be > 0, got {self.width}")
        if not 0 < self.fraction <= 1:
            raise bad("fraction", f"must be in (0, 1], got {self.fraction}")
        if self.patients is not None:
            if self.stage != "train" or not self.patients:
                raise bad("patients", "names the labeled patients of a segmentation run (a non-empty list)")
            if self.fraction != 1.0:
                raise bad("patients", f"give either patients or a label fraction, not both (fraction {self.fraction})")
        if self.stage == "pretrain" and self.init:
            raise bad("init", "pre-training starts from scratch")
        for name in ("epochs", "batch_size", "accumulate", "top_k", "val_every", "num_nodes"):
            value = getattr(self, name)
            if value is None or int(value) < 1:
                raise bad(name, f"must be >= 1, got {value}")
        self._validate_stopping(bad)
        if self.num_workers is None or self.num_workers < 0:
            raise bad("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise bad("samples_per_epoch", f"must be >= 1 or null, got {self.samples_per_epoch}")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if value is None or not math.isfinite(float(value)) or float(value) < 0:
                raise bad(name, f"must be a finite number >= 0, got {value}")
        if self.crop is None or len(self.crop) != 2 or min(self.crop) < 1:
            raise bad("crop", f"must be two positive sizes (B-scans, A-scans), got {self.crop}")
        if self.channels is not None and not self.channels:
            raise bad("channels", "must name at least one input volume, or be null (the dataset's)")
        return self

    def _validate_stopping(self, bad: Any) -> None:
        if self.patience is None:
            for name in ("min_delta", "min_epochs"):
                if getattr(self, name) is not None:
                    raise bad(name, "applies with 'patience' only (set patience, or remove it)")
            return
        if int(self.patience) < 1:
            raise bad("patience", f"must be >= 1 validations, got {self.patience}")
        if self.min_delta is not None and not (math.isfinite(float(self.min_delta)) and self.min_delta >= 0):
            raise bad("min_delta", f"must be a finite number >= 0, got {self.min_delta}")
        if self.min_epochs is not None and not 1 <= int(self.min_epochs) <= int(self.epochs):
            raise bad("min_epochs", f"must lie in [1, epochs = {self.epochs}], got {self.min_epochs}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), as written to ``config.yaml``."""
        d = dataclasses.asdict(self)
        d["crop"] = list(self.crop)
        d["channels"] = None if self.channels is None else list(self.channels)
        d["patients"] = None if self.patients is None else list(self.patients)
        return d


_FIELDS = {f.name: f for f in fields(RunConfig)}


def read_yaml_mapping(path: Path, what: str = "file") -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping; :class:`ConfigError` names the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return doc


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the type of field ``name``."""
    if name not in _FIELDS:
        raise ConfigError(f"unknown config field {name!r}; known: {', '.join(sorted(_FIELDS))}")
    default = _FIELDS[name].default
    if value is None:
        return None
    try:
        if name == "crop":
            seq = value.split(",") if isinstance(value, str) else value
            return tuple(int(v) for v in seq)
        if name in ("channels", "patients"):
            seq = value.split(",") if isinstance(value, str) else value
            return tuple(str(v).strip() for v in seq)
        if name == "model_kwargs":
            if not isinstance(value, Mapping):
                raise TypeError("must be a mapping")
            return dict(value)
        if name == "devices":
            return int(value) if isinstance(value, str) and value.isdigit() else value
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int) and not isinstance(default, bool):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if name in ("samples_per_epoch", "patience", "min_epochs"):
            return int(value)
        if name == "min_delta":
            return float(value)
        return str(value) if not isinstance(value, (dict, list)) else value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config field {name!r}: invalid value {value!r} ({e})") from None


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values parsed as YAML scalars, with the safe loader).

    Raises:
        ConfigError: naming the ``--set`` item: no ``=``, or a value that is not valid
            YAML (``crop=[16``) or carries a YAML tag the safe loader refuses.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, _, raw = pair.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ConfigError(f"--set {pair!r}: the value is not a YAML scalar or list ({why})") from None
    return out


def load_config(path: str | os.PathLike | None, stage: str, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Resolve a :class:`RunConfig`: defaults ← YAML ``common`` ← YAML ``<stage>`` ← overrides.

    The YAML is either sectioned (``common``/``pretrain``/``train``, as ``configs/paper.yaml``)
    or a run folder's own ``config.yaml`` (flat, with its ``stage``), which re-creates that run.

    Stage defaults differ from :class:`RunConfig` defaults where the paper's do:
    ``pretrain`` uses batch 4, target ``faf_inv`` and the validation metric SSIM.

    Args:
        path: YAML file, or None for the defaults.
        stage: ``"pretrain"`` or ``"train"``.
        overrides: explicit values (None values are ignored).

    Raises:
        ConfigError: unreadable YAML, unknown keys, invalid values.
    """
    values: dict[str, Any] = {"stage": stage}
    if stage == "pretrain":
        values.update(batch_size=4, target="faf_inv")
    if path is not None:
        p = Path(path)
        doc = read_yaml_mapping(p, "config file")
        if "stage" in doc and not {"common", "pretrain", "train"} & set(doc):  # a run folder's config.yaml
            if doc["stage"] != stage:
                raise ConfigError(f"{p}: the config of a {doc['stage']!r} run, not of a {stage!r} one")
            doc = {stage: {k: v for k, v in doc.items() if k != "stage"}}
        extra = set(doc) - {"common", "pretrain", "train"}
        if extra:
            raise ConfigError(f"{p}: unknown top-level sections {sorted(extra)} (use common/pretrain/train)")
        for section in ("common", stage):
            part = doc.get(section) or {}
            if not isinstance(part, dict):
                raise ConfigError(f"{p}: section {section!r} must be a mapping")
            for k, v in part.items():
                try:
                    values[k] = _coerce(k, v)
                except ConfigError as e:
                    raise ConfigError(f"{p} [{section}]: {e}") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = _coerce(k, v)
    values["stage"] = stage
    return RunConfig(**values).validate()
