"""OCT volume rendering: layered retina on a Bruch's-membrane surface, choroid, acquisition.

The clean reflectivity of an A-scan is piecewise constant between layer boundaries that
are stacked upwards from Bruch's membrane (BM); each voxel gets the exact partial-volume
mix of the layers it overlaps, so thin bands (ELM, EZ, RPE) stay visible at coarse depth
sampling. Below BM the light has passed the RPE: choroid and sclera are multiplied by the
RPE transmission (low normally, high where the RPE is lost: GA hypertransmission) and
decay with depth. Drusen lift the RPE (and the layers above it) off BM; the space between
is filled with moderately reflective deposit material, and BM stays where it was. Retinal
vessels are bright round profiles in the inner retina that shadow everything below them.
The acquisition adds multiplicative speckle (gamma, a few averaged frames), a noise floor,
depth fall-off and per-B-scan / lateral gain.

Depth coordinates are voxel indices: voxel ``d`` covers ``[d - 0.5, d + 0.5)``; a boundary
at depth ``b`` separates what lies above (smaller index) from what lies below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LAYERS", "Acquisition", "RetinaMaps", "render_oct"]

LAYERS: tuple[str, ...] = ("rnfl", "gcl", "ipl", "inl", "opl", "onl", "elm", "mz", "ez", "iz", "sdd", "rpe")
"""Retinal layers from the inner limiting membrane down to Bruch's membrane: nerve fibre,
ganglion cell, inner plexiform, inner nuclear, outer plexiform, outer nuclear layers,
external limiting membrane, myoid zone, ellipsoid zone, interdigitation zone, subretinal
drusenoid deposits (RPD; zero thickness elsewhere) and retinal pigment epithelium."""


@dataclass(frozen=True)
class RetinaMaps:
    """Tissue description on the en-face grid; every array is ``(H, W)`` float32.

    Attributes:
        thickness: layer thickness in mm for each name in :data:`LAYERS`.
        reflect: clean reflectivity of each layer (array or scalar).
        vitreous: reflectivity above the retina.
        choroid: choroid thickness in mm.
        stroma: reflectivity of the choroidal stroma.
        lumen_large: lateral profile in [0, 1] of large (Haller) choroidal vessels.
        lumen_medium: lateral profile in [0, 1] of medium (Sattler) choroidal vessels.
        sclera: reflectivity of the sclera.
        rpe_transmission: fraction of light passing the RPE/BM complex.
        vessel: retinal vessel profile in [0, 1].
        vessel_radius: radius in mm of the nearest retinal vessel.
        drusen: height in mm of the RPE above BM (sub-RPE deposits), or None (no drusen).
        pigment: density in [0, 1] of pigment clumps (hyperreflective foci in the outer
            nuclear layer that shadow what lies below them), or None (none).
    """

    thickness: dict[str, np.ndarray]
    reflect: dict[str, np.ndarray | float]
    vitreous: float
    choroid: np.ndarray
    stroma: np.ndarray
    lumen_large: np.ndarray
    lumen_medium: np.ndarray
    sclera: float
    rpe_transmission: np.ndarray
    vessel: np.ndarray
    vessel_radius: np.ndarray
    drusen: np.ndarray | None = None
    pigment: np.ndarray | None = None


DRUSEN_REFLECT = 0.32
"""Reflectivity of the deposit material between the lifted RPE and BM."""


@dataclass(frozen=True)
class Acquisition:
    """Device and session effects of one scan.

    Attributes:
        looks: frames averaged per B-scan (shape of the gamma speckle).
        noise_floor: mean of the additive (exponential) noise floor.
        falloff: sensitivity roll-off over the depth window, ``exp(-falloff * d / D)``.
        bscan_gain: ``(H,)`` brightness of each B-scan.
        lateral_vignetting: brightness loss at the ends of a B-scan.
        vessel_shadow: fraction of light a vessel centre blocks.
        choroid_decay_mm: attenuation length of the light below BM.
        lateral_gradient: brightness change from the centre to the ends of a B-scan
            (oblique incidence on a tilted scan), ``1 + lateral_gradient * x`` for x in [-1, 1].
    """

    looks: float
    noise_floor: float
    falloff: float
    bscan_gain: np.ndarray
    lateral_vignetting: float
    vessel_shadow: float = 0.7
    choroid_decay_mm: float = 0.3
    lateral_gradient: float = 0.0


def _step(d: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of each voxel lying below the boundary ``b``: ``(H, W)`` → ``(H, W, D)``."""
    return np.clip(d - b[..., None] + 0.5, 0.0, 1.0)


