"""The ``dicom`` export format: its finder (one scan per Ophthalmic Tomography series, one
failing scan per refused file) and its reader, registered when imported."""

from __future__ import annotations

from pathlib import Path

from enface.errors import DatasetError
from enface.io.base import Scan, safe_id
from enface.io.dicom.index import DicomIndex, index_folder, is_dicom_file
from enface.io.dicom.opt import read_dicom_series
from enface.io.formats import ExportFormat, ReadOptions, ScanUnit, register_format, scan_stem
from enface.io.volumes import attach_companions, find_companions, read_sidecar


def _relative(path: Path, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name


def find_dicom_scans(root: Path) -> list[ScanUnit]:
    """Every Ophthalmic Tomography series under ``root`` and every refused DICOM file."""
    index: DicomIndex = index_folder(root)
    units = []
    for key, files in sorted(index.volumes.items(), key=lambda kv: str(kv[1][0].path)):
        name = files[0].label or safe_id(files[0].path.stem)
        units.append(
            ScanUnit(f"dicom-series:{key[1]}", name, files[0].path, tuple(f.path for f in files), (index, key))
        )
    for refusal in index.refused:
        rel = _relative(refusal.path, index.root)
        units.append(ScanUnit(rel, rel.replace("/", "_"), refusal.path, problem=refusal.message, kind=refusal.kind))
    return units


def read_dicom_unit(unit: ScanUnit, options: ReadOptions) -> Scan:
    """Read the series a :func:`find_dicom_scans` unit stands for, with the companions beside
    its (first) file as for any export (``<file stem>_mask_<task>.png`` and ``_bm.npy`` in the
    file's frame order, ``<file stem>.json``); ``options`` are not used: a DICOM series states
    its spacing and orientation.

    Raises:
        DatasetError: what :func:`read_dicom_series` raises; companions in frame order for a
            series whose frames are not stored in B-scan order (no reversal maps one onto the other).
    """
    index, key = unit.detail
    scan = read_dicom_series(index, key)
    path = unit.source
    stem = scan_stem(path)
    comps = find_companions(path.parent, stem)
    if (comps["masks"] or comps["bm"]) and "frame_order" in scan.meta["dicom"]:
        raise DatasetError(
            "its frames are not stored in B-scan order (neither top-down nor bottom-up), so companion "
            "files in the file's frame order cannot be placed on the grid",
            path=path,
        )
    return attach_companions(scan, comps, read_sidecar(path.parent / f"{stem}.json"), use_slo=False)


register_format(
    ExportFormat(
        "dicom",
        "DICOM Ophthalmic Tomography series (HEYEX 2, FORUM, ...) with their SLO / IR localizer",
        read_dicom_unit,
        (".dcm",),
        find=find_dicom_scans,
        detect=is_dicom_file,
    )
)
