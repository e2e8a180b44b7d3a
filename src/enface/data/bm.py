"""Bruch's membrane (BM) in an un-flattened OCT volume: estimation and gap filling.

Axes (README, "The dataset folder"): a volume is ``(H, W, D)``, depth index 0 on the vitreous side.
A BM map is ``(H, W)`` float: the depth of BM in each A-scan in continuous voxel
coordinates (voxel ``d`` covers ``[d - 0.5, d + 0.5)``, so a boundary between voxels
``z - 1`` and ``z`` lies at ``z - 0.5``).

:func:`estimate_bm` is built to hold on scans it was not tuned on: whatever the display
mapping, the speckle (1 look or many), the relative brightness of the ellipsoid zone, the
retinal pigment epithelium (RPE) and the choroid, and the eye's axial motion between
B-scans; and in geographic atrophy (GA), over drusen and under vessel shadows. It chooses
one edge for the whole eye and follows it:

1. **intensity domain** (:func:`_intensity_domain`): linear or power-law intensities
   (multiplicative speckle) are taken to the log domain that display values already are in;
2. **axial motion** (:func:`_axial_motion`): the depth offset of each B-scan from its
   neighbours, by cross-correlating them as wholes; everything that smooths across B-scans
   does it with these offsets taken out;
3. **coarse search** (:func:`_coarse_surface`): in the block-averaged, motion-corrected
   volume each A-scan proposes a BM depth with a confidence (:func:`_bm_proposals`); a
   robust quadratic plus a smoothed residual is fitted through them
   (:func:`_robust_surface`);
4. **one edge for the eye** (:mod:`enface.data.bm_track`): every A-scan is aligned in depth
   to the eye's median profile, coarse to fine (A-scans unlike it, in GA, follow their
   neighbours); on that sharp profile BM is the bottom of the deepest bright band that falls
   clearly below it (the RPE), chosen once; in each A-scan the same edge is searched only a
   few voxels around where the profile puts it;
5. **GA**: A-scans whose outer retina has lost its bright bands over a choroid brighter than
   the eye's normal one; there BM is the top of that choroid, searched near the surface
   bridged from the retina around;
6. **robust re-fit** (:func:`_settle`): a robust surface through the confident edges, in
   motion-corrected coordinates; an edge far from it (the RPE lifted by a druse) and an A-scan
   without a confident edge (a vessel shadow) take the surface. The result is smoothed.

``benchmarks/bench_bm.py`` measures it on volumes whose optics, speckle and acquisition vary
well beyond the phantom's (``benchmarks/varied_oct.py``) and on the phantom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from enface.data import bm_track

log = logging.getLogger(__name__)

__all__ = ["estimate_bm", "fill_bm"]

DEFAULT_SPACING: tuple[float, float, float] = (0.12, 0.012, 0.004)
"""Spectralis-like ``(sh, sw, sd)`` in mm, assumed when a volume comes without spacing."""

_DEPTH_SMOOTH_MM = 0.014  # depth smoothing (Gaussian sigma) of the coarse proposal search
_RPE_MM = 0.012  # half-width of the coarse edge operator: about an RPE's thickness
_REFIT_TOL_MM = 0.008  # fine edges further than this from the re-fitted surface are replaced
_REFIT_SMOOTH_MM = 0.2  # lateral reach of the re-fitted surface (bridges drusen and shadows)
_MIN_VOTE = 0.1  # fine edges weaker than this (relative, squared for RPE edges) do not vote
_ASCAN_MM = 0.012  # A-scans closer than this are averaged in groups before the search (its smoothing is wider)
_MEDIAN_SAMPLES = 25  # A-scans across the robust fit's starting median (wider windows are decimated)
_MULTIPLICATIVE_SLOPE = 0.6  # log(local spread) vs log(local mean) above this: linear intensities


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
    """``mean(s[z-half:z]) - mean(s[z:z+half])`` along the last axis (bright above -> positive),
    float32; 0 within ``half`` samples of either end.

    The value at ``z`` describes the boundary between samples ``z - 1`` and ``z``. Both means
    are differences of one running sum, taken as slices of it (no gathers), written in place
    into the output: ``(2 c[z] - c[z - half] - c[z + half]) / half``.
    """
    d = s.shape[-1]
    c = np.zeros(s.shape[:-1] + (d + 1,), np.float32)
    np.cumsum(s, axis=-1, dtype=np.float32, out=c[..., 1:])
    e = np.zeros(s.shape, np.float32)
    if d > 2 * half:
        out = e[..., half : d - half]
        np.multiply(c[..., half : d - half], 2.0, out=out)
        out -= c[..., : d - 2 * half]
        out -= c[..., 2 * half : d]
        out *= np.float32(1.0 / half)
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
    # start from a local median (robust to up to half of the proposals being wrong nearby),
    # taken on every step-th A-scan: a window of ~100 A-scans costs 20x more at full density
    # and the IRLS below only needs a start within 3 tolerances of the surface
    size_w = max(3, int(round(4 * sigma_px[1])) | 1)
    step = max(1, size_w // _MEDIAN_SAMPLES)
    coarse = ndimage.median_filter(cand[:, ::step], size=(min(h, 5) | 1, max(3, (size_w // step) | 1)), mode="nearest")
    base = np.repeat(coarse, step, axis=1)[:, :w].reshape(-1)
    robust = wt * (np.abs(y - base) <= 3 * tol)
    if robust.sum() <= 0:
        robust = wt.copy()
    scale = tol
    for _ in range(10):
        aw = a * robust[:, None]  # weighted least squares by its normal equations (6 unknowns)
        coef = np.linalg.solve(aw.T @ a + 1e-9 * np.eye(a.shape[1]), aw.T @ y)
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
    lo, hi = np.percentile(small, (2, 99.5), axis=(1, 2))  # one partition for both
    hi = np.maximum(hi, lo + 1e-6)
    small = (small - lo[:, None, None]) / (hi - lo)[:, None, None]
    # speckle: smooth ~14 µm in depth, ~25 µm across A-scans, a little across B-scans
    sigma_hw = (min(0.6, 0.01 / sh) if h > 2 else 0.0, max(1.0, 0.025 / sw))
    sigmas = (*sigma_hw, float(np.clip(_DEPTH_SMOOTH_MM / sdw, 0.7, 3.0)))
    # an axis whose kernel is one tap wide (scipy's radius: round(4 sigma)) is left out, not copied through
    s = ndimage.gaussian_filter(small, tuple(sg if int(4.0 * sg + 0.5) > 0 else 0.0 for sg in sigmas), mode="nearest")
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


def _axial_motion(e: np.ndarray, sdw: float) -> np.ndarray:
    """Depth offset of each B-scan (working samples, sub-sample) from the eye's axial motion.

    Neighbouring B-scans are compared as wholes: the depth shift maximising the sum over
    A-scans of the cross-correlation of their edge responses. The offsets are the running sum
    of those shifts, centred; they hold the eye's motion and the slope of the anatomy across
    B-scans, both of which a B-scan-wise coordinate change removes.
    """
    h = e.shape[0]
    reach = max(2, int(round(0.08 / sdw)))
    steps = np.zeros(h)
    lags = np.arange(-reach - 1, reach + 2)
    for i in range(h - 1):
        # c[l] = sum over A-scans and z of e[i, :, z + l] * e[i + 1, :, z]: the diagonals of the
        # depth-by-depth product of the two B-scans (one matrix product instead of FFTs)
        gram = (e[i].T @ e[i + 1]).astype(np.float64)
        c = np.array([np.trace(gram, offset=-int(lag)) for lag in lags])
        j = int(np.argmax(c[1:-1])) + 1  # the best lag within reach; its neighbours for the sub-sample peak
        v0, v1, v2 = c[j - 1], c[j], c[j + 1]
        den = v0 - 2 * v1 + v2
        frac = 0.5 * (v0 - v2) / den if den < 0 else 0.0
        steps[i + 1] = -(int(lags[j]) + float(np.clip(frac, -0.5, 0.5)))
    offsets = np.cumsum(steps)
    return offsets - offsets.mean()


def _shift_bscans(a: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each B-scan of ``(H, W, Dw)`` moved up by its (rounded) offset, edges repeated."""
    d = a.shape[-1]
    out = np.empty_like(a)
    for i, o in enumerate(np.rint(offsets).astype(int)):
        out[i] = a[i][:, np.clip(np.arange(d) + o, 0, d - 1)]
    return out


