"""The common in-memory record every reader returns: :class:`Scan`.

A reader turns one device export (or one file of a common format) into a :class:`Scan`:
the raw, un-flattened OCT volume on the ``(H, W, D)`` axes (README), its spacing, the 2D
modalities in their native pixel spaces, where each B-scan lies on the reference 2D image,
a Bruch's membrane (BM) segmentation when the export has one, en-face masks and metadata.
:mod:`enface.data.prepare` turns a :class:`Scan` into a case of the dataset folder.

Coordinates on 2D images are ``(x, y)`` = (column, row) in pixels, pixel centres at integers.

**Orientation.** A reader may reverse axes of the stored volume to bring its en-face grid
into the orientation of the reference image (Spectralis stores B-scans bottom-up: B-scan 0
is the lowest on the SLO). :func:`orient_scan` does it for everything already on the grid
and records it in :attr:`Scan.file_flips`. Companion files on the OCT grid (masks,
``_bm.npy``) are in the order of the file as the user holds it (row ``r`` = B-scan ``r`` of
the export, column ``c`` = its A-scan ``c``, BM depth counted from the file's depth 0):
:meth:`Scan.enface_from_file` and :meth:`Scan.bm_from_file` bring them onto the grid, and
:meth:`Scan.enface_to_file` takes an en-face map back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError

__all__ = [
    "MASK_SPACES",
    "MAX_VISIT_DAY",
    "SPACING_RANGE_MM",
    "Scan",
    "check_visit_day",
    "clean_id",
    "full_image_box",
    "normalise_eye",
    "orient_scan",
    "orientation_from_positions",
    "positions_from_box",
    "safe_id",
    "source_str",
    "spacing_error",
    "spacing_problem",
    "to_unit_float",
    "unique_ids",
]

MASK_SPACES: tuple[str, ...] = ("oct", "slo", "faf")
"""Where an en-face mask may be drawn: on the OCT grid, on the SLO or on the FAF image."""

SPACING_RANGE_MM: tuple[float, float] = (1e-4, 10.0)
"""Plausible voxel sizes (mm): 0.1 µm to 10 mm. Outside it a spacing is a unit mistake (µm or
m taken for mm) or garbage, and sizes, areas and the BM fit would be meaningless."""

MAX_VISIT_DAY = 36500
"""The largest visit day accepted (100 years after the first visit)."""


def spacing_problem(spacing: Any) -> str | None:
    """What is wrong with a voxel spacing ``(sh, sw, sd)`` in mm, or None when it is usable.

    Usable: three real numbers (not booleans), finite, within :data:`SPACING_RANGE_MM`. The
    reason is short, to follow "spacing must be ... (" in a message.
    """
    lo, hi = SPACING_RANGE_MM
    try:
        values = list(spacing)
    except TypeError:
        return "not a list of three numbers"
    if len(values) != 3:
        return f"{len(values)} values instead of three"
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return f"{v!r} is not a number"
        if not np.isfinite(v) or v <= 0:
            return f"{v!r} is not positive and finite"
        if not lo <= v <= hi:
            return f"{v!r} mm is outside the plausible range {lo:g} to {hi:g} mm: a unit mistake?"
    return None


def spacing_error(spacing: Any, where: str) -> str | None:
    """The message refusing ``spacing`` (naming ``where``), or None when it is usable."""
    problem = spacing_problem(spacing)
    if problem is None:
        return None
    return f"{where}: spacing must be three voxel sizes [sh, sw, sd] in mm ({problem}), got {spacing!r}"


def check_visit_day(value: Any, where: str) -> int:
    """A visit day as an int: an integer (or integral float) from 0 to :data:`MAX_VISIT_DAY`.

    Raises:
        DatasetError: naming ``where``: not an integer, fractional, negative or too large.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, float) and np.isfinite(value) and value.is_integer():
        ok, value = True, int(value)
    if not ok:
        raise DatasetError(f"visit must be a whole number of days, got {value!r}", path=where)
    if not 0 <= int(value) <= MAX_VISIT_DAY:
        raise DatasetError(f"visit must be a day from 0 to {MAX_VISIT_DAY} (100 years), got {value!r}", path=where)
    return int(value)


