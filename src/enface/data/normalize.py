"""On-the-fly intensity normalisation of OCT volumes: z-score per B-scan.

Each B-scan (one index along H) is normalised with the mean and standard deviation of its
own ``(W, D)`` plane, as in the paper ("Z-score normalized along the cross-sectional
plane"). Statistics are computed in float64, chunk by chunk along H, so a memory-mapped
volume is never copied whole.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["EPS", "apply_zscore", "bscan_stats", "zscore_per_bscan"]

EPS: float = 1e-6
"""Smallest standard deviation divided by: a constant B-scan maps to zeros, never NaN."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_CHUNK_VOXELS = 1 << 22  # ~4M voxels (32 MiB in float64) per statistics chunk


def _check_ndim(volume: np.ndarray | torch.Tensor) -> None:
    if volume.ndim < 3:
        raise ValueError(f"expected a volume (..., H, W, D), got shape {tuple(volume.shape)}")


def bscan_stats(volume: ArrayT) -> tuple[ArrayT, ArrayT]:
    """Mean and standard deviation of every B-scan.

    Args:
        volume: ``(..., H, W, D)`` array or tensor, any real dtype (a ``np.memmap`` is read
            in chunks of B-scans).

    Returns:
        ``(mean, std)``, each ``(..., H)`` float64, of the same kind (numpy / torch, device)
        as ``volume``; ``std`` is the population standard deviation (``ddof=0``).
    """
    _check_ndim(volume)
    h = volume.shape[-3]
    per_bscan = max(1, int(np.prod(volume.shape[:-3], dtype=np.int64)) * volume.shape[-2] * volume.shape[-1])
    step = max(1, _CHUNK_VOXELS // per_bscan)
    if isinstance(volume, torch.Tensor):
        means, stds = [], []
        for h0 in range(0, h, step):
            x = volume[..., h0 : h0 + step, :, :].to(torch.float64)
            m = x.mean(dim=(-2, -1))
            means.append(m)
            stds.append((x - m[..., None, None]).square().mean(dim=(-2, -1)).sqrt())
        return torch.cat(means, dim=-1), torch.cat(stds, dim=-1)
    volume = np.asarray(volume) if not isinstance(volume, np.ndarray) else volume
    mean = np.empty(volume.shape[:-2], dtype=np.float64)
    std = np.empty(volume.shape[:-2], dtype=np.float64)
    for h0 in range(0, h, step):
        x = volume[..., h0 : h0 + step, :, :].astype(np.float64)  # a copy: modified below
        m = x.mean(axis=(-2, -1))
        mean[..., h0 : h0 + step] = m
        x -= m[..., None, None]
        np.square(x, out=x)
        std[..., h0 : h0 + step] = np.sqrt(x.mean(axis=(-2, -1)))
    return mean, std


def apply_zscore(volume: ArrayT, mean: ArrayT | np.ndarray, std: ArrayT | np.ndarray, eps: float = EPS) -> ArrayT:
    """``(volume - mean) / max(std, eps)`` per B-scan, as a new array.

    Args:
        volume: ``(..., H, W, D)``.
        mean: ``(..., H)`` (broadcastable), e.g. from :func:`bscan_stats`.
        std: ``(..., H)``.
        eps: lower bound on the standard deviation.

    Returns:
        Same kind and shape as ``volume``; floating inputs keep their dtype, integer inputs
        become float32.
    """
    _check_ndim(volume)
    if isinstance(volume, torch.Tensor):
        dtype = volume.dtype if volume.is_floating_point() else torch.float32
        m = torch.as_tensor(mean, dtype=torch.float64, device=volume.device)
        inv = 1.0 / torch.as_tensor(std, dtype=torch.float64, device=volume.device).clamp_min(eps)
        return (volume.to(dtype) - m[..., None, None].to(dtype)) * inv[..., None, None].to(dtype)
    dtype = volume.dtype if np.issubdtype(volume.dtype, np.floating) else np.float32
    m = np.asarray(mean, dtype=np.float64)[..., None, None].astype(dtype)
    inv = (1.0 / np.maximum(np.asarray(std, dtype=np.float64), eps))[..., None, None].astype(dtype)
    out = np.subtract(volume, m, dtype=dtype)
    out *= inv
    return out


def zscore_per_bscan(volume: ArrayT, eps: float = EPS) -> ArrayT:
    """Z-score every B-scan over its own ``(W, D)`` plane.

    Args:
        volume: ``(..., H, W, D)`` numpy array (memmaps included) or torch tensor.
        eps: lower bound on the standard deviation; a constant B-scan becomes all zeros.

    Returns:
        The normalised volume, same kind and shape; floating inputs keep their dtype,
        integer inputs become float32.
    """
    mean, std = bscan_stats(volume)
    return apply_zscore(volume, mean, std, eps)
