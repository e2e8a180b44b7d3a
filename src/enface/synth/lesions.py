"""Lesions of a phantom eye: geographic atrophy (GA) and reticular pseudodrusen (RPD).

**GA** is the super-level set of a fixed random field per eye (a few anisotropic
Gaussian foci with multiplicative texture): lowering the level grows the lesion, so the
lesions of later visits contain the earlier ones. The level is chosen so that the lesion
area in the scanned field follows the square-root growth model of GA (the square root of
the area grows linearly with time).

**RPD** are small mounds on a jittered hexagonal lattice (reticular pattern) inside a
region that favours the superior macula; the region spreads and the mounds grow over
time.

**Drusen** are sub-RPE deposits: dome-shaped elevations of the RPE off Bruch's membrane,
scattered around the fovea and spared by the atrophy (they regress inside GA). They are not
labelled; they make Bruch's membrane hard to find (the RPE no longer lies on it).

A second grader is simulated by perturbing the boundaries (GA) or the outlined extent and
the set of marked deposits (RPD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from enface.synth.canvas import Canvas

__all__ = ["Drusen", "GALesions", "RPDDeposits", "RPDMaps"]

DAYS_PER_YEAR = 365.25


def _level_for_area(sorted_desc: np.ndarray, area_mm2: float, pixel_area: float) -> float:
    """Level whose super-level set covers ``area_mm2`` of the field (values sorted descending)."""
    n = int(round(area_mm2 / pixel_area))
    if n <= 0:
        return math.inf
    if n >= len(sorted_desc):
        return -math.inf
    return float(sorted_desc[n - 1])


@dataclass(frozen=True)
class GALesions:
    """GA of one eye over time.

    Attributes:
        field: ``(ny, nx)`` canvas field; a lesion is a super-level set of it.
        field2: the second grader's perturbed field.
        field_faf: the field seen by autofluorescence (locally perturbed: the modalities
            delineate atrophy differently).
        sorted1: ``field`` inside the scanned field, sorted descending.
        sorted2: ``field2`` inside the scanned field, sorted descending.
        sorted_faf: ``field_faf`` inside the scanned field, sorted descending.
        pixel_area: canvas pixel area in mm².
        area0: lesion area in the field (mm²) at day 0.
        rate: growth of the square root of the area, mm per year.
        margin_mm: width of the photoreceptor-loss margin around the RPE loss.
        bias2: area ratio of the second grader's outline to the truth.
        faf_scale: area ratio of the hypo-autofluorescent lesion to the OCT-defined one
            (the two modalities delineate atrophy differently).
    """

    field: np.ndarray
    field2: np.ndarray
    field_faf: np.ndarray
    sorted1: np.ndarray
    sorted2: np.ndarray
    sorted_faf: np.ndarray
    pixel_area: float
    area0: float
    rate: float
    margin_mm: float
    bias2: float
    faf_scale: float

    @classmethod
    def random(cls, rng: np.random.Generator, canvas: Canvas, fov: np.ndarray, fovea: tuple[float, float]) -> GALesions:
        """Draw the GA of one eye.

        Args:
            rng: random generator.
            canvas: the eye's canvas.
            fov: ``(ny, nx)`` bool, canvas pixels inside the scanned field.
            fovea: fovea centre ``(y, x)`` in mm.
        """
        y, x = canvas.coords()
        n_foci = 1 + min(int(rng.poisson(1.3)), 5)
        blobs = np.zeros(canvas.shape, dtype=np.float32)
        for _ in range(n_foci):
            r = min(abs(rng.normal(0.0, 1.2)), 2.6)
            a = rng.uniform(0, 2 * math.pi)
            cy, cx = fovea[0] + r * math.sin(a), fovea[1] + r * math.cos(a)
            s1 = rng.uniform(0.2, 1.0)
            s2 = s1 * rng.uniform(0.45, 1.0)
            o = rng.uniform(0, math.pi)
            dy, dx = y - cy, x - cx
            u = (dx * math.cos(o) + dy * math.sin(o)) / s1
            v = (-dx * math.sin(o) + dy * math.cos(o)) / s2
            blobs = np.maximum(blobs, rng.uniform(0.6, 1.0) * np.exp(-0.5 * (u * u + v * v)))
        texture = canvas.smooth_noise(rng, 0.5)
        fine = canvas.smooth_noise(rng, 0.2)
        field = blobs * np.exp(0.8 * texture + 0.35 * fine)
        field2 = field * np.exp(0.1 * canvas.smooth_noise(rng, 0.25))
        field_faf = field * np.exp(0.15 * canvas.smooth_noise(rng, 0.3))
        area0 = float(np.clip(math.exp(rng.normal(math.log(2.5), 1.0)), 0.05, 18.0))
        return cls(
            field=field.astype(np.float32),
            field2=field2.astype(np.float32),
            field_faf=field_faf.astype(np.float32),
            sorted1=np.sort(field[fov])[::-1].copy(),
            sorted2=np.sort(field2[fov])[::-1].copy(),
            sorted_faf=np.sort(field_faf[fov])[::-1].copy(),
            pixel_area=canvas.cs**2,
            area0=area0,
            rate=float(rng.uniform(0.2, 0.45)),
            margin_mm=float(rng.uniform(0.15, 0.35)),
            bias2=float(math.exp(rng.normal(0.0, 0.12))),
            faf_scale=float(math.exp(rng.normal(0.03, 0.1))),
        )

    def area(self, day: float) -> float:
        """True lesion area (mm²) in the scanned field at ``day``."""
        return (math.sqrt(self.area0) + self.rate * max(day, 0.0) / DAYS_PER_YEAR) ** 2

    def lesion(self, day: float) -> np.ndarray:
        """``(ny, nx)`` bool lesion (RPE loss) at ``day``."""
        return self.field > _level_for_area(self.sorted1, self.area(day), self.pixel_area)

    def lesion_grader2(self, day: float) -> np.ndarray:
        """``(ny, nx)`` bool outline of the second grader at ``day``."""
        return self.field2 > _level_for_area(self.sorted2, self.area(day) * self.bias2, self.pixel_area)

    def photoreceptor_loss(self, day: float, cs: float) -> np.ndarray:
        """``(ny, nx)`` in [0, 1]: 1 inside the lesion, tapering to 0 at ``margin_mm`` from
        its border (photoreceptor loss extends beyond the RPE loss).

        Args:
            day: visit day.
            cs: canvas pixel size in mm.
        """
        lesion = self.lesion(day)
        if not lesion.any():
            return np.zeros(lesion.shape, dtype=np.float32)
        dist = ndimage.distance_transform_edt(~lesion, sampling=cs)
        return np.clip(1.0 - dist / self.margin_mm, 0.0, 1.0).astype(np.float32)

    def faf_lesion(self, day: float) -> tuple[np.ndarray, np.ndarray]:
        """The atrophy as autofluorescence shows it at ``day``.

        Returns:
            ``(lesion, junction)``, both ``(ny, nx)`` float32: the hypo-autofluorescent
            lesion in {0, 1} (``faf_scale`` times the true area, locally perturbed) and its
            junctional zone in [0, 1]: 1 at the border, fading to 0 where the lesion will
            have grown 0.25 mm (square-root area) further; its width varies along the
            border like the field's level sets.
        """
        side = math.sqrt(self.area(day) * self.faf_scale)
        f = self.field_faf
        inner = _level_for_area(self.sorted_faf, side**2, self.pixel_area)
        outer = _level_for_area(self.sorted_faf, (side + 0.25) ** 2, self.pixel_area)
        lesion = (f > inner).astype(np.float32)
        if not math.isfinite(inner):
            return lesion, np.zeros(f.shape, dtype=np.float32)
        if not math.isfinite(outer):
            outer = float(self.sorted_faf[-1])
        if inner <= outer:
            return lesion, np.zeros(f.shape, dtype=np.float32)
        zone = np.clip((f - outer) / (inner - outer), 0.0, 1.0) * (1.0 - lesion)
        return lesion, zone.astype(np.float32)


@dataclass(frozen=True)
class RPDMaps:
    """RPD of one visit on the canvas.

    Attributes:
        height: ``(ny, nx)`` mound height above the RPE in mm.
        rel_dist: ``(ny, nx)`` distance to the nearest active deposit centre divided by its
            radius (``inf`` where there is none).
        mask: ``(ny, nx)`` bool deposits as outlined by the primary grader.
        mask2: ``(ny, nx)`` bool deposits as outlined by the second grader.
    """

    height: np.ndarray
    rel_dist: np.ndarray
    mask: np.ndarray
    mask2: np.ndarray


@dataclass(frozen=True)
class RPDDeposits:
    """Reticular pseudodrusen of one eye over time.

    Attributes:
        centres: ``(n, 2)`` deposit centres ``(y, x)`` in mm.
        radius: ``(n,)`` deposit radius in mm.
        height: ``(n,)`` mound height at day 0 in mm.
        region: ``(n,)`` value of the regional field at each centre (higher: earlier onset).
        in_fov: ``(n,)`` bool, centre inside the scanned field.
        frac0: fraction of the field's lattice sites with a deposit at day 0.
        spread: yearly increase of that fraction.
        seen2: ``(n,)`` bool, deposits the second grader marks.
        scale2: radius factor of the second grader's outlines.
    """

    centres: np.ndarray
    radius: np.ndarray
    height: np.ndarray
    region: np.ndarray
    in_fov: np.ndarray
    frac0: float
    spread: float
    seen2: np.ndarray
    scale2: float

    @classmethod
    def random(
        cls, rng: np.random.Generator, canvas: Canvas, field_half: tuple[float, float], fovea: tuple[float, float]
    ) -> RPDDeposits:
        """Draw the RPD of one eye.

        Args:
            rng: random generator.
            canvas: the eye's canvas (its extent bounds the lattice).
            field_half: half height and half width of the scanned field in mm.
            fovea: fovea centre ``(y, x)`` in mm.
        """
        s = rng.uniform(0.17, 0.28)
        hy, hx = abs(canvas.y0), abs(canvas.x0)
        rows = np.arange(-hy, hy + s, s * math.sqrt(3) / 2)
        cols = np.arange(-hx, hx + s, s)
        cy, cx = np.meshgrid(rows, cols, indexing="ij")
        cx = cx + (np.arange(len(rows))[:, None] % 2) * s / 2
        centres = np.stack([cy.ravel(), cx.ravel()], axis=1)
        centres = centres + rng.normal(0.0, 0.12 * s, centres.shape)
        centres = centres[rng.random(len(centres)) < 0.85]
        n = len(centres)
        radius = s * rng.uniform(0.28, 0.4) * rng.uniform(0.8, 1.2, n)
        height = rng.uniform(0.025, 0.055) * rng.uniform(0.6, 1.2, n)
        # regional field: superior macula (negative y) first, fovea spared, smooth randomness
        dy, dx = centres[:, 0] - fovea[0], centres[:, 1] - fovea[1]
        r = np.hypot(dy, dx)
        noise = canvas.sample(canvas.smooth_noise(rng, 1.5), centres[:, 0], centres[:, 1])
        region = -0.35 * dy + 0.15 * r - 1.0 * np.exp(-((r / 0.8) ** 2)) + 0.6 * noise
        in_fov = (np.abs(centres[:, 0]) <= field_half[0]) & (np.abs(centres[:, 1]) <= field_half[1])
        return cls(
            centres=centres,
            radius=radius,
            height=height,
            region=region,
            in_fov=in_fov,
            frac0=float(rng.uniform(0.15, 0.5)),
            spread=float(rng.uniform(0.04, 0.1)),
            seen2=rng.random(n) < 0.85,
            scale2=float(rng.uniform(0.7, 1.05)),
        )

    def active(self, day: float) -> np.ndarray:
        """``(n,)`` bool: deposits present at ``day``."""
        years = max(day, 0.0) / DAYS_PER_YEAR
        frac = min(self.frac0 + self.spread * years, 0.95)
        ref = np.sort(self.region[self.in_fov])[::-1]
        if len(ref) == 0:
            return np.zeros(len(self.region), dtype=bool)
        level = ref[min(len(ref) - 1, max(0, int(frac * len(ref)) - 1))]
        return self.region >= level

    def rasterise(self, canvas: Canvas, day: float) -> RPDMaps:
        """Deposits present at ``day``, drawn on the canvas."""
        ny, nx = canvas.shape
        act = np.flatnonzero(self.active(day))
        seeds = np.zeros((ny, nx), dtype=np.int64)
        iy, ix = canvas.to_index(self.centres[act, 0], self.centres[act, 1])
        iy, ix = np.rint(iy).astype(np.int64), np.rint(ix).astype(np.int64)
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        seeds[iy[ok], ix[ok]] = act[ok] + 1
        if not ok.any():
            inf = np.full((ny, nx), np.inf, dtype=np.float32)
            empty = np.zeros((ny, nx), dtype=bool)
            return RPDMaps(np.zeros((ny, nx), dtype=np.float32), inf, empty, empty.copy())
        dist, (jy, jx) = ndimage.distance_transform_edt(seeds == 0, sampling=canvas.cs, return_indices=True)
        idx = seeds[jy, jx] - 1
        growth = 1.0 + 0.1 * max(day, 0.0) / DAYS_PER_YEAR
        rel = (dist / self.radius[idx]).astype(np.float32)
        height = (self.height[idx] * growth * np.clip(1.0 - rel**2, 0.0, 1.0)).astype(np.float32)
        mask = rel < 0.7
        mask2 = (rel < 0.7 * self.scale2) & self.seen2[idx]
        return RPDMaps(height, rel, mask, mask2)


@dataclass(frozen=True)
class Drusen:
    """Soft drusen of one eye (static over the visits).

    Attributes:
        centres: ``(n, 2)`` centres ``(y, x)`` in mm.
        radius: ``(n,)`` base radius in mm (50 to 200 µm: medium to large drusen).
        height: ``(n,)`` apex height of the RPE above Bruch's membrane in mm.
    """

    centres: np.ndarray
    radius: np.ndarray
    height: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, fovea: tuple[float, float]) -> Drusen:
        """Draw the drusen of one eye: clustered in the central macula around ``fovea``."""
        n = 20 + int(rng.poisson(40))
        spread = rng.uniform(0.6, 1.2)
        centres = np.asarray(fovea)[None, :] + rng.normal(0.0, spread, (n, 2))
        radius = rng.uniform(0.05, 0.2, n)
        height = np.clip(radius * rng.uniform(0.25, 0.5, n), 0.015, 0.08)
        return cls(centres=centres, radius=radius, height=height)

    def rasterise(self, canvas: Canvas, spared: np.ndarray | None = None) -> np.ndarray:
        """``(ny, nx)`` float32 height (mm) of the RPE above BM: the upper envelope of domes.

        Args:
            canvas: the eye's canvas.
            spared: ``(ny, nx)`` in [0, 1], where drusen have regressed (GA): height scaled
                by ``1 - spared``.
        """
        y, x = canvas.coords()
        out = np.zeros(canvas.shape, dtype=np.float32)
        for (cy, cx), r, h in zip(self.centres, self.radius, self.height):
            iy, ix = canvas.to_index(np.array([cy - r, cy + r]), np.array([cx - r, cx + r]))
            r0, r1 = max(0, int(iy[0])), min(canvas.shape[0], int(iy[1]) + 2)
            c0, c1 = max(0, int(ix[0])), min(canvas.shape[1], int(ix[1]) + 2)
            if r0 >= r1 or c0 >= c1:
                continue
            rho2 = ((y[r0:r1] - cy) ** 2 + (x[:, c0:c1] - cx) ** 2) / (r * r)
            dome = h * np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
            out[r0:r1, c0:c1] = np.maximum(out[r0:r1, c0:c1], dome)
        if spared is not None:
            out *= np.clip(1.0 - spared, 0.0, 1.0)
        return out
