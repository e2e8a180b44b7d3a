"""Retinal vessel tree of a phantom macula.

Vessels leave the optic disc (nasal, just outside a 6 mm macular field), the four main
ones arch above and below the fovea (superior/inferior arcades, an artery and a vein on
each side), side branches run towards the fovea and stop at the foveal avascular zone,
and a few small macular vessels come straight from the disc. Paths are random walks in mm;
they are rasterised on the canvas with one Euclidean distance transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from enface.synth.canvas import Canvas

__all__ = ["VesselMaps", "VesselPath", "grow_vessel_tree", "rasterise_vessels"]

MIN_RADIUS_MM = 0.012


@dataclass(frozen=True)
class VesselPath:
    """A vessel centreline.

    Attributes:
        points: ``(n, 2)`` centreline points ``(y, x)`` in mm.
        radius: ``(n,)`` lumen radius in mm along the path.
    """

    points: np.ndarray
    radius: np.ndarray


@dataclass(frozen=True)
class VesselMaps:
    """Rasterised vessels on the canvas.

    Attributes:
        profile: ``(ny, nx)`` in [0, 1]: relative path length through the vessel
            (1 on the centreline, 0 outside).
        radius: ``(ny, nx)`` radius (mm) of the nearest vessel centreline.
    """

    profile: np.ndarray
    radius: np.ndarray

    def opacity(self, ref_radius_mm: float = 0.06) -> np.ndarray:
        """``(ny, nx)`` light absorbed by blood relative to a vessel of ``ref_radius_mm``:
        the profile scaled by the vessel's calibre (thin vessels are fainter)."""
        return (self.profile * np.clip(self.radius / ref_radius_mm, 0.25, 1.0)).astype(np.float32)


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    angle: float,
    length: float,
    r0: float,
    step: float,
    wobble: float = 0.5,
) -> VesselPath:
    """A tapering random-walk path from ``start`` in direction ``angle`` (rad, 0 = +x).

    ``wobble`` is the standard deviation (rad) of the direction change per mm.
    """
    n = max(2, int(length / step))
    turns = rng.normal(0.0, wobble * math.sqrt(step), n)
    turns[0] = 0.0
    ang = angle + np.cumsum(turns)
    steps = step * np.stack([np.sin(ang), np.cos(ang)], axis=1)
    pts = start[None, :] + np.cumsum(steps, axis=0) - steps[0]
    radius = np.maximum(np.linspace(r0, 0.65 * r0, n), MIN_RADIUS_MM)
    return VesselPath(pts, radius)


def _cut_at(path: VesselPath, fovea: np.ndarray, faz: float) -> VesselPath | None:
    """Truncate a path where it first enters the foveal avascular zone."""
    inside = np.hypot(*(path.points - fovea[None, :]).T) < faz
    stop = int(np.argmax(inside)) if inside.any() else len(inside)
    if stop < 2:
        return None
    return VesselPath(path.points[:stop], path.radius[:stop])