def _pigment_clumps(
    vol: np.ndarray, pigment: np.ndarray, elm: np.ndarray, onl: np.ndarray, d: np.ndarray
) -> np.ndarray:
    """Bright clumps in the lower half of the outer nuclear layer (above the ELM at depth
    ``elm``, ONL ``onl`` voxels thick) that shadow everything below them."""
    p = pigment.astype(np.float32)[..., None]
    clump = _step(d, elm - 0.5 * onl) - _step(d, elm)
    vol = vol * (1.0 - p * clump) + 0.85 * p * clump
    return vol * (1.0 - 0.6 * p * _step(d, elm))


def render_oct(
    maps: RetinaMaps, bm: np.ndarray, depth: int, sd: float, acq: Acquisition, rng: np.random.Generator
) -> np.ndarray:
    """Render one OCT volume.

    Args:
        maps: tissue maps on the ``(H, W)`` grid.
        bm: ``(H, W)`` depth index of Bruch's membrane (bottom of the RPE).
        depth: number of depth samples ``D``.
        sd: depth spacing in mm.
        acq: acquisition effects.
        rng: random generator (speckle and noise).

    Returns:
        ``(H, W, D)`` float32 non-negative intensities.
    """
    h, w = bm.shape
    d = np.arange(depth, dtype=np.float32)[None, None, :]
    bm = bm.astype(np.float32)

    # layer boundaries, stacked upwards from the RPE's bottom (BM, or the top of a druse)
    tops: dict[str, np.ndarray] = {}
    rpe_bottom = bm if maps.drusen is None else bm - maps.drusen.astype(np.float32) / sd
    b = rpe_bottom.copy()
    for name in reversed(LAYERS):
        b = b - maps.thickness[name] / sd
        tops[name] = b
    vol = np.full((h, w, depth), maps.vitreous, dtype=np.float32)
    prev: np.ndarray | float = maps.vitreous
    for name in LAYERS:
        r = maps.reflect[name]
        vol += _step(d, tops[name]) * np.asarray(np.asarray(r) - prev, dtype=np.float32)[..., None]
        prev = r
    below_bm = _step(d, bm)
    transmission = maps.rpe_transmission
    if maps.drusen is not None:
        vol += _step(d, rpe_bottom) * np.asarray(DRUSEN_REFLECT - np.asarray(prev), dtype=np.float32)[..., None]
        prev = DRUSEN_REFLECT
        transmission = transmission * (1.0 - 0.5 * np.clip(maps.drusen / 0.08, 0.0, 1.0)).astype(np.float32)
    vol -= below_bm * np.asarray(prev, dtype=np.float32)[..., None]

    # choroid (with vessel lumens) and sclera, seen through the RPE
    ch = (maps.choroid / sd)[..., None]
    z = d - bm[..., None]
    lumen_l = np.clip(1.0 - ((z - 0.62 * ch) / (0.3 * ch * maps.lumen_large[..., None] + 1e-3)) ** 2, 0, 1)
    lumen_m = np.clip(1.0 - ((z - 0.3 * ch) / (0.14 * ch * maps.lumen_medium[..., None] + 1e-3)) ** 2, 0, 1)
    choroid = maps.stroma[..., None] * (1.0 - 0.75 * np.maximum(lumen_l, lumen_m))
    sclera = _step(d, bm + maps.choroid / sd)
    tissue = choroid * (1.0 - sclera) + maps.sclera * sclera
    decay = np.exp(-np.clip(z, 0, None) * (sd / acq.choroid_decay_mm))
    vol += below_bm * tissue * decay * transmission[..., None]

    # retinal vessels: round bright profiles in the inner retina, shadowing below
    half = maps.vessel_radius * maps.vessel / sd
    centre = tops["rnfl"] + np.maximum(maps.vessel_radius / sd, 1.0) + 0.5
    v_top, v_bot = centre - half, centre + half
    inside = _step(d, v_top) - _step(d, v_bot)
    vol = vol * (1.0 - inside) + 0.6 * inside
    vol *= 1.0 - acq.vessel_shadow * maps.vessel[..., None] * _step(d, v_bot)
    if maps.pigment is not None:
        vol = _pigment_clumps(vol, maps.pigment, tops["elm"], maps.thickness["onl"] / sd, d)

    # acquisition
    speckle = rng.standard_gamma(acq.looks, size=vol.shape, dtype=np.float32) / np.float32(acq.looks)
    vol *= speckle
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    gain = (
        acq.bscan_gain.astype(np.float32)[:, None, None]
        * ((1.0 - acq.lateral_vignetting * xs**2) * (1.0 + acq.lateral_gradient * xs))[None, :, None]
        * np.exp(-acq.falloff * d / depth)
    )
    vol *= gain
    vol += acq.noise_floor * rng.standard_exponential(size=vol.shape, dtype=np.float32)
    return vol.astype(np.float32, copy=False)
