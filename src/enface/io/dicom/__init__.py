"""DICOM ophthalmic exports: Ophthalmic Tomography series with their localizers.

* :mod:`~enface.io.dicom.index`: a folder of DICOM files grouped by study and series;
* :mod:`~enface.io.dicom.frames`: the frames of one instance: pixels and positions;
* :mod:`~enface.io.dicom.opt`: one tomography series -> a :class:`~enface.io.base.Scan`.

:func:`find_dicom_scans` is what ``enface prepare`` and ``enface predict`` use: every
tomography series of a folder, and every refused file, as ``(key, case id, file, reader)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from enface.io.base import Scan, safe_id
from enface.io.dicom.index import DicomIndex, Refusal, index_folder
from enface.io.dicom.opt import read_dicom_series

__all__ = ["DicomScanSource", "find_dicom_scans", "index_folder", "read_dicom_series"]

DicomScanSource = tuple[str, str, Path, Callable[[], Scan]]
"""``(key, wanted case id, file, reader)``: the key identifies the scan on a re-run (the
series UID for a series, the file's path within the folder for a refused file)."""


def _refuse(refusal: Refusal) -> Scan:
    raise refusal.error()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root if root.is_dir() else root.parent).as_posix()
    except ValueError:
        return path.name


def find_dicom_scans(root: str | Path) -> list[DicomScanSource]:
    """Every Ophthalmic Tomography series under ``root`` and every refused DICOM file.

    A series is read by :func:`read_dicom_series`; a refused file (another modality, a
    damaged or truncated file) becomes a source whose reader raises its error, so that the
    batch reports it by name and kind.
    """
    index: DicomIndex = index_folder(root)
    found: list[DicomScanSource] = []
    for key, files in sorted(index.volumes.items(), key=lambda kv: str(kv[1][0].path)):
        label = files[0].label or safe_id(files[0].path.stem)
        found.append((f"dicom-series:{key[1]}", label, files[0].path, functools.partial(read_dicom_series, index, key)))
    for refusal in index.refused:
        rel = _relative(refusal.path, index.root)
        found.append((rel, safe_id(rel.replace("/", "_")), refusal.path, functools.partial(_refuse, refusal)))
    return found