@dataclass
class Scan:
    """One OCT scan with everything that belongs to it, as read from disk.

    Attributes:
        volume: ``(H, W, D)`` OCT volume (float32, or uint8/uint16 as stored), not
            flattened; depth index 0 is the vitreous side.
        spacing: voxel spacing ``(sh, sw, sd)`` in mm.
        source: the file or folder the scan was read from (named in every error).
        slo: ``(h, w)`` float32 SLO / infrared localizer in [0, 1], native resolution.
        faf: ``(h', w')`` float32 FAF image in [0, 1], native resolution.
        bscan_positions: ``(H, 2, 2)`` start and end ``(x, y)`` of each B-scan on the
            reference image (the SLO when there is one), in pixels. ``positions[i, 0]`` is
            A-scan 0 of B-scan ``i`` and ``positions[i, 1]`` is A-scan ``W - 1``.
        faf_to_slo: ``(3, 3)`` affine mapping FAF pixel ``(x, y, 1)`` to the reference space,
            when known (e.g. identity when the FAF is already aligned); ``None`` means it
            must be found by registration against the SLO.
        bm: ``(H, W)`` BM depth (in voxels of ``volume``, float, NaN where missing) from
            the export, or ``None`` to estimate it.
        extra_volumes: further channels on the same grid as ``volume``, e.g.
            ``{"octa": (H, W, D)}``; flattened exactly like the OCT.
        masks: en-face masks by key (``"ga"`` or ``"ga.<grader>"``).
        mask_spaces: for each mask key, the space it is drawn in (one of
            :data:`MASK_SPACES`; ``"oct"`` when missing).
        flattened: the volume is already flattened (BM at a constant depth); flattening
            is then skipped.
        file_flips: which axes ``(H, W, D)`` of the volume as stored in the file were
            reversed to give :attr:`volume` (see :func:`orient_scan`).
        meta: ``patient_id``, ``eye`` (``OD``/``OS``), ``visit`` (int day) or
            ``visit_date`` (ISO date), ``device``, and anything else worth keeping.
    """

    volume: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    slo: np.ndarray | None = None
    faf: np.ndarray | None = None
    bscan_positions: np.ndarray | None = None
    faf_to_slo: np.ndarray | None = None
    bm: np.ndarray | None = None
    extra_volumes: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mask_spaces: dict[str, str] = field(default_factory=dict)
    flattened: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    file_flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """The en-face grid ``(H, W)``."""
        return int(self.volume.shape[0]), int(self.volume.shape[1])

    def enface_from_file(self, array: np.ndarray) -> np.ndarray:
        """An ``(H, W, ...)`` array in the file's order (row ``r`` = B-scan ``r`` as stored)
        on this scan's grid: the reader's B-scan and A-scan reversals applied."""
        out = np.asarray(array)
        if self.file_flips[0]:
            out = out[::-1]
        if self.file_flips[1]:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def enface_to_file(self, array: np.ndarray) -> np.ndarray:
        """An ``(H, W, ...)`` array on this scan's grid back in the file's order."""
        return self.enface_from_file(array)  # reversals are their own inverse

    def bm_from_file(self, bm: np.ndarray) -> np.ndarray:
        """An ``(H, W)`` BM map in the file's order and depth (voxels counted from the file's
        depth index 0) on this scan's grid and depth axis."""
        out = self.enface_from_file(np.asarray(bm, dtype=np.float32))
        if self.file_flips[2]:
            out = (self.volume.shape[2] - 1) - out
        return out

    def validate(self) -> None:
        """Check shapes, finiteness and spaces before any processing.

        Raises:
            DatasetError: naming :attr:`source` and the problem.
        """
        where = self.source
        vol = self.volume
        if vol.ndim != 3 or min(vol.shape) < 2:
            raise DatasetError(
                f"OCT volume must be 3D (H, W, D) with every axis >= 2, got shape {vol.shape}", path=where
            )
        if not np.isfinite(vol).all():
            n = int((~np.isfinite(vol)).sum())
            raise DatasetError(f"OCT volume has {n} NaN/inf voxels", path=where)
        if float(np.max(vol)) == float(np.min(vol)):
            raise DatasetError(f"OCT volume is constant (every voxel {float(np.min(vol)):g}): no image", path=where)
        problem = spacing_error(tuple(self.spacing), where)
        if problem:
            raise DatasetError(problem)
        hw = self.grid_shape
        for name, extra in self.extra_volumes.items():
            if extra.shape != vol.shape:
                raise DatasetError(
                    f"{name} volume has shape {extra.shape}, expected the OCT shape {vol.shape}", path=where
                )
            if not np.isfinite(extra).all():
                raise DatasetError(f"{name} volume has NaN/inf voxels", path=where)
        for name in ("slo", "faf"):
            img = getattr(self, name)
            if img is None:
                continue
            if img.ndim != 2 or min(img.shape) < 2:
                raise DatasetError(f"{name} image must be 2D, got shape {img.shape}", path=where)
            if not np.isfinite(img).all():
                raise DatasetError(f"{name} image has NaN/inf pixels", path=where)
        if self.bscan_positions is not None:
            pos = np.asarray(self.bscan_positions)
            if pos.shape != (hw[0], 2, 2) or not np.isfinite(pos).all():
                raise DatasetError(
                    f"B-scan positions must be finite with shape {(hw[0], 2, 2)}, got {pos.shape}", path=where
                )
            _check_positions_spread(pos, where)
        if len(self.file_flips) != 3:
            raise DatasetError(f"file_flips must be three booleans (H, W, D), got {self.file_flips!r}", path=where)
        if self.bm is not None and np.asarray(self.bm).shape != hw:
            raise DatasetError(f"BM segmentation has shape {np.asarray(self.bm).shape}, expected {hw}", path=where)
        for key, mask in self.masks.items():
            space = self.mask_spaces.get(key, "oct")
            if space not in MASK_SPACES:
                raise DatasetError(f"mask {key!r} has unknown space {space!r} (known: {MASK_SPACES})", path=where)
            expected = {
                "oct": hw,
                "slo": None if self.slo is None else self.slo.shape,
                "faf": None if self.faf is None else self.faf.shape,
            }[space]
            if expected is None:
                raise DatasetError(
                    f"mask {key!r} is drawn on the {space.upper()} but the scan has no {space.upper()} image",
                    path=where,
                )
            if mask.shape != expected:
                raise DatasetError(
                    f"mask {key!r} has shape {mask.shape}, expected {expected} ({space} space)", path=where
                )
            values = np.unique(mask)
            if not set(values.tolist()) <= {0, 1}:
                raise DatasetError(f"mask {key!r} is not binary (values {values[:8].tolist()})", path=where)


