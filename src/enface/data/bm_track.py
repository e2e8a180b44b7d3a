"""Following one edge through a whole OCT volume: the steps of :func:`enface.data.bm.estimate_bm`
after its coarse search.

Axes and depth convention as in :mod:`enface.data.bm`: volumes ``(H, W, D)``, depth 0 on the
vitreous side, voxel ``d`` covering ``[d - 0.5, d + 0.5)``. ``u`` is the volume in the
estimator's intensity domain (log-like, normalised per B-scan: see
:func:`enface.data.bm._intensity_domain`); a *band* is ``u`` sampled at depths
``surface + k`` for offsets ``k``: the volume flattened along a surface.

* :func:`congeal`: every A-scan's band is aligned in depth to the eye's own median profile
  (the *template*), coarse to fine, and the template rebuilt from the aligned bands. Afterwards
  the same tissue boundary sits at the same offset in every A-scan, and the template is sharp;
* :func:`template_edge`: BM is chosen once for the eye, on the template: the bottom of the
  deepest bright band of the outer retina (the retinal pigment epithelium, RPE) that falls
  clearly below it, whatever the relative brightness of the ellipsoid zone (EZ) above it and of
  the choroid below;
* :func:`rpe_edges`: that same edge in each A-scan, searched only a few voxels around where the
  template puts it;
* :func:`atrophy` and :func:`choroid_tops`: A-scans without an RPE over a bright choroid
  (geographic atrophy, GA) and BM there, the top of that choroid, searched near the surface
  bridged from the retina around.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Template", "atrophy", "choroid_tops", "congeal", "rpe_edges", "sample_band", "template_edge"]

# (depth blur, half-window, search range, lateral smoothing of the shifts), mm, coarse to fine
_SCALES: tuple[tuple[float, float, float, float], ...] = (
    (0.012, 0.1, 0.04, 0.3),
    (0.006, 0.06, 0.012, 0.15),
    (0.003, 0.04, 0.006, 0.1),
)
_MIN_MATCH = 0.5  # A-scans whose profile correlates less with the eye's are not aligned (GA)
_SEARCH_MM = (-0.06, 0.045)  # where the template's BM may lie around the coarse surface
_DROP_MM = 0.02  # a band's fall is measured this far below its peak
_MIN_DROP = 0.12  # fraction of the template's range a band must fall by below its peak to be the RPE
_BRIGHT = 0.75  # ... and be at least this bright (fraction of the range above its minimum): the choroid is not
_EDGE_LEVEL = 0.6  # BM: where the fall below the RPE's peak crosses this fraction (log domain)
_CHOROID_LEVEL = 0.75  # BM in GA: where the rise to the choroid crosses this fraction
_HYPER = 0.18  # GA: choroid brighter than the eye's normal choroid by this fraction of the template range
_DEFICIT = 0.3  # GA: RPE darker than the eye's RPE by this fraction of the template range


def sample_band(u: np.ndarray, surface: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``(H, W, K)`` samples of ``u`` at depths ``surface + k`` (linear interpolation, clamped)."""
    h, w, d = u.shape
    out = np.empty((h, w, k.size), dtype=np.float32)
    for i in range(h):  # per B-scan keeps memory low on large volumes
        z = np.clip(surface[i][:, None] + k[None, :], 0.0, d - 1.0)
        z0 = np.minimum(np.floor(z).astype(np.int64), d - 2)
        t = (z - z0).astype(np.float32)
        a = u[i]
        out[i] = np.take_along_axis(a, z0, axis=-1) * (1 - t) + np.take_along_axis(a, z0 + 1, axis=-1) * t
    return out


