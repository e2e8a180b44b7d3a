"""Per-case scores of what a label would teach: the ensemble's disagreement on each scan.

A run's ensemble (its top-k checkpoints) is applied to each unlabeled scan under test-time
augmentation: the volume as it is, mirrored along the A-scans, mirrored along the B-scans
and both (a 180° rotation in the en-face plane, which training augmentation also uses).
Each member's output is mirrored back, so every case gets ``S = members x views`` probability
maps ``p_s(x)`` on its en-face grid. The top-k checkpoints of one run are neighbouring epochs
of one trajectory and often agree almost everywhere; the views add disagreement that comes
from the scan, not from the checkpoint.

From those samples, per case:

* the mutual information between the prediction and the sample (BALD),
  ``I(x) = H(mean_s p_s(x)) - mean_s H(p_s(x))`` in nats, high where the samples are each
  confident but disagree;
* the **uncertainty score** ``sum_x I(x) / (sum_x pbar(x) + A_floor)``: the disagreement per
  unit of (soft) predicted lesion area. The members disagree along lesion boundaries, so the
  plain sum of ``I`` grows with the lesions' perimeter and would simply rank the largest
  lesions first; divided by the expected lesion area it is the expected *relative* error, the
  quantity Dice measures. ``A_floor`` (:data:`AREA_FLOOR_MM2`, in pixels of the case's grid)
  keeps a scan with no lesion and a few hesitant pixels from dominating the ranking; a scan
  where the samples disagree on whether a small lesion exists still scores high;
* the predicted area (mm²) of the mean probability thresholded at 0.5 and the standard
  deviation of the samples' areas (each sample thresholded at 0.5);
* optionally a feature vector: per member, the mean and standard deviation over the en-face
  grid of the features the segmentation head reads (the last decoder layer, fed by every
  projection of the encoder), L2-normalised and concatenated over members (plain view only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from enface.data.dataset import EnfaceDataset
from enface.data.folder import Case
from enface.engine.inference import Ensemble
from enface.targets import binary

__all__ = [
    "AREA_FLOOR_MM2",
    "TTA_VIEWS",
    "CaseScore",
    "mutual_information",
    "score_cases",
    "uncertainty_score",
]

log = logging.getLogger(__name__)

AREA_FLOOR_MM2 = 0.25
"""Area (mm²) added to the predicted lesion area in the uncertainty score's denominator: a small
GA lesion (a disc of ~0.56 mm diameter)."""

TTA_VIEWS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
"""Test-time views as the axes flipped of an ``(N, C, H, W, D)`` volume (the same axes of the
``(M, C_out, H, W)`` output): plain, mirrored A-scans, mirrored B-scans, both."""

_EPS = 1e-7


@dataclass
class CaseScore:
    """What the ensemble says about one case.

    Attributes:
        case_id, patient_id, eye, visit: the case (``visit`` in days, None when unknown).
        uncertainty: the uncertainty score (see the module description).
        predicted_area_mm2: area of the mean probability >= 0.5.
        area_sd_mm2: standard deviation of the samples' areas.
        features: ``(F,)`` float32 feature vector, or None when not asked for.
    """

    case_id: str
    patient_id: str
    eye: str
    visit: int | None
    uncertainty: float
    predicted_area_mm2: float
    area_sd_mm2: float
    features: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Plain values (features as a list)."""
        d = dict(self.__dict__)
        d["features"] = None if self.features is None else [float(v) for v in self.features]
        return d

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CaseScore:
        feats = obj.get("features")
        return cls(**{**obj, "features": None if feats is None else np.asarray(feats, dtype=np.float32)})


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return -(q * np.log(q) + (1.0 - q) * np.log(1.0 - q))


def mutual_information(probs: np.ndarray) -> np.ndarray:
    """Mutual information between prediction and sample, per pixel.

    Args:
        probs: ``(S, H, W)`` foreground probabilities of S samples.

    Returns:
        ``(H, W)`` float64, in nats, in ``[0, ln 2]``; 0 where all samples agree.
    """
    p = np.asarray(probs, dtype=np.float64)
    return np.maximum(_entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0), 0.0)


def uncertainty_score(probs: np.ndarray, spacing: Sequence[float], area_floor_mm2: float = AREA_FLOOR_MM2) -> float:
    """``sum I / (sum pbar + A_floor)`` of one case (see the module description).

    Args:
        probs: ``(S, H, W)`` foreground probabilities of S samples.
        spacing: ``(sh, sw, ...)`` in mm; the floor is converted to pixels with ``sh * sw``.
        area_floor_mm2: the floor area in mm² (> 0).
    """
    if not area_floor_mm2 > 0:
        raise ValueError(f"the area floor must be > 0 mm², got {area_floor_mm2}")
    p = np.asarray(probs, dtype=np.float64)
    floor_px = area_floor_mm2 / (float(spacing[0]) * float(spacing[1]))
    return float(mutual_information(p).sum() / (p.mean(axis=0).sum() + floor_px))


