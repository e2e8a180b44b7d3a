"""Realistic GA of one eye (unifocal or multifocal, foveal sparing) and graders who outline it.

**Lesions.** An eye's GA is a union of foci. Each focus is the super-level set of its own
smooth, lobulated random field (an anisotropic bump times a multiplicative texture), at the
level that gives the focus its area of the day; the square root of each focus' area grows
linearly in time with the local border expansion rate, which increases with the distance
from the fovea. Foci that grow into one another coalesce. In eyes with foveal sparing every
field is pushed down around the foveal centre, so atrophy wraps around the fovea before it
covers it. Later visits contain earlier ones.

**Graders** outline the lesion they see on the B-scans. A grader places the border a little
inside or outside (a systematic offset per eye and a smooth offset along the border that
changes at each visit), misses small foci now and then, and some graders bridge foci that
lie close together. Both graders of the dataset (the reference ``mask_ga.png`` and
``mask_ga.grader2.png``) follow this model; the rendering uses the true lesion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from enface.synth.canvas import Canvas
from enface.synth.realism import Realism

__all__ = ["GraderStyle", "MultifocalGA", "grade"]

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class _Focus:
    field: np.ndarray  # (ny, nx) float32
    sorted_desc: np.ndarray  # the field inside the scanned field, sorted descending
    area0: float  # mm² at day 0
    rate: float  # growth of sqrt(area), mm/year


@dataclass(frozen=True)
class MultifocalGA:
    """GA of one eye over time as a union of growing foci.

    Attributes:
        foci: the foci (the first is the main lesion).
        pixel_area: canvas pixel area in mm².
        fov: ``(ny, nx)`` bool, canvas pixels inside the scanned field.
        spares_fovea: the atrophy spares the foveal centre.
        field_faf: ``(ny, nx)`` perturbation factor of the field as autofluorescence sees it.
    """

    foci: tuple[_Focus, ...]
    pixel_area: float
    fov: np.ndarray
    spares_fovea: bool
    field_faf: np.ndarray

    @classmethod
    def random(
        cls, rng: np.random.Generator, canvas: Canvas, fov: np.ndarray, fovea: tuple[float, float], realism: Realism
    ) -> MultifocalGA:
        """Draw the GA of one eye (it has GA; whether it has any is drawn by the caller)."""
        y, x = canvas.coords()
        fd = np.hypot(y - fovea[0], x - fovea[1])
        spares = bool(rng.random() < realism.foveal_sparing)
        sparing = 1.0 - np.exp(-((fd / rng.uniform(0.25, 0.5)) ** 2)) if spares else 1.0
        lo, hi = realism.area_range_mm2
        total = float(np.clip(realism.area_median_mm2 * math.exp(rng.normal(0.0, realism.area_sigma)), lo, hi))
        n_sat = min(int(rng.poisson(realism.satellites_mean)) + 1, 5) if rng.random() < realism.multifocal else 0
        sat_areas = [
            float(np.clip(realism.satellite_median_mm2 * math.exp(rng.normal(0.0, 0.8)), 0.03, 1.0))
            for _ in range(n_sat)
        ]
        main_area = max(total - sum(sat_areas), 0.6 * total)
        ber0, ber_slope = realism.ber_mm_per_year
        eye_speed = math.exp(rng.normal(0.0, 0.4))
        r = min(abs(rng.normal(0.0, realism.centre_sd_mm)), 2.6)
        a = rng.uniform(0, 2 * math.pi)
        main_centre = (fovea[0] + r * math.sin(a), fovea[1] + r * math.cos(a))
        foci = []
        for k, area0 in enumerate([main_area, *sat_areas]):
            if k == 0:
                cy, cx = main_centre
                size = math.sqrt(area0 / math.pi)
            else:  # satellites around the main lesion, or elsewhere in the central macula
                d = rng.uniform(0.3, 1.6) + math.sqrt(main_area / math.pi)
                b = rng.uniform(0, 2 * math.pi)
                cy, cx = main_centre[0] + d * math.sin(b), main_centre[1] + d * math.cos(b)
                size = math.sqrt(area0 / math.pi)
            s1 = max(size, 0.08) * rng.uniform(1.0, 1.8)
            s2 = s1 * rng.uniform(0.5, 1.0)
            o = rng.uniform(0, math.pi)
            dy, dx = y - cy, x - cx
            u = (dx * math.cos(o) + dy * math.sin(o)) / s1
            v = (-dx * math.sin(o) + dy * math.cos(o)) / s2
            texture = canvas.smooth_noise(rng, float(np.clip(0.8 * s1, 0.15, 0.8)))
            field = (np.exp(-0.5 * (u * u + v * v) + 0.3 * texture) * sparing).astype(np.float32)
            ecc = math.hypot(cy - fovea[0], cx - fovea[1])
            rate = math.sqrt(math.pi) * (ber0 + ber_slope * min(ecc, 3.5)) * eye_speed
            foci.append(_Focus(field, np.sort(field[fov])[::-1].copy(), float(area0), float(rate)))
        return cls(
            foci=tuple(foci),
            pixel_area=canvas.cs**2,
            fov=fov,
            spares_fovea=spares,
            field_faf=np.exp(0.15 * canvas.smooth_noise(rng, 0.3)).astype(np.float32),
        )

    @staticmethod
    def _grown(focus: _Focus, day: float, extra_mm: float = 0.0) -> float:
        return (math.sqrt(focus.area0) + focus.rate * max(day, 0.0) / DAYS_PER_YEAR + extra_mm) ** 2

    def _union(self, day: float, extra_mm: float = 0.0, faf: bool = False) -> np.ndarray:
        out = np.zeros(self.fov.shape, dtype=bool)
        for f in self.foci:
            n = int(round(self._grown(f, day, extra_mm) / self.pixel_area))
            if n <= 0:
                continue
            level = float(f.sorted_desc[min(n, len(f.sorted_desc)) - 1])
            out |= (f.field * self.field_faf if faf else f.field) > level
        return out

    def lesion(self, day: float) -> np.ndarray:
        """``(ny, nx)`` bool true lesion (RPE loss) at ``day``."""
        return self._union(day)

    def area(self, day: float) -> float:
        """True lesion area (mm²) inside the scanned field at ``day``."""
        return float((self.lesion(day) & self.fov).sum()) * self.pixel_area

    def photoreceptor_loss(self, day: float, cs: float, margin_mm: float = 0.25) -> np.ndarray:
        """``(ny, nx)`` in [0, 1]: 1 inside the lesion, tapering to 0 at ``margin_mm`` outside."""
        lesion = self.lesion(day)
        if not lesion.any():
            return np.zeros(lesion.shape, dtype=np.float32)
        dist = ndimage.distance_transform_edt(~lesion, sampling=cs)
        return np.clip(1.0 - dist / margin_mm, 0.0, 1.0).astype(np.float32)

    def faf_lesion(self, day: float) -> tuple[np.ndarray, np.ndarray]:
        """``(lesion, junction)``: the hypo-autofluorescent atrophy (the foci as FAF delineates
        them) and its junctional zone in [0, 1], fading over 0.2 mm of future growth."""
        lesion = self._union(day, faf=True).astype(np.float32)
        if not lesion.any():
            return lesion, np.zeros(lesion.shape, dtype=np.float32)
        dist = ndimage.distance_transform_edt(lesion == 0, sampling=math.sqrt(self.pixel_area))
        zone = np.clip(1.0 - dist / 0.2, 0.0, 1.0) * (1.0 - lesion)
        return lesion, zone.astype(np.float32)


@dataclass(frozen=True)
class GraderStyle:
    """How one grader outlines the GA of one eye (fixed over the eye's visits).

    Attributes:
        bias_mm: systematic border offset (positive: outside the true border).
        merge_gap_mm: foci closer than this are bridged (0: never).
    """

    bias_mm: float
    merge_gap_mm: float

    @classmethod
    def random(cls, rng: np.random.Generator, realism: Realism) -> GraderStyle:
        merge = rng.uniform(0.05, realism.merge_gap_mm) if rng.random() < realism.merge_probability else 0.0
        return cls(bias_mm=float(rng.normal(0.0, realism.boundary_bias_mm)), merge_gap_mm=float(merge))


def grade(
    truth: np.ndarray,
    canvas: Canvas,
    style: GraderStyle,
    realism: Realism,
    rng: np.random.Generator,
) -> np.ndarray:
    """One grader's outline of the true lesion at one visit.

    Args:
        truth: ``(ny, nx)`` bool true lesion.
        canvas: the eye's canvas.
        style: the grader's habits for this eye.
        realism: the calibrated grader numbers.
        rng: the visit's generator for this grader.

    Returns:
        ``(ny, nx)`` bool outline.
    """
    cs = canvas.cs
    offset = style.bias_mm + realism.boundary_noise_mm * canvas.smooth_noise(rng, 0.4)
    if not truth.any():
        return np.zeros(truth.shape, dtype=bool)
    outside = ndimage.distance_transform_edt(~truth, sampling=cs)
    inside = ndimage.distance_transform_edt(truth, sampling=cs)
    outline = np.where(truth, -inside, outside) < offset
    if style.merge_gap_mm > 0:  # closing: bridge gaps narrower than the merge gap
        grown = ndimage.distance_transform_edt(~outline, sampling=cs) < style.merge_gap_mm / 2
        outline = ndimage.distance_transform_edt(grown, sampling=cs) >= style.merge_gap_mm / 2
    labels, n = ndimage.label(outline)
    if n:
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1)) * cs * cs
        p_miss = realism.miss_probability * np.clip(1.0 - areas / realism.miss_area_mm2, 0.0, 1.0)
        missed = np.flatnonzero(rng.random(n) < p_miss) + 1
        if len(missed):
            outline &= ~np.isin(labels, missed)
    return outline
