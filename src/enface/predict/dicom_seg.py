"""``enface predict --dicom-seg``: a scan's predicted en-face mask as DICOM, beside the scan.

The mask lives on the scan's en-face grid (one row per B-scan, one column per A-scan, in the
SLO's orientation). A DICOM Segmentation must lie on a source image with that geometry, and
an Ophthalmic Tomography series has none: its frames are B-scans (depth x A-scans). So two
objects are written into the scan's study (Patient and Study copied from the tomography
instance, one new series each):

* ``enface.dcm``: the grid's own image, a **Secondary Capture Image** of the mean intensity
  projection of the prepared volume (row 0 the topmost B-scan, Pixel Spacing the B-scan and
  A-scan spacing, Image Laterality, Patient Orientation ``L\\F``), derived from the
  tomography instance (Source Image Sequence, purpose "Source image for image processing
  operation"); its series' Modality is the scan's, OPT;
* ``seg.dcm``: a binary **Segmentation** (highdicom) of that image: one segment,
  "Geographic atrophy", category Morphologically abnormal structure (SCT 49755003), type
  Atrophy (SCT 13331008) of the Retina (SCT 5665001), algorithm type AUTOMATIC, the
  algorithm named ``enface <model>`` with enface's version, family Artificial Intelligence;
  Pixel Measures the grid's spacing, Slice Thickness the depth of the projected slab.

Why a Secondary Capture and not the standard's Ophthalmic OCT En Face Image: the edition of
that IOD implemented by the validator we check with (Debian's dicom3tools) requires a
Referenced Surface Mesh Identification Sequence, i.e. a Surface Segmentation object of the
slab's boundary surfaces as 3D meshes in patient coordinates, which an OCT export referenced
to its SLO does not give; a Secondary Capture is the standard's object for a derived image
of no specific acquisition, which every archive and viewer stores and shows, and both files
validate without errors (docs/predict.md). A scan read from another format (no DICOM study
to write into) gets a note instead.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import UID

import enface
from enface.errors import DatasetError
from enface.fileio import atomic_write_bytes

__all__ = ["GA_SEGMENT", "dicom_outputs", "dicom_seg_problem", "write_dicom_seg"]

SECONDARY_CAPTURE_CLASS = UID("1.2.840.10008.5.1.4.1.1.7")
"""SOP Class UID of the Secondary Capture Image (the grid's own image)."""

GA_SEGMENT: dict[str, tuple[str, str, str]] = {
    "category": ("49755003", "SCT", "Morphologically abnormal structure"),
    "type": ("13331008", "SCT", "Atrophy"),
    "region": ("5665001", "SCT", "Retina"),
}
"""The codes describing the geographic atrophy segment (SNOMED CT, as in pydicom's tables)."""

_SOURCE = ("121322", "DCM", "Source image for image processing operation")


def _code(value: tuple[str, str, str]) -> Any:
    from pydicom import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def dicom_seg_problem(dicom: Any) -> str | None:
    """Why no DICOM segmentation can be written for a scan with this ``meta[\"dicom\"]``, or None."""
    if not isinstance(dicom, dict) or not dicom.get("files"):
        return "--dicom-seg: not a DICOM scan (no study to write the segmentation into); skipped"
    return None


def _copy(dst: Any, src: Any, keywords: tuple[str, ...]) -> None:
    for k in keywords:
        setattr(dst, k, src.get(k, ""))


def _now() -> tuple[str, str]:
    now = dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _study(ds: Any, opt: Any) -> None:
    """Patient and General Study of the tomography instance."""
    _copy(ds, opt, ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"))
    _copy(ds, opt, ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID"))
    _copy(ds, opt, ("AccessionNumber",))


def _pixels(ds: Any, image: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(image, np.uint8).tobytes()


def enface_image(opt: Any, projection: np.ndarray, spacing: tuple[float, float]) -> Any:
    """The grid's own image: a Secondary Capture of the en-face projection (module docstring).

    Args:
        opt: the tomography instance's dataset (no pixel data needed).
        projection: ``(H, W)`` en-face image in [0, 1] on the grid (SLO orientation).
        spacing: ``(sh, sw)``: B-scan and A-scan spacing (mm), the rows' and columns' spacing.
    """
    from pydicom import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE_CLASS, generate_uid()
    _study(ds, opt)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "OPT", generate_uid(), 901
    ds.SeriesDescription = "enface: OCT en face (mean intensity projection)"
    ds.Manufacturer, ds.ConversionType = "enface", "WSD"  # workstation
    ds.SecondaryCaptureDeviceManufacturer = "enface"
    ds.SecondaryCaptureDeviceSoftwareVersions = enface.__version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate, ds.ContentTime, ds.InstanceNumber = date, time, 1
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns downwards (a fundus view)
    ds.ImageLaterality = opt.get("ImageLaterality") or opt.get("Laterality") or "U"
    ds.DerivationDescription = "mean intensity projection of the OCT volume flattened along Bruch's membrane"
    src = Dataset()
    src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID = opt.SOPClassUID, opt.SOPInstanceUID
    src.PurposeOfReferenceCodeSequence = Sequence([_code(_SOURCE)])
    ds.SourceImageSequence = Sequence([src])
    ds.PixelSpacing = [f"{spacing[0]:.8g}", f"{spacing[1]:.8g}"]
    _pixels(ds, np.round(np.clip(projection, 0, 1) * 255).astype(np.uint8))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def segmentation(source: Any, mask: np.ndarray, model: str, slab_mm: float) -> Any:
    """The binary Segmentation (highdicom) of ``mask`` on the en-face image ``source``
    (``slab_mm``: the depth of the projected slab, its Slice Thickness)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"enface {model}", family=codes.cid7162.ArtificialIntelligence, version=enface.__version__
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Geographic atrophy",
        segmented_property_category=hd.sr.CodedConcept(*GA_SEGMENT["category"]),
        segmented_property_type=hd.sr.CodedConcept(*GA_SEGMENT["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[hd.sr.CodedConcept(*GA_SEGMENT["region"])],
    )
    quiet = logging.getLogger("highdicom")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # highdicom logs every module it copies at INFO
    try:
        seg = _segmentation(hd, source, mask, model, segment, slab_mm)
    finally:
        quiet.setLevel(level)
    seg.PatientOrientation = source.PatientOrientation
    return seg


def _segmentation(hd: Any, source: Any, mask: np.ndarray, model: str, segment: Any, slab_mm: float) -> Any:
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.asarray(mask, bool)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="enface",
        manufacturer_model_name=f"enface {model}",
        software_versions=enface.__version__,
        device_serial_number="none",
        series_description="enface: geographic atrophy",
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=tuple(float(v) for v in source.PixelSpacing), slice_thickness=slab_mm
        ),
        omit_empty_frames=False,
    )


def _encode(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_dicom_seg(
    out: Path, mask: np.ndarray, projection: np.ndarray, spacing: tuple[float, float, float], dicom: dict, model: str
) -> list[Path]:
    """Write ``enface.dcm`` and ``seg.dcm`` into the scan's output folder ``out``.

    Args:
        out: the scan's output folder.
        mask: ``(H, W)`` predicted mask on the grid.
        projection: ``(H, W, D)`` prepared volume on the grid (its mean along depth, scaled
            to [0, 1], is the en-face image).
        spacing: ``(sh, sw, sd)`` in mm.
        dicom: the scan's ``meta["dicom"]`` (:func:`dicom_seg_problem` returned None for it).
            Only its first tomography file is read again (Patient, Study, the instance).
        model: the model's name, for the algorithm identification.

    Returns:
        The two files written.

    Raises:
        DatasetError: the tomography file can no longer be read.
    """
    from enface.io.dicom.index import read_header

    try:
        opt = read_header(Path(dicom["files"][0]))
    except (DatasetError, OSError) as e:
        raise DatasetError(f"--dicom-seg: the scan's DICOM file cannot be read again ({e})") from None
    mean = np.asarray(projection, np.float32).mean(axis=-1)
    lo, hi = float(mean.min()), float(mean.max())
    image = enface_image(opt, (mean - lo) / (hi - lo) if hi > lo else np.zeros_like(mean), spacing[:2])
    seg = segmentation(image, mask, model, float(spacing[2]) * projection.shape[-1])
    return [
        atomic_write_bytes(out / "enface.dcm", _encode(image)),
        atomic_write_bytes(out / "seg.dcm", _encode(seg)),
    ]


def dicom_outputs(
    out: Path, mask: np.ndarray, volume: np.ndarray, spacing: tuple[float, float, float], dicom: Any, model: str
) -> tuple[list[str], list[str]]:
    """``--dicom-seg`` for one scan: ``(files written, notes)``; a scan that cannot get them
    (not from DICOM) gets a note and no files."""
    problem = dicom_seg_problem(dicom)
    if problem is not None:
        return [], [problem]
    return [p.name for p in write_dicom_seg(out, mask, volume, spacing, dicom, model)], []
