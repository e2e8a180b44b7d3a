"""Bruch's membrane (BM) in an un-flattened OCT volume: estimation and gap filling.

Axes (README, "The dataset folder"): a volume is ``(H, W, D)``, depth index 0 on the vitreous side.
A BM map is ``(H, W)`` float: the depth of BM in each A-scan in continuous voxel
coordinates (voxel ``d`` covers ``[d - 0.5, d + 0.5)``, so a boundary between voxels
``z - 1`` and ``z`` lies at ``z - 0.5``).

:func:`estimate_bm` is built to hold where it matters most, in geographic atrophy (GA), and
to survive drusen, vessel shadows and speckle:

1. **coarse search** (:func:`_working_volume`, :func:`_bm_proposals`): the volume is
   block-averaged in depth to at most ~256 samples, normalised per B-scan and smoothed;
   each A-scan proposes a BM depth with a confidence weight. Below the inner retina the
   strongest dark-to-bright edge is the top of the RPE in normal retina, or BM itself in GA
   (the thinned outer retina is dark and the choroid below BM is bright from
   hypertransmission). A strong bright-to-dark edge just below it is the bottom of the RPE,
   i.e. BM, only if the band above it is as bright as an RPE: in GA the bright
   hypertransmitted choroid has its own bright-to-dark edges (the tops of its vessels),
   which must not pull BM down into the choroid;
2. **robust surface** (:func:`_robust_surface`): a robust quadratic (the eye's curvature
   and tilt) plus a smoothed residual, fitted with outlier rejection, through the
   proposals;
3. **fine edges at full depth resolution** (:func:`_refine_in_band`): in a narrow band
   that follows the surface, the volume is sampled at its own depth resolution and
   smoothed along the surface. Where the tissue just below is bright compared with an RPE
   (GA: the hypertransmitted choroid), BM is the top of the choroid: the upper end of the
   ramp up to the choroid's level (:func:`_choroid_tops`), below any RPE remnant or debris;
   elsewhere BM is the bottom of the RPE, the strongest bright-to-dark edge, weighted by
   its strength (weak under vessel shadows: no vote);
4. **robust re-fit** (:func:`_settle`): a second, tighter robust surface through the
   confident fine edges, each B-scan almost on its own (eye motion shifts B-scans in
   depth); an edge far from it (the RPE lifted by a druse, a choroidal vessel) and an
   A-scan without a vote take the surface, which bridges them from the A-scans around.
   The result is smoothed along the B-scans.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = ["estimate_bm", "fill_bm"]

DEFAULT_SPACING: tuple[float, float, float] = (0.12, 0.012, 0.004)
"""Spectralis-like ``(sh, sw, sd)`` in mm, assumed when a volume comes without spacing."""

_DEPTH_SMOOTH_MM = 0.014  # depth smoothing (Gaussian sigma) of the coarse proposal search
_RPE_MM = 0.012  # half-width of the coarse edge operator: about an RPE's thickness
_FINE_EDGE_MM = 0.008  # half-width of the fine edge operator
_FINE_DEPTH_SIGMA_MM = 0.004  # depth smoothing of the fine search
_REFIT_TOL_MM = 0.008  # fine edges further than this from the re-fitted surface are replaced
_REFIT_SMOOTH_MM = 0.2  # lateral reach of the re-fitted surface (bridges drusen and shadows)
_MIN_VOTE = 0.1  # fine edges weaker than this (relative, squared for RPE edges) do not vote
_CHOROID_MM = 0.03  # depth below BM looked at for hypertransmission and the choroid's plateau
_HYPER_LEVEL = 0.35  # choroid at least this bright relative to an RPE: hypertransmission (GA)
_CHOROID_TOP_LEVEL = 0.7  # BM in GA: where the ramp up to the choroid reaches this fraction


# --------------------------------------------------------------------------- building blocks


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


def _robust_quadratic(
    cand: np.ndarray, weight: np.ndarray, spacing_hw: tuple[float, float], sigma_px: tuple[float, float], tol: float
) -> tuple[np.ndarray, float]:
    """Quadratic surface (curvature and tilt) by iteratively reweighted least squares with
    Tukey's biweight, started from a local median; returns ``(H, W)`` surface and the
    residual scale."""
    h, w = cand.shape
    a = _quadratic_design(h, w, spacing_hw)
    y = cand.reshape(-1).astype(np.float64)
    wt = weight.reshape(-1).astype(np.float64)
    # start from a local median (robust to up to half of the proposals being wrong nearby)
    size = (min(h, 5) | 1, max(3, int(round(4 * sigma_px[1])) | 1))
    base = ndimage.median_filter(cand, size=size, mode="nearest").reshape(-1)
    robust = wt * (np.abs(y - base) <= 3 * tol)
    if robust.sum() <= 0:
        robust = wt.copy()
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
    return base.reshape(h, w), scale


def _robust_surface(
    cand: np.ndarray, weight: np.ndarray, spacing_hw: tuple[float, float], sigma_px: tuple[float, float], tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a smooth surface to candidate depths with outlier rejection.

    A robust quadratic (:func:`_robust_quadratic`), then a smoothed residual fitted to the
    inliers with a tolerance shrinking to ``tol``. Outliers (vessel shadows, drusen, GA)
    become holes that the normalised smoothing fills from their surroundings.

    Args:
        cand: ``(H, W)`` candidate depths.
        weight: ``(H, W)`` confidence in [0, 1] (0: no vote).
        spacing_hw: ``(sh, sw)`` in mm.
        sigma_px: smoothing of the residual in pixels ``(along H, along W)``.
        tol: final inlier tolerance (same unit as ``cand``).

    Returns:
        The ``(H, W)`` surface and the final inlier mask.
    """
    h, w = cand.shape
    if not (weight > 0).any():
        return np.full((h, w), float(np.median(cand))), np.zeros((h, w), bool)
    base, scale = _robust_quadratic(cand, weight, spacing_hw, sigma_px, tol)
    first = max(tol, 2.5 * scale)
    inlier = (np.abs(cand - base) <= first) & (weight > 0)
    surface = base
    for thr in (first, tol, tol):
        ww = weight * inlier
        if ww.sum() <= 0:
            break
        surface = base + _normalized_smooth(cand - base, ww, sigma_px)
        inlier = (np.abs(cand - surface) <= thr) & (weight > 0)
    return surface, inlier


