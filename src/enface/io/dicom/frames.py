"""The frames of one Ophthalmic Tomography instance: pixels and where each B-scan lies.

* :func:`decode_frames`: the pixel data as ``(frames, rows, columns)`` (rows = depth,
  columns = A-scans), decoded by pydicom and the codec plugins installed with enface
  (pylibjpeg-libjpeg for JPEG, pylibjpeg-openjpeg for JPEG 2000); a transfer syntax without
  an installed decoder, damaged or truncated pixel data are refused naming the file and
  the transfer syntax.
* :func:`frame_geometry`: per frame, from the Multi-frame Functional Groups (per-frame item
  first, then the shared one): the **Ophthalmic Frame Location** (the frame's columns on the
  referenced localizer, (row, column) pairs with the origin at the top-left corner of the
  top-left pixel) and the **Plane Position / Orientation (Patient)**; the **Pixel Measures**
  (depth and A-scan spacing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError, ScanKindError
from enface.io.dicom.index import attribute_name

__all__ = ["FrameGeometry", "decode_frames", "decode_image", "frame_geometry", "functional_group"]


@dataclass
class FrameGeometry:
    """Where the frames of one instance lie.

    Attributes:
        n: number of frames.
        localizer: SOP Instance UID of the image the frame locations refer to, or None.
        points: per frame, the ``(k, 2)`` points ``(x, y)`` on the localizer (pixel centres at
            integers, as :class:`~enface.io.base.Scan` counts them), or None.
        orientation: per frame, the Ophthalmic Image Orientation (``LINEAR``,
            ``NONLINEAR``, ``TRANSVERSE``), or None.
        patient: ``(n, 3)`` Image Position (Patient) of each frame (mm), or None.
        cosines: ``(n, 6)`` Image Orientation (Patient) of each frame, or None.
        depth_mm, ascan_mm: the Pixel Measures' Pixel Spacing (rows, columns).
        slice_mm: the Pixel Measures' Spacing Between Slices, or None.
    """

    n: int
    localizer: str | None
    points: list[np.ndarray] | None
    orientation: list[str] | None
    patient: np.ndarray | None
    cosines: np.ndarray | None
    depth_mm: float
    ascan_mm: float
    slice_mm: float | None


def functional_group(ds: Any, frame: int, keyword: str) -> Any:
    """The first item of functional group ``keyword`` for ``frame`` (per-frame, then shared), or None."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and frame < len(per) and keyword in per[frame]:
        seq = per[frame][keyword].value
        return seq[0] if len(seq) else None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) and keyword in shared[0]:
        seq = shared[0][keyword].value
        return seq[0] if len(seq) else None
    return None


def _spacing(ds: Any, path: Path) -> tuple[float, float, float | None]:
    measures = functional_group(ds, 0, "PixelMeasuresSequence")
    where = f"{attribute_name('PixelMeasuresSequence')} > {attribute_name('PixelSpacing')}"
    if measures is None or "PixelSpacing" not in measures or len(measures.PixelSpacing) != 2:
        raise DatasetError(f"no {where}: the depth and A-scan spacing are unknown", path=path)
    depth, ascan = (float(v) for v in measures.PixelSpacing)
    if not (np.isfinite([depth, ascan]).all() and depth > 0 and ascan > 0):
        raise DatasetError(f"{where} must be two positive numbers, got {list(measures.PixelSpacing)}", path=path)
    between = measures.get("SpacingBetweenSlices")
    return depth, ascan, (float(between) if between not in (None, "") and float(between) > 0 else None)


def _frame_location(ds: Any, i: int, path: Path) -> tuple[str, np.ndarray, str] | None:
    loc = functional_group(ds, i, "OphthalmicFrameLocationSequence")
    if loc is None:
        return None
    where = f"frame {i + 1}: {attribute_name('OphthalmicFrameLocationSequence')}"
    coords = loc.get("ReferenceCoordinates")
    uid = str(loc.get("ReferencedSOPInstanceUID", "") or "")
    if not uid:
        raise DatasetError(f"{where} has no {attribute_name('ReferencedSOPInstanceUID')}", path=path)
    values = np.asarray([] if coords is None else list(coords), np.float64)
    if values.size < 4 or values.size % 2 or not np.isfinite(values).all():
        raise DatasetError(
            f"{where} > {attribute_name('ReferenceCoordinates')} must hold at least two (row, column) "
            f"pairs, got {values.tolist()}",
            path=path,
        )
    rc = values.reshape(-1, 2)
    xy = rc[:, ::-1] - 0.5  # (row, column) from the top-left corner -> (x, y) pixel centres at integers
    return uid, xy, str(loc.get("OphthalmicImageOrientation", "LINEAR") or "LINEAR").upper()


