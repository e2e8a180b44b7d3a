"""OCT preprocessing: Bruch's membrane (BM) estimation, flattening, depth resampling, and
sampling 2D images onto the ``(H, W)`` en-face grid.

Axes follow DESIGN.md: a volume is ``(H, W, D)``, depth index 0 on the vitreous side.
A BM map is ``(H, W)`` float: the depth of BM in each A-scan in continuous voxel
coordinates (voxel ``d`` covers ``[d - 0.5, d + 0.5)``, so a boundary between voxels
``z - 1`` and ``z`` lies at ``z - 0.5``).

BM estimation (:func:`estimate_bm`) is built to survive what real scans throw at it:

1. the volume is block-averaged in depth to at most ~256 samples, normalised per B-scan
   and smoothed (speckle);
2. each A-scan proposes a BM depth: below the inner retina, the strongest dark-to-bright
   edge is the top of the RPE in normal retina, or BM itself in geographic atrophy (GA:
   the thinned outer retina is dark and the choroid below BM is bright from
   hypertransmission); a strong bright-to-dark edge just below it (the bottom of the RPE)
   is BM in normal retina. Each proposal is weighted by its edge strength (vessel
   shadows give weak edges);
3. a smooth surface (a robust quadratic for the eye's curvature and tilt plus a smoothed
   residual, fitted with outlier rejection) is fitted through the proposals, bridging
   the A-scans whose proposal is an outlier;
4. each A-scan is refined to sub-voxel precision within a narrow band around the surface
   (bright-to-dark edge where strong, else dark-to-bright), jumps are rejected and the
   result is smoothed across A-scans and B-scans.

Flattening (:func:`flatten_volume`) shifts every A-scan so that BM sits at a fixed depth,
crops a window around it and resamples the window to a fixed number of samples, in one
interpolation pass (with depth anti-aliasing when the window is shrunk).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = [
    "FlattenParams",
    "estimate_bm",
    "fill_bm",
    "flatten_volume",
    "resample_depth",
    "enface_points",
    "sample_enface",
    "sample_enface_mask",
]


# --------------------------------------------------------------------------- BM estimation


def _block_mean_depth(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` consecutive depth samples, ``(H, W, D) -> (H, W, D // factor)``."""
    h, w, d = volume.shape
    n = d // factor
    out = np.empty((h, w, n), dtype=np.float32)
    for i in range(h):  # per B-scan keeps memory low on large volumes
        out[i] = volume[i, :, : n * factor].astype(np.float32).reshape(w, n, factor).mean(axis=2)
    return out


def _edge_response(s: np.ndarray, half: int) -> np.ndarray:
    """``mean(s[z-half:z]) - mean(s[z:z+half])`` along the last axis (bright above -> positive).

    The value at ``z`` describes the boundary between samples ``z - 1`` and ``z``.
    """
    d = s.shape[-1]
    c = np.concatenate([np.zeros(s.shape[:-1] + (1,), np.float32), np.cumsum(s, axis=-1, dtype=np.float32)], axis=-1)
    z = np.arange(d)
    lo = np.clip(z - half, 0, d)
    hi = np.clip(z + half, 0, d)
    above = (c[..., z] - c[..., lo]) / np.maximum(z - lo, 1)
    below = (c[..., hi] - c[..., z]) / np.maximum(hi - z, 1)
    e = above - below
    e[..., :half] = 0
    e[..., d - half :] = 0
    return e


def _normalized_smooth(values: np.ndarray, weights: np.ndarray, sigma: tuple[float, float]) -> np.ndarray:
    """Weighted Gaussian smoothing that fills holes (weight 0) from their neighbours."""
    num = ndimage.gaussian_filter(values * weights, sigma, mode="nearest")
    den = ndimage.gaussian_filter(weights, sigma, mode="nearest")
    out = num / np.maximum(den, 1e-12)
    if (den <= 1e-9).any():  # far from any data: fall back to the weighted mean
        out[den <= 1e-9] = float((values * weights).sum() / max(weights.sum(), 1e-12))
    return out


def _quadratic_design(h: int, w: int, spacing: tuple[float, float]) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(h) * spacing[0], np.arange(w) * spacing[1], indexing="ij")
    yy = yy - yy.mean()
    xx = xx - xx.mean()
    scale = max(float(np.abs(yy).max()), float(np.abs(xx).max()), 1e-9)
    yy, xx = yy / scale, xx / scale
    return np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1).reshape(h * w, 6)