def _coarse_surface(work: _Working, spacing: tuple[float, float, float], offsets: np.ndarray) -> np.ndarray:
    """Coarse surface near the outer retina (working samples, the eye's coordinates), found in
    the motion-corrected working volume and fitted smoothly across B-scans there."""
    sh, sw, _ = spacing
    s = _shift_bscans(work.s, offsets)
    e = _edge_response(s, max(2, int(round(_RPE_MM / work.sdw))))
    cand, weight = _bm_proposals(s, e, work.sdw)
    tol = max(2.0, 0.02 / work.sdw)  # 20 µm
    coarse, inlier = _robust_surface(cand, weight, (sh, sw), (max(0.5, 0.15 / sh), max(1.0, 0.15 / sw)), tol)
    log.debug("BM coarse surface: %.0f%% inlier proposals", 100 * inlier.mean())
    return coarse + np.rint(offsets)[:, None]


def _fit_votes(
    depth: np.ndarray, weight: np.ndarray, spacing: tuple[float, float, float], offsets: np.ndarray, tol_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Robust smooth surface through the voting edges, in motion-corrected coordinates
    (smooth across B-scans there), in the eye's coordinates; and its inliers."""
    sh, sw, sd = spacing
    votes = np.where(weight >= _MIN_VOTE, weight, 0.0)
    sigma_px = (max(0.3, min(1.0, 0.1 / sh)), max(1.0, _REFIT_SMOOTH_MM / sw))
    corrected = depth - offsets[:, None]
    surface, inlier = _robust_surface(corrected, votes, (sh, sw), sigma_px, max(1.5, tol_mm / sd))
    return surface + offsets[:, None], inlier


def _settle(
    depth: np.ndarray, weight: np.ndarray, spacing: tuple[float, float, float], offsets: np.ndarray, smooth_mm: float
) -> np.ndarray:
    """Robust re-fit through the fine edges; smoothed along and (motion-corrected) across B-scans.

    An edge far from the fit (the RPE lifted by a druse, a choroidal vessel) and an A-scan
    without a confident edge take the fitted surface, which bridges them from the A-scans
    around.
    """
    sh, sw, _ = spacing
    surface, inlier = _fit_votes(depth, weight, spacing, offsets, _REFIT_TOL_MM)
    settled = np.where(inlier, depth, surface) - offsets[:, None]
    log.debug("BM re-fit: %.0f%% of the fine edges kept", 100 * inlier.mean())
    sigma_h = max(0.3, min(0.8, 0.06 / sh)) if depth.shape[0] > 2 else 0.0
    return ndimage.gaussian_filter(settled, (sigma_h, max(0.7, smooth_mm / sw)), mode="nearest") + offsets[:, None]


# --------------------------------------------------------------------------- public


def _intensity_domain(vol: np.ndarray) -> tuple[np.ndarray, bool]:
    """The volume in a log-like domain, float32, and whether a log was taken.

    Display values of OCT exports are log-compressed intensities: speckle is additive there,
    its local spread the same in bright and dark tissue. Linear (or power-law) intensities
    have multiplicative speckle, whose spread grows with the local mean: those are taken to
    the log domain, so that the relative brightness of the layers, and where an edge lies
    between them, do not depend on how the device or the file mapped the intensities.

    Raises:
        ValueError: NaN/inf voxels.
    """
    sub = np.asarray(vol[:: max(1, vol.shape[0] // 6)], dtype=np.float32)
    if not np.isfinite(sub).all() or not np.isfinite(vol).all():
        raise ValueError("volume has NaN/inf voxels")
    mean = ndimage.uniform_filter(sub, (1, 3, 3))
    spread = np.sqrt(np.maximum(ndimage.uniform_filter(sub * sub, (1, 3, 3)) - mean * mean, 0.0))
    m, sp = mean[:, 1::3, 1::3].ravel(), spread[:, 1::3, 1::3].ravel()
    lo, hi = np.percentile(m, [30, 99])
    sel = (m > lo) & (m < hi) & (sp > 0) & (m > 0)
    multiplicative = False
    if sel.sum() > 200:
        x, y = np.log(m[sel]), np.log(sp[sel])
        edges = np.quantile(x, np.linspace(0, 1, 11))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, 9)
        xs = [float(np.median(x[which == b])) for b in range(10) if (which == b).sum() > 20]
        ys = [float(np.median(y[which == b])) for b in range(10) if (which == b).sum() > 20]
        multiplicative = len(xs) >= 3 and float(np.polyfit(xs, ys, 1)[0]) > _MULTIPLICATIVE_SLOPE
    out = np.asarray(vol, dtype=np.float32).copy()
    if multiplicative:
        out -= float(out.min())
        positive = out[:: max(1, out.shape[0] // 6)]
        positive = positive[positive > 0]
        eps = float(np.percentile(positive, 10)) if positive.size else 1.0
        np.log(out + eps, out=out)
    return out, multiplicative


def _normalise_bscans(u: np.ndarray, work: _Working) -> np.ndarray:
    """``u`` scaled per B-scan by the working volume's percentiles (in place)."""
    for i in range(u.shape[0]):
        u[i] -= work.lo[i]
        u[i] /= work.hi[i] - work.lo[i]
    return u


def estimate_bm(
    volume: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    *,
    max_depth_samples: int = 256,
    smooth_mm: float = 0.1,
) -> np.ndarray:
    """Estimate Bruch's membrane in an un-flattened OCT volume.

    Args:
        volume: ``(H, W, D)`` OCT volume (any numeric dtype; brighter = more reflective,
            linear, power-law or log-compressed), depth index 0 on the vitreous side.
        spacing: ``(sh, sw, sd)`` in mm; sets the physical size of the smoothing and of the
            search windows. Without it, Spectralis-like values are assumed
            (:data:`DEFAULT_SPACING`).
        max_depth_samples: depth is block-averaged down to at most this many samples for
            the coarse search (speed and speckle suppression).
        smooth_mm: scale (Gaussian sigma) of the final smoothing of the BM surface along
            the B-scans (across B-scans it is smoothed after the eye's axial motion is
            taken out).

    A-scans closer than :data:`_ASCAN_MM` (a Spectralis cube's 1024 over 6 mm) are averaged in
    groups (pairs) before the search and the surface interpolated back to every A-scan: the
    surface is smoothed over more than that anyway, and it takes half the time.

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
    sp: tuple[float, float, float] = tuple(float(s) for s in (spacing if spacing is not None else DEFAULT_SPACING))  # type: ignore[assignment]
    u, took_log = _intensity_domain(vol)
    group = max(1, int(round(_ASCAN_MM / sp[1])))
    if group > 1 and vol.shape[1] >= 2 * group:  # a Spectralis cube's 1024 A-scans: pairs
        bm = _estimate(_group_ascans(u, group), (sp[0], sp[1] * group, sp[2]), took_log, smooth_mm, max_depth_samples)
        centres = (np.arange(vol.shape[1]) + 0.5) / group - 0.5  # each A-scan on the grid of the groups
        return np.stack([np.interp(centres, np.arange(bm.shape[1]), row) for row in bm]).astype(np.float32)
    return _estimate(u, sp, took_log, smooth_mm, max_depth_samples)


def _group_ascans(u: np.ndarray, group: int) -> np.ndarray:
    """``(H, W, D) -> (H, ceil(W / group), D)``: the mean of each ``group`` neighbouring A-scans
    (the last group repeats the last A-scan when ``W`` is no multiple of ``group``)."""
    h, w, d = u.shape
    n = -(-w // group)
    if n * group != w:
        u = np.concatenate([u, np.repeat(u[:, -1:], n * group - w, axis=1)], axis=1)
    out = np.empty((h, n, d), dtype=np.float32)
    for i in range(h):  # per B-scan keeps memory low on large volumes
        out[i] = u[i].reshape(n, group, d).mean(axis=1)
    return out


def _estimate(
    u: np.ndarray, sp: tuple[float, float, float], took_log: bool, smooth_mm: float, max_depth_samples: int
) -> np.ndarray:
    """:func:`estimate_bm` on the volume in its intensity domain (``u``, changed in place)."""
    work = _working_volume(u, sp, max_depth_samples)
    offsets = _axial_motion(work.e, work.sdw)
    surface = _coarse_surface(work, sp, offsets) * work.factor
    offsets_vox = offsets * work.factor
    u = _normalise_bscans(u, work)
    del work
    sigma_h = max(0.3, min(1.0, 0.1 / sp[0])) if u.shape[0] > 2 else 0.0
    everywhere = np.ones(surface.shape, bool)
    surface = bm_track.congeal(u, surface, sp, sigma_h)
    template = bm_track.template_edge(u, surface, sp, everywhere)
    ga = np.zeros(surface.shape, bool)
    depth, weight = bm_track.rpe_edges(u, surface, template, sp)
    bridged, inlier = _fit_votes(depth, np.where(ga, 0.0, weight), sp, offsets_vox, 0.012)
    for _ in range(3):  # GA found, its votes left out, the surface bridged again: GA found better
        found = bm_track.atrophy(u, bridged, template, inlier & (weight > 0.25) & ~ga, sp)
        if not found.any() or (found == ga).all():
            break
        ga = found
        normal = ~ndimage.binary_dilation(ga, iterations=2)
        bridged, inlier = _fit_votes(depth, np.where(normal, weight, 0.0), sp, offsets_vox, 0.012)
    if ga.any():  # the eye's template and edges from the normal retina only, GA bridged from around it
        normal = ~ndimage.binary_dilation(ga, iterations=2)
        template = bm_track.template_edge(u, surface, sp, normal)
        depth, weight = bm_track.rpe_edges(u, surface, template, sp)
        bridged, _ = _fit_votes(depth, np.where(normal, weight, 0.0), sp, offsets_vox, 0.012)
        ga_depth, contrast = bm_track.choroid_tops(u, bridged, sp)
        typical = max(float(np.median(contrast[ga])), 1e-6)
        depth = np.where(ga, ga_depth, depth)
        weight = np.where(ga, np.clip(contrast / typical, 0.0, 1.0), weight)
    log.debug(
        "BM: %s domain, axial motion %.0f µm (range), template edge %.1f voxels below its peak, %.0f%% GA",
        "log" if took_log else "display",
        1000 * float(np.ptp(offsets_vox)) * sp[2],
        template.edge - template.peak,
        100 * ga.mean(),
    )
    return _settle(depth, weight, sp, offsets_vox, smooth_mm).astype(np.float32)


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
