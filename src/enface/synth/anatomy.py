"""Retinal anatomy on the en-face grid: layer thicknesses, reflectivities, BM surface.

Thickness profiles follow a normal macula: the inner layers (RNFL, GCL, IPL, INL, OPL)
vanish in the foveal pit, the ONL and photoreceptor outer segments are thicker at the
fovea, the RNFL thickens towards the optic disc. Total thickness is about 0.2 mm at the
foveal centre and 0.3 mm in the parafovea. GA thins the outer retina (photoreceptor and
ONL loss, RPE loss with BM left as a faint line) and lets more light through to the
choroid; RPD lift the ellipsoid zone over hyperreflective mounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from enface.synth.oct import LAYERS, RetinaMaps

__all__ = [
    "CHOROID_MIN_MM",
    "RETINA_MAX_MM",
    "BMShape",
    "LayerStyle",
    "bm_surface",
    "flat_bm_depth",
    "retina_maps",
    "tilt_for_visit",
]

_BASE_REFLECT: dict[str, float] = {
    "rnfl": 0.7,
    "gcl": 0.3,
    "ipl": 0.45,
    "inl": 0.16,
    "opl": 0.45,
    "onl": 0.08,
    "elm": 0.35,
    "mz": 0.12,
    "ez": 0.75,
    "iz": 0.3,
    "sdd": 0.7,
    "rpe": 1.0,
}
RETINA_MAX_MM = 0.5
"""Upper bound of the retina's thickness above BM (room kept above BM in the depth window)."""
CHOROID_MIN_MM = 0.12
"""Room kept below BM in a raw scan, so that BM and the inner choroid stay in the window."""


@dataclass(frozen=True)
class LayerStyle:
    """Per-eye tissue parameters.

    Attributes:
        thickness_scale: factor on each layer's normal thickness.
        reflect: clean reflectivity of each layer.
        vitreous: reflectivity of the vitreous.
        choroid_mm: choroid thickness in mm.
        stroma: reflectivity of the choroidal stroma.
        sclera: reflectivity of the sclera.
        rpe_transmission: fraction of light passing a healthy RPE.
    """

    thickness_scale: dict[str, float]
    reflect: dict[str, float]
    vitreous: float
    choroid_mm: float
    stroma: float
    sclera: float
    rpe_transmission: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> LayerStyle:
        return cls(
            thickness_scale={k: float(rng.uniform(0.88, 1.12)) for k in LAYERS},
            reflect={k: float(v * rng.uniform(0.88, 1.12)) for k, v in _BASE_REFLECT.items()},
            vitreous=float(rng.uniform(0.015, 0.03)),
            choroid_mm=float(rng.uniform(0.15, 0.3)),
            stroma=float(rng.uniform(0.45, 0.65)),
            sclera=float(rng.uniform(0.2, 0.35)),
            rpe_transmission=float(rng.uniform(0.3, 0.45)),
        )


def _normal_thickness(r: np.ndarray, nasal: np.ndarray, vert: np.ndarray) -> dict[str, np.ndarray]:
    """Normal layer thicknesses (mm) from the distance to the fovea ``r``, the nasal
    coordinate ``nasal`` (towards the disc) and the vertical offset ``vert`` (all mm)."""
    pit = np.exp(-((r / 0.55) ** 2))
    inner = 1.0 - np.exp(-((r / 0.45) ** 2))
    mid = 1.0 - np.exp(-((r / 0.35) ** 2))
    ring = np.exp(-(((r - 1.1) / 1.1) ** 2))
    zero = np.zeros_like(r)
    return {
        "rnfl": (0.008 + 0.03 / (1 + np.exp(-(nasal - 0.8) / 0.7)) + 0.004 * vert**2)
        * (1.0 - np.exp(-((r / 0.7) ** 2))),
        "gcl": 0.05 * inner * (0.55 + 0.45 * ring),
        "ipl": 0.038 * inner * (0.7 + 0.3 * ring),
        "inl": 0.034 * mid * (0.75 + 0.25 * ring),
        "opl": 0.024 * mid,
        "onl": 0.07 + 0.05 * pit,
        "elm": 0.006 + zero,
        "mz": 0.018 + 0.008 * pit,
        "ez": 0.014 + zero,
        "iz": 0.022 + 0.01 * pit,
        "sdd": zero,
        "rpe": 0.022 + zero,
    }


