"""Fundus images of a phantom eye: near-infrared SLO and fundus autofluorescence (FAF).

Both are drawn on the eye's canvas and area-sampled onto the OCT en-face grid (as real
SLO/FAF images are cropped and resized to the OCT field).

* **SLO** (near-infrared reflectance): textured background with a faint choroidal vessel
  pattern, darker retinal vessels with a central light reflex, a slightly darker fovea;
  GA is *slightly* brighter and shows the choroidal vessels; RPD are iso-reflective dots
  with a dark border. Device-registered to the OCT (no misregistration).
* **FAF** (blue-light autofluorescence): background lipofuscin signal, dark vessels, a dark
  fovea (macular pigment), focal hypo-/hyper-autofluorescent spots (confounders); GA is
  strongly hypo-autofluorescent (delineated a little differently than in OCT) with a patchy
  junctional zone, hyper-autofluorescent in most eyes, questionably decreased in some; RPD
  are faint hypo-autofluorescent dots. Registered by software: small residual
  misregistration. Noisier than SLO.

Both get a random illumination gradient and vignetting, blur and noise per visit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from enface.synth.canvas import Affine, Canvas, Grid
from enface.synth.lesions import RPDMaps
from enface.synth.vessels import VesselMaps

__all__ = ["FAFStyle", "FundusScene", "SLOStyle", "render_faf", "render_slo"]


@dataclass(frozen=True)
class FundusScene:
    """Canvas-level anatomy of one visit, shared by SLO and FAF; arrays are ``(ny, nx)``.

    Attributes:
        canvas: the eye's canvas.
        fovea_dist: distance to the fovea centre in mm.
        vessels: retinal vessel maps.
        ga: RPE loss in {0, 1} (float32), as the OCT shows it.
        faf_ga: hypo-autofluorescent atrophy in {0, 1} (float32): the same lesion, delineated
            by autofluorescence (slightly different extent).
        junction: junctional zone around ``faf_ga`` in [0, 1] (0 inside and far from it).
        choroid_pattern: large choroidal vessel pattern in [0, 1].
        texture: three independent unit-variance smooth fields ``(3, ny, nx)``.
        af_spots: relative focal autofluorescence changes (negative: hypo).
        rpd: RPD maps of the visit, or None.
        irora: RPE attenuation of iRORA spots in [0, 1), or None (realistic phantom only).
        pigment: pigment-clump density in [0, 1], or None.
        pigment_af: relative FAF change of the pigment clumps, or None.
        drusen: drusen height (mm), or None.
    """

    canvas: Canvas
    fovea_dist: np.ndarray
    vessels: VesselMaps
    ga: np.ndarray
    faf_ga: np.ndarray
    junction: np.ndarray
    choroid_pattern: np.ndarray
    texture: np.ndarray
    af_spots: np.ndarray
    rpd: RPDMaps | None
    irora: np.ndarray | None = None
    pigment: np.ndarray | None = None
    pigment_af: np.ndarray | None = None
    drusen: np.ndarray | None = None


@dataclass(frozen=True)
class SLOStyle:
    """Per-eye appearance of the SLO."""

    brightness: float
    ga_gain: float
    choroid_visibility: float
    vessel_contrast: float
    fovea_dip: float

    @classmethod
    def random(cls, rng: np.random.Generator, realistic: bool = False) -> SLOStyle:
        if realistic:  # GA barely brighter in near-infrared in many eyes; more varied vessels
            return cls(
                brightness=rng.uniform(0.3, 0.55),
                ga_gain=rng.uniform(0.0, 0.12),
                choroid_visibility=rng.uniform(0.02, 0.1),
                vessel_contrast=rng.uniform(0.15, 0.4),
                fovea_dip=rng.uniform(0.05, 0.2),
            )
        return cls(
            brightness=rng.uniform(0.38, 0.5),
            ga_gain=rng.uniform(0.06, 0.18),
            choroid_visibility=rng.uniform(0.03, 0.08),
            vessel_contrast=rng.uniform(0.25, 0.4),
            fovea_dip=rng.uniform(0.05, 0.15),
        )


@dataclass(frozen=True)
class FAFStyle:
    """Per-eye appearance of the FAF."""

    brightness: float
    pigment_depth: float
    pigment_sigma_mm: float
    vessel_contrast: float
    ga_residual: float
    rim_gain: float
    """Relative AF change in the junctional zone (negative: decreased AF)."""

    @classmethod
    def random(cls, rng: np.random.Generator, realistic: bool = False) -> FAFStyle:
        if realistic:  # deeper macular pigment (a dark fovea like foveal GA), darker residual GA range
            return cls(
                brightness=rng.uniform(0.35, 0.6),
                pigment_depth=rng.uniform(0.35, 0.8),
                pigment_sigma_mm=rng.uniform(0.4, 0.8),
                vessel_contrast=rng.uniform(0.35, 0.65),
                ga_residual=rng.uniform(0.1, 0.45),
                rim_gain=rng.uniform(0.1, 0.5) if rng.random() < 0.75 else rng.uniform(-0.4, -0.1),
            )
        return cls(
            brightness=rng.uniform(0.42, 0.56),
            pigment_depth=rng.uniform(0.3, 0.7),
            pigment_sigma_mm=rng.uniform(0.45, 0.75),
            vessel_contrast=rng.uniform(0.35, 0.6),
            ga_residual=rng.uniform(0.08, 0.3),
            # junctional zone: increased AF in most eyes, questionably decreased in some
            rim_gain=rng.uniform(0.1, 0.45) if rng.random() < 0.75 else rng.uniform(-0.4, -0.15),
        )


def _illumination(rng: np.random.Generator, canvas: Canvas, vignetting: float) -> np.ndarray:
    """Random smooth gain: global level × linear gradient × off-centre vignetting."""
    y, x = canvas.coords()
    half = max(abs(canvas.y0), abs(canvas.x0))
    gy, gx = rng.normal(0.0, 0.08, 2)
    cy, cx = rng.normal(0.0, 0.6, 2)
    rho2 = ((y - cy) ** 2 + (x - cx) ** 2) / (half * half)
    v = vignetting * rng.uniform(0.5, 1.0)
    return (rng.uniform(0.85, 1.1) * (1 + gy * y / half + gx * x / half) * (1 - v * rho2)).astype(np.float32)


def _finish(
    image: np.ndarray,
    canvas: Canvas,
    grid: Grid,
    rng: np.random.Generator,
    blur_mm: float,
    noise: float,
    affine: Affine | None = None,
) -> np.ndarray:
    """Blur, area-sample onto the grid, add noise, clip to [0, 1]."""
    image = ndimage.gaussian_filter(image, blur_mm / canvas.cs, mode="nearest")
    out = canvas.to_grid(image, grid, area=True, affine=affine)
    out = out * (1.0 + 0.5 * noise * rng.standard_normal(out.shape)) + noise * rng.standard_normal(out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def render_slo(
    scene: FundusScene, style: SLOStyle, grid: Grid, rng: np.random.Generator, defocus_mm: float = 0.0
) -> np.ndarray:
    """The near-infrared SLO of one visit.

    Args:
        scene: canvas-level anatomy.
        style: the eye's SLO appearance.
        grid: target en-face grid.
        rng: random generator of the visit.
        defocus_mm: extra blur of a defocused SLO (its contrast drops as well); 0: in focus.

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    tex = scene.texture
    v, r = scene.vessels.opacity(), scene.vessels.radius
    img = style.brightness * (1.0 + 0.06 * tex[0])
    img = img * (1.0 + style.choroid_visibility * (scene.choroid_pattern - 0.3) * (0.5 + 3.0 * scene.ga))
    img = img * (1.0 + style.ga_gain * scene.ga * (1.0 + 0.3 * tex[1]))
    reflex = scene.vessels.profile**6 * (r > 0.035)
    img = img * (1.0 - style.vessel_contrast * v) + 0.06 * reflex
    img = img * (1.0 - style.fovea_dip * np.exp(-((scene.fovea_dist / 0.35) ** 2)))
    if scene.rpd is not None:
        ring = np.exp(-(((scene.rpd.rel_dist - 1.3) / 0.35) ** 2))
        img = img * (1.0 - 0.22 * ring)
    if scene.irora is not None:
        img = img * (1.0 + 0.5 * style.ga_gain * scene.irora)
    if scene.pigment is not None:
        img = img * (1.0 + 0.25 * scene.pigment)
    if scene.drusen is not None:
        img = img * (1.0 + 1.5 * scene.drusen)
    img = img * _illumination(rng, scene.canvas, 0.12)
    if defocus_mm > 0:
        img = img.mean() + (img - img.mean()) * 0.7
    blur = float(np.hypot(0.012, defocus_mm))
    return _finish(img.astype(np.float32), scene.canvas, grid, rng, blur_mm=blur, noise=0.015)


