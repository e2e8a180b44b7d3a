"""Generic volumes (NumPy ``.npy``, NIfTI ``.nii``/``.nii.gz``) and companion files.

The generic input layout (one scan = one volume file plus optional companions with the
same stem, all in one folder)::

    <src>/
      <scan>.npy | <scan>.nii | <scan>.nii.gz   the OCT volume
      <scan>.json              optional sidecar (keys below)
      <scan>_slo.png           optional SLO / infrared image (PNG, TIFF, BMP, JPEG)
      <scan>_faf.png           optional FAF image
      <scan>_mask_<task>.png   optional en-face mask(s); <task>.<grader> for extra graders
      <scan>_bm.npy            optional (H, W) BM depth (voxels, counted from the file's depth 0)

Sidecar keys (all optional): ``axes`` (order of the stored axes as letters ``H`` =
B-scans, ``W`` = A-scans, ``D`` = depth, e.g. ``"DWH"``; default ``"HWD"``),
``spacing`` (``[sh, sw, sd]`` in mm, in ``H, W, D`` order), ``patient_id``, ``eye``
(``OD``/``OS``), ``visit`` (day, int) or ``visit_date`` (ISO date), ``device``,
``flattened`` (the volume is already flattened; no BM needed), ``depth_flipped`` (depth
index 0 is the choroid side), ``slo_box`` (``[x0, y0, x1, y1]``: SLO pixel centres of the
first A-scan of the first B-scan and of the last A-scan of the last B-scan; default: the
grid tiles the whole SLO), ``faf_box`` (the same for a FAF without SLO), ``faf_registered``
(the FAF is already pixel-aligned with the SLO), ``faf_to_slo`` (3 x 3 matrix from FAF to
SLO pixels), ``mask_space`` (``{task: "oct" | "slo" | "faf"}``; by default a mask of the
grid's size is on the OCT grid, and one of the SLO's or FAF's size on that image). Their
types and ranges are checked by :mod:`enface.io.sidecar` (booleans must be JSON booleans,
``visit_date`` a valid ``YYYY-MM-DD``, ``patient_id`` not blank, ...).

The same companions (except ``_slo``) may sit beside a Heidelberg export.

**Row order of OCT-grid companions.** A mask of the OCT grid's size and ``_bm.npy`` are
indexed ``[B-scan, A-scan]`` in the order of the file as stored: row ``r`` is B-scan ``r``
of the file (of the export, or along the volume's ``H`` axis, whatever ``axes`` says about
where that axis is stored), column ``c`` its A-scan ``c``; BM values are depths in voxels
counted from the file's depth index 0 (also when ``depth_flipped``), NaN where unknown; a
value outside ``0 .. depth - 1`` refuses the scan (see :func:`_read_bm_file`). Whatever the reader
reverses to put the grid in the SLO's orientation (Spectralis exports, stored bottom-up)
is applied to them too. Masks drawn on the SLO or FAF are in that image's pixels.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError
from enface.fileio import load_npy
from enface.io.base import (
    Scan,
    full_image_box,
    normalise_eye,
    positions_from_box,
    safe_id,
    source_str,
)
from enface.io.formats import ExportFormat, ReadOptions, ScanUnit, register_format, scan_stem
from enface.io.images import IMAGE_SUFFIXES, read_image, read_mask
from enface.io.sidecar import SIDECAR_KEYS, read_sidecar

log = logging.getLogger(__name__)

__all__ = [
    "SIDECAR_KEYS",
    "attach_companions",
    "find_companions",
    "parse_axes",
    "read_nifti_volume",
    "read_numpy_volume",
    "read_sidecar",
    "read_volume_scan",
]

_COMPANION_RE = re.compile(r"^_(?:(?P<mod>slo|faf|bm)|mask_(?P<key>[A-Za-z0-9-]+(?:\.[A-Za-z0-9_-]+)?))$")


def parse_axes(axes: str, where: str = "axes") -> tuple[int, int, int]:
    """Permutation that brings stored axes ``axes`` (e.g. ``"DWH"``) to ``(H, W, D)``.

    Raises:
        DatasetError: not a permutation of ``H``, ``W``, ``D``.
    """
    a = str(axes).upper()
    if sorted(a) != ["D", "H", "W"]:
        raise DatasetError(f"axes must be a permutation of 'HWD' (e.g. 'HWD', 'DWH'), got {axes!r}", path=where)
    return (a.index("H"), a.index("W"), a.index("D"))


def _squeeze_to_3d(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim > 3:
        arr = arr.reshape([n for n in arr.shape if n != 1] or [1])
    if arr.ndim != 3:
        raise DatasetError(f"expected a 3D volume, got shape {arr.shape}", path=where)
    return arr


def read_numpy_volume(path: str | os.PathLike, axes: str = "HWD") -> np.ndarray:
    """Read a ``.npy`` volume and reorder it to ``(H, W, D)``.

    Raises:
        DatasetError: missing, unreadable or truncated file, not 3D, non-numeric.
    """
    path = Path(path)
    where = source_str(path)
    arr = load_npy(path, mmap=True, where=where)
    arr = _squeeze_to_3d(arr, where)
    return np.ascontiguousarray(np.transpose(arr, parse_axes(axes, where)))


_NIFTI_UNIT_TO_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}


def _raw_pixdim(path: Path, header: Any) -> tuple[float, float, float]:
    """The voxel sizes the file states (nibabel's header has set zero sizes to 1 and negative
    ones to their absolute value on loading: the file's own numbers are read again)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        raw = type(header).from_fileobj(f, check=False)
    return tuple(float(z) for z in raw["pixdim"][1:4])  # type: ignore[return-value]


def read_nifti_volume(
    path: str | os.PathLike, axes: str = "HWD", need_spacing: bool = False
) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Read a NIfTI volume (nibabel), reorder it to ``(H, W, D)``.

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        axes: stored axis order.
        need_spacing: the header's voxel sizes are the only spacing there is: refuse a file
            whose ``pixdim`` is zero, negative or not finite (nibabel would make it 1 mm).

    Returns:
        The volume and its spacing ``(sh, sw, sd)`` in mm from the header (None when the
        header's voxel sizes are not usable).

    Raises:
        DatasetError: missing, unreadable or truncated file, not 3D, or (``need_spacing``)
            unusable voxel sizes.
    """
    import nibabel as nib

    path = Path(path)
    where = source_str(path)
    if not path.is_file():
        raise DatasetError("file not found", path=where)
    nib_log = logging.getLogger("nibabel.global")
    level = nib_log.level
    nib_log.setLevel(logging.ERROR)  # "setting 0 dims to 1": enface says it itself, naming the file
    try:
        img: Any = nib.load(str(path))
        arr = np.asarray(img.dataobj)
        zooms = _raw_pixdim(path, img.header)
        unit = img.header.get_xyzt_units()[0]
    except Exception as e:  # nibabel raises many types on damaged files
        raise DatasetError(f"unreadable or truncated NIfTI file ({type(e).__name__}: {e})", path=where) from None
    finally:
        nib_log.setLevel(level)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DatasetError(f"expected a real numeric volume, got dtype {arr.dtype}", path=where)
    arr = _squeeze_to_3d(arr, where)
    perm = parse_axes(axes, where)
    spacing = None
    if all(np.isfinite(z) and z > 0 for z in zooms):
        f = _NIFTI_UNIT_TO_MM.get(unit, 1.0)
        spacing = tuple(zooms[i] * f for i in perm)
    elif need_spacing:
        raise DatasetError(
            f"the NIfTI header gives voxel sizes (pixdim) {zooms}: zero, negative or not finite; "
            'give "spacing": [sh, sw, sd] (mm) in the sidecar JSON or --spacing',
            path=where,
        )
    return np.ascontiguousarray(np.transpose(arr, perm)), spacing  # type: ignore[return-value]


def find_companions(folder: Path, stem: str) -> dict[str, Any]:
    """Companion files of scan ``stem`` in ``folder``.

    Returns:
        ``{"slo": Path|None, "faf": Path|None, "bm": Path|None, "masks": {key: Path},
        "sidecar": Path}``.

    Raises:
        DatasetError: two files claim the same role (e.g. ``a_slo.png`` and ``a_slo.tif``).
    """
    found: dict[str, Any] = {"slo": None, "faf": None, "bm": None, "masks": {}, "sidecar": folder / f"{stem}.json"}
    for p in sorted(folder.glob(f"{glob_escape(stem)}_*")):
        if not p.is_file():
            continue
        rest = p.name[len(stem) :]
        suffix = "".join(p.suffixes[-1:]).lower()
        m = _COMPANION_RE.match(rest[: -len(suffix)] if suffix else rest)
        if not m:
            continue
        mod, key = m.group("mod"), m.group("key")
        if mod == "bm":
            if suffix != ".npy":
                continue
            role, slot = "bm", found
        elif suffix not in IMAGE_SUFFIXES:
            continue
        elif mod:
            role, slot = mod, found
        else:
            role, slot = key, found["masks"]
        if slot.get(role) is not None:
            raise DatasetError(
                f"two companion files for {role!r} of scan {stem!r} ({slot[role].name}, {p.name})", path=p
            )
        slot[role] = p
    return found


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a file name."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def _infer_mask_space(key: str, mask: np.ndarray, scan: Scan, path: Path, declared: dict[str, str]) -> str:
    task = key.partition(".")[0]
    if key in declared or task in declared:
        return declared.get(key, declared.get(task))  # type: ignore[return-value]
    if mask.shape == scan.grid_shape:
        return "oct"
    slo_fit = scan.slo is not None and mask.shape == scan.slo.shape
    faf_fit = scan.faf is not None and mask.shape == scan.faf.shape
    if slo_fit and faf_fit:
        raise DatasetError(
            f"mask matches both the SLO and the FAF size {mask.shape}; say which one it is "
            f'drawn on with "mask_space": {{"{task}": "slo" | "faf"}} in the sidecar JSON',
            path=path,
        )
    if slo_fit:
        return "slo"
    if faf_fit:
        return "faf"
    if mask.shape == scan.grid_shape[::-1]:
        raise DatasetError(
            f"mask has shape {mask.shape}, the OCT grid {scan.grid_shape} transposed; OCT-grid masks "
            "are indexed [B-scan, A-scan] (rows = B-scans in the file's order)",
            path=path,
        )
    sizes = [f"OCT grid {scan.grid_shape}"]
    if scan.slo is not None:
        sizes.append(f"SLO {scan.slo.shape}")
    if scan.faf is not None:
        sizes.append(f"FAF {scan.faf.shape}")
    raise DatasetError(f"mask has shape {mask.shape}, which matches none of: {', '.join(sizes)}", path=path)


def _read_bm_file(path: Path, grid: tuple[int, int], depth: int) -> np.ndarray:
    """An ``(H, W)`` BM map from a ``.npy`` companion (file order, as stored).

    NaN marks an A-scan without BM (filled from its neighbours); every other value must be a
    depth inside the volume, ``0 <= bm <= depth - 1`` voxels. Unlike a device export's own
    segmentation (whose out-of-range values are the device's "not segmented" markers: such
    A-scans count as missing, and BM is estimated when fewer than half remain), a companion
    is written on purpose, so a value outside the volume means the file does not belong to
    it (another scan's, another depth origin, or resampled) and it is refused.

    Raises:
        DatasetError: unreadable, not numeric, not of the grid's shape, infinite, outside
            the volume's depth range, or NaN everywhere.
    """
    try:
        bm = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"unreadable or truncated BM file ({e})", path=path) from None
    if not np.issubdtype(bm.dtype, np.number) or np.iscomplexobj(bm):
        raise DatasetError(f"BM map must be real numbers, got dtype {bm.dtype}", path=path)
    if bm.shape != grid:
        hint = " (transposed? OCT-grid companions are indexed [B-scan, A-scan])" if bm.shape == grid[::-1] else ""
        raise DatasetError(f"BM map has shape {bm.shape}, expected the en-face grid {grid}{hint}", path=path)
    bm = np.asarray(bm, dtype=np.float64)
    known = ~np.isnan(bm)
    if not known.any():
        raise DatasetError("BM map is NaN everywhere (no A-scan has a BM depth)", path=path)
    outside = known & ~((bm >= 0) & (bm <= depth - 1))  # inf counts as outside
    if outside.any():
        vals = bm[known]
        raise DatasetError(
            f"{int(outside.sum())} of {bm.size} BM depths lie outside the volume's depth range "
            f"0 to {depth - 1} voxels (values {vals.min():g} to {vals.max():g}); BM depths are voxels counted "
            "from the file's depth index 0 (NaN where unknown)",
            path=path,
        )
    return bm.astype(np.float32)


def attach_companions(scan: Scan, comp: dict[str, Any], sidecar: dict[str, Any], use_slo: bool = True) -> Scan:
    """Add companion images, masks, BM and sidecar metadata to ``scan`` (in place).

    Companions on the OCT grid (masks of the grid's size, ``_bm.npy``) are in the file's
    order: row ``r`` is B-scan ``r`` of the file as stored, column ``c`` its A-scan ``c``, BM
    depth in voxels from the file's depth index 0. The reader's reorientation
    (:attr:`~enface.io.base.Scan.file_flips`) is applied to them here, so that they land
    on the same B-scans as the volume. SLO / FAF masks stay on their image.

    Args:
        scan: the scan read from the volume file or export.
        comp: result of :func:`find_companions`.
        sidecar: result of :func:`read_sidecar`.
        use_slo: take ``<scan>_slo.*`` (False for exports that carry their own SLO).

    Returns:
        The same scan.

    Raises:
        DatasetError: unreadable companions, inconsistent sizes or settings.
    """
    where = sidecar.get("_path", scan.source)
    grid = scan.grid_shape
    if use_slo and comp["slo"] is not None:
        scan.slo = read_image(comp["slo"])
        box = sidecar.get("slo_box") or full_image_box(scan.slo.shape, grid)
        scan.bscan_positions = positions_from_box(box, grid)
    if comp["faf"] is not None:
        scan.faf = read_image(comp["faf"])
        if "faf_to_slo" in sidecar:
            scan.faf_to_slo = np.asarray(sidecar["faf_to_slo"], dtype=np.float64)
        elif sidecar.get("faf_registered"):
            scan.faf_to_slo = np.eye(3)
        elif scan.slo is None:
            # no SLO: the FAF itself is the reference image of the grid
            box = sidecar.get("faf_box") or full_image_box(scan.faf.shape, grid)
            scan.bscan_positions = positions_from_box(box, grid)
            scan.faf_to_slo = np.eye(3)
    if comp["bm"] is not None:
        scan.bm = scan.bm_from_file(_read_bm_file(comp["bm"], grid, int(scan.volume.shape[2])))
        scan.meta["bm_file"] = comp["bm"].name
    declared = dict(sidecar.get("mask_space", {}))
    for key, path in sorted(comp["masks"].items()):
        mask = read_mask(path)
        space = _infer_mask_space(key, mask, scan, path, declared)
        # on the OCT grid: in the file's B-scan order, like the volume as stored
        scan.masks[key] = scan.enface_from_file(mask) if space == "oct" else mask
        scan.mask_spaces[key] = space
    if sidecar.get("flattened"):
        scan.flattened = True
    for key in ("patient_id", "device", "visit", "visit_date"):
        if key in sidecar:
            scan.meta[key] = safe_id(sidecar[key]) if key == "patient_id" else sidecar[key]
    if "patient_id" in sidecar:
        scan.meta["patient_from_sidecar"] = True
    if "eye" in sidecar:
        scan.meta["eye"] = normalise_eye(sidecar["eye"])
    if scan.bscan_positions is None and scan.slo is not None:
        raise DatasetError("SLO present but its B-scan positions are unknown", path=where)
    return scan


def read_volume_scan(
    path: str | os.PathLike, fmt: str, axes: str | None = None, spacing: tuple[float, float, float] | None = None
) -> Scan:
    """Read one scan of the generic layout: volume, sidecar and companions.

    Args:
        path: the ``.npy`` / ``.nii`` / ``.nii.gz`` file.
        fmt: ``"numpy"`` or ``"nifti"``.
        axes: default axis order when the sidecar gives none (``"HWD"`` when None).
        spacing: default spacing ``(sh, sw, sd)`` in mm when neither the sidecar nor (for
            NIfTI) the header gives one.

    Returns:
        The scan.

    Raises:
        DatasetError: any missing, unreadable or inconsistent file, or no spacing at all.
    """
    path = Path(path)
    stem = scan_stem(path)
    sidecar = read_sidecar(path.parent / f"{stem}.json")
    comp = find_companions(path.parent, stem)
    ax = sidecar.get("axes", axes or "HWD")
    header_spacing = None
    if fmt == "numpy":
        vol = read_numpy_volume(path, ax)
    elif fmt == "nifti":
        vol, header_spacing = read_nifti_volume(path, ax, need_spacing=not (sidecar.get("spacing") or spacing))
    else:
        raise DatasetError(f"unknown volume format {fmt!r} (numpy, nifti)", path=path)
    depth_flipped = bool(sidecar.get("depth_flipped"))
    if depth_flipped:
        vol = np.ascontiguousarray(vol[:, :, ::-1])
    sp = sidecar.get("spacing") or spacing or header_spacing
    if sp is None:
        raise DatasetError(
            f'voxel spacing unknown; give "spacing": [sh, sw, sd] (mm) in {stem}.json or --spacing on the command line',
            path=path,
        )
    scan = Scan(
        volume=vol,
        spacing=tuple(float(s) for s in sp),  # type: ignore[arg-type]
        source=source_str(path),
        meta={"device": "unknown", **({"depth_flipped": True} if depth_flipped else {})},
        file_flips=(False, False, depth_flipped),
    )
    return attach_companions(scan, comp, sidecar)


def _read_numpy(unit: ScanUnit, options: ReadOptions) -> Scan:
    return read_volume_scan(unit.source, "numpy", axes=options.axes, spacing=options.spacing)


def _read_nifti(unit: ScanUnit, options: ReadOptions) -> Scan:
    return read_volume_scan(unit.source, "nifti", axes=options.axes, spacing=options.spacing)


register_format(ExportFormat("nifti", "NIfTI volumes with companions", _read_nifti, (".nii.gz", ".nii")))
register_format(ExportFormat("numpy", "NumPy volumes (.npy) with companions", _read_numpy, (".npy",)))
