"""OCT preprocessing: flattening along Bruch's membrane (BM), depth resampling, and
sampling 2D images onto the ``(H, W)`` en-face grid.

Axes (README, "The dataset folder"): a volume is ``(H, W, D)``, depth index 0 on the vitreous side.
A BM map is ``(H, W)`` float: the depth of BM in each A-scan in continuous voxel
coordinates (voxel ``d`` covers ``[d - 0.5, d + 0.5)``, so a boundary between voxels
``z - 1`` and ``z`` lies at ``z - 0.5``).

BM estimation (:func:`estimate_bm`, :func:`fill_bm`) lives in :mod:`enface.data.bm` and is
re-exported here.

Flattening (:func:`flatten_volume`) shifts every A-scan so that BM sits at a fixed depth,
crops a window around it and resamples the window to a fixed number of samples, in one
interpolation pass (with depth anti-aliasing when the window is shrunk).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from enface.data.bm import estimate_bm, fill_bm
from enface.data.options import FlattenParams

log = logging.getLogger(__name__)

__all__ = [
    "FlattenParams",
    "enface_points",
    "estimate_bm",
    "fill_bm",
    "flatten_volume",
    "resample_depth",
    "sample_enface",
    "sample_enface_mask",
]


# --------------------------------------------------------------------------- flattening


def flatten_volume(
    volume: np.ndarray, bm: np.ndarray, sd: float, params: FlattenParams = FlattenParams(), fill: float | None = None
) -> np.ndarray:
    """Flatten along BM, crop a window around it and resample depth.

    Output sample ``k`` of A-scan ``(i, j)`` is taken at input depth
    ``bm[i, j] - above + (k + 0.5) * step`` (``step`` = window / ``depth``, in
    voxels), with linear interpolation; when ``step > 1`` the A-scan is first smoothed in
    depth (Gaussian, sigma ``0.4 * step``) against aliasing. BM ends up at output index
    :attr:`FlattenParams.bm_index` in every A-scan.

    Args:
        volume: ``(H, W, D)`` volume (any numeric dtype).
        bm: ``(H, W)`` BM depth in voxels (finite).
        sd: depth spacing of ``volume`` in mm.
        params: window and output depth.
        fill: value for samples outside the volume (default: the volume's 1st percentile).

    Returns:
        ``(H, W, params.depth)`` float32 volume.

    Raises:
        ValueError: shapes disagree, BM has NaN, or ``sd`` is not positive.
    """
    vol = np.asarray(volume)
    bm = np.asarray(bm, dtype=np.float64)
    if vol.ndim != 3 or bm.shape != vol.shape[:2]:
        raise ValueError(f"BM map {bm.shape} does not match the volume's en-face grid {vol.shape[:2]}")
    if not np.isfinite(bm).all():
        raise ValueError("BM map has NaN/inf entries; fill them first (fill_bm)")
    if not sd > 0:
        raise ValueError(f"depth spacing must be positive, got {sd}")
    h, w, d = vol.shape
    above = params.above_mm / sd
    step = (params.above_mm + params.below_mm) / sd / params.depth
    if fill is None:
        fill = float(np.percentile(vol[:: max(1, h // 8)], 1))
    k = (np.arange(params.depth) + 0.5) * step
    out = np.empty((h, w, params.depth), dtype=np.float32)
    for i in range(h):  # one B-scan at a time: bounded memory on large volumes
        a = vol[i].astype(np.float32)
        if step > 1.0:
            a = ndimage.gaussian_filter1d(a, 0.4 * step, axis=-1, mode="nearest")
        z = bm[i][:, None] - above + k[None, :]  # (W, depth)
        z0 = np.floor(z).astype(np.int64)
        t = (z - z0).astype(np.float32)
        inside0 = (z0 >= 0) & (z0 < d)
        inside1 = (z0 + 1 >= 0) & (z0 + 1 < d)
        v0 = np.where(inside0, np.take_along_axis(a, np.clip(z0, 0, d - 1), axis=-1), fill)
        v1 = np.where(inside1, np.take_along_axis(a, np.clip(z0 + 1, 0, d - 1), axis=-1), fill)
        out[i] = v0 * (1 - t) + v1 * t
    return out


def resample_depth(volume: np.ndarray, depth: int) -> np.ndarray:
    """Resample the depth axis of an already flattened volume to ``depth`` samples.

    Linear interpolation at the centres of ``depth`` equal cells spanning the whole
    depth, with Gaussian anti-aliasing when shrinking.

    Args:
        volume: ``(H, W, D)`` volume.
        depth: output depth.

    Returns:
        ``(H, W, depth)`` float32 volume.
    """
    vol = np.asarray(volume)
    d = vol.shape[-1]
    if d == depth:
        return vol.astype(np.float32)
    step = d / depth
    z = (np.arange(depth) + 0.5) * step - 0.5
    z0 = np.clip(np.floor(z).astype(np.int64), 0, d - 1)
    z1 = np.clip(z0 + 1, 0, d - 1)
    t = np.clip(z - z0, 0.0, 1.0).astype(np.float32)
    out = np.empty(vol.shape[:2] + (depth,), dtype=np.float32)
    for i in range(vol.shape[0]):
        a = vol[i].astype(np.float32)
        if step > 1.0:
            a = ndimage.gaussian_filter1d(a, 0.4 * step, axis=-1, mode="nearest")
        out[i] = a[:, z0] * (1 - t) + a[:, z1] * t
    return out


# --------------------------------------------------------------------------- en-face sampling


def enface_points(positions: np.ndarray, width: int) -> np.ndarray:
    """Pixel coordinates of every A-scan on the reference image.

    Args:
        positions: ``(H, 2, 2)`` start/end ``(x, y)`` of each B-scan.
        width: number of A-scans per B-scan ``W``.

    Returns:
        ``(H, W, 2)`` array of ``(x, y)``.
    """
    pos = np.asarray(positions, dtype=np.float64)
    t = np.linspace(0.0, 1.0, width) if width > 1 else np.zeros(1)
    return pos[:, 0, None, :] + (pos[:, 1, None, :] - pos[:, 0, None, :]) * t[None, :, None]


def _grid_steps(points: np.ndarray) -> tuple[float, float]:
    """Mean spacing (image pixels) between neighbouring grid points along H and W."""
    sw = float(np.linalg.norm(np.diff(points, axis=1), axis=-1).mean()) if points.shape[1] > 1 else 1.0
    sh = float(np.linalg.norm(np.diff(points, axis=0), axis=-1).mean()) if points.shape[0] > 1 else 1.0
    return sh, sw


def _prefilter(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Gaussian anti-aliasing matched to the grid step (assumes a roughly axis-aligned grid)."""
    sh, sw = _grid_steps(points)
    sig_y = 0.4 * sh if sh > 1.0 else 0.0
    sig_x = 0.4 * sw if sw > 1.0 else 0.0
    if sig_x == 0 and sig_y == 0:
        return image
    return ndimage.gaussian_filter(image, (sig_y, sig_x), mode="nearest")


def sample_enface(image: np.ndarray, points: np.ndarray, antialias: bool = True) -> tuple[np.ndarray, float]:
    """Sample a 2D image at the en-face grid points (bilinear).

    Args:
        image: ``(h, w)`` image.
        points: ``(H, W, 2)`` grid point coordinates ``(x, y)`` on ``image``.
        antialias: smooth the image first when the grid is coarser than its pixels.

    Returns:
        ``(H, W)`` float32 samples (0 outside the image) and the fraction of grid points
        that fell outside the image.
    """
    img = np.asarray(image, dtype=np.float32)
    if antialias:
        img = _prefilter(img, points)
    coords = np.stack([points[..., 1], points[..., 0]])  # (row, col)
    h, w = img.shape
    outside = (coords[0] < -0.5) | (coords[0] > h - 0.5) | (coords[1] < -0.5) | (coords[1] > w - 0.5)
    out = ndimage.map_coordinates(img, coords, order=1, mode="nearest")
    out[outside] = 0.0
    return out.astype(np.float32), float(outside.mean())


def sample_enface_mask(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Sample a binary mask at the grid points: area-weighted, thresholded at 0.5.

    Returns:
        ``(H, W)`` uint8 {0, 1}.
    """
    soft, _ = sample_enface(np.asarray(mask, dtype=np.float32), points, antialias=True)
    return (soft >= 0.5).astype(np.uint8)