def render_faf(
    scene: FundusScene, style: FAFStyle, grid: Grid, rng: np.random.Generator, noise: float = 0.03
) -> tuple[np.ndarray, Affine]:
    """The FAF of one visit, with a small residual misregistration to the OCT grid.

    Args:
        scene: canvas-level anatomy.
        style: the eye's FAF appearance.
        grid: target en-face grid.
        rng: random generator of the visit.
        noise: noise level.

    Returns:
        ``(H, W)`` float32 in [0, 1], and the misregistration: FAF pixel ``(i, j)`` shows
        the canvas at ``affine.apply(y_i, x_j)`` where the SLO's pixel shows ``(y_i, x_j)``.
    """
    tex = scene.texture
    img = style.brightness * (1.0 + 0.12 * tex[2] + 0.06 * tex[1])
    img = img * (1.0 - style.pigment_depth * np.exp(-((scene.fovea_dist / style.pigment_sigma_mm) ** 2)))
    img = img * (1.0 - style.vessel_contrast * scene.vessels.opacity())
    img = img * (1.0 + style.rim_gain * scene.junction * np.clip(0.7 + 0.5 * tex[1], 0.0, None))
    img = img * (1.0 + scene.af_spots)
    if scene.rpd is not None:
        img = img * (1.0 - 0.15 * (scene.rpd.rel_dist < 1.0))
    if scene.irora is not None:
        img = img * (1.0 - 0.6 * scene.irora)
    if scene.pigment_af is not None:
        img = img * (1.0 + scene.pigment_af)
    residual = style.ga_residual * (1.0 + 0.4 * tex[0])
    img = img * (1.0 - scene.faf_ga * (1.0 - residual))
    img = img * _illumination(rng, scene.canvas, 0.25)
    affine = Affine(
        ty=rng.normal(0.0, 0.035),
        tx=rng.normal(0.0, 0.035),
        rot_deg=rng.normal(0.0, 0.5),
        scale=1.0 + rng.normal(0.0, 0.008),
    )
    return _finish(img.astype(np.float32), scene.canvas, grid, rng, blur_mm=0.02, noise=noise, affine=affine), affine