def retina_maps(
    style: LayerStyle,
    fovea_dist: np.ndarray,
    nasal: np.ndarray,
    vert: np.ndarray,
    rpe_loss: np.ndarray,
    photoreceptor_loss: np.ndarray,
    sdd_height: np.ndarray,
    vessel: np.ndarray,
    vessel_radius: np.ndarray,
    lumen_large: np.ndarray,
    lumen_medium: np.ndarray,
    texture: np.ndarray,
    drusen: np.ndarray | None = None,
    hypertransmission: np.ndarray | None = None,
    pigment: np.ndarray | None = None,
) -> RetinaMaps:
    """Tissue maps of one scan on the en-face grid; every input is ``(H, W)``.

    Args:
        style: the eye's tissue parameters.
        fovea_dist: distance to the fovea centre (mm).
        nasal: coordinate towards the optic disc (mm, 0 at the fovea).
        vert: vertical offset from the fovea (mm).
        rpe_loss: GA, RPE loss in [0, 1].
        photoreceptor_loss: loss of photoreceptors and ONL in [0, 1] (GA plus a margin).
        sdd_height: RPD mound height (mm).
        vessel: retinal vessel profile in [0, 1].
        vessel_radius: radius of the nearest vessel (mm).
        lumen_large: large choroidal vessel profile in [0, 1].
        lumen_medium: medium choroidal vessel profile in [0, 1].
        texture: unit-variance smooth field (stroma heterogeneity).
        drusen: height (mm) of the RPE lifted off BM by drusen, or None (no drusen).
        hypertransmission: extra fraction of light passing an intact RPE (a thin choroid
            and RPE without RPE loss), or None.
        pigment: pigment-clump density in [0, 1], or None.

    Returns:
        The :class:`~enface.synth.oct.RetinaMaps`.
    """
    a = rpe_loss.astype(np.float32)
    e = np.maximum(photoreceptor_loss, a).astype(np.float32)
    thick = {
        k: (v * style.thickness_scale[k]).astype(np.float32)
        for k, v in _normal_thickness(fovea_dist, nasal, vert).items()
    }
    thick["onl"] *= 1.0 - 0.7 * e
    thick["opl"] *= 1.0 - 0.3 * e
    for k in ("elm", "mz", "ez", "iz"):
        thick[k] *= 1.0 - 0.9 * e
    thick["rpe"] *= 1.0 - 0.45 * a
    thick["sdd"] = sdd_height.astype(np.float32)
    # deposits indent the outer nuclear layer; the inner retina stays (almost) flat
    thick["onl"] = np.maximum(thick["onl"] - thick["sdd"], 0.25 * thick["onl"])
    if drusen is not None:  # the outer nuclear layer thins over drusen, the inner retina less
        thick["onl"] = np.maximum(thick["onl"] - 0.6 * drusen, 0.3 * thick["onl"]).astype(np.float32)
    lift = np.clip(sdd_height / 0.02, 0.0, 1.0)
    refl: dict[str, np.ndarray | float] = dict(style.reflect)
    refl["elm"] = style.reflect["elm"] * (1.0 - 0.85 * e)
    refl["ez"] = style.reflect["ez"] * (1.0 - 0.85 * e) * (1.0 - 0.4 * lift)
    refl["iz"] = style.reflect["iz"] * (1.0 - 0.85 * e) * (1.0 - 0.4 * lift)
    refl["rpe"] = style.reflect["rpe"] * (1.0 - 0.8 * a)
    transmission, choroid = _transmission_and_choroid(style, a, hypertransmission)
    return RetinaMaps(
        thickness=thick,
        reflect=refl,
        vitreous=style.vitreous,
        choroid=np.asarray(choroid, dtype=np.float32),
        stroma=(style.stroma * (1.0 + 0.1 * texture)).astype(np.float32),
        lumen_large=lumen_large.astype(np.float32),
        lumen_medium=lumen_medium.astype(np.float32),
        sclera=style.sclera,
        rpe_transmission=np.asarray(transmission, dtype=np.float32),
        vessel=vessel.astype(np.float32),
        vessel_radius=vessel_radius.astype(np.float32),
        drusen=None if drusen is None else drusen.astype(np.float32),
        pigment=None if pigment is None else pigment.astype(np.float32),
    )


