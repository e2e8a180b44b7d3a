"""Readers of device exports and common formats, and the registry of export formats.

Every reader returns a :class:`~enface.io.base.Scan` (raw volume on ``(H, W, D)`` axes,
spacing, 2D modalities in their native pixel spaces, B-scan positions, BM when the export
has it, masks and metadata); :mod:`enface.data.prepare` turns scans into dataset cases.
Each reader module registers its formats in :mod:`enface.io.formats` when imported, which
importing this package does:

* :mod:`enface.io.heidelberg`: Spectralis ``.vol``, HEYEX XML, ``.e2e`` (through eyepy);
* :mod:`enface.io.dicom`: DICOM Ophthalmic Tomography series with their localizers;
* :mod:`enface.io.octa500`: the OCTA-500 layout;
* :mod:`enface.io.volumes`: NumPy / NIfTI volumes with sidecar JSON and companion images
  (the generic layout);
* :mod:`enface.io.images`: PNG / TIFF / BMP images and binary masks.
"""

from enface.io.base import MASK_SPACES, Scan, positions_from_box
from enface.io.dicom import read_dicom_series
from enface.io.formats import ExportFormat, ReadOptions, ScanUnit, get_format, list_formats, register_format
from enface.io.heidelberg import read_heidelberg
from enface.io.octa500 import read_octa500_case
from enface.io.volumes import read_volume_scan

__all__ = [
    "MASK_SPACES",
    "ExportFormat",
    "ReadOptions",
    "Scan",
    "ScanUnit",
    "get_format",
    "list_formats",
    "positions_from_box",
    "read_dicom_series",
    "read_heidelberg",
    "read_octa500_case",
    "read_volume_scan",
    "register_format",
]
