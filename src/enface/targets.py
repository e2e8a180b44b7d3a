"""What a network learns from the OCT: a reconstructed 2D modality, or a lesion mask.

One value, :class:`Target`, and every spelling of it in one place:

========================  ===================  ===================
                          reconstruction       segmentation
========================  ===================  ===================
config ``target``         ``faf_inv``          ``ga``
dataset target label      ``faf_inv``          ``mask:ga``
case file read            ``faf.png`` inverted  ``mask_ga.png``
run-folder task           ``recon-faf_inv``    ``ga``
init label of its runs    ``ssl-faf_inv``      (none)
========================  ===================  ===================

A mask is predicted as a probability map; :func:`binary` (``probability >= THRESHOLD``) turns
it into the mask, one comparison for training's validation Dice, evaluation, predict, select
and the study.

Ground floor: imports nothing of enface but :mod:`enface.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

from enface.errors import ConfigError

__all__ = ["RECON_TARGETS", "SCRATCH", "THRESHOLD", "Target", "binary", "check_name"]

RECON_TARGETS: tuple[str, ...] = ("slo", "faf", "faf_inv")
"""2D modalities a reconstruction (pre-training) run can learn: SLO, FAF, inverted FAF."""

SCRATCH = "scratch"
"""Init label of a run that starts from random weights."""

THRESHOLD = 0.5
"""The probability at and above which a pixel belongs to the mask (``--threshold``'s default)."""

_Map = TypeVar("_Map")


def binary(probability: _Map, threshold: float = THRESHOLD) -> Any:
    """The mask of a probability map ``(..., H, W)`` (NumPy array or torch tensor):
    ``probability >= threshold``, of bools."""
    return probability >= threshold  # type: ignore[operator]


_RECON_PREFIX = "recon-"
_SSL_PREFIX = "ssl-"
_MASK_PREFIX = "mask:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")  # as in mask_<task>[.<grader>].png


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it can be a file or folder name component, else raise.

    Letters, digits, ``_`` and ``-`` (not first): nothing that could climb out of a folder
    (``..``, ``/``) or hide (a leading dot).

    Raises:
        ConfigError: naming ``what`` and the value.
    """
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid name (letters, digits, '_', '-'; not starting with '_' or '-')"
        )
    return value


@dataclass(frozen=True)
class Target:
    """What a run learns.

    Attributes:
        kind: ``"reconstruct"`` (a 2D modality, pre-training) or ``"segment"`` (a mask task).
        name: the modality (``slo``, ``faf``, ``faf_inv``) or the mask task (``ga``).
    """

    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind == "reconstruct":
            if self.name not in RECON_TARGETS:
                raise ConfigError(f"reconstruction target must be one of {RECON_TARGETS}, got {self.name!r}")
        elif self.kind == "segment":
            if self.name in RECON_TARGETS:
                raise ConfigError(f"{self.name!r} is a reconstruction target, not a mask task (e.g. 'ga')")
            if not isinstance(self.name, str) or not _TASK_RE.match(self.name):
                raise ConfigError(f"mask task {self.name!r} is not a valid name (letters, digits, '-')")
        else:
            raise ConfigError(f"target kind must be 'reconstruct' or 'segment', got {self.kind!r}")

    @classmethod
    def reconstruct(cls, modality: str) -> Target:
        return cls("reconstruct", modality)

    @classmethod
    def segment(cls, task: str) -> Target:
        return cls("segment", task)

    @classmethod
    def for_stage(cls, stage: str, name: str) -> Target:
        """The target of a ``pretrain`` (reconstruction) or ``train`` (segmentation) run."""
        return cls.reconstruct(name) if stage == "pretrain" else cls.segment(name)

    @classmethod
    def parse(cls, label: str) -> Target:
        """From a dataset target label: ``"faf_inv"`` or ``"mask:ga"``."""
        if label.startswith(_MASK_PREFIX):
            return cls.segment(label[len(_MASK_PREFIX) :])
        return cls.reconstruct(label)

    @classmethod
    def from_folder_name(cls, folder: str) -> Target:
        """From a run-folder task: ``"recon-faf_inv"`` or ``"ga"``."""
        if folder.startswith(_RECON_PREFIX):
            return cls.reconstruct(folder[len(_RECON_PREFIX) :])
        return cls.segment(folder)

    @classmethod
    def from_init_label(cls, init: str) -> Target | None:
        """The reconstruction target an init label names (``"ssl-faf_inv"``), None for scratch.

        Raises:
            ConfigError: neither ``scratch`` nor ``ssl-<target>``.
        """
        if init == SCRATCH:
            return None
        if init.startswith(_SSL_PREFIX) and init[len(_SSL_PREFIX) :] in RECON_TARGETS:
            return cls.reconstruct(init[len(_SSL_PREFIX) :])
        raise ConfigError(f"init {init!r} must be {SCRATCH!r} or one of {[_SSL_PREFIX + t for t in RECON_TARGETS]}")

    @property
    def stage(self) -> str:
        """``"pretrain"`` or ``"train"``: the command that learns this target."""
        return "pretrain" if self.kind == "reconstruct" else "train"

    @property
    def label(self) -> str:
        """The dataset's spelling: ``"faf_inv"``, ``"mask:ga"``."""
        return self.name if self.kind == "reconstruct" else f"{_MASK_PREFIX}{self.name}"

    @property
    def modality(self) -> str | None:
        """The 2D modality read for a reconstruction (``faf`` for ``faf_inv``); None for masks."""
        if self.kind != "reconstruct":
            return None
        return "faf" if self.name == "faf_inv" else self.name

    @property
    def inverted(self) -> bool:
        """Whether the modality is inverted (``1 - image``) to make the target."""
        return self.name == "faf_inv" and self.kind == "reconstruct"

    @property
    def filename(self) -> str:
        """The case file the target is read from: ``faf.png``, ``mask_ga.png``."""
        return f"{self.modality}.png" if self.kind == "reconstruct" else f"mask_{self.name}.png"

    @property
    def requires(self) -> tuple[str, ...]:
        """What a case must carry to serve this target (see ``data.splits.select_cases``)."""
        return (self.modality,) if self.kind == "reconstruct" else (self.label,)  # type: ignore[return-value]

    @property
    def folder_name(self) -> str:
        """The run-folder task: ``"recon-faf_inv"``, ``"ga"``."""
        return f"{_RECON_PREFIX}{self.name}" if self.kind == "reconstruct" else self.name

    @property
    def init_label(self) -> str:
        """The init label of runs initialised from this reconstruction: ``"ssl-faf_inv"``.

        Raises:
            ConfigError: a segmentation target (its weights initialise nothing by label).
        """
        if self.kind != "reconstruct":
            raise ConfigError(f"a {self.name!r} segmentation model has no ssl init label")
        return f"{_SSL_PREFIX}{self.name}"
