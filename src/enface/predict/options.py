"""The settings of ``enface predict`` (:class:`PredictOptions`), checked when made."""

from __future__ import annotations

from dataclasses import dataclass

from enface.config import FAST_DEFAULT, INFERENCE_PRECISION_DEFAULT, INFERENCE_PRECISIONS
from enface.data.options import BM_CHOICES, DEFAULT_BM, BMChoice
from enface.io.formats import get_format
from enface.targets import THRESHOLD

__all__ = ["PredictOptions"]


@dataclass(frozen=True)
class PredictOptions:
    """Settings of :func:`predict`.

    Attributes:
        fmt: format of device exports (a registered one, :mod:`enface.io.formats`); ``None``
            infers it from the file suffixes (a format without suffixes, such as ``octa500``,
            must be given).
        threshold: probability threshold of the binary mask.
        depth: depth samples of prepared exports (default: the model's training depth).
        window_mm: ``(above, below)`` flattening window around BM in mm (default: the
            training dataset's).
        bm: BM for flattening, as in ``enface prepare`` (``auto``, ``export``, ``estimate``).
        axes: stored axis order of NumPy/NIfTI volumes without a sidecar ``axes``.
        spacing: ``(sh, sw, sd)`` in mm for inputs that do not state it.
        device: torch device of the ensemble.
        fast: the fast inference path (see :mod:`enface.engine.inference`); False: each
            network's own forward on the whole volume.
        precision: what the fast path computes in: ``"auto"`` (bf16 where the device
            computes it natively, else float32), ``"bf16"`` or ``"32"``.
        dicom_seg: also write each DICOM scan's mask as a DICOM Segmentation on the grid's
            own image (:mod:`enface.predict.dicom_seg`), into its study.
        workers: processes predicting scans at once, each with its own copy of the ensemble
            (:mod:`enface.predict.pipeline`).
        overlap: with one worker, read and prepare the next scan while the current one runs
            through the ensemble.
        timings: write ``timings.csv`` (seconds of each scan's stages) into the output folder.
    """

    fmt: str | None = None
    threshold: float = THRESHOLD
    depth: int | None = None
    window_mm: tuple[float, float] | None = None
    bm: BMChoice = DEFAULT_BM
    axes: str | None = None
    spacing: tuple[float, float, float] | None = None
    device: str = "cpu"
    fast: bool = FAST_DEFAULT
    precision: str = INFERENCE_PRECISION_DEFAULT
    dicom_seg: bool = False
    workers: int = 1
    overlap: bool = True
    timings: bool = False

    def __post_init__(self) -> None:
        if self.fmt is not None:
            get_format(self.fmt)  # ValueError naming the registered formats
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.depth is not None and self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        if self.bm not in BM_CHOICES:
            raise ValueError(f"bm must be 'auto', 'export' or 'estimate', got {self.bm!r}")
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {self.precision!r}")
        if int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.precision == "bf16" and not self.fast:
            raise ValueError("precision bf16 runs on the fast path; the plain path (fast=False) is float32")
