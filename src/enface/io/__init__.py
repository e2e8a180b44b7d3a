"""Readers of device exports and common formats.

Every reader returns a :class:`~enface.io.base.Scan` (raw volume on ``(H, W, D)`` axes,
spacing, 2D modalities in their native pixel spaces, B-scan positions, BM when the export
has it, masks and metadata); :mod:`enface.data.prepare` turns scans into dataset cases.

* :func:`~enface.io.heidelberg.read_heidelberg`: Spectralis ``.vol``, HEYEX XML, ``.e2e``
  (through eyepy);
* :func:`~enface.io.octa500.read_octa500_case`: the OCTA-500 layout;
* :func:`~enface.io.volumes.read_volume_scan`: NumPy / NIfTI volumes with sidecar JSON and
  companion images (the generic layout);
* :mod:`enface.io.images`: PNG / TIFF / BMP images and binary masks.
"""

from enface.io.base import MASK_SPACES, Scan, positions_from_box

__all__ = ["MASK_SPACES", "Scan", "positions_from_box"]