def _align(band: np.ndarray, template: np.ndarray, centre: int, half: int, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth shift (samples, sub-sample) of each A-scan's band that best matches the template.

    The normalised cross-correlation of ``band[..., centre + s - half : centre + s + half + 1]``
    with the template's ``[centre - half, centre + half]`` is maximised over ``|s| <= reach``.
    """
    t = template[centre - half : centre + half + 1]
    t = (t - t.mean()) / max(float(t.std()), 1e-9)
    n = 2 * half + 1
    c1 = np.concatenate([np.zeros(band.shape[:-1] + (1,), np.float32), np.cumsum(band, axis=-1)], axis=-1)
    c2 = np.concatenate([np.zeros(band.shape[:-1] + (1,), np.float32), np.cumsum(band * band, axis=-1)], axis=-1)
    scores = np.empty(band.shape[:-1] + (2 * reach + 1,), np.float32)
    for j, s in enumerate(range(-reach, reach + 1)):
        lo = centre + s - half
        seg = band[..., lo : lo + n]
        mean = (c1[..., lo + n] - c1[..., lo]) / n
        var = np.maximum((c2[..., lo + n] - c2[..., lo]) / n - mean * mean, 1e-12)
        scores[..., j] = (seg @ t) / n / np.sqrt(var)
    best = np.clip(np.argmax(scores, axis=-1), 1, 2 * reach - 1)
    take = lambda idx: np.take_along_axis(scores, idx[..., None], axis=-1)[..., 0]  # noqa: E731
    v0, v1, v2 = take(best - 1), take(best), take(best + 1)
    den = v0 - 2 * v1 + v2
    frac = np.where(den < 0, 0.5 * (v0 - v2) / np.where(den < 0, den, -1), 0.0)
    return best + np.clip(frac, -0.5, 0.5) - reach, v1


def _smooth_shifts(shift: np.ndarray, lateral_px: float, sigma_h: float, include: np.ndarray | None) -> np.ndarray:
    """Robust smoothing of a shift field: a median along the B-scans, then a Gaussian. The
    shifts of A-scans not included (GA: nothing there to align) are filled from around."""
    if include is not None and not include.all() and include.any():
        w = include.astype(np.float64)
        sig = (max(sigma_h, 0.5), 4 * lateral_px)
        fill = ndimage.gaussian_filter(shift * w, sig, mode="nearest") / np.maximum(
            ndimage.gaussian_filter(w, sig, mode="nearest"), 1e-9
        )
        shift = np.where(include, shift, fill)
    size = max(3, int(2 * lateral_px) | 1)
    med = ndimage.median_filter(shift, size=(1, size), mode="nearest")
    return ndimage.gaussian_filter(med, (sigma_h, lateral_px / 2), mode="nearest")


def _template(band: np.ndarray, include: np.ndarray | None) -> np.ndarray:
    """Median profile of the included A-scans (at most ~20000 of them, evenly spread)."""
    flat = band.reshape(-1, band.shape[-1])
    if include is not None and include.any():
        flat = flat[include.reshape(-1)]
    step = max(1, flat.shape[0] // 20000)
    return np.median(flat[::step], axis=0)


def congeal(
    u: np.ndarray,
    surface: np.ndarray,
    spacing: tuple[float, float, float],
    sigma_h: float,
    include: np.ndarray | None = None,
) -> np.ndarray:
    """Align every A-scan to the eye's template, coarse to fine.

    Args:
        u: ``(H, W, D)`` volume in the estimator's intensity domain.
        surface: ``(H, W)`` starting surface (voxels), near the outer retina.
        spacing: ``(sh, sw, sd)`` in mm.
        sigma_h: smoothing of the shifts across B-scans (B-scans; the surface already
            follows the eye's axial motion).
        include: ``(H, W)`` A-scans that build the template and are aligned; the others
            follow the aligned A-scans around them. Default: those whose profile correlates
            with the eye's by at least :data:`_MIN_MATCH` at the first, coarsest alignment
            (in GA, without an RPE, nothing matches).

    Returns:
        The ``(H, W)`` aligned surface: the same tissue boundary lies at the same offset
        from it in every A-scan.
    """
    _, sw, sd = spacing
    lateral = max(1.0, 0.03 / sw)
    for blur_mm, half_mm, reach_mm, smooth_mm in _SCALES:
        half = max(3, int(round(half_mm / sd)))
        reach = max(1, int(round(reach_mm / sd)))
        k = np.arange(-(half + reach + 1), half + reach + 2, dtype=np.float64)
        centre = half + reach + 1
        for _ in range(2):
            band = sample_band(u, surface, k)
            band = ndimage.gaussian_filter(band, (0.0, lateral, max(0.5, blur_mm / sd)), mode="nearest")
            shift, score = _align(band, _template(band, include), centre, half, reach)
            if include is None:  # A-scans unlike the eye's profile (GA) are not aligned: they follow
                include = ndimage.binary_opening(score >= _MIN_MATCH, structure=np.ones((1, 3), bool))
            surface = surface + _smooth_shifts(shift, max(1.0, smooth_mm / sw), sigma_h, include)
    return surface


@dataclass(frozen=True)
class Template:
    """The eye's profile around the aligned surface and where BM lies on it.

    Attributes:
        k: ``(K,)`` offsets (voxels) of the profile's samples from the aligned surface.
        profile: ``(K,)`` median intensity of the normal A-scans.
        peak: offset of the RPE's peak (the deepest bright band falling clearly below it).
        edge: offset of BM (the bottom of that band, sub-voxel).
        span: the profile's range (max - min) over the searched offsets.
    """

    k: np.ndarray
    profile: np.ndarray
    peak: float
    edge: float
    span: float


def _level_crossing(profile: np.ndarray, start: int, stop: int, level: float) -> float:
    """First index in ``(start, stop]`` where ``profile`` falls below ``level`` (linear
    interpolation), or ``stop`` when it does not."""
    for j in range(start + 1, stop + 1):
        if profile[j] < level:
            v0, v1 = float(profile[j - 1]), float(profile[j])
            return j - 1 + float(np.clip((v0 - level) / max(v0 - v1, 1e-9), 0.0, 1.0))
    return float(stop)


def template_edge(
    u: np.ndarray, surface: np.ndarray, spacing: tuple[float, float, float], include: np.ndarray
) -> Template:
    """Choose BM once for the eye, on the template of the aligned A-scans.

    Among the bright bands of the template (peaks in the upper half of its range) within
    :data:`_SEARCH_MM` of the surface, the RPE is the deepest one whose intensity falls by
    at least :data:`_MIN_DROP` of the range within :data:`_DROP_MM` below its peak (the
    choroid's stroma, bright as it may be, fades slowly), or the brightest band of all (a
    choroid nearly as bright as the RPE, under a thin dark choriocapillaris, hides the fall).
    BM is where that fall crosses :data:`_EDGE_LEVEL` between the peak and the darkest sample
    below it: about the middle of the physical (linear-intensity) step once the display's log
    compression is undone.

    Args:
        u: ``(H, W, D)`` volume in the estimator's domain.
        surface: ``(H, W)`` aligned surface (:func:`congeal`).
        spacing: ``(sh, sw, sd)`` in mm.
        include: ``(H, W)`` A-scans of normal retina (building the template).

    Returns:
        The :class:`Template`.
    """
    sd = spacing[2]
    lo = int(np.floor(_SEARCH_MM[0] / sd)) - 2
    drop = max(2, int(round(_DROP_MM / sd)))
    hi = int(np.ceil(_SEARCH_MM[1] / sd)) + drop + 2
    k = np.arange(lo, hi + 1, dtype=np.float64)
    band = sample_band(u, surface, k)
    profile = ndimage.gaussian_filter1d(_template(band, include), 0.7, mode="nearest")
    span = max(float(profile.max() - profile.min()), 1e-6)
    floor = float(profile.min())
    best = int(np.argmax(profile[: len(k) - drop]))
    for j in range(1, len(k) - drop - 1):
        is_peak = profile[j] >= profile[j - 1] and profile[j] >= profile[j + 1]
        bright = profile[j] >= floor + _BRIGHT * span
        falls = profile[j] - profile[j : j + drop + 1].min() >= _MIN_DROP * span
        brightest = profile[j] >= profile[: len(k) - drop].max()  # a bright choroid may hide the fall
        if is_peak and bright and (falls or brightest) and k[j] * sd <= _SEARCH_MM[1]:
            best = j  # the deepest so far
    below = profile[best : best + drop + 1]
    level = float(below.min() + _EDGE_LEVEL * (profile[best] - below.min()))
    edge = _level_crossing(profile, best, best + int(np.argmin(below)), level)
    return Template(k=k, profile=profile, peak=float(k[best]), edge=float(lo + edge), span=span)


def rpe_edges(
    u: np.ndarray, surface: np.ndarray, template: Template, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The template's BM edge in each A-scan, searched a few voxels around where it predicts it.

    In each A-scan (laterally smoothed a little against speckle), the RPE's peak is looked for
    within 2 voxels of the template's, and BM where the fall below it crosses
    :data:`_EDGE_LEVEL`. Its weight is the fall's size relative to the template's (squared):
    weak under vessel shadows, and where a druse has lifted the RPE out of reach.

    Returns:
        ``(depth (H, W) in voxels, weight (H, W) in [0, 1])``.
    """
    _, sw, sd = spacing
    drop = max(2, int(round(_DROP_MM / sd)))
    k = np.arange(np.floor(template.peak) - 3, np.ceil(template.peak) + drop + 4, dtype=np.float64)
    band = sample_band(u, surface, k)
    band = ndimage.gaussian_filter(band, (0.0, max(1.0, 0.025 / sw), 0.5), mode="nearest")
    p0 = int(round(template.peak - k[0]))
    peak = p0 - 2 + np.argmax(band[..., p0 - 2 : p0 + 3], axis=-1)
    idx = np.arange(band.shape[-1])
    window = (idx >= peak[..., None]) & (idx <= peak[..., None] + drop)
    floor_at = np.argmin(np.where(window, band, np.inf), axis=-1)
    v_peak = np.take_along_axis(band, peak[..., None], axis=-1)[..., 0]
    v_floor = np.take_along_axis(band, floor_at[..., None], axis=-1)[..., 0]
    level = v_floor + _EDGE_LEVEL * (v_peak - v_floor)
    under = (band < level[..., None]) & (idx > peak[..., None]) & (idx <= floor_at[..., None])
    j = np.where(under.any(axis=-1), np.argmax(under, axis=-1), floor_at)
    j = np.clip(j, 1, band.shape[-1] - 1)
    b0 = np.take_along_axis(band, (j - 1)[..., None], axis=-1)[..., 0]
    b1 = np.take_along_axis(band, j[..., None], axis=-1)[..., 0]
    pos = j - 1 + np.clip((b0 - level) / np.maximum(b0 - b1, 1e-9), 0.0, 1.0)
    t_peak = float(np.interp(template.peak, template.k, template.profile))
    t_drop = max(
        t_peak - float(np.interp(template.edge + drop / 2, template.k, template.profile)), 0.05 * template.span
    )
    weight = np.clip((v_peak - v_floor) / t_drop, 0.0, 1.0) ** 2
    return surface + k[0] + pos, weight


def atrophy(
    u: np.ndarray,
    bm: np.ndarray,
    template: Template,
    reference: np.ndarray,
    spacing: tuple[float, float, float],
    grow: bool = True,
) -> np.ndarray:
    """A-scans in GA: the outer retina's bright bands gone above BM, the choroid below it brighter.

    Two en-face maps, laterally smoothed: the mean intensity 12-45 µm above ``bm`` (the
    ellipsoid and interdigitation zones and the RPE in normal retina, the thinned outer nuclear
    layer in GA) and 20-120 µm below it (the choroid, brighter in GA where no RPE absorbs the
    light). Each is compared with its median over the confident normal A-scans, in units of the
    template's range. Seeds are A-scans that are clearly both darker above and brighter below;
    GA grows from them into neighbours that are both, less clearly.

    Args:
        u: ``(H, W, D)`` volume in the estimator's domain.
        bm: ``(H, W)`` BM bridged from the normal retina around.
        template: the eye's template (its range sets the scale).
        reference: ``(H, W)`` A-scans of confident normal retina.
        spacing: ``(sh, sw, sd)`` in mm.
        grow: grow GA from the clear A-scans into the less clear ones around them.

    Returns:
        ``(H, W)`` bool.
    """
    _, sw, sd = spacing
    smooth = (0.5 if bm.shape[0] > 2 else 0.0, max(1.0, 0.03 / sw))

    def slab(lo_mm: float, hi_mm: float) -> np.ndarray:
        k = np.arange(int(np.floor(lo_mm / sd)), int(np.ceil(hi_mm / sd)) + 1, dtype=np.float64)
        return ndimage.gaussian_filter(sample_band(u, bm, k).mean(axis=-1), smooth, mode="nearest")

    above, below = slab(-0.045, -0.012), slab(0.02, 0.12)
    ref = reference if reference.sum() > 20 else np.ones(bm.shape, bool)
    deficit = (float(np.median(above[ref])) - above) / template.span
    # the choroid's normal level: the darker of two brightness classes when they are far
    # apart (a large GA can cover half of the scan, and vote with it), else the median
    normal_level = float(np.median(below[ref]))
    cut = _otsu(below)
    dark, bright = below[below < cut], below[below >= cut]
    if dark.size and bright.size and (bright.mean() - dark.mean()) >= 2 * _HYPER * template.span:
        normal_level = min(normal_level, float(np.median(dark)))
    hyper = (below - normal_level) / template.span
    seeds = (deficit >= _DEFICIT) & (hyper >= _HYPER)
    seeds = ndimage.binary_opening(seeds, structure=np.ones((1, 3), bool))
    if not grow:
        return seeds
    weak = (deficit >= 0.5 * _DEFICIT) & (hyper >= 0.5 * _HYPER)
    labels, _ = ndimage.label(weak)
    grown = np.isin(labels, np.unique(labels[seeds & weak])) & weak & (labels > 0)
    return grown | seeds


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of ``values`` (the cut maximising the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    between = (total * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[1:][int(np.argmax(between[:-1]))])


def choroid_tops(
    u: np.ndarray, bm: np.ndarray, spacing: tuple[float, float, float], reach_mm: float = 0.025
) -> tuple[np.ndarray, np.ndarray]:
    """BM in GA: the top of the bright choroid, near the bridged surface ``bm``.

    Per A-scan (laterally smoothed), the steepest rise within ``reach_mm`` of ``bm`` is the
    climb to the choroid; its level is the mean of the samples 8-30 µm below that rise, the
    floor the darkest sample within ``reach_mm`` above it. BM is the deepest point above the
    rise still under :data:`_CHOROID_LEVEL` of the way from the floor to the choroid's level:
    the upper end of the ramp, below any RPE remnant or debris left above it.

    Returns:
        ``(depth (H, W) in voxels, contrast (H, W): choroid level - floor)``.
    """
    _, sw, sd = spacing
    reach = max(2, int(round(reach_mm / sd)))
    deep = max(3, int(round(0.03 / sd)))
    k = np.arange(-2 * reach, reach + deep + 2, dtype=np.float64)
    band = sample_band(u, bm, k)
    band = ndimage.gaussian_filter(band, (0.0, max(1.0, 0.025 / sw), 0.7), mode="nearest")
    c = 2 * reach  # index of offset 0
    rise = band[..., 2:] - band[..., :-2]  # the rise from j - 1 to j + 1, at index j - 1
    centre = np.arange(rise.shape[-1]) + 1
    allowed = (centre >= c - reach) & (centre <= c + reach)
    top = centre[np.argmax(np.where(allowed, rise, -np.inf), axis=-1)]
    j = np.arange(band.shape[-1])
    plateau_win = (j >= top[..., None] + max(1, round(0.008 / sd))) & (j <= top[..., None] + deep)
    plateau = np.where(plateau_win, band, 0.0).sum(axis=-1) / np.maximum(plateau_win.sum(axis=-1), 1)
    floor = np.where((j >= top[..., None] - reach) & (j <= top[..., None]), band, np.inf).min(axis=-1)
    level = floor + _CHOROID_LEVEL * (plateau - floor)
    under = (band < level[..., None]) & (j <= top[..., None] + 1) & (j >= top[..., None] - reach)
    last = np.where(under.any(axis=-1), band.shape[-1] - 1 - np.argmax(under[..., ::-1], axis=-1), top)
    last = np.clip(last, 0, band.shape[-1] - 2)
    v0 = np.take_along_axis(band, last[..., None], axis=-1)[..., 0]
    v1 = np.take_along_axis(band, (last + 1)[..., None], axis=-1)[..., 0]
    frac = np.clip((level - v0) / np.maximum(v1 - v0, 1e-9), 0.0, 1.0)
    return bm + k[0] + last + frac, plateau - floor
