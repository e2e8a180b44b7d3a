"""En-face geometry: the acquisition grid and the fine physical canvas the fundus is drawn on.

Every en-face structure of a phantom eye (vessels, lesions, background texture) is drawn
once on a fine, isotropic *canvas* in mm, centred on the scan centre, a little larger than
the scanned field. It is then sampled onto the (anisotropic) acquisition grid in two ways:

* **point sampling** at the B-scan lines and A-scan positions: what the OCT sees, and what a
  grader annotating B-scans marks;
* **area sampling** over each pixel's footprint: what an SLO/FAF image resized to the OCT
  en-face grid shows (structures between B-scans are visible there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Affine", "Canvas", "Grid"]


@dataclass(frozen=True)
class Grid:
    """The acquisition grid of one scan.

    Attributes:
        shape: ``(H, W, D)``: B-scans, A-scans per B-scan, depth samples.
        spacing: ``(sh, sw, sd)`` in mm.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be 3 positive integers (H, W, D), got {self.shape}")
        if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be 3 positive numbers in mm, got {self.spacing}")

    @property
    def extent(self) -> tuple[float, float, float]:
        """Physical size ``(height, width, depth)`` in mm."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]

    def rows_mm(self) -> np.ndarray:
        """``(H,)`` y coordinate (mm, 0 at the scan centre) of each B-scan line."""
        h, sh = self.shape[0], self.spacing[0]
        return ((np.arange(h) + 0.5) * sh - h * sh / 2).astype(np.float64)

    def cols_mm(self) -> np.ndarray:
        """``(W,)`` x coordinate (mm, 0 at the scan centre) of each A-scan."""
        w, sw = self.shape[1], self.spacing[1]
        return ((np.arange(w) + 0.5) * sw - w * sw / 2).astype(np.float64)


@dataclass(frozen=True)
class Affine:
    """Small rigid-plus-scale misregistration of an image relative to the OCT grid.

    A grid point ``(y, x)`` is looked up at ``scale * R(rot) @ (y, x) + (ty, tx)``.
    """

    ty: float = 0.0
    tx: float = 0.0
    rot_deg: float = 0.0
    scale: float = 1.0

    def apply(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(math.radians(self.rot_deg)), math.sin(math.radians(self.rot_deg))
        return (self.scale * (c * y - s * x) + self.ty, self.scale * (s * y + c * x) + self.tx)


@dataclass(frozen=True)
class Canvas:
    """A fine isotropic en-face raster in mm.

    Attributes:
        y0: y (mm) of the top edge of the first canvas row.
        x0: x (mm) of the left edge of the first canvas column.
        cs: canvas pixel size in mm.
        shape: ``(ny, nx)``.
    """

    y0: float
    x0: float
    cs: float
    shape: tuple[int, int]

    @classmethod
    def for_grid(cls, grid: Grid, margin_mm: float = 0.3) -> Canvas:
        """A canvas covering ``grid``'s field plus ``margin_mm`` on each side.

        The pixel size is a third of the finest en-face spacing, kept within
        [0.0125, 0.05] mm: fine enough for small vessels, coarse enough to stay fast.
        """
        eh, ew, _ = grid.extent
        cs = float(np.clip(min(grid.spacing[:2]) / 3.0, 0.0125, 0.05))
        ny = int(math.ceil((eh + 2 * margin_mm) / cs))
        nx = int(math.ceil((ew + 2 * margin_mm) / cs))
        return cls(y0=-ny * cs / 2, x0=-nx * cs / 2, cs=cs, shape=(ny, nx))

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates: ``Y`` of shape ``(ny, 1)`` and ``X`` of shape ``(1, nx)`` in mm."""
        ny, nx = self.shape
        y = (self.y0 + (np.arange(ny) + 0.5) * self.cs).astype(np.float32)
        x = (self.x0 + (np.arange(nx) + 0.5) * self.cs).astype(np.float32)
        return y[:, None], x[None, :]

    def to_index(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional canvas indices (row, column) of points in mm."""
        return (np.asarray(y) - self.y0) / self.cs - 0.5, (np.asarray(x) - self.x0) / self.cs - 0.5

    def sample(self, image: np.ndarray, y: np.ndarray, x: np.ndarray, order: int = 1) -> np.ndarray:
        """Values of a canvas ``image`` at points ``(y, x)`` in mm (same-shaped arrays)."""
        iy, ix = self.to_index(y, x)
        out = ndimage.map_coordinates(
            np.asarray(image, dtype=np.float32), [iy.ravel(), ix.ravel()], order=order, mode="nearest"
        )
        return out.reshape(np.shape(iy)).astype(np.float32)

    def to_grid(
        self,
        image: np.ndarray,
        grid: Grid,
        area: bool = False,
        affine: Affine | None = None,
        motion: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Sample a canvas image onto the en-face grid.

        Args:
            image: ``(ny, nx)`` canvas image.
            grid: target acquisition grid.
            area: average over each grid pixel's footprint (fundus images) instead of
                point-sampling at the B-scan lines (OCT, annotations).
            affine: misregistration applied to the grid points before the lookup.
            motion: ``(dy, dx)``, each ``(H,)`` mm: where the eye had moved when each
                B-scan was taken (the B-scan samples the fundus at ``y + dy``, ``x + dx``).

        Returns:
            ``(H, W)`` float32 image.
        """
        img = np.asarray(image, dtype=np.float32)
        if area:
            size = (max(1, round(grid.spacing[0] / self.cs)), max(1, round(grid.spacing[1] / self.cs)))
            if size != (1, 1):
                img = ndimage.uniform_filter(img, size=size, mode="nearest")
        y = np.broadcast_to(grid.rows_mm()[:, None], grid.shape[:2])
        x = np.broadcast_to(grid.cols_mm()[None, :], grid.shape[:2])
        if motion is not None:
            y = y + np.asarray(motion[0], dtype=np.float64)[:, None]
            x = x + np.asarray(motion[1], dtype=np.float64)[:, None]
        if affine is not None:
            y, x = affine.apply(y, x)
        return self.sample(img, y, x, order=1)

    def fov(self, grid: Grid) -> np.ndarray:
        """``(ny, nx)`` bool: canvas pixels inside the scanned field of ``grid``."""
        eh, ew, _ = grid.extent
        y, x = self.coords()
        return (np.abs(y) <= eh / 2) & (np.abs(x) <= ew / 2)

    def smooth_noise(self, rng: np.random.Generator, corr_mm: float) -> np.ndarray:
        """A smooth Gaussian random field of unit standard deviation on the canvas.

        White noise on a coarse lattice convolved with a Gaussian kernel of standard
        deviation ``corr_mm / 2``, evaluated separably as ``Ky @ noise @ Kx.T``: cost
        proportional to the canvas size, whatever the correlation length.

        Args:
            rng: random generator.
            corr_mm: correlation length in mm.

        Returns:
            ``(ny, nx)`` float32 field.
        """
        sigma = corr_mm / 2.0
        step = sigma / 1.5
        y, x = self.coords()

        def kernel(c: np.ndarray) -> np.ndarray:
            c = c.ravel().astype(np.float64)
            lattice = np.arange(c[0] - 3 * sigma, c[-1] + 3 * sigma + step, step)
            return np.exp(-0.5 * ((c[:, None] - lattice[None, :]) / sigma) ** 2)

        ky, kx = kernel(y), kernel(x)
        field = ky @ rng.standard_normal((ky.shape[1], kx.shape[1])) @ kx.T
        return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)
