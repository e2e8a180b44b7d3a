"""One Ophthalmic Tomography series -> a :class:`~enface.io.base.Scan`.

* **Volume**: the frames of every instance of the series (one per B-scan: rows = depth,
  columns = A-scans) on enface's ``(H, W, D)`` axes, in the order of their **positions**,
  never the order of the frames alone: the frames' columns on the localizer (Ophthalmic
  Frame Location) or, without one, their Plane Position / Orientation (Patient) seen from
  the front (patient +x to the right, +z up, as a fundus image shows the eye). B-scan 0 is
  the topmost and A-scan 0 the leftmost, like ``.vol`` scans (:func:`~enface.io.base.orient_scan`
  records the reversals: a series stored bottom-up has ``file_flips[0]``).
* **Spacing**: depth and A-scan spacing from the Pixel Measures; the B-scan spacing from the
  positions (Plane Position in mm, else the frame locations times the localizer's Pixel
  Spacing, else the Pixel Measures' Spacing Between Slices).
* **SLO**: the Ophthalmic Photography image the frame locations refer to, with the B-scan
  end points on it; an **FAF** image of the same study and eye (an OP image whose
  description or filters say autofluorescence), registered to the SLO later.
* **Kinds that are no volume** are refused by name: one frame (line scan), a circle
  (closed frame trajectory, or the scan pattern code), B-scans through one centre at
  different angles (radial), B-scans all at one place (repeated line scan).
* ``meta``: patient id, eye, visit date (the acquisition date), device (manufacturer and
  model), and ``dicom``: the study, series and instance UIDs, files and localizer, for
  predictions written back as DICOM.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError, ScanKindError
from enface.io.base import Scan, clean_id, normalise_eye, orient_scan, to_unit_float
from enface.io.dicom.frames import FrameGeometry, decode_frames, decode_image, frame_geometry, functional_group
from enface.io.dicom.index import DicomFile, DicomIndex, attribute_name, read_header
from enface.io.export_checks import NOT_A_VOLUME

log = logging.getLogger(__name__)

__all__ = ["is_autofluorescence", "read_dicom_series"]

_PATTERN_KINDS = {
    "128281": "line scan",
    "128282": "radial scan",
    "128283": "radial scan",  # cross: two B-scans through one centre
    "128284": "circle scan",
    "128285": "circle scan",
    "128286": "circle scan",
    "128287": "radial scan",
}
"""Scan pattern codes (CID 4272) of patterns that are no raster volume."""

_AF_WORDS = re.compile(r"\b(faf|baf|af|auto-?fluorescence)\b", re.IGNORECASE)


def _iso(value: Any) -> str | None:
    text = str(value or "").strip()[:8]
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).isoformat()
    except ValueError:
        return None


_Part = tuple[Path, Any, np.ndarray, FrameGeometry]
"""One instance of a series: its file, dataset, ``(frames, rows, columns)`` and geometry."""


def _load(files: list[DicomFile]) -> list[_Part]:
    """Every instance of the series: dataset, frames, geometry; frames of one size."""
    out: list[_Part] = []
    for f in files:
        ds = read_header(f.path, pixels=True)
        geom = frame_geometry(ds, f.path)
        frames = decode_frames(ds, f.path)
        if out and frames.shape[1:] != out[0][2].shape[1:]:
            first = out[0]
            raise DatasetError(
                f"frames of unequal size in one series: {attribute_name('Rows')} x "
                f"{attribute_name('Columns')} {frames.shape[1]} x {frames.shape[2]} here, "
                f"{first[2].shape[1]} x {first[2].shape[2]} in {first[0]}",
                path=f.path,
            )
        out.append((f.path, ds, frames, geom))
    return out


def _pattern_kind(ds: Any, path: Path) -> None:
    for item in ds.get("ScanPatternTypeCodeSequence") or []:
        kind = _PATTERN_KINDS.get(str(item.get("CodeValue", "")))
        if kind is not None:
            meaning = item.get("CodeMeaning", "")
            raise ScanKindError(
                kind,
                f"{kind} ({attribute_name('ScanPatternTypeCodeSequence')}: {meaning}): {NOT_A_VOLUME}",
                path=path,
            )


def _end_points(parts: list[_Part]) -> tuple[np.ndarray, str | None]:
    """``(n, 2, 2)`` first/last column of every frame on the en-face plane, and the localizer
    UID (in localizer pixels) or None (in mm seen from the front: x = patient +x, y = -z)."""
    geoms = [g for _, _, _, g in parts]
    path = parts[0][0]
    if all(g.points is not None for g in geoms):
        pts = [p for g in geoms for p in (g.points or [])]
        orient = [o for g in geoms for o in (g.orientation or [])]
        if "TRANSVERSE" in orient:
            what = attribute_name("OphthalmicImageOrientation")
            raise DatasetError(f"transverse frames ({what} TRANSVERSE): no B-scans", path=path)
        closed = [o == "NONLINEAR" and np.linalg.norm(p[0] - p[-1]) < 0.1 * _length(p) for p, o in zip(pts, orient)]
        if any(closed):
            raise ScanKindError("circle scan", f"circle scan (closed frame trajectory): {NOT_A_VOLUME}", path=path)
        uids = {g.localizer for g in geoms}
        if len(uids) > 1:
            raise DatasetError("the instances of the series refer to different localizer images", path=path)
        return np.stack([np.stack([p[0], p[-1]]) for p in pts]), uids.pop()
    if not all(g.patient is not None for g in geoms):
        raise DatasetError(
            f"some frames have no {attribute_name('OphthalmicFrameLocationSequence')} and some no "
            f"{attribute_name('PlanePositionSequence')}: the B-scans cannot be ordered",
            path=path,
        )
    ends = []
    for _, _, frames, g in parts:
        for p, c in zip(g.patient, g.cosines):  # type: ignore[arg-type]
            last = p + c[:3] * (frames.shape[2] - 1) * g.ascan_mm
            ends.append([[p[0], -p[2]], [last[0], -last[2]]])
    return np.asarray(ends, np.float64), None


def _length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def _check_raster(pos: np.ndarray, path: Path) -> None:
    """Refuse repeated line scans and radial (star) scans by their geometry."""
    n = pos.shape[0]
    if n == 1:
        raise ScanKindError("line scan", f"line scan (1 B-scan): {NOT_A_VOLUME}", path=path)
    length = float(np.median(np.linalg.norm(pos[:, 1] - pos[:, 0], axis=1)))
    if np.ptp(pos.reshape(n, 4), axis=0).max() < 1e-3 * max(length, 1e-9):
        raise ScanKindError(
            "repeated line scan",
            f"all {n} B-scans lie at the same place (a repeated line scan): {NOT_A_VOLUME}",
            path=path,
        )
    d = pos[:, 1] - pos[:, 0]
    angles = np.mod(np.arctan2(d[:, 1], d[:, 0]), np.pi)
    spread = np.abs(np.angle(np.exp(2j * (angles[:, None] - angles[None, :])))).max() / 2
    if np.degrees(spread) > 5:
        raise ScanKindError(
            "radial scan",
            f"radial scan (B-scans at angles {np.degrees(spread):.0f}° apart, not parallel): {NOT_A_VOLUME}",
            path=path,
        )


def _order(pos: np.ndarray) -> np.ndarray:
    """Frame indices sorted down the en-face plane (across the B-scans, top first)."""
    d = (pos[:, 1] - pos[:, 0]).mean(axis=0)
    normal = np.array([-d[1], d[0]])
    if normal[1] < 0 or (abs(normal[1]) < 1e-9 and normal[0] < 0):
        normal = -normal  # pointing down the image (or right, for vertical B-scans stacked sideways)
    return np.argsort(pos.mean(axis=1) @ normal, kind="stable")


def _bscan_spacing(parts: list[_Part], pos: np.ndarray, order: np.ndarray, px_mm: Any) -> float:
    """B-scan spacing (mm): plane positions, else frame locations x localizer pixel size, else
    the Pixel Measures' Spacing Between Slices."""
    geoms = [g for _, _, _, g in parts]
    centres = pos.mean(axis=1)[order]
    if all(g.patient is not None for g in geoms):
        patient = np.concatenate([g.patient for g in geoms if g.patient is not None])[order]
        return float(np.median(np.linalg.norm(np.diff(patient, axis=0), axis=1)))
    if px_mm is not None:
        row_mm, col_mm = (float(v) for v in px_mm)
        steps = np.diff(centres, axis=0) * np.array([col_mm, row_mm])
        return float(np.median(np.linalg.norm(steps, axis=1)))
    if geoms[0].slice_mm is not None:
        return float(geoms[0].slice_mm)
    raise DatasetError(
        f"the B-scan spacing is unknown: no {attribute_name('PlanePositionSequence')}, no "
        f"{attribute_name('PixelSpacing')} on the localizer, no {attribute_name('SpacingBetweenSlices')}",
        path=parts[0][0],
    )