def _branches(
    rng: np.random.Generator,
    parent: VesselPath,
    fovea: np.ndarray,
    faz: float,
    step: float,
    spacing_mm: tuple[float, float],
    depth: int,
    out: list[VesselPath],
) -> None:
    """Add side branches of ``parent`` (and theirs, ``depth`` levels down) to ``out``."""
    if depth <= 0 or len(parent.points) < 4:
        return
    seg = np.hypot(*np.diff(parent.points, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    pos = rng.uniform(*spacing_mm) * rng.uniform(0.3, 1.0)
    while pos < arc[-1] * 0.95:
        i = int(np.searchsorted(arc, pos))
        p = parent.points[i]
        tangent = parent.points[min(i + 1, len(arc) - 1)] - parent.points[max(i - 1, 0)]
        t_ang = math.atan2(tangent[0], tangent[1])
        to_fovea = math.atan2(fovea[0] - p[0], fovea[1] - p[1])
        # side towards the fovea most of the time, away from it otherwise
        side = math.copysign(1.0, math.sin(to_fovea - t_ang))
        if rng.random() < 0.3:
            side = -side
        ang = t_ang + side * math.radians(rng.uniform(35, 75))
        r0 = max(float(parent.radius[i]) * rng.uniform(0.5, 0.75), MIN_RADIUS_MM)
        walked = _walk(rng, p, ang, rng.uniform(0.5, 2.2) * (1 + depth) / 2, r0, step, wobble=0.8)
        child = _cut_at(walked, fovea, faz)
        if child is not None:
            out.append(child)
            finer = (spacing_mm[0] * 0.8, spacing_mm[1] * 0.8)
            _branches(rng, child, fovea, faz, step, finer, depth - 1, out)
        pos += rng.uniform(*spacing_mm)


def grow_vessel_tree(
    rng: np.random.Generator, fovea: tuple[float, float], disc: tuple[float, float], step: float = 0.01
) -> list[VesselPath]:
    """Random vessel tree of one eye.

    Args:
        rng: random generator.
        fovea: fovea centre ``(y, x)`` in mm.
        disc: optic-disc centre ``(y, x)`` in mm (nasal side, outside the macular field).
        step: sampling step of the centrelines in mm (half a canvas pixel or finer).

    Returns:
        The vessel paths (arcades, their branches, direct macular vessels).
    """
    f = np.asarray(fovea, dtype=np.float64)
    dsc = np.asarray(disc, dtype=np.float64)
    to_disc = dsc - f
    dist = float(np.hypot(*to_disc))
    nasal = math.atan2(to_disc[0], to_disc[1])
    faz = rng.uniform(0.25, 0.4)
    paths: list[VesselPath] = []
    trunks: list[VesselPath] = []
    for side in (-1.0, 1.0):
        for r0, r_arc in (
            (rng.uniform(0.042, 0.052), rng.uniform(2.2, 2.9)),
            (rng.uniform(0.055, 0.068), rng.uniform(2.4, 3.1)),
        ):
            end = math.radians(rng.uniform(150, 185))
            n = max(8, int(end * r_arc / step))
            theta = np.linspace(0.0, end, n)
            wig = np.cumsum(rng.normal(0, 0.015 * math.sqrt(step / 0.01), n))
            wig -= np.linspace(0, 1, n) * wig[-1] * 0.5
            r = r_arc + (dist - r_arc) * np.exp(-theta / 0.45) + wig
            ang = nasal + side * theta
            pts = f[None, :] + r[:, None] * np.stack([np.sin(ang), np.cos(ang)], axis=1)
            trunk = VesselPath(pts, np.maximum(np.linspace(r0, 0.6 * r0, n), MIN_RADIUS_MM))
            trunks.append(trunk)
    paths.extend(trunks)
    for trunk in trunks:
        _branches(rng, trunk, f, faz, step, (0.7, 1.5), depth=2, out=paths)
    # small macular vessels straight from the disc towards the fovea
    for k in range(int(rng.integers(2, 5))):
        side = 1.0 if k % 2 else -1.0
        direction = nasal + math.pi + side * math.radians(rng.uniform(6, 22))
        walked = _walk(rng, dsc, direction, float(dist), rng.uniform(0.025, 0.035), step, wobble=0.35)
        direct = _cut_at(walked, f, faz)
        if direct is not None:
            paths.append(direct)
            _branches(rng, direct, f, faz, step, (0.8, 1.6), depth=1, out=paths)
    return paths


def rasterise_vessels(paths: list[VesselPath], canvas: Canvas) -> VesselMaps:
    """Draw vessel paths on the canvas.

    Each canvas pixel takes the radius of its nearest centreline pixel; the profile is the
    chord length through a round vessel, ``sqrt(1 - (d / r)^2)``.

    Args:
        paths: centrelines (sampled at half a canvas pixel or finer).
        canvas: target canvas.

    Returns:
        The profile and radius maps.
    """
    ny, nx = canvas.shape
    r_img = np.zeros((ny, nx), dtype=np.float32)
    for path in paths:
        iy, ix = canvas.to_index(path.points[:, 0], path.points[:, 1])
        iy, ix = np.rint(iy).astype(np.int64), np.rint(ix).astype(np.int64)
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        np.maximum.at(r_img, (iy[ok], ix[ok]), path.radius[ok].astype(np.float32))
    if not (r_img > 0).any():
        zeros = np.zeros((ny, nx), dtype=np.float32)
        return VesselMaps(zeros, zeros.copy())
    dist, (jy, jx) = ndimage.distance_transform_edt(r_img == 0, sampling=canvas.cs, return_indices=True)
    radius = r_img[jy, jx]
    # a centreline pixel stands for a segment of width cs: widen by half a pixel
    eff = np.sqrt(radius**2 + (canvas.cs / 2) ** 2)
    profile = np.sqrt(np.clip(1.0 - (dist / eff) ** 2, 0.0, 1.0)).astype(np.float32)
    return VesselMaps(profile, radius.astype(np.float32))