def _check_positions_spread(pos: np.ndarray, where: str) -> None:
    """Refuse B-scan positions that collapse the grid onto a point or a line of the SLO (the
    SLO sampled there would be constant along B-scans or A-scans)."""
    if pos.shape[0] > 1 and float(np.ptp(pos, axis=0).max()) < 1e-6:
        raise DatasetError(
            f"all {pos.shape[0]} B-scan positions are identical: the SLO cannot be placed on the grid "
            "(check slo_box / faf_box, or the export's B-scan positions)",
            path=where,
        )
    if float(np.abs(pos[:, 1] - pos[:, 0]).max()) < 1e-6:
        raise DatasetError(
            "every B-scan starts and ends at the same point on the SLO: the SLO cannot be placed "
            "on the grid (check slo_box / faf_box, or the export's B-scan positions)",
            path=where,
        )


def orient_scan(scan: Scan, flip_bscans: bool, flip_ascans: bool) -> Scan:
    """Reverse the B-scan and/or A-scan order of everything on the scan's OCT grid (in place).

    Volume, extra volumes, B-scan positions, BM and OCT-grid masks are reversed together;
    the reversals are added to :attr:`Scan.file_flips` (and to ``meta`` as
    ``flipped_bscans`` / ``flipped_ascans``, stored in ``meta.json``), so that companions
    in the file's order can be brought onto the grid later.

    Returns:
        The same scan.
    """

    def flip(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        if flip_bscans:
            a = a[::-1]
        if flip_ascans:
            a = a[:, ::-1]  # for positions: start and end of each B-scan swap
        return np.ascontiguousarray(a)

    scan.volume = flip(scan.volume)  # type: ignore[assignment]
    scan.extra_volumes = {k: flip(v) for k, v in scan.extra_volumes.items()}  # type: ignore[misc]
    scan.bscan_positions = flip(scan.bscan_positions)
    scan.bm = flip(scan.bm)
    for key, mask in scan.masks.items():
        if scan.mask_spaces.get(key, "oct") == "oct":
            scan.masks[key] = flip(mask)  # type: ignore[assignment]
    h, w, d = scan.file_flips
    scan.file_flips = (h != flip_bscans, w != flip_ascans, d)
    scan.meta["flipped_bscans"] = scan.file_flips[0]
    scan.meta["flipped_ascans"] = scan.file_flips[1]
    return scan


def orientation_from_positions(positions: np.ndarray | None) -> tuple[bool, bool]:
    """Whether B-scans (H) and A-scans (W) run against the SLO's rows and columns: the
    reversals :func:`orient_scan` needs to make B-scan 0 the topmost and A-scan 0 the leftmost."""
    if positions is None or positions.shape[0] < 2:
        return False, False
    centre_y = positions[:, :, 1].mean(axis=1)
    return bool(centre_y[0] > centre_y[-1]), bool(np.mean(positions[:, 1, 0] - positions[:, 0, 0]) < 0)


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Stored intensities as float32 in [0, 1]: uint8 / 255, uint16 / 65535, other types
    min-max scaled when they leave [0, 1]."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    out = arr.astype(np.float32)
    if out.size and np.isfinite(out).all() and (out.min() < 0 or out.max() > 1):
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    return out


def positions_from_box(box: tuple[float, float, float, float] | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """B-scan positions of a regular raster covering an axis-aligned box.

    Args:
        box: ``(x0, y0, x1, y1)``: centre of A-scan 0 of B-scan 0 and of the last A-scan of
            the last B-scan, in pixels of the reference image.
        shape: the en-face grid ``(H, W)``.

    Returns:
        ``(H, 2, 2)`` start/end ``(x, y)`` of each B-scan; B-scan ``i`` lies at
        ``y = y0 + i (y1 - y0) / (H - 1)``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    n = int(shape[0])
    ys = np.full(n, y0) if n == 1 else np.linspace(y0, y1, n)
    pos = np.empty((n, 2, 2), dtype=np.float64)
    pos[:, 0, 0] = x0
    pos[:, 1, 0] = x1
    pos[:, 0, 1] = ys
    pos[:, 1, 1] = ys
    return pos


def full_image_box(image_shape: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box of a raster of ``grid`` samples whose cells tile the whole image.

    For an image of the grid's own size this is the identity (``(0, 0, W-1, H-1)``).
    """
    h, w = image_shape
    gh, gw = grid
    return (0.5 * w / gw - 0.5, 0.5 * h / gh - 0.5, w - 0.5 * w / gw - 0.5, h - 0.5 * h / gh - 0.5)


_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(text: str) -> str:
    """Turn ``text`` into a valid case / patient identifier (letters, digits, ``_.-``)."""
    out = _BAD_ID_CHARS.sub("_", str(text).strip()).strip("_.-")
    return out or "unknown"


def clean_id(value: Any) -> str | None:
    """A patient id from an export field, made safe (:func:`safe_id`), or None when the field
    is empty, a placeholder (``unknown``, ``none``, ``0``) or has no letter or digit."""
    if value is None:
        return None
    text = str(value).strip().strip("\x00").strip()
    if not text or text.lower() in ("unknown", "none", "0"):
        return None
    cleaned = safe_id(text)
    return None if cleaned == "unknown" else cleaned  # no letter or digit: no id (never one shared "unknown")


def unique_ids(ids: Sequence[str]) -> list[str]:
    """The ids made unique, in order: a repeated id gets ``-2``, ``-3``, ... (never an id in use)."""
    taken = set(ids)
    used: set[str] = set()
    out = []
    for cid in ids:
        new, n = cid, 1
        while new in used or (new != cid and new in taken):
            n += 1
            new = f"{cid}-{n}"
        used.add(new)
        out.append(new)
    return out


def normalise_eye(value: Any) -> str | None:
    """``"OD"``/``"OS"`` from the spellings devices use (R, L, right, OD, ...), else None."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in ("OD", "R", "RIGHT", "RE"):
        return "OD"
    if text in ("OS", "L", "LEFT", "LE"):
        return "OS"
    return None


def source_str(path: str | Path) -> str:
    """The string stored as a case's ``source``."""
    return str(Path(path))
