"""Metrics: Dice, en-face areas in mm², HD95 in mm, SSIM.

All functions take ``(input, target)`` in that order. Binary masks are ``(H, W)`` arrays
or tensors (``(N, C, H, W)`` for the batched torch versions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "abs_area_difference",
    "area_mm2",
    "dice_per_sample",
    "dice_score",
    "gaussian_window",
    "hd95_mm",
    "probability_agreement",
    "ssim",
    "ssim_map",
]


# --------------------------------------------------------------------------- overlap


def dice_score(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, empty_value: float = 1.0) -> float:
    """Dice coefficient of two binary masks.

    Args:
        pred: binary prediction ``(H, W)`` (any truthy values count as foreground).
        target: binary reference ``(H, W)``.
        empty_value: value returned when both masks are empty (an empty prediction on an
            empty mask is correct: 1 by default).

    Returns:
        ``2 |P ∩ T| / (|P| + |T|)``.
    """
    p = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred).astype(bool)
    t = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"dice_score: shapes differ, {p.shape} vs {t.shape}")
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return float(empty_value)
    return 2.0 * float(np.logical_and(p, t).sum()) / denom


def dice_per_sample(pred: torch.Tensor, target: torch.Tensor, empty_value: float = 1.0) -> torch.Tensor:
    """Dice of binary tensors per sample and channel.

    Args:
        pred: ``(N, C, H, W)`` binary prediction (bool or {0, 1}).
        target: ``(N, C, H, W)`` binary reference.
        empty_value: value where both are empty.

    Returns:
        ``(N, C)`` Dice values.
    """
    p = pred.float().flatten(2)
    t = target.float().flatten(2)
    inter = (p * t).sum(-1)
    denom = p.sum(-1) + t.sum(-1)
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-12), torch.full_like(denom, empty_value))


# --------------------------------------------------------------------------- areas and distances


def area_mm2(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """En-face area of a binary mask in mm²: pixel count × sh × sw.

    Args:
        mask: ``(H, W)`` binary mask.
        spacing: ``(sh, sw)`` or ``(sh, sw, sd)`` in mm.
    """
    return float(np.count_nonzero(mask)) * float(spacing[0]) * float(spacing[1])


def abs_area_difference(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """Absolute difference of the en-face areas of ``pred`` and ``target`` in mm²."""
    return abs(area_mm2(pred, spacing) - area_mm2(target, spacing))


def probability_agreement(
    probs: np.ndarray, reference: np.ndarray, spacing: Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """How a probability map agrees with another of the same scan (e.g. bf16 vs float32 inference).

    Args:
        probs: ``(H, W)`` probabilities.
        reference: ``(H, W)`` probabilities to compare with.
        spacing: ``(sh, sw)`` or ``(sh, sw, sd)`` in mm.
        threshold: the masks are ``p >= threshold``.

    Returns:
        ``dice`` of the two masks (1 when both are empty), ``max_abs_dp`` and ``p999_abs_dp``
        (the largest and the 99.9th-percentile ``|probs - reference|``), ``area_change_mm2``
        (the mask area of ``probs`` minus that of ``reference``) and ``flipped`` (pixels whose
        label differs).
    """
    if probs.shape != reference.shape:
        raise ValueError(f"probability maps differ in shape: {probs.shape} vs {reference.shape}")
    a, b = probs >= threshold, reference >= threshold
    dp = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    return {
        "dice": dice_score(a, b),
        "max_abs_dp": float(dp.max(initial=0.0)),
        "p999_abs_dp": float(np.percentile(dp, 99.9)) if dp.size else 0.0,
        "area_change_mm2": area_mm2(a, spacing) - area_mm2(b, spacing),
        "flipped": int(np.count_nonzero(a != b)),
    }


def hd95_mm(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm, with anisotropic en-face spacing.

    Uses MONAI's ``compute_hausdorff_distance``. Returns 0 when both masks are empty and
    ``inf`` when exactly one is empty (the distance is undefined; callers report it as such).
    """
    from monai.metrics import compute_hausdorff_distance

    p = np.asarray(pred).astype(bool)
    t = np.asarray(target).astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI-internal deprecation notices
        value = compute_hausdorff_distance(
            torch.from_numpy(p)[None, None],
            torch.from_numpy(t)[None, None],
            include_background=True,
            percentile=95,
            spacing=[float(spacing[0]), float(spacing[1])],
        )
    return float(value.item())


# --------------------------------------------------------------------------- SSIM


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1D Gaussian of ``size`` taps (odd) and standard deviation ``sigma``."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _filter(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``(N, C, H, W)``."""
    c = x.shape[1]
    k = win.numel()
    x = F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_map(
    input: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Local SSIM map (Wang et al. 2004) with a Gaussian window, over the valid region.

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``, whose mean is taken over the region where
    the full window fits — the 'valid' region computed here. Images smaller than the window
    use the largest odd window that fits (same ``sigma``).

    Args:
        input: ``(N, C, H, W)`` images.
        target: ``(N, C, H, W)`` images.
        window_size: Gaussian window taps (odd).
        sigma: Gaussian standard deviation.
        k1, k2: stabilising constants; ``C1 = (k1 L)²``, ``C2 = (k2 L)²``.
        data_range: ``L``, the dynamic range of the images.

    Returns:
        ``(N, C, H - w + 1, W - w + 1)`` SSIM values.
    """
    if input.shape != target.shape or input.dim() != 4:
        raise ValueError(
            "ssim_map expects two (N, C, H, W) tensors of equal shape, "
            f"got {tuple(input.shape)} and {tuple(target.shape)}"
        )
    size = min(window_size, input.shape[-2], input.shape[-1])
    size = size if size % 2 == 1 else size - 1
    win = gaussian_window(size, sigma, dtype=input.dtype if input.is_floating_point() else torch.float32).to(
        input.device
    )
    x = input.float() if not input.is_floating_point() else input
    y = target.to(x.dtype)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # never under autocast: E[x²] - E[x]² in bf16 cancels to noise (and SSIM as a loss with it)
    with torch.autocast(x.device.type, enabled=False):
        mu_x = _filter(x, win)
        mu_y = _filter(y, win)
        sxx = _filter(x * x, win) - mu_x**2
        syy = _filter(y * y, win) - mu_y**2
        sxy = _filter(x * y, win) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
        den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def ssim(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", **kwargs) -> torch.Tensor:
    """Mean SSIM (see :func:`ssim_map`).

    Args:
        input: ``(N, C, H, W)``.
        target: ``(N, C, H, W)``.
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(N,)``, one value per image).
    """
    m = ssim_map(input, target, **kwargs)
    if reduction == "mean":
        return m.mean()
    if reduction == "none":
        return m.flatten(1).mean(1)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
