"""Raw OCT volumes with their true Bruch's membrane (BM), varied well beyond ``enface synth``.

A benchmark-side generator written apart from :mod:`enface.synth` (which the estimator was
tuned on), for ``bench_bm.py``. Each eye (seed) draws its own tissue optics, speckle and
acquisition from wide ranges:

* **layer reflectivities** relative to the retinal pigment epithelium (RPE): an ellipsoid
  zone (EZ) from a third of the RPE's to 1.5 times brighter than it, an interdigitation zone
  from faint to nearly as bright, a choriocapillaris and choroidal stroma from faint to as
  bright as the RPE, choroidal vessel lumens, sclera;
* **speckle**: fully developed speckle of the complex field blurred by the axial and lateral
  point-spread function (PSF), averaged over 1 to 3 looks (frames); a complex noise floor;
* **acquisition**: depth roll-off (sensitivity falling by up to ~9 dB over the window), an
  axial PSF of 0.6-1.6 voxels, per-B-scan gain, lateral vignetting, and axial eye motion
  between B-scans (a random walk plus occasional jumps of 20-60 µm);
* **geometry**: a curved, tilted, undulating BM placed anywhere from 50 % to 75 % down the
  window; a foveal pit; drusen lifting the RPE off BM (up to 80 µm) with a faint BM line
  under them; retinal vessels shadowing everything below them;
* **geographic atrophy (GA)** in most eyes: no RPE (patchy remnants), no EZ/IZ/ELM, a
  thinned outer nuclear layer, a hypertransmitted (brighter) choroid, a faint BM line;
* **display**: the Heidelberg ``.vol`` mapping of raw intensities (log, 8 bits), as a
  ``.vol`` export reaches ``enface prepare``, or a power law (gamma 0.25-0.5) in float.

Voxel ``d`` covers depths ``[d - 0.5, d + 0.5)``; a boundary at continuous depth ``b``
separates what lies above (smaller index) from what lies below. The true BM is the
boundary below the RPE (below the druse material where drusen lift the RPE, at the top of
the choroid in GA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["VariedEye", "varied_eye"]

_LAYERS = ("rnfl", "gcl", "ipl", "inl", "opl", "onl", "elm", "mz", "ez", "iz", "rpe")
_THICK_MM = {  # parafoveal thickness of each layer
    "rnfl": 0.03,
    "gcl": 0.045,
    "ipl": 0.035,
    "inl": 0.033,
    "opl": 0.025,
    "onl": 0.075,
    "elm": 0.005,
    "mz": 0.02,
    "ez": 0.013,
    "iz": 0.018,
    "rpe": 0.024,
}
_INNER = ("rnfl", "gcl", "ipl", "inl", "opl")


@dataclass(frozen=True)
class VariedEye:
    """One raw volume with its truth.

    Attributes:
        volume: ``(H, W, D)`` float32 display intensities in [0, 1], depth 0 = vitreous.
        bm: ``(H, W)`` true BM depth (continuous voxel coordinate).
        spacing: ``(sh, sw, sd)`` in mm.
        ga: ``(H, W)`` bool, A-scans in GA.
        drusen: ``(H, W)`` bool, A-scans where drusen lift the RPE more than 10 µm.
        vessels: ``(H, W)`` bool, A-scans under a retinal vessel shadow.
        style: the drawn parameters (reflectivities, looks, roll-off, ...), for the report.
    """

    volume: np.ndarray
    bm: np.ndarray
    spacing: tuple[float, float, float]
    ga: np.ndarray
    drusen: np.ndarray
    vessels: np.ndarray
    style: dict[str, float | str]


def _style(rng: np.random.Generator) -> dict[str, float | str]:
    """Tissue optics and acquisition of one eye (reflectivities relative to the RPE's)."""
    log_u = lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # noqa: E731
    return {
        "vitreous": log_u(2e-4, 3e-3),
        "rnfl": log_u(0.25, 0.9),
        "gcl": log_u(0.04, 0.2),
        "ipl": log_u(0.08, 0.35),
        "inl": log_u(0.02, 0.1),
        "opl": log_u(0.08, 0.4),
        "onl": log_u(0.008, 0.05),
        "elm": log_u(0.04, 0.3),
        "mz": log_u(0.015, 0.1),
        "ez": log_u(0.4, 1.4),
        "iz": log_u(0.05, 0.8),
        "rpe": 1.0,
        "rpe_mm": rng.uniform(0.015, 0.035),
        "thickness_scale": rng.uniform(0.85, 1.15),
        "cc": log_u(0.08, 0.6),  # choriocapillaris, the first ~12 µm below BM (relative to the RPE)
        "stroma": log_u(0.05, 0.8),
        "lumen": rng.uniform(0.03, 0.3),  # vessel lumen relative to the stroma
        "lumen_fraction": rng.uniform(0.25, 0.5),
        "sclera": log_u(0.05, 0.5),
        "choroid_mm": rng.uniform(0.12, 0.35),
        "choroid_decay_mm": rng.uniform(0.1, 0.4),
        "hyper": log_u(1.5, 5.0),  # choroid brightness factor under GA (no RPE to pass)
        "ga_bm_line": rng.uniform(0.0, 0.3),
        "druse": rng.uniform(0.1, 0.45),
        "looks": int(rng.integers(1, 4)),
        "psf_axial_vox": rng.uniform(0.6, 1.6),
        "psf_lateral_px": rng.uniform(0.6, 1.5),
        "noise": log_u(2e-3, 2e-2),  # noise floor relative to the RPE's mean intensity
        "rolloff": rng.uniform(0.0, 2.0),  # exp(-rolloff * d / D)
        "vignetting": rng.uniform(0.0, 0.3),
        "gain_sd": rng.uniform(0.05, 0.25),
        "motion_um": rng.uniform(2.0, 12.0),  # random-walk step of the axial motion between B-scans
        "jump_rate": rng.uniform(0.0, 0.15),
        "bm_position": rng.uniform(0.5, 0.75),
        "display": "vol" if rng.random() < 0.65 else "power",
        "gamma": rng.uniform(0.25, 0.5),
        "ga_fraction": 0.0 if rng.random() < 0.15 else rng.uniform(0.03, 0.35),
        "drusen_count": int(rng.integers(0, 10)),
        "vessel_count": int(rng.integers(2, 9)),
        "vessel_shadow": rng.uniform(0.3, 0.85),
    }


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return f / max(float(f.std()), 1e-9)


def _ga_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, fraction: float) -> np.ndarray:
    """Union of a few ellipses covering about ``fraction`` of the field."""
    if fraction <= 0:
        return np.zeros(yy.shape, bool)
    area = float((yy.max() - yy.min()) * (xx.max() - xx.min()))
    n = int(rng.integers(1, 5))
    mask = np.zeros(yy.shape, bool)
    for _ in range(n):
        a = np.sqrt(fraction * area / n / np.pi) * rng.uniform(0.7, 1.4)
        b = a * rng.uniform(0.6, 1.4)
        cy, cx = rng.normal(0, 0.8, 2)
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        mask |= (u / a) ** 2 + (v / b) ** 2 < 1
    return mask


