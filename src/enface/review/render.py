"""Pixels for the page: en-face projections, display ranges and PNG encoding.

Everything here works on one case's arrays and returns small 2D images; nothing keeps a
volume in memory. The volume is read B-scan block by B-scan block from its memory map, so
computing the projections of a 49 x 1024 x 128 case touches ~25 MB once and holds a few MB.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from enface.data.preprocess import FlattenParams

__all__ = [
    "SUB_BM_SLAB_MM",
    "EnfaceMaps",
    "bm_depth_index",
    "bscan_image",
    "compute_maps",
    "png_bytes",
    "stretch_to_u8",
    "sub_bm_slab",
]

SUB_BM_SLAB_MM: tuple[float, float] = (0.0, 0.4)
"""Depth range below Bruch's membrane (mm) averaged by the sub-BM projection: the choroid,
where GA shows as hypertransmission (bright)."""

_BLOCK_VOXELS = 1 << 22  # B-scans are read in blocks of ~4 M voxels
_DISPLAY_PERCENTILES = (0.5, 99.8)


@dataclass(frozen=True)
class EnfaceMaps:
    """The OCT-derived en-face images of one case and the B-scan display range.

    Attributes:
        mean: ``(H, W)`` uint8 mean-intensity projection along depth, stretched.
        sub_bm: ``(H, W)`` uint8 mean of the slab below BM (:data:`SUB_BM_SLAB_MM`),
            stretched; None when the volume holds less than two samples below BM.
        slab: ``(top, bottom)`` depth indices of that slab (bottom exclusive), or None.
        display_range: ``(lo, hi)`` raw intensities mapped to black and white in B-scans.
    """

    mean: np.ndarray
    sub_bm: np.ndarray | None
    slab: tuple[int, int] | None
    display_range: tuple[float, float]

    @property
    def nbytes(self) -> int:
        return int(self.mean.nbytes + (0 if self.sub_bm is None else self.sub_bm.nbytes))


def bm_depth_index(extra: Mapping[str, Any], depth: int) -> float:
    """Depth index of Bruch's membrane in a flattened volume of ``depth`` samples.

    ``enface prepare`` records it in ``meta.json`` as ``extra.flatten.bm_index``, the
    phantom as ``extra.bm_depth``; otherwise the default flattening window is assumed.
    """
    flatten = extra.get("flatten")
    for value in (flatten.get("bm_index") if isinstance(flatten, Mapping) else None, extra.get("bm_depth")):
        if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < depth:
            return float(value)
    return FlattenParams(depth=depth).bm_index


def sub_bm_slab(bm_index: float, depth: int, depth_spacing_mm: float) -> tuple[int, int] | None:
    """``(top, bottom)`` depth indices of the slab :data:`SUB_BM_SLAB_MM` below BM, or None if thinner than 2."""
    top = max(0, math.floor(bm_index + SUB_BM_SLAB_MM[0] / depth_spacing_mm) + 1)
    bottom = min(depth, math.floor(bm_index + SUB_BM_SLAB_MM[1] / depth_spacing_mm) + 1)  # k - bm <= the slab
    return (top, bottom) if bottom - top >= 2 else None


def stretch_to_u8(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map ``image`` linearly onto 0..255 (default range: its 0.5th to 99.8th percentiles)."""
    img = np.asarray(image, dtype=np.float32)
    lo, hi = value_range if value_range is not None else _percentile_range(img)
    scaled = (img - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _percentile_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, _DISPLAY_PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def compute_maps(volume: np.ndarray, spacing: tuple[float, float, float], extra: Mapping[str, Any]) -> EnfaceMaps:
    """Projections and display range of a ``(H, W, D)`` volume, read block by block.

    Args:
        volume: the (memory-mapped) volume.
        spacing: ``(sh, sw, sd)`` in mm.
        extra: ``meta.json``'s ``extra`` (where BM sits).
    """
    h, w, d = volume.shape
    slab = sub_bm_slab(bm_depth_index(extra, d), d, spacing[2])
    mean = np.empty((h, w), np.float32)
    sub = np.empty((h, w), np.float32) if slab is not None else None
    rows = max(1, _BLOCK_VOXELS // max(1, w * d))
    samples = []
    for i0 in range(0, h, rows):
        block = np.asarray(volume[i0 : i0 + rows], dtype=np.float32)
        mean[i0 : i0 + rows] = block.mean(axis=-1)
        if sub is not None and slab is not None:
            sub[i0 : i0 + rows] = block[..., slab[0] : slab[1]].mean(axis=-1)
        samples.append(block[:, ::4, ::2].ravel())
    return EnfaceMaps(
        mean=stretch_to_u8(mean),
        sub_bm=None if sub is None else stretch_to_u8(sub),
        slab=slab,
        display_range=_percentile_range(np.concatenate(samples)),
    )


def bscan_image(volume: np.ndarray, row: int, display_range: tuple[float, float]) -> np.ndarray:
    """B-scan ``row`` of a ``(H, W, D)`` volume as a ``(D, W)`` uint8 image (depth down, A-scans across)."""
    return stretch_to_u8(np.asarray(volume[row], dtype=np.float32).T, display_range)


def png_bytes(image: np.ndarray) -> bytes:
    """A ``(h, w)`` uint8 image as PNG bytes (fast compression: these are sent, not stored)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