def _plane(ds: Any, i: int) -> tuple[np.ndarray, np.ndarray] | None:
    pos = functional_group(ds, i, "PlanePositionSequence")
    orient = functional_group(ds, i, "PlaneOrientationSequence")
    if pos is None or orient is None or "ImagePositionPatient" not in pos or "ImageOrientationPatient" not in orient:
        return None
    p = np.asarray([float(v) for v in pos.ImagePositionPatient], np.float64)
    c = np.asarray([float(v) for v in orient.ImageOrientationPatient], np.float64)
    if p.shape != (3,) or c.shape != (6,) or not (np.isfinite(p).all() and np.isfinite(c).all()):
        return None
    return p, c


def frame_geometry(ds: Any, path: Path) -> FrameGeometry:
    """The position of every frame of an Ophthalmic Tomography instance.

    Raises:
        DatasetError: no Pixel Measures, malformed frame locations, frames that refer to
            different localizers, or frames with neither a frame location nor a plane
            position (the B-scans could not be ordered).
    """
    n = int(ds.get("NumberOfFrames") or 1)
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and len(per) != n:
        raise DatasetError(
            f"{attribute_name('PerFrameFunctionalGroupsSequence')} has {len(per)} items for "
            f"{attribute_name('NumberOfFrames')} {n}",
            path=path,
        )
    depth, ascan, between = _spacing(ds, path)
    locations = [_frame_location(ds, i, path) for i in range(n)]
    planes = [_plane(ds, i) for i in range(n)]
    has_loc, has_plane = all(loc is not None for loc in locations), all(p is not None for p in planes)
    if not has_loc and not has_plane:
        missing = next(i for i in range(n) if locations[i] is None and planes[i] is None)
        raise DatasetError(
            f"frame {missing + 1} has neither an {attribute_name('OphthalmicFrameLocationSequence')} nor a "
            f"{attribute_name('PlanePositionSequence')} with {attribute_name('PlaneOrientationSequence')}: "
            "the B-scans cannot be ordered",
            path=path,
        )
    localizer = points = orientation = None
    if has_loc:
        uids = {loc[0] for loc in locations if loc is not None}
        if len(uids) > 1:
            raise DatasetError(
                f"the frames' {attribute_name('OphthalmicFrameLocationSequence')} refer to {len(uids)} "
                "different localizer images; one is expected",
                path=path,
            )
        localizer = uids.pop()
        points = [loc[1] for loc in locations if loc is not None]
        orientation = [loc[2] for loc in locations if loc is not None]
    patient = cosines = None
    if has_plane:
        patient = np.stack([p[0] for p in planes if p is not None])
        cosines = np.stack([p[1] for p in planes if p is not None])
    return FrameGeometry(n, localizer, points, orientation, patient, cosines, depth, ascan, between)


def _no_pixels(ds: Any, path: Path) -> ScanKindError:
    size = path.stat().st_size if path.is_file() else 0
    return ScanKindError(
        "truncated file",
        f"truncated: no complete {attribute_name('PixelData')} (the file ends at byte {size})",
        path=path,
    )


def _check_decoder(ds: Any, path: Path) -> None:
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise DatasetError(
            f"cannot decode the pixel data: no decoder is installed for the transfer syntax "
            f"{syntax.name} ({syntax}) (enface reads uncompressed, RLE, JPEG, JPEG-LS and JPEG 2000 data; "
            "re-export the series uncompressed or as JPEG 2000)",
            path=path,
        )


def decode_image(ds: Any, path: Path) -> np.ndarray:
    """The pixel data as pydicom decodes it (``(rows, cols)``, ``(frames, rows, cols)``, or with
    a trailing colour axis), MONOCHROME1 inverted.

    Raises:
        ScanKindError: ``truncated file``: pixel data missing or shorter than announced;
            ``damaged file``: the decoder failed on it.
        DatasetError: no decoder for its transfer syntax.
    """
    if "PixelData" not in ds:
        raise _no_pixels(ds, path)
    _check_decoder(ds, path)
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        n = int(ds.get("NumberOfFrames") or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * n * (int(ds.BitsAllocated) // 8)
        if len(ds.PixelData) < expected:
            raise ScanKindError(
                "truncated file",
                f"truncated: {attribute_name('PixelData')} holds {len(ds.PixelData)} of the {expected} "
                f"bytes of its {n} frame(s)",
                path=path,
            )
    try:
        arr = np.asarray(ds.pixel_array)
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError, IndexError, OSError) as e:
        raise ScanKindError(
            "damaged file",
            f"the {syntax.name} pixel data cannot be decoded ({type(e).__name__}: {e})",
            path=path,
        ) from None
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


def decode_frames(ds: Any, path: Path) -> np.ndarray:
    """The frames of a monochrome instance as ``(frames, rows, columns)`` (uint8 / uint16).

    Raises:
        DatasetError: not one sample per pixel, or the errors of :func:`decode_image`.
    """
    spp = int(ds.get("SamplesPerPixel") or 1)
    if spp != 1:
        raise DatasetError(f"{attribute_name('SamplesPerPixel')} is {spp}; OCT frames have one sample", path=path)
    arr = decode_image(ds, path)
    n = int(ds.get("NumberOfFrames") or 1)
    return arr.reshape(n, int(ds.Rows), int(ds.Columns))