def _drusen(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, count: int, ga: np.ndarray) -> np.ndarray:
    """Height (mm) of the RPE above BM: domes up to 80 µm, none in GA."""
    lift = np.zeros(yy.shape, np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(-2.5, 2.5, 2)
        r = rng.uniform(0.1, 0.4)
        hgt = rng.uniform(0.015, 0.08)
        dome = hgt * np.sqrt(np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2, 0, 1))
        lift = np.maximum(lift, dome.astype(np.float32))
    return np.where(ga, 0.0, lift).astype(np.float32)


def _vessels(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, count: int) -> np.ndarray:
    """Retinal vessel profile in [0, 1]: smooth curves radiating from a disc outside the field."""
    prof = np.zeros(yy.shape, np.float32)
    disc = np.array([rng.normal(0, 0.5), 4.5 * rng.choice([-1, 1])])
    for _ in range(count):
        ang = rng.uniform(-1.2, 1.2) + (np.pi if disc[1] > 0 else 0.0)
        curv = rng.normal(0, 0.15)
        width = rng.uniform(0.03, 0.07)
        dy, dx = yy - disc[0], xx - disc[1]
        r = np.hypot(dy, dx)
        phi = np.arctan2(dy, dx)
        target = ang + curv * (r - 4.5)
        dist = r * np.abs(np.angle(np.exp(1j * (phi - target))))
        prof = np.maximum(prof, np.clip(1 - (dist / width) ** 2, 0, 1).astype(np.float32))
    return prof