class _HeadFeatures:
    """Forward pre-hooks on each member's ``head``: mean and std of its input over the grid."""

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        self.found: list[np.ndarray] = []
        self.handles = []
        for m in models:
            head = getattr(m, "head", None)
            if not isinstance(head, torch.nn.Module):
                raise ValueError(f"{type(m).__name__} has no 'head' layer to read features from")
            self.handles.append(head.register_forward_pre_hook(self._hook))

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0][:1].float()  # the first item of the batch: the plain view
        v = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)[0]
        v = v / v.norm().clamp_min(1e-12)
        self.found.append(v.cpu().numpy().astype(np.float32))

    def take(self, n: int) -> np.ndarray:
        """The first ``n`` vectors recorded since the last call, concatenated; the rest dropped."""
        out = np.concatenate(self.found[:n])
        self.found = []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def _samples(ensemble: Ensemble, volume: torch.Tensor, views: Sequence[tuple[int, ...]]) -> np.ndarray:
    """``(members x views, H, W)`` probabilities of one ``(1, C, H, W, D)`` volume.

    The views go through each member as one batch (the plain view first); each output is
    mirrored back onto the volume's grid.
    """
    batch = torch.cat([volume.flip(dims) if dims else volume for dims in views]).to(ensemble.device, torch.float32)
    out = []
    for net in ensemble.models:
        probs = torch.sigmoid(ensemble.fastpath.logits(net, batch).float())[:, 0]  # (V, H, W)
        out += [(p.flip([d - 2 for d in dims]) if dims else p).cpu().numpy() for p, dims in zip(probs, views)]
    return np.stack(out)


def _case_score(case: Case, probs: np.ndarray, area_floor_mm2: float, features: np.ndarray | None) -> CaseScore:
    px = float(case.spacing[0]) * float(case.spacing[1])
    areas = binary(probs).reshape(len(probs), -1).sum(axis=1) * px
    return CaseScore(
        case.case_id,
        case.patient_id,
        case.meta.eye,
        None if case.meta.visit is None else int(case.meta.visit),
        uncertainty_score(probs, case.spacing, area_floor_mm2),
        float(binary(probs.mean(axis=0)).sum() * px),
        float(areas.std()),
        features,
    )


def score_cases(
    ensemble: Ensemble,
    root: str | os.PathLike,
    case_ids: Sequence[str],
    tta: bool = True,
    features: bool = False,
    area_floor_mm2: float = AREA_FLOOR_MM2,
    on_case: Callable[[str, np.ndarray], None] | None = None,
    progress: bool = True,
) -> list[CaseScore]:
    """Score cases of a dataset folder with a segmentation ensemble.

    Args:
        ensemble: the members (one output channel is scored: the first).
        root: dataset folder.
        case_ids: cases to score.
        tta: add the mirrored views (:data:`TTA_VIEWS`); else the plain view only.
        features: also record each case's feature vector.
        area_floor_mm2: see :func:`uncertainty_score`.
        on_case: called with ``(case_id, (H, W) mean probability)`` after each case.
        progress: log one line every 10 cases.

    Returns:
        One :class:`CaseScore` per case, in the order given.

    Raises:
        DatasetError: a case that is missing or does not fit the members (channels, depth).
    """
    ds = EnfaceDataset(root, list(case_ids), None, augment=None, channels=ensemble.channels)
    views = TTA_VIEWS if tta else TTA_VIEWS[:1]
    hooks = _HeadFeatures(ensemble.models) if features else None
    out: list[CaseScore] = []
    try:
        for i, cid in enumerate(ds.case_ids):
            volume = ds[i]["volume"]
            ensemble.check_input(volume, where=f"case {cid}")
            probs = _samples(ensemble, volume[None], views)
            feats = None if hooks is None else hooks.take(len(ensemble.models))
            out.append(_case_score(ds.cases[i], probs, area_floor_mm2, feats))
            if on_case is not None:
                on_case(cid, probs.mean(axis=0))
            if progress and ((i + 1) % 10 == 0 or i + 1 == len(ds)):
                log.info("scored %d/%d cases", i + 1, len(ds))
    finally:
        if hooks is not None:
            hooks.close()
    return out
