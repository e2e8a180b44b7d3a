"""The options of preparing scans (``enface prepare``, and ``predict`` on device exports):
pure values, the one home of their defaults (the command line shows and uses them).

Light on purpose (no SciPy): the command line reads these defaults for its help text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from enface.io.base import normalise_eye, spacing_error
from enface.io.formats import ReadOptions, get_format, list_formats

__all__ = ["BM_CHOICES", "DEFAULT_BM", "MIN_DEPTH", "BMChoice", "FlattenParams", "PrepareOptions"]


MIN_DEPTH = 4
"""The fewest output depth samples (fewer cannot hold a layer above and below BM)."""


@dataclass(frozen=True)
class FlattenParams:
    """How a volume is flattened and resampled.

    Attributes:
        above_mm: window height above BM.
        below_mm: window height below BM.
        depth: number of output depth samples (the paper uses 128).
    """

    above_mm: float = 0.6
    below_mm: float = 0.25
    depth: int = 128

    def __post_init__(self) -> None:
        if not (self.above_mm > 0 and self.below_mm >= 0 and self.depth >= MIN_DEPTH):
            raise ValueError(
                f"flattening window must have above_mm > 0, below_mm >= 0 and depth >= {MIN_DEPTH} samples, "
                f"got above_mm={self.above_mm:g}, below_mm={self.below_mm:g}, depth={self.depth}"
            )

    @property
    def bm_index(self) -> float:
        """Depth index (in the output) at which BM sits."""
        return self.depth * self.above_mm / (self.above_mm + self.below_mm) - 0.5

    def output_spacing(self) -> float:
        """Depth spacing of the output in mm."""
        return (self.above_mm + self.below_mm) / self.depth


BMChoice = Literal["auto", "export", "estimate"]
"""Where the BM that flattens a scan comes from (``--bm``): the export's when present, else
estimated (``auto``); only the export's (``export``); always estimated (``estimate``)."""

BM_CHOICES: tuple[str, ...] = get_args(BMChoice)

DEFAULT_BM: BMChoice = "auto"


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of :func:`prepare_dataset`.

    Attributes:
        fmt: input format, a registered one (:func:`~enface.io.formats.list_formats`).
        flatten: flattening window and output depth.
        bm: ``"auto"`` (the export's BM when present, else estimated), ``"export"`` (fail
            without one) or ``"estimate"`` (ignore the export's).
        axes: stored axis order of NumPy/NIfTI volumes when the sidecar gives none.
        spacing: ``(sh, sw, sd)`` in mm for inputs that do not state it (``.e2e``, NumPy
            without sidecar spacing); a sidecar's ``spacing`` overrides what an input states.
        octa: OCTA-500: add the OCTA volume as a second input channel (``octa.npy``).
        tasks: keep only these mask tasks (OCTA-500: which ``GT_*`` labels to read).
        register_faf: register FAF to SLO; if False the FAF is assumed to cover the SLO's
            field exactly (it is only rescaled).
        faf_model: registration model (``rigid``, ``similarity``, ``affine``).
        faf_min_quality: FAF registrations scoring below this are not used (the case keeps
            its OCT and SLO; a mask drawn on such a FAF makes the case fail).
        patient_regex: regular expression with a group ``patient`` applied to the file
            name stem when the input gives no patient id.
        default_eye: eye when the input does not say (``OD``/``OS``).
        name: dataset name (default: the output folder name).
        seed: seed of the patient split written when ``splits.json`` is absent.
        ratios: train/val/test ratios of that split.
        overwrite: re-prepare cases that already exist (each is replaced atomically, only
            after its new version was computed without error).
        resplit: rewrite ``splits.json`` even when it exists.
    """

    fmt: str
    flatten: FlattenParams = field(default_factory=FlattenParams)
    bm: BMChoice = DEFAULT_BM
    axes: str | None = None
    spacing: tuple[float, float, float] | None = None
    octa: bool = False
    tasks: tuple[str, ...] | None = None
    register_faf: bool = True
    faf_model: str = "affine"
    faf_min_quality: float = 0.3
    patient_regex: str | None = None
    default_eye: str = "OD"
    name: str | None = None
    seed: int = 0
    ratios: tuple[float, float, float] = (0.6, 0.1, 0.3)
    overwrite: bool = False
    resplit: bool = False

    def __post_init__(self) -> None:
        fmt = get_format(self.fmt)  # ValueError naming the registered formats
        if self.bm not in BM_CHOICES:
            raise ValueError(f"bm must be 'auto', 'export' or 'estimate', got {self.bm!r}")
        if normalise_eye(self.default_eye) is None:
            raise ValueError(f"default eye must be OD or OS, got {self.default_eye!r}")
        if self.patient_regex is not None:
            try:
                rx = re.compile(self.patient_regex)
            except re.error as e:
                raise ValueError(f"invalid patient regex {self.patient_regex!r}: {e}") from None
            if "patient" not in rx.groupindex:
                raise ValueError(f"patient regex {self.patient_regex!r} needs a named group (?P<patient>...)")
        problem = None if self.spacing is None else spacing_error(self.spacing, "--spacing")
        if problem:
            raise ValueError(problem)
        if self.octa and "octa" not in fmt.channels:
            having = [f for f in list_formats() if "octa" in get_format(f).channels]
            raise ValueError(f"the OCTA channel is only available for the {' and '.join(having)} format")

    def read_options(self) -> ReadOptions:
        """What the format's reader is told (:class:`~enface.io.formats.ReadOptions`)."""
        return ReadOptions(
            axes=self.axes,
            spacing=self.spacing,
            channels=("octa",) if self.octa else (),
            tasks=self.tasks,
            export_bm=self.bm != "estimate",
        )