def _step(z: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of each voxel below the boundary ``b``: ``(H, W)`` -> ``(H, W, D)``."""
    return np.clip(z - b[..., None] + 0.5, 0.0, 1.0)


def _bm_surface(
    rng: np.random.Generator, st: dict, yy: np.ndarray, xx: np.ndarray, depth: int, sd: float
) -> np.ndarray:
    """True BM depth (voxels): bowl, tilt, undulation and axial motion between B-scans."""
    h = yy.shape[0]
    sag = rng.uniform(0.05, 0.3)
    cy, cx = rng.normal(0, 0.6, 2)
    tilt = rng.uniform(-0.08, 0.08, 2)
    und = _smooth_field(rng, yy.shape, (1.5, yy.shape[1] / 12)) * rng.uniform(0.003, 0.02)
    z_mm = -sag * ((yy - cy) ** 2 + (xx - cx) ** 2) / 9.0 + tilt[0] * yy + tilt[1] * xx + und
    steps = rng.normal(0, st["motion_um"] / 1000, h)
    jumps = np.where(rng.random(h) < st["jump_rate"], rng.choice([-1, 1], h) * rng.uniform(0.02, 0.06, h), 0.0)
    motion = np.cumsum(steps + jumps)
    z_mm = z_mm + (motion - motion.mean())[:, None]
    z = z_mm / sd
    z = z - z.mean()
    lo, hi = 0.42 / sd, depth - 0.15 / sd  # room for the retina above and the choroid below
    span = float(z.max() - z.min())
    if span > hi - lo:
        z = z * (hi - lo) / span
    bm = st["bm_position"] * depth + z
    bm = bm + max(0.0, lo - float(bm.min())) - max(0.0, float(bm.max()) - hi)
    return bm.astype(np.float32)


def _reflectivity(
    rng: np.random.Generator,
    st: dict,
    bm: np.ndarray,
    thick: dict[str, np.ndarray],
    ga: np.ndarray,
    lift_mm: np.ndarray,
    shadow: np.ndarray,
    depth: int,
    sd: float,
) -> np.ndarray:
    """Clean reflectivity ``(H, W, D)`` with exact partial volumes at the layer boundaries."""
    h, w = bm.shape
    z = np.arange(depth, dtype=np.float32)[None, None, :]
    rpe_bottom = bm - lift_mm / sd
    remnant = np.clip(0.15 + 0.15 * _smooth_field(rng, (h, w), (0.7, 3.0)), 0.0, 0.35)
    refl = {k: np.full((h, w), float(st[k]), np.float32) for k in _LAYERS}
    for k in ("elm", "ez", "iz"):
        refl[k] = np.where(ga, 0.0, refl[k]).astype(np.float32)
    refl["rpe"] = np.where(ga, remnant, 1.0).astype(np.float32)
    vol = np.full((h, w, depth), float(st["vitreous"]), np.float32)
    tops, b = {}, rpe_bottom.copy()
    for name in reversed(_LAYERS):
        b = b - thick[name] / sd
        tops[name] = b
    prev: np.ndarray = np.full((h, w), float(st["vitreous"]), np.float32)
    for name in _LAYERS:
        vol += _step(z, tops[name]) * (refl[name] - prev)[..., None]
        prev = refl[name]
    # druse material (drusen) or a faint BM line (GA) between the RPE's bottom and BM
    druse = np.where(lift_mm > 0, float(st["druse"]), prev).astype(np.float32)
    vol += _step(z, rpe_bottom) * (druse - prev)[..., None]
    line_top = bm - 0.004 / sd
    line = np.where(ga, float(st["ga_bm_line"]), np.where(lift_mm > 0.006, 0.25, druse)).astype(np.float32)
    vol += _step(z, line_top) * (line - druse)[..., None]
    below = _step(z, bm)
    vol -= below * line[..., None]
    # choroid: choriocapillaris, stroma with vessel lumens, sclera; seen through the RPE
    zc = (z - bm[..., None]) * sd  # mm below BM
    lumen_noise = _smooth_field(rng, (h, w, depth), (0.6, max(1.0, 0.08 / 0.0234), 0.025 / sd))
    lumen = lumen_noise > np.quantile(lumen_noise, 1 - float(st["lumen_fraction"]))
    stroma = np.where(lumen & (zc > 0.015), float(st["stroma"]) * float(st["lumen"]), float(st["stroma"]))
    cc = np.clip(1.0 - zc / 0.012, 0.0, 1.0)
    choroid = float(st["cc"]) * cc + stroma * (1 - cc)
    ch_mm = float(st["choroid_mm"])
    sclera = np.clip((zc - ch_mm) / sd + 0.5, 0, 1)
    tissue = choroid * (1 - sclera) + float(st["sclera"]) * sclera
    decay = np.exp(-np.clip(zc, 0, None) / float(st["choroid_decay_mm"]))
    through = np.where(ga, float(st["hyper"]), 1.0).astype(np.float32)[..., None]
    vol += below * (tissue * decay * through).astype(np.float32)
    # retinal vessel shadows below the inner retina
    under = _step(z, tops["rnfl"] + 0.02 / sd)
    vol *= 1.0 - (shadow[..., None] * float(st["vessel_shadow"])) * under
    return np.maximum(vol, 0.0)


def _acquire(rng: np.random.Generator, st: dict, refl: np.ndarray) -> np.ndarray:
    """Speckle (complex field blurred by the PSF, 1-3 looks), roll-off, gain, noise, display."""
    h, w, d = refl.shape
    sigma = (0.0, float(st["psf_lateral_px"]), float(st["psf_axial_vox"]))
    amp = np.sqrt(refl)
    # normalise so that a uniform unit reflectivity has unit mean intensity after the blur
    probe = np.zeros((1, 33, 33), np.float32)
    probe[0, 16, 16] = 1
    norm = float((ndimage.gaussian_filter(probe, sigma) ** 2).sum())
    xs = np.linspace(-1, 1, w, dtype=np.float32)
    gain = (
        np.exp(rng.normal(0, float(st["gain_sd"]), h)).astype(np.float32)[:, None, None]
        * (1 - float(st["vignetting"]) * xs**2)[None, :, None]
        * np.exp(-float(st["rolloff"]) * np.arange(d, dtype=np.float32) / d)[None, None, :]
    )
    intensity = np.zeros(refl.shape, np.float32)
    looks = int(st["looks"])
    for _ in range(looks):
        re = ndimage.gaussian_filter(amp * rng.standard_normal(refl.shape, dtype=np.float32), sigma)
        im = ndimage.gaussian_filter(amp * rng.standard_normal(refl.shape, dtype=np.float32), sigma)
        field_sq = (re * re + im * im) / (2 * norm)
        noise = float(st["noise"]) * rng.standard_exponential(refl.shape, dtype=np.float32)
        intensity += field_sq * gain + noise
    intensity /= looks
    if st["display"] == "vol":  # Heidelberg .vol raw intensities (RPE ~0.3) -> log display, 8 bits
        raw = np.clip(intensity * 0.3, 0.0, 1.0)
        disp = np.clip((np.log(raw + 2.44e-4) + 8.3) / 8.285, 0, 1)
        return (np.round(disp * 255) / 255).astype(np.float32)
    return np.clip(intensity, 0, None) ** float(st["gamma"]) / 2.0


def varied_eye(
    seed: int,
    shape: tuple[int, int, int] = (25, 256, 496),
    extent_mm: tuple[float, float, float] = (6.0, 6.0, 1.92),
) -> VariedEye:
    """One raw volume with its true BM; every optical and acquisition parameter drawn from ``seed``.

    Args:
        seed: non-negative integer (the same seed gives the same eye).
        shape: ``(H, W, D)``.
        extent_mm: physical extent ``(height, width, depth)`` in mm.

    Returns:
        The :class:`VariedEye`.
    """
    h, w, d = shape
    sh, sw, sd = (e / n for e, n in zip(extent_mm, shape))
    rng = np.random.default_rng([seed, 2207])
    st = _style(rng)
    yy, xx = np.meshgrid((np.arange(h) - (h - 1) / 2) * sh, (np.arange(w) - (w - 1) / 2) * sw, indexing="ij")
    fy, fx = rng.normal(0, 0.3, 2)
    r = np.hypot(yy - fy, xx - fx)
    pit = np.exp(-((r / 0.5) ** 2))
    thick = {k: np.full((h, w), v * float(st["thickness_scale"]), np.float32) for k, v in _THICK_MM.items()}
    thick["rpe"][:] = float(st["rpe_mm"])
    for k in _INNER:
        thick[k] = (thick[k] * (1 - 0.9 * pit)).astype(np.float32)
    thick["onl"] = (thick["onl"] * (1 + 0.5 * pit)).astype(np.float32)
    ga = _ga_mask(rng, yy, xx, float(st["ga_fraction"]))
    thick["onl"] = np.where(ga, thick["onl"] * rng.uniform(0.3, 0.7), thick["onl"]).astype(np.float32)
    for k in ("elm", "mz", "ez", "iz"):
        thick[k] = np.where(ga, 0.0, thick[k]).astype(np.float32)
    thick["rpe"] = np.where(ga, thick["rpe"] * 0.4, thick["rpe"]).astype(np.float32)
    lift = _drusen(rng, yy, xx, int(st["drusen_count"]), ga)
    shadow = _vessels(rng, yy, xx, int(st["vessel_count"]))
    bm = _bm_surface(rng, st, yy, xx, d, sd)
    refl = _reflectivity(rng, st, bm, thick, ga, lift, shadow, d, sd)
    volume = _acquire(rng, st, refl)
    return VariedEye(
        volume=volume,
        bm=bm,
        spacing=(sh, sw, sd),
        ga=ga,
        drusen=(lift > 0.01) & ~ga,
        vessels=(shadow > 0.3) & ~ga,
        style=st,
    )