def _gray(ds: Any, path: Path) -> np.ndarray:
    """A photography image as one 2D plane in [0, 1] (colour: the mean of its channels)."""
    arr = decode_image(ds, path)
    if int(ds.get("NumberOfFrames") or 1) > 1:
        arr = arr[0]
    if int(ds.get("SamplesPerPixel") or 1) > 1:
        arr = arr.astype(np.float32).mean(axis=-1) / (255.0 if int(ds.BitsAllocated) == 8 else 65535.0)
    return to_unit_float(arr)


def is_autofluorescence(ds: Any) -> bool:
    """Whether an Ophthalmic Photography image is a fundus autofluorescence image: its series
    description, image comments, protocol or code meanings name it (FAF, BAF,
    autofluorescence), or it was excited by blue light (light path filter 440-500 nm)."""
    texts = [str(ds.get(k, "") or "") for k in ("SeriesDescription", "ImageComments", "ProtocolName")]
    codes = ("IlluminationTypeCodeSequence", "ChannelDescriptionCodeSequence", "LightPathFilterTypeStackCodeSequence")
    for seq in codes:
        texts += [str(item.get("CodeMeaning", "")) for item in ds.get(seq) or []]
    if _AF_WORDS.search(" ".join(texts)):
        return True
    wave = ds.get("LightPathFilterPassThroughWavelength")
    return wave not in (None, "") and 440 <= float(wave) <= 500