def _transmission_and_choroid(
    style: LayerStyle, rpe_loss: np.ndarray, hypertransmission: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Light passing the RPE/BM (high where the RPE is lost, raised in hypertransmission
    patches with the RPE intact) and the choroid thickness (thinner under both)."""
    t0 = style.rpe_transmission
    transmission = t0 + (0.92 - t0) * rpe_loss
    choroid = style.choroid_mm * (1.0 - 0.25 * rpe_loss)
    if hypertransmission is not None:
        transmission = transmission + hypertransmission * (1.0 - rpe_loss)
        choroid = choroid * (1.0 - 0.8 * hypertransmission)
    return transmission, choroid


def flat_bm_depth(depth: int) -> float:
    """Depth index of BM in a flattened volume of ``depth`` samples (70 % down the window)."""
    return float(round(0.7 * depth)) - 0.5


@dataclass(frozen=True)
class BMShape:
    """Per-eye shape of Bruch's membrane in the raw (un-flattened) scan.

    Attributes:
        sag_mm: how much deeper the bowl's centre lies than a point 3 mm away.
        centre: bowl centre ``(y, x)`` in mm.
        undulation_mm: amplitude of smooth random undulations.
    """

    sag_mm: float
    centre: tuple[float, float]
    undulation_mm: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> BMShape:
        return cls(
            sag_mm=float(rng.uniform(0.05, 0.25)),
            centre=(float(rng.normal(0, 0.5)), float(rng.normal(0, 0.5))),
            undulation_mm=float(rng.uniform(0.005, 0.025)),
        )


def bm_surface(
    shape: BMShape,
    y: np.ndarray,
    x: np.ndarray,
    undulation: np.ndarray,
    tilt: tuple[float, float],
    jitter_mm: np.ndarray,
    depth: int,
    sd: float,
) -> np.ndarray:
    """Depth index of BM in a raw scan: bowl + tilt + undulation + axial B-scan jitter.

    The surface is centred on the flattened BM depth and, where it would not fit, scaled
    down and shifted so that BM stays at least :data:`RETINA_MAX_MM` below the top of the
    window and :data:`CHOROID_MIN_MM` above its bottom.

    Args:
        shape: the eye's BM shape.
        y: ``(H, 1)`` B-scan positions (mm).
        x: ``(1, W)`` A-scan positions (mm).
        undulation: ``(H, W)`` unit-variance smooth field.
        tilt: depth change per mm along y and x (mm/mm) of this scan.
        jitter_mm: ``(H,)`` axial offset of each B-scan (mm).
        depth: number of depth samples.
        sd: depth spacing (mm).

    Returns:
        ``(H, W)`` float32 depth indices.
    """
    rho2 = (y - shape.centre[0]) ** 2 + (x - shape.centre[1]) ** 2
    z = -shape.sag_mm * rho2 / 9.0 + tilt[0] * y + tilt[1] * x + shape.undulation_mm * undulation
    z = (z + jitter_mm[:, None]) / sd
    z = z - z.mean()
    lo, hi = RETINA_MAX_MM / sd + 2.0, depth - CHOROID_MIN_MM / sd - 1.0
    span = float(z.max() - z.min())
    if span > hi - lo:
        z = z * ((hi - lo) / span)
    bm = flat_bm_depth(depth) + z
    bm = bm + max(0.0, lo - float(bm.min())) - max(0.0, float(bm.max()) - hi)
    return bm.astype(np.float32)


def tilt_for_visit(rng: np.random.Generator) -> tuple[float, float]:
    """Random scan tilt (mm depth per mm) along y and x."""
    t = rng.uniform(-0.05, 0.05, 2)
    return float(t[0]), float(t[1])