def _robust_surface(
    cand: np.ndarray,
    weight: np.ndarray,
    spacing_hw: tuple[float, float],
    sigma_px: tuple[float, float],
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a smooth surface to candidate depths with outlier rejection.

    First a quadratic surface (the eye's curvature and tilt) by iteratively reweighted
    least squares with Tukey's biweight, then a smoothed residual fitted to the inliers
    with a tolerance shrinking to ``tol``. Outliers (vessel shadows, GA) become holes that
    the normalised smoothing fills from their surroundings.

    Returns:
        The ``(H, W)`` surface and the final inlier mask.
    """
    h, w = cand.shape
    a = _quadratic_design(h, w, spacing_hw)
    y = cand.reshape(-1).astype(np.float64)
    wt = weight.reshape(-1).astype(np.float64)
    if not (wt > 0).any():
        return np.full((h, w), float(np.median(cand))), np.zeros((h, w), bool)
    # start from a local median (robust to up to half of the proposals being wrong nearby)
    size = (min(h, 5) | 1, max(3, int(round(4 * sigma_px[1])) | 1))
    start = ndimage.median_filter(cand, size=size, mode="nearest").reshape(-1)
    robust = wt * (np.abs(y - start) <= 3 * tol)
    if robust.sum() <= 0:
        robust = wt.copy()
    base = start
    scale = tol
    for _ in range(10):
        sw = np.sqrt(robust)
        coef, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        base = a @ coef
        r = y - base
        scale = max(1.4826 * float(np.median(np.abs(r[robust > 0]))), tol / 2)
        u = r / (4.685 * scale)
        new = wt * np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        if new.sum() <= 0:
            break
        robust = new
    base2 = base.reshape(h, w)
    first = max(tol, 2.5 * scale)
    inlier = (np.abs(y - base) <= first).reshape(h, w) & (weight > 0)
    surface = base2
    for thr in (first, tol, tol):
        ww = weight * inlier
        if ww.sum() <= 0:
            break
        surface = base2 + _normalized_smooth(cand - base2, ww, sigma_px)
        inlier = (np.abs(cand - surface) <= thr) & (weight > 0)
    return surface, inlier


def _band_argmax(score: np.ndarray, centre: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """For each A-scan, argmax of ``score[..., z]`` over ``|z - centre| <= radius``.

    Returns:
        ``(position, value)`` with sub-sample (parabolic) refinement of the position.
    """
    h, w, d = score.shape
    offsets = np.arange(-radius, radius + 1)
    idx = np.clip(np.round(centre).astype(int)[..., None] + offsets, 1, d - 2)
    vals = np.take_along_axis(score, idx, axis=-1)
    k = np.argmax(vals, axis=-1)
    best = np.take_along_axis(idx, k[..., None], axis=-1)[..., 0]
    v0 = np.take_along_axis(score, (best - 1)[..., None], axis=-1)[..., 0]
    v1 = np.take_along_axis(score, best[..., None], axis=-1)[..., 0]
    v2 = np.take_along_axis(score, (best + 1)[..., None], axis=-1)[..., 0]
    den = v0 - 2 * v1 + v2
    frac = np.where(den < 0, 0.5 * (v0 - v2) / np.where(den < 0, den, -1), 0.0)
    return best + np.clip(frac, -0.5, 0.5), v1


_DEPTH_SMOOTH_MM = 0.014  # depth smoothing (Gaussian sigma) of the proposal search
_FINE_SIGMA_PX = 1.0  # depth smoothing (voxels at working resolution) of the final sub-voxel fit


def _bm_proposals(s: np.ndarray, e: np.ndarray, sdw: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One BM proposal per A-scan, with a confidence weight.

    Below the inner limiting membrane (ILM, the first clearly bright sample under the dark
    vitreous) plus a minimal retinal thickness, the strongest dark-to-bright edge is the
    top of the RPE (normal retina) or BM itself (GA: dark thinned outer retina over the
    hypertransmitted choroid). Just below it, a strong bright-to-dark edge is the bottom of
    the RPE, i.e. BM; without one the A-scan is taken as atrophic and the dark-to-bright
    edge is BM.

    Args:
        s: ``(H, W, D)`` normalised, smoothed volume.
        e: its edge response (:func:`_edge_response`; bright above -> positive).
        sdw: depth spacing of ``s`` in mm.

    Returns:
        ``(proposal (H, W) float, weight (H, W) in [0, 1], typical RPE-bottom strength)``.
    """
    h, w, d = s.shape
    vitreous = float(np.median(s[..., : max(2, d // 10)]))
    bright = float(np.percentile(s, 99))
    above = s > vitreous + 0.25 * (bright - vitreous)
    ilm = np.where(above.any(axis=-1), np.argmax(above, axis=-1), 0)
    ilm = ndimage.median_filter(ilm, size=(3 if h >= 3 else 1, 9), mode="nearest")
    start = np.minimum(ilm + max(2, int(round(0.08 / sdw))), d - 3)
    z = np.arange(d)
    rise = np.where(z >= start[..., None], -e, -np.inf)
    top = np.argmax(rise, axis=-1)  # strongest dark -> bright edge below the inner retina
    top_val = np.take_along_axis(-e, top[..., None], axis=-1)[..., 0]
    reach = max(2, int(round(0.1 / sdw)))
    fall = np.where((z >= top[..., None]) & (z <= top[..., None] + reach), e, -np.inf)
    bottom = np.argmax(fall, axis=-1)  # strongest bright -> dark edge just below it
    bottom_val = np.take_along_axis(e, bottom[..., None], axis=-1)[..., 0]
    typical = max(float(np.percentile(bottom_val, 75)), 1e-6)
    typical_rise = max(float(np.percentile(top_val, 75)), 1e-6)
    normal = bottom_val >= 0.5 * typical
    cand = np.where(normal, bottom, top).astype(np.float64)
    strength = np.where(normal, bottom_val / typical, top_val / typical_rise)
    weight = np.clip(strength, 0.0, 1.0) ** 2
    return cand, weight, typical


def estimate_bm(
    volume: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    *,
    max_depth_samples: int = 256,
    smooth_mm: float = 0.03,
    band_mm: float = 0.03,
) -> np.ndarray:
    """Estimate Bruch's membrane in an un-flattened OCT volume.

    Args:
        volume: ``(H, W, D)`` OCT volume (any numeric dtype; brighter = more reflective),
            depth index 0 on the vitreous side.
        spacing: ``(sh, sw, sd)`` in mm; sets the physical size of the smoothing and of the
            refinement band. Without it, Spectralis-like values are assumed
            (0.12, 0.012, 0.004 mm).
        max_depth_samples: depth is block-averaged down to at most this many samples for
            the search (speed and speckle suppression).
        smooth_mm: scale of the final smoothing of the BM surface across A-scans and B-scans.
        band_mm: half-height of the refinement band around the robust surface.

    Returns:
        ``(H, W)`` float32 BM depth in voxels of ``volume`` (sub-voxel).

    Raises:
        ValueError: the volume is not 3D, too thin in depth, or not finite.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (H, W, D), got shape {vol.shape}")
    h, w, d = vol.shape
    if d < 16:
        raise ValueError(f"volume has only {d} depth samples; BM estimation needs at least 16")
    sh, sw, sd = spacing if spacing is not None else (0.12, 0.012, 0.004)
    factor = max(1, int(np.ceil(d / max_depth_samples)))
    small = _block_mean_depth(vol, factor) if factor > 1 else vol.astype(np.float32)
    if not np.isfinite(small).all():
        raise ValueError("volume has NaN/inf voxels")
    sdw = sd * factor  # depth spacing at working resolution
    # robust per-B-scan intensity normalisation (devices differ in gain / log scaling)
    lo = np.percentile(small, 2, axis=(1, 2), keepdims=True)
    hi = np.percentile(small, 99.5, axis=(1, 2), keepdims=True)
    small = (small - lo) / np.maximum(hi - lo, 1e-6)
    # speckle: smooth ~14 µm in depth, ~25 µm across A-scans, a little across B-scans
    sig = (
        min(0.6, 0.01 / sh) if h > 2 else 0.0,
        max(1.0, 0.025 / sw),
        float(np.clip(_DEPTH_SMOOTH_MM / sdw, 0.7, 3.0)),
    )
    s = ndimage.gaussian_filter(small, sig, mode="nearest")

    half = max(2, int(round(0.012 / sdw)))  # edge half-width ~ 12 µm (an RPE's thickness)
    e = _edge_response(s, half)
    # 1. per-A-scan proposal (see _bm_proposals)
    cand, weight, typical = _bm_proposals(s, e, sdw)
    # 2. robust smooth surface through the proposals
    tol = max(2.0, 0.02 / sdw)  # 20 µm
    sigma_px = (max(0.5, 0.15 / sh), max(1.0, 0.15 / sw))
    surface, inlier = _robust_surface(cand, weight, (sh, sw), sigma_px, tol)
    # 3. refine in a narrow band: bright->dark where strong (RPE), else dark->bright (GA)
    radius = max(2, int(round(band_mm / sdw)))
    _, val_neg = _band_argmax(e, surface, radius)
    _, val_pos = _band_argmax(-e, surface, radius)
    strong = val_neg >= 0.5 * typical
    # sub-voxel position from a finer edge operator (less depth smoothing, narrower)
    fine_s = ndimage.gaussian_filter(small, (sig[0], sig[1], _FINE_SIGMA_PX), mode="nearest")
    fine = _edge_response(fine_s, max(1, half // 2))
    pos_neg, _ = _band_argmax(fine, surface, radius)
    pos_pos, _ = _band_argmax(-fine, surface, radius)
    refined = np.where(strong, pos_neg, np.where(val_pos > 0.5 * typical, pos_pos, surface))
    # 4. reject refinements that jump away from their neighbours, then smooth
    med = ndimage.median_filter(refined, size=(3 if h >= 3 else 1, 5), mode="nearest")
    ok = np.abs(refined - med) <= max(1.5, radius / 2)
    refined = np.where(ok, refined, med)
    final_sigma = (max(0.3, smooth_mm / sh) if h > 2 else 0.0, max(0.7, smooth_mm / sw))
    refined = ndimage.gaussian_filter(refined, final_sigma, mode="nearest")
    log.debug("BM estimate: %.0f%% inlier proposals, %.0f%% strong RPE edges",
              100 * inlier.mean(), 100 * strong.mean())
    # back to full depth: working boundary z lies between voxels z f - 1 and z f, i.e. at
    # continuous depth z f - 0.5 (voxel centres at integers)
    return (refined * factor - 0.5).astype(np.float32)


def fill_bm(bm: np.ndarray, spacing: tuple[float, float] | None = None) -> np.ndarray:
    """Fill missing (NaN) entries of a BM map from their neighbours.

    Args:
        bm: ``(H, W)`` BM depth with NaN where unknown.
        spacing: ``(sh, sw)`` in mm (sets the reach of the filling), optional.

    Returns:
        ``(H, W)`` float32 map without NaN.

    Raises:
        ValueError: no finite value at all.
    """
    bm = np.asarray(bm, dtype=np.float64)
    valid = np.isfinite(bm)
    if valid.all():
        return bm.astype(np.float32)
    if not valid.any():
        raise ValueError("BM map has no valid value")
    sh, sw = spacing if spacing is not None else (0.12, 0.012)
    sigma = (max(0.5, 0.1 / sh), max(1.0, 0.1 / sw))
    filled = _normalized_smooth(np.where(valid, bm, 0.0), valid.astype(np.float64), sigma)
    return np.where(valid, bm, filled).astype(np.float32)


# --------------------------------------------------------------------------- flattening


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
        if not (self.above_mm > 0 and self.below_mm >= 0 and self.depth >= 2):
            raise ValueError(
                f"flattening window must have above_mm > 0, below_mm >= 0 and depth >= 2, got {self}"
            )

    @property
    def bm_index(self) -> float:
        """Depth index (in the output) at which BM sits."""
        return self.depth * self.above_mm / (self.above_mm + self.below_mm) - 0.5

    def output_spacing(self) -> float:
        """Depth spacing of the output in mm."""
        return (self.above_mm + self.below_mm) / self.depth


def flatten_volume(
    volume: np.ndarray,
    bm: np.ndarray,
    sd: float,
    params: FlattenParams = FlattenParams(),
    fill: float | None = None,
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