def _faf(index: DicomIndex, study: str, eye: str | None, localizer: str | None) -> tuple[np.ndarray | None, str | None]:
    for photo in index.photos_of_study(study):
        if photo.sop_uid == localizer:
            continue
        ds = read_header(photo.path)
        if is_autofluorescence(ds) and normalise_eye(ds.get("ImageLaterality") or ds.get("Laterality")) == eye:
            return _gray(read_header(photo.path, pixels=True), photo.path), str(photo.path)
    return None, None


def _eye(ds: Any) -> str | None:
    anatomy = functional_group(ds, 0, "FrameAnatomySequence")
    for value in (None if anatomy is None else anatomy.get("FrameLaterality"), ds.get("ImageLaterality")):
        eye = normalise_eye(value)
        if eye is not None:
            return eye
    return normalise_eye(ds.get("Laterality"))


def _meta(ds: Any, files: list[DicomFile], localizer: DicomFile | None, faf_file: str | None) -> dict[str, Any]:
    date = next(
        (d for d in (_iso(ds.get(k)) for k in ("AcquisitionDateTime", "ContentDate", "SeriesDate", "StudyDate")) if d),
        None,
    )
    maker, model = (str(ds.get(k, "") or "").strip() for k in ("Manufacturer", "ManufacturerModelName"))
    return {
        "patient_id": clean_id(ds.get("PatientID")),
        "eye": _eye(ds),
        "visit_date": date,
        "device": " ".join(t for t in (maker, model) if t) or "DICOM OCT",
        "dicom": {
            "manufacturer": maker,
            "model": model,
            "study_instance_uid": str(ds.StudyInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uids": [f.sop_uid for f in files],
            "files": [str(f.path) for f in files],
            "localizer_sop_instance_uid": None if localizer is None else localizer.sop_uid,
            "localizer_file": None if localizer is None else str(localizer.path),
            "faf_file": faf_file,
        },
    }


def _localizer(index: DicomIndex, uid: str | None, path: Path) -> DicomFile | None:
    if uid is None:
        return None
    found = index.photos.get(uid)
    if found is None:
        raise DatasetError(
            f"the localizer image {uid} that {attribute_name('OphthalmicFrameLocationSequence')} > "
            f"{attribute_name('ReferencedSOPInstanceUID')} names is not in the folder (export the series with its "
            "IR / SLO image)",
            path=path,
        )
    return found


def read_dicom_series(index: DicomIndex, key: tuple[str, str]) -> Scan:
    """Read one Ophthalmic Tomography series of an indexed folder.

    Args:
        index: the folder's index (:func:`~enface.io.dicom.index.index_folder`).
        key: the series' ``(Study Instance UID, Series Instance UID)``.

    Returns:
        The scan on ``(H, W, D)`` axes in the SLO's orientation, with SLO, B-scan positions
        and FAF when the export holds them.

    Raises:
        ScanKindError: a line, circle, radial or repeated line scan; a truncated or damaged file.
        DatasetError: missing position or spacing attributes, frames of unequal size, a
            localizer not in the folder, pixel data that cannot be decoded (each naming the
            file and the Attribute or transfer syntax).
    """
    files = index.volumes[key]
    parts = _load(files)
    path, ds = parts[0][0], parts[0][1]
    _pattern_kind(ds, path)
    pos, localizer_uid = _end_points(parts)
    _check_raster(pos, path)
    order = _order(pos)
    localizer = _localizer(index, localizer_uid, path)
    op = None if localizer is None else read_header(localizer.path, pixels=True)
    sh = _bscan_spacing(parts, pos, order, None if op is None else op.get("PixelSpacing"))
    geom = parts[0][3]
    frames = np.concatenate([p[2] for p in parts])[order]
    eye = _eye(ds)
    faf, faf_file = _faf(index, key[0], eye, localizer_uid)
    scan = Scan(
        volume=to_unit_float(np.ascontiguousarray(frames.transpose(0, 2, 1))),
        spacing=(sh, geom.ascan_mm, geom.depth_mm),
        source=str(path),
        slo=None if op is None else _gray(op, localizer.path),  # type: ignore[union-attr]
        faf=faf,
        bscan_positions=pos[order] if localizer is not None else None,
        meta=_meta(ds, files, localizer, faf_file),
        file_flips=(bool(np.array_equal(order, np.arange(len(order))[::-1])), False, False),
    )
    if not (np.array_equal(order, np.arange(len(order))) or scan.file_flips[0]):
        scan.meta["dicom"]["frame_order"] = [int(i) for i in order]
    d = (pos[:, 1] - pos[:, 0]).mean(axis=0)
    return orient_scan(scan, False, bool(d[0] < 0))