def _band_argmax(score: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Argmax of ``score[..., lo:hi+1]`` per A-scan with parabolic sub-sample refinement.

    Returns:
        ``(position (sample index, float), value)``.
    """
    sub = score[..., lo : hi + 1]
    best = lo + np.argmax(sub, axis=-1)
    take = lambda idx: np.take_along_axis(score, idx[..., None], axis=-1)[..., 0]  # noqa: E731
    v0, v1, v2 = take(best - 1), take(best), take(best + 1)
    den = v0 - 2 * v1 + v2
    frac = np.where(den < 0, 0.5 * (v0 - v2) / np.where(den < 0, den, -1), 0.0)
    return best + np.clip(frac, -0.5, 0.5), v1


# --------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class _Working:
    """The volume prepared for the coarse search.

    Attributes:
        s: ``(H, W, Dw)`` normalised, smoothed, block-averaged volume.
        e: its edge response (bright above -> positive).
        factor: depth block size (``Dw = D // factor``).
        sdw: depth spacing of ``s`` in mm.
        lo, hi: ``(H,)`` per-B-scan normalisation (2nd and 99.5th percentiles).
        sigma_hw: speckle smoothing ``(along H, along W)`` in pixels.
    """

    s: np.ndarray
    e: np.ndarray
    factor: int
    sdw: float
    lo: np.ndarray
    hi: np.ndarray
    sigma_hw: tuple[float, float]


def _working_volume(vol: np.ndarray, spacing: tuple[float, float, float], max_depth_samples: int) -> _Working:
    """Block-average in depth, normalise per B-scan, smooth speckle, take edge responses.

    Raises:
        ValueError: NaN/inf voxels.
    """
    h, _, d = vol.shape
    sh, sw, sd = spacing
    factor = max(1, int(np.ceil(d / max_depth_samples)))
    small = _block_mean_depth(vol, factor) if factor > 1 else vol.astype(np.float32)
    if not np.isfinite(small).all():
        raise ValueError("volume has NaN/inf voxels")
    sdw = sd * factor
    # robust per-B-scan intensity normalisation (devices differ in gain / log scaling)
    lo = np.percentile(small, 2, axis=(1, 2))
    hi = np.maximum(np.percentile(small, 99.5, axis=(1, 2)), lo + 1e-6)
    small = (small - lo[:, None, None]) / (hi - lo)[:, None, None]
    # speckle: smooth ~14 µm in depth, ~25 µm across A-scans, a little across B-scans
    sigma_hw = (min(0.6, 0.01 / sh) if h > 2 else 0.0, max(1.0, 0.025 / sw))
    s = ndimage.gaussian_filter(small, (*sigma_hw, float(np.clip(_DEPTH_SMOOTH_MM / sdw, 0.7, 3.0))), mode="nearest")
    e = _edge_response(s, max(2, int(round(_RPE_MM / sdw))))
    return _Working(s, e, factor, sdw, lo.astype(np.float32), hi.astype(np.float32), sigma_hw)


def _bm_proposals(s: np.ndarray, e: np.ndarray, sdw: float) -> tuple[np.ndarray, np.ndarray]:
    """One BM proposal per A-scan (working samples), with a confidence weight in [0, 1].

    Below the inner limiting membrane (ILM, the first clearly bright sample under the dark
    vitreous) plus a minimal retinal thickness, the strongest dark-to-bright edge is the
    top of the RPE (normal retina) or BM itself (GA: dark thinned outer retina over the
    hypertransmitted choroid). Just below it, a strong bright-to-dark edge under a band as
    bright as an RPE is the bottom of the RPE, i.e. BM; otherwise the A-scan is taken as
    atrophic and the dark-to-bright edge is BM (a bright-to-dark edge under a merely bright
    band is the top of a vessel in a hypertransmitted choroid).
    """
    h, _, d = s.shape
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
    # brightest sample between the two edges: an RPE, or (GA) the choroid's stroma
    between = np.where((z >= top[..., None]) & (z < bottom[..., None]), s, -np.inf).max(axis=-1)
    typical = max(float(np.percentile(bottom_val, 75)), 1e-6)
    typical_rise = max(float(np.percentile(top_val, 75)), 1e-6)
    rpe_level = float(np.percentile(between, 75))
    normal = (bottom_val >= 0.5 * typical) & (between >= 0.7 * rpe_level)
    cand = np.where(normal, bottom, top).astype(np.float64)
    strength = np.where(normal, bottom_val / typical, top_val / typical_rise)
    return cand, np.clip(strength, 0.0, 1.0) ** 2


def _sample_band(vol: np.ndarray, work: _Working, centre: np.ndarray, radius: int) -> np.ndarray:
    """``(H, W, 2 radius + 1)`` normalised samples at depths ``centre + k`` (full resolution,
    linear interpolation): the volume flattened along ``centre``."""
    h, w, d = vol.shape
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    out = np.empty((h, w, k.size), dtype=np.float32)
    for i in range(h):
        z = np.clip(centre[i][:, None] + k[None, :], 0.0, d - 1.0)
        z0 = np.minimum(np.floor(z).astype(np.int64), d - 2)
        t = (z - z0).astype(np.float32)
        a = vol[i].astype(np.float32)
        band = np.take_along_axis(a, z0, axis=-1) * (1 - t) + np.take_along_axis(a, z0 + 1, axis=-1) * t
        out[i] = (band - work.lo[i]) / (work.hi[i] - work.lo[i])
    return out


def _choroid_tops(band: np.ndarray, lo: int, centre: int, reach: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the intensity climbs to the bright (hypertransmitted) choroid, per A-scan.

    The choroid's plateau is the mean of ``(centre, centre + reach]``; the dark floor the
    darkest sample in ``[lo, centre]``. Going up from the brightest sample of the plateau,
    the top of the choroid is where the intensity falls below ``floor + level (plateau -
    floor)`` (linear
    interpolation between samples): the upper end of the ramp, below any RPE remnant or
    debris that the atrophy left above BM.

    Returns:
        ``(position in samples (boundary coordinate), contrast plateau - floor)``.
    """
    k = band.shape[-1]
    idx = np.arange(k)
    peak = centre + np.argmax(band[..., centre : centre + reach + 1], axis=-1)
    plateau = band[..., centre + 1 : centre + reach + 1].mean(axis=-1)  # not the max: noise would raise it
    floor = band[..., lo : centre + 1].min(axis=-1)
    thr = floor + level * (plateau - floor)
    below_thr = (band < thr[..., None]) & (idx >= lo) & (idx < peak[..., None])
    # the last sample under the threshold above the plateau (lo when there is none)
    j = np.where(below_thr.any(axis=-1), k - 1 - np.argmax(below_thr[..., ::-1], axis=-1), lo)
    j = np.minimum(j, k - 2)
    v0 = np.take_along_axis(band, j[..., None], axis=-1)[..., 0]
    v1 = np.take_along_axis(band, (j + 1)[..., None], axis=-1)[..., 0]
    frac = np.clip((thr - v0) / np.maximum(v1 - v0, 1e-6), 0.0, 1.0)
    return j + frac, plateau - floor


def _refine_in_band(
    vol: np.ndarray, work: _Working, surface: np.ndarray, spacing: tuple[float, float, float], band_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fine BM edge per A-scan near ``surface`` (full-resolution depth), with a weight.

    Where the tissue just below ``surface`` is bright compared with an RPE (GA: the
    hypertransmitted choroid), BM is the top of the choroid (:func:`_choroid_tops`);
    elsewhere it is the bottom of the RPE, the strongest bright-to-dark edge, weighted by
    its strength (weak under vessel shadows).

    Returns:
        ``(depth (H, W) in voxels, weight (H, W) in [0, 1])``.
    """
    sd = spacing[2]
    half = max(1, int(round(_FINE_EDGE_MM / sd)))
    search = max(2, int(round(band_mm / sd)))
    reach = max(3, int(round(_CHOROID_MM / sd)))
    radius = max(search + 2 * half + 2, reach + 1)
    band = _sample_band(vol, work, surface, radius)
    band = ndimage.gaussian_filter(band, (*work.sigma_hw, max(0.7, _FINE_DEPTH_SIGMA_MM / sd)), mode="nearest")
    e = _edge_response(band, half)
    lo, hi = radius - search, radius + search
    pos_fall, val_fall = _band_argmax(e, lo, hi)
    typical_fall = max(float(np.percentile(val_fall, 75)), 1e-6)
    peaks = band.max(axis=-1)
    strong = val_fall >= 0.5 * typical_fall  # never empty: the 75th percentile itself passes
    rpe_level = float(np.median(peaks[strong]))
    under = band[..., radius + 1 : radius + 1 + reach].mean(axis=-1)
    hyper = under >= _HYPER_LEVEL * rpe_level
    pos_top, contrast = _choroid_tops(band, lo, radius, reach, _CHOROID_TOP_LEVEL)
    typical_contrast = max(float(np.median(contrast[hyper])) if hyper.any() else 0.0, 1e-6)
    depth = surface + np.where(hyper, pos_top, pos_fall - 0.5) - radius
    weight = np.where(hyper, np.clip(contrast / typical_contrast, 0, 1), np.clip(val_fall / typical_fall, 0, 1) ** 2)
    log.debug(
        "BM refinement: %.0f%% hypertransmission (GA), %.0f%% strong RPE edges",
        100 * hyper.mean(),
        100 * (~hyper & (val_fall >= 0.5 * typical_fall)).mean(),
    )
    return depth, weight


def _settle(depth: np.ndarray, weight: np.ndarray, spacing: tuple[float, float, float], smooth_mm: float) -> np.ndarray:
    """Robust re-fit through the fine edges; smoothed along the B-scans.

    The confident fine edges (weight >= :data:`_MIN_VOTE`) are fitted robustly, each
    B-scan almost on its own (eye motion shifts B-scans in depth); an edge far from the
    fit (the RPE lifted by a druse, a choroidal vessel) and an A-scan without a confident
    edge take the fitted surface, which bridges them from the A-scans around.
    """
    sh, sw, sd = spacing
    h = depth.shape[0]
    tol = max(1.5, _REFIT_TOL_MM / sd)
    votes = np.where(weight >= _MIN_VOTE, weight, 0.0)
    sigma_px = (0.3, max(1.0, _REFIT_SMOOTH_MM / sw))
    surface, inlier = _robust_surface(depth, votes, (sh, sw), sigma_px, tol)
    settled = np.where(inlier, depth, surface)
    log.debug("BM re-fit: %.0f%% of the fine edges kept", 100 * inlier.mean())
    return ndimage.gaussian_filter(settled, (0.3 if h > 2 else 0.0, max(0.7, smooth_mm / sw)), mode="nearest")


# --------------------------------------------------------------------------- public


def estimate_bm(
    volume: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    *,
    max_depth_samples: int = 256,
    smooth_mm: float = 0.1,
    band_mm: float = 0.03,
) -> np.ndarray:
    """Estimate Bruch's membrane in an un-flattened OCT volume.

    Args:
        volume: ``(H, W, D)`` OCT volume (any numeric dtype; brighter = more reflective),
            depth index 0 on the vitreous side.
        spacing: ``(sh, sw, sd)`` in mm; sets the physical size of the smoothing and of the
            refinement band. Without it, Spectralis-like values are assumed
            (:data:`DEFAULT_SPACING`).
        max_depth_samples: depth is block-averaged down to at most this many samples for
            the coarse search (speed and speckle suppression).
        smooth_mm: scale (Gaussian sigma) of the final smoothing of the BM surface along
            the B-scans (BM is smooth; across B-scans it is not smoothed, since eye motion
            shifts B-scans in depth).
        band_mm: half-height of the full-resolution refinement band around the coarse
            surface.

    Returns:
        ``(H, W)`` float32 BM depth in voxels of ``volume`` (sub-voxel).

    Raises:
        ValueError: the volume is not 3D, too thin in depth, or not finite.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (H, W, D), got shape {vol.shape}")
    if vol.shape[2] < 16:
        raise ValueError(f"volume has only {vol.shape[2]} depth samples; BM estimation needs at least 16")
    sp = tuple(float(s) for s in (spacing if spacing is not None else DEFAULT_SPACING))
    sh, sw, _ = sp
    work = _working_volume(vol, sp, max_depth_samples)  # type: ignore[arg-type]
    cand, weight = _bm_proposals(work.s, work.e, work.sdw)
    tol = max(2.0, 0.02 / work.sdw)  # 20 µm
    coarse, inlier = _robust_surface(cand, weight, (sh, sw), (max(0.5, 0.15 / sh), max(1.0, 0.15 / sw)), tol)
    log.debug("BM coarse surface: %.0f%% inlier proposals", 100 * inlier.mean())
    # working boundary z lies between voxels z f - 1 and z f, at continuous depth z f - 0.5:
    # the band is centred on sample z f
    depth, fine_weight = _refine_in_band(vol, work, coarse * work.factor, sp, band_mm)  # type: ignore[arg-type]
    return _settle(depth, fine_weight, sp, smooth_mm).astype(np.float32)  # type: ignore[arg-type]


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
    sh, sw = spacing if spacing is not None else DEFAULT_SPACING[:2]
    sigma = (max(0.5, 0.1 / sh), max(1.0, 0.1 / sw))
    filled = _normalized_smooth(np.where(valid, bm, 0.0), valid.astype(np.float64), sigma)
    return np.where(valid, bm, filled).astype(np.float32)
