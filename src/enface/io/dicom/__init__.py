"""DICOM ophthalmic exports: Ophthalmic Tomography series with their localizers, registered
as the export format ``dicom``.

* :mod:`~enface.io.dicom.index`: a folder of DICOM files grouped by study and series;
* :mod:`~enface.io.dicom.frames`: the frames of one instance: pixels and positions;
* :mod:`~enface.io.dicom.opt`: one tomography series -> a :class:`~enface.io.base.Scan`;
* :mod:`~enface.io.dicom.export`: the finder and reader, registered as the format ``dicom``.

The format's finder makes one scan per Ophthalmic Tomography series (any file names, any
depth, other series beside it; keyed by its Series Instance UID) and one failing scan per
refused file (another modality, a damaged or truncated file), which the batch reports by
name and kind; a file is recognised as DICOM by its content (``.dcm`` or no suffix).
"""

from enface.io.dicom.export import find_dicom_scans, read_dicom_unit
from enface.io.dicom.index import index_folder
from enface.io.dicom.opt import read_dicom_series

__all__ = ["find_dicom_scans", "index_folder", "read_dicom_series", "read_dicom_unit"]
