"""A folder of DICOM files, grouped by study and series (never by file name).

Device exports (HEYEX 2, FORUM, a PACS query) hold files with opaque names, nested in
folders, beside other series and other modalities. :func:`index_folder` reads the header of
every file (no pixel data) and sorts them:

* **Ophthalmic Tomography Image** instances (the OCT volumes) by ``(Study Instance UID,
  Series Instance UID)``: one series is one scan;
* **Ophthalmic Photography** images (SLO / infrared localizers, FAF) by SOP Instance UID, for
  the tomography series that reference them;
* files that are refused, each with its kind and a message naming the file and the
  Attribute: a DICOM object of another modality (a CT slice in the folder), a damaged or
  truncated file, one that lacks the UIDs it would be grouped by;
* everything else (a DICOMDIR, reports, presentation states, segmentations, files that are
  not DICOM at all) is passed over.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enface.errors import DatasetError, ScanKindError
from enface.io.base import safe_id

log = logging.getLogger(__name__)

__all__ = [
    "NON_OPHTHALMIC",
    "OPT_CLASS",
    "OP_CLASSES",
    "DicomFile",
    "DicomIndex",
    "Refusal",
    "attribute_name",
    "index_folder",
    "is_dicom_file",
    "read_header",
]

OPT_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
"""SOP Class UID of the Ophthalmic Tomography Image (one frame per B-scan)."""

OP_CLASSES: tuple[str, ...] = ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.77.1.5.2")
"""SOP Class UIDs of the Ophthalmic Photography 8 and 16 Bit Images (SLO, infrared, FAF)."""

PASSED_OVER_MODALITIES = frozenset(
    {"OP", "OPT", "OPM", "OPR", "OPV", "OAM", "IVOCT", "SR", "KO", "PR", "SEG", "DOC", "OT", "REG", "PLAN"}
)
"""Modalities of objects an ophthalmic export holds beside its scans (other ophthalmic
measurements, reports, key objects, presentation states, segmentations, documents,
secondary captures): not scans, not refused either."""

NON_OPHTHALMIC = ScanKindError.NON_OPHTHALMIC
"""The kind of a refused DICOM object of another modality (a CT slice, an MR image, ...)."""

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file of the folder, as its header identifies it."""

    path: Path
    sop_class: str
    sop_uid: str
    study_uid: str
    series_uid: str
    modality: str
    instance: int = 0
    label: str = ""


@dataclass(frozen=True)
class Refusal:
    """A file that is refused: its kind (:class:`~enface.errors.ScanKindError`) and what is wrong
    (the message without the path)."""

    path: Path
    kind: str
    message: str

    def error(self) -> ScanKindError:
        """The error that reports it."""
        return ScanKindError(self.kind, self.message, path=self.path)


@dataclass
class DicomIndex:
    """The DICOM files of a folder, sorted for the readers.

    Attributes:
        root: the folder (or the single file) indexed.
        volumes: the Ophthalmic Tomography instances of each ``(study, series)``.
        photos: the Ophthalmic Photography images by SOP Instance UID.
        refused: the files refused, in path order.
    """

    root: Path
    volumes: dict[tuple[str, str], list[DicomFile]] = field(default_factory=dict)
    photos: dict[str, DicomFile] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)

    def photos_of_study(self, study_uid: str) -> list[DicomFile]:
        """The photography images of a study, in path order."""
        return sorted((p for p in self.photos.values() if p.study_uid == study_uid), key=lambda p: str(p.path))


def attribute_name(keyword: str) -> str:
    """``Pixel Spacing (0028,0030)``: an Attribute as the standard names it, for messages."""
    from pydicom.datadict import dictionary_description, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_header(path: Path, *, pixels: bool = False) -> Any:
    """The dataset of a DICOM file (without its pixel data unless ``pixels``).

    Raises:
        ScanKindError: ``truncated file`` (it ends inside an element) or ``damaged file``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except EOFError as e:
        message = f"{path}: truncated DICOM file (it ends inside an element: {e})"
        raise ScanKindError("truncated file", message) from None
    except OSError as e:
        raise DatasetError(f"cannot read the file ({e})", path=path) from None
    except (InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, struct.error) as e:
        raise ScanKindError("damaged file", f"damaged DICOM file ({type(e).__name__}: {e})", path=path) from None


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and not any(part.startswith(".") for part in p.parts[-8:-1]):
            yield p


def _identify(path: Path, ds: Any) -> DicomFile | Refusal | None:
    """The file's place in the index: a scan instance or a photo, a refusal, or None (passed over)."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    known = sop_class in (OPT_CLASS, *OP_CLASSES)
    if sop_class == _DICOMDIR_CLASS or (not known and modality in PASSED_OVER_MODALITIES):
        return None
    if not known:
        from pydicom.uid import UID

        name = UID(sop_class).name if sop_class else "none"
        return Refusal(
            path,
            NON_OPHTHALMIC,
            f"not an ophthalmic tomography image: {attribute_name('SOPClassUID')} is {name} "
            f"({sop_class or 'absent'}), {attribute_name('Modality')} {modality or 'absent'}",
        )
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(keyword, "") or "").strip():
            return Refusal(path, "damaged file", f"{attribute_name(keyword)} is missing or empty")
    try:
        instance = int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        instance = 0
    return DicomFile(
        path,
        sop_class,
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        modality,
        instance,
        _label(ds),
    )


def _label(ds: Any) -> str:
    """``<patient>_<eye>_<date>_S<series number>``: a readable case id for a series."""
    parts = [
        str(ds.get("PatientID", "") or "").strip() or "patient",
        str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip(),
        str(ds.get("AcquisitionDateTime", "") or ds.get("SeriesDate", "") or ds.get("StudyDate", "") or "")[:8],
        f"S{ds.get('SeriesNumber', '')}",
    ]
    return safe_id("_".join(p for p in parts if p))


def _not_dicom(path: Path) -> Refusal:
    if path.stat().st_size == 0:
        return Refusal(path, "empty file", "empty file (0 bytes): not a DICOM file")
    return Refusal(path, "damaged file", "not a DICOM file (no 'DICM' after the 128-byte preamble)")


def index_folder(root: str | Path) -> DicomIndex:
    """Index every DICOM file under ``root`` (any names, any depth).

    Raises:
        DatasetError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError("source folder not found", path=root)
    index = DicomIndex(root)
    for path in _files(root):
        if not is_dicom_file(path):
            if path == root:  # a file given directly must be one
                index.refused.append(_not_dicom(path))
            log.debug("%s: not a DICOM file, passed over", path)
            continue
        try:
            found = _identify(path, read_header(path))
        except ScanKindError as e:
            found = Refusal(path, e.kind, str(e))
        if isinstance(found, Refusal):
            index.refused.append(found)
        elif found is not None and found.sop_class == OPT_CLASS:
            index.volumes.setdefault((found.study_uid, found.series_uid), []).append(found)
        elif found is not None:
            index.photos[found.sop_uid] = found
    for files in index.volumes.values():
        files.sort(key=lambda f: (f.instance, str(f.path)))
    return index
