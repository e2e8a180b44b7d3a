"""DICOM OCT in (``--format dicom``) and out (``enface predict --dicom-seg``), issue 28.

The test files are written by :mod:`dicom_helpers` from the standard's module tables and
checked with dicom3tools' ``dciodvfy``; so is every file enface writes. One eye with a known
lesion goes through DICOM (B-scans stored bottom-up or top-down, right or left eye) and
``prepare``; its truth must land on the same B-scan and A-scan.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_helpers import (
    OPT_VALIDATOR_CONTRADICTION,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    dciodvfy,
    dicom_eye,
    slo_positions,
    write_ct_slice,
)
from enface.data.folder import list_cases
from enface.data.options import FlattenParams, PrepareOptions
from enface.data.prepare import prepare_dataset
from enface.errors import DatasetError
from enface.io.dicom import find_dicom_scans, read_dicom_unit
from enface.io.formats import ReadOptions, get_format, infer_format, read_unit
from formats_helpers import layered_volume, vessel_pair

SHAPE = (6, 32, 64)  # B-scans, A-scans, depth
BOX = (10.0, 12.0, 103.0, 102.0)  # grid corners on the SLO: 3 px between A-scans, 18 between B-scans
SLO_MM = 0.02
FLAT = FlattenParams(0.3, 0.1, 24)
MARK = 1  # depth index of the marker that writes the truth into the volume


def lesion_eye(seed: int = 0) -> dict[str, np.ndarray]:
    """An eye on the SLO-oriented grid with a known, asymmetric lesion: its mask, a volume that
    carries it at depth ``MARK`` (0.95 inside, 0.05 outside), and an SLO whose cell around every grid
    point is bright inside the lesion and dark outside."""
    vol, _, _ = layered_volume(SHAPE, seed=seed, speckle=0.1)
    truth = np.zeros(SHAPE[:2], bool)
    truth[0:2, 3:10] = True
    truth[3, 15:24] = True
    truth[5, 28:31] = True
    vol[:, :, MARK] = np.where(truth, 0.95, 0.05)
    slo = np.full((120, 120), 40, np.uint8)
    pos = slo_positions(*SHAPE[:2], BOX)
    for i, j in zip(*np.nonzero(truth)):
        x, y = int(round(pos[i, 0, 0] + j * 3)), int(round(pos[i, 0, 1]))
        slo[y - 8 : y + 9, x - 1 : x + 2] = 230
    return {"vol": vol, "truth": truth, "slo": slo}


def _read(folder: Path):
    [unit] = [u for u in find_dicom_scans(folder) if u.problem is None]
    return read_dicom_unit(unit, ReadOptions())


def _companion(opt: Path, mask_grid: np.ndarray, rows: np.ndarray) -> None:
    """``<file>_mask_ga.png`` in the file's frame order (row r = frame r)."""
    Image.fromarray(mask_grid[rows].astype(np.uint8) * 255).save(opt.parent / f"{opt.name}_mask_ga.png")


# --------------------------------------------------------------------------- the files themselves


@pytest.mark.parametrize(
    ("syntax", "bits"),
    [(ExplicitVRLittleEndian, 16), (ExplicitVRLittleEndian, 8), (JPEGBaseline8Bit, 8), (JPEG2000Lossless, 16)],
    ids=["native16", "native8", "jpeg-baseline", "jpeg2000"],
)
def test_test_files_pass_dciodvfy(tmp_path: Path, syntax: UID, bits: int) -> None:
    eye = lesion_eye()
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], syntax=syntax, bits=bits, faf=eye["slo"], box_px=BOX)
    ct = write_ct_slice(tmp_path / "ct", files["study"])
    for path in (files["op"], files["faf"], ct):
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
    errors, _ = dciodvfy(files["opt"])
    assert set(errors) <= OPT_VALIDATOR_CONTRADICTION, errors


# --------------------------------------------------------------------------- the round trip


@pytest.mark.parametrize("bscans", ["bottom-up", "top-down"])
@pytest.mark.parametrize("eye_side", ["R", "L"])
def test_the_lesion_lands_on_the_same_bscan_and_ascan(tmp_path: Path, bscans: str, eye_side: str) -> None:
    eye = lesion_eye(1)
    src = tmp_path / "export" / "nested"
    files = dicom_eye(src, eye["vol"], eye["slo"], bscans=bscans, eye=eye_side, box_px=BOX, slo_spacing=SLO_MM)
    _companion(files["opt"], eye["truth"], files["frame_order"])
    scan = _read(tmp_path / "export")
    assert scan.file_flips[0] == (bscans == "bottom-up") and scan.meta["flipped_bscans"] == (bscans == "bottom-up")
    np.testing.assert_array_equal(scan.volume[:, :, MARK] > 0.5, eye["truth"])
    np.testing.assert_allclose(scan.volume, np.round(np.clip(eye["vol"], 0, 1) * 65535) / 65535, atol=1e-6)
    np.testing.assert_allclose(scan.spacing, (18 * SLO_MM, 0.05, 0.0039), rtol=1e-6)  # B-scans 18 SLO px apart
    report = prepare_dataset(tmp_path / "export", tmp_path / "ds", PrepareOptions(fmt="dicom", flatten=FLAT), False)
    assert report.ok, report.summary()
    [case] = list_cases(tmp_path / "ds")
    np.testing.assert_array_equal(case.load_mask("ga"), eye["truth"])  # the companion, in the file's order
    np.testing.assert_array_equal(case.load_image("slo") > 0.5, eye["truth"])  # the SLO under each A-scan
    assert case.meta.eye == ("OD" if eye_side == "R" else "OS") and case.patient_id == "P001"
    assert case.meta.extra["visit_date"] == "2021-03-04" and case.meta.device == "Heidelberg Engineering Spectralis"
    assert case.meta.extra["dicom"]["series_instance_uid"] == str(pydicom.dcmread(files["opt"]).SeriesInstanceUID)


def test_frames_stored_out_of_order_are_ordered_by_position(tmp_path: Path) -> None:
    eye = lesion_eye(2)
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX, bscans="top-down")
    ds = pydicom.dcmread(files["opt"])
    perm = np.array([2, 0, 5, 1, 4, 3])
    frames = ds.pixel_array[perm]
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in perm])
    ds.PixelData = frames.tobytes()
    ds.save_as(files["opt"])
    scan = _read(tmp_path)
    np.testing.assert_array_equal(scan.volume[:, :, MARK] > 0.5, eye["truth"])
    assert scan.meta["dicom"]["frame_order"] == np.argsort(perm).tolist()


def test_plane_positions_alone_order_the_bscans(tmp_path: Path) -> None:
    eye = lesion_eye(3)
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX, frame_location=False, slo_spacing=SLO_MM)
    files["op"].unlink()  # no localizer: positions in patient coordinates only
    scan = _read(tmp_path)
    assert scan.slo is None and scan.bscan_positions is None and scan.file_flips[0]
    np.testing.assert_array_equal(scan.volume[:, :, MARK] > 0.5, eye["truth"])
    assert scan.spacing[0] == pytest.approx(18 * SLO_MM)


@pytest.mark.parametrize(
    ("syntax", "bits", "atol"),
    [(ExplicitVRLittleEndian, 8, 1e-6), (JPEGBaseline8Bit, 8, 0.08), (JPEG2000Lossless, 16, 1e-6)],
    ids=["native8", "jpeg-baseline", "jpeg2000"],
)
def test_transfer_syntaxes_decode_to_the_same_volume(tmp_path: Path, syntax: UID, bits: int, atol: float) -> None:
    eye = lesion_eye(4)
    dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX, syntax=syntax, bits=bits)
    scan = _read(tmp_path)
    scale = 255 if bits == 8 else 65535
    np.testing.assert_allclose(scan.volume, np.round(np.clip(eye["vol"], 0, 1) * scale) / scale, atol=atol)
    assert scan.slo is not None and scan.slo.shape == (120, 120)


def test_an_faf_image_of_the_study_is_attached_and_registered(tmp_path: Path) -> None:
    eye = lesion_eye(5)
    slo, faf = (np.round(im * 255).astype(np.uint8) for im in vessel_pair(5, (120, 120)))
    dicom_eye(tmp_path / "src", eye["vol"], slo, box_px=BOX, faf=faf)
    scan = _read(tmp_path / "src")
    assert scan.faf is not None and scan.faf_to_slo is None and scan.meta["dicom"]["faf_file"]
    report = prepare_dataset(tmp_path / "src", tmp_path / "ds", PrepareOptions(fmt="dicom", flatten=FLAT), False)
    assert report.ok and list_cases(tmp_path / "ds")[0].has_image("faf")


# --------------------------------------------------------------------------- what is refused


def _refused(folder: Path, match: str, kind: str | None = None) -> None:
    """The folder's one scan (or refused file) fails naming the file, the Attribute and its kind."""
    [unit] = find_dicom_scans(folder) if kind != "line scan" else [find_dicom_scans(folder)[0]]
    with pytest.raises(DatasetError, match=match) as err:
        read_unit(get_format("dicom"), unit, ReadOptions())
    if kind is not None:
        assert err.value.kind == kind


def test_missing_position_attributes_are_named(tmp_path: Path) -> None:
    eye = lesion_eye()
    dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX, frame_location=False, plane_positions=False)
    _refused(tmp_path, r"eye_b7: frame 1 has neither an Ophthalmic Frame Location Sequence \(0022,0031\)")


def test_frames_of_unequal_size_are_named(tmp_path: Path) -> None:
    eye = lesion_eye()
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX)
    second = pydicom.dcmread(files["opt"])
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    second.InstanceNumber = 2
    second.Columns = 16
    second.PixelData = pydicom.dcmread(files["opt"]).pixel_array[:, :, :16].tobytes()
    second.save_as(tmp_path / "part2")
    _refused(tmp_path, r"frames of unequal size in one series: Rows \(0028,0010\) x Columns \(0028,0011\)")


def test_a_localizer_not_in_the_folder_is_named(tmp_path: Path) -> None:
    eye = lesion_eye()
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX)
    uid = pydicom.dcmread(files["op"]).SOPInstanceUID
    files["op"].unlink()
    _refused(tmp_path, rf"the localizer image {uid} .*Referenced SOP Instance UID \(0008,1155\).* is not in the folder")


def test_a_truncated_file_is_named(tmp_path: Path) -> None:
    eye = lesion_eye()
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX)
    data = files["opt"].read_bytes()
    files["opt"].write_bytes(data[: len(data) - 1000])
    _refused(tmp_path, r"eye_b7: truncated: Pixel Data \(7FE0,0010\) holds", "truncated file")


def test_a_non_ophthalmic_dicom_is_named(tmp_path: Path) -> None:
    write_ct_slice(tmp_path / "ct", {"patient_id": "P1", "study_uid": "1.2.3", "date": "20200101"})
    _refused(tmp_path, r"ct: not an ophthalmic tomography image: SOP Class UID \(0008,0016\) is CT Image Storage")


def test_a_transfer_syntax_without_a_decoder_is_named(tmp_path: Path) -> None:
    eye = lesion_eye()
    files = dicom_eye(tmp_path, eye["vol"], eye["slo"], box_px=BOX)
    ds = pydicom.dcmread(files["opt"])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + bytes(64)] * ds.NumberOfFrames)
    ds.save_as(files["opt"])
    _refused(tmp_path, r"no decoder is installed for the transfer syntax MPEG2 Main Profile / Main Level")


@pytest.mark.parametrize(
    ("n", "kind"), [(1, "line scan"), (4, "radial scan"), (3, "repeated line scan")], ids=["line", "radial", "repeat"]
)
def test_other_scan_patterns_are_named(tmp_path: Path, n: int, kind: str) -> None:
    vol = layered_volume((n, 32, 64), seed=0)[0]
    slo = np.zeros((120, 120), np.uint8)
    files = dicom_eye(tmp_path, vol, slo, box_px=BOX, bscans="top-down")
    if kind != "line scan":
        ds = pydicom.dcmread(files["opt"])
        ds.ScanPatternTypeCodeSequence = pydicom.Sequence()  # told by the geometry alone
        for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            angle = np.pi * i / n if kind == "radial scan" else 0.0
            c, r = 60 + 40 * np.cos(angle) * np.array([-1, 1]), 60 + 40 * np.sin(angle) * np.array([-1, 1])
            item.OphthalmicFrameLocationSequence[0].ReferenceCoordinates = [r[0], c[0], r[1], c[1]]
        ds.save_as(files["opt"])
    _refused(tmp_path, kind, kind)


# --------------------------------------------------------------------------- Must show: a mixed export folder


def mixed_export(root: Path) -> dict[str, np.ndarray]:
    """Two volumes (one stored bottom-up) with their SLOs and a GA companion each, a line scan,
    a CT slice and a truncated file, under opaque names in nested folders."""
    a, b = lesion_eye(6), lesion_eye(7)
    fa = dicom_eye(root / "PAT1" / "STUDY1", a["vol"], a["slo"], name="IM0001", bscans="bottom-up", box_px=BOX)
    fb = dicom_eye(
        root / "PAT2" / "X",
        b["vol"],
        b["slo"],
        name="IM0002",
        bscans="top-down",
        eye="L",
        patient_id="P002",
        box_px=BOX,
    )
    _companion(fa["opt"], a["truth"], fa["frame_order"])
    _companion(fb["opt"], b["truth"], fb["frame_order"])
    line = layered_volume((1, 32, 64))[0]
    dicom_eye(root / "PAT1" / "LINE", line, a["slo"], name="IM0003", box_px=BOX, series_number=5)
    write_ct_slice(root / "misc" / "CT000001", fa["study"])
    cut = dicom_eye(root / "PAT3", a["vol"], a["slo"], name="IM0004", patient_id="P003", box_px=BOX)["opt"]
    cut.write_bytes(cut.read_bytes()[:-3000])
    return {"P001": a["truth"], "P002": b["truth"]}


def test_a_mixed_export_folder_prepares_the_volumes_and_names_the_rest(tmp_path: Path) -> None:
    truths = mixed_export(tmp_path / "export")
    assert infer_format(tmp_path / "export") == "dicom"  # no suffixes: known by content
    report = prepare_dataset(tmp_path / "export", tmp_path / "ds", PrepareOptions(fmt="dicom", flatten=FLAT), False)
    assert len(report.written) == 2, report.summary()
    for case in list_cases(tmp_path / "ds"):
        np.testing.assert_array_equal(case.load_mask("ga"), truths[case.patient_id])
        np.testing.assert_array_equal(case.load_image("slo") > 0.5, truths[case.patient_id])
    kinds = {Path(src).name: report.kinds[src] for src, _ in report.failed}
    assert kinds == {"IM0003_b7": "line scan", "CT000001": "non-ophthalmic DICOM", "IM0004_b7": "truncated file"}
    summary = report.summary()
    assert "not volume scans (not prepared):" in summary and "damaged files:" in summary
    rerun = prepare_dataset(tmp_path / "export", tmp_path / "ds", PrepareOptions(fmt="dicom", flatten=FLAT), False)
    assert sorted(rerun.skipped) == sorted(report.written)  # keyed by series, not by file name


# --------------------------------------------------------------------------- predict --dicom-seg


def test_predict_writes_a_valid_segmentation_into_the_scans_study(phantom_dataset: Path, tmp_path: Path) -> None:
    import highdicom as hd

    from enface.predict import PredictOptions, predict
    from model_helpers import save_checkpoint

    eye = lesion_eye(8)
    files = dicom_eye(tmp_path / "src", eye["vol"], eye["slo"], box_px=BOX)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "epoch=1-val_dice=0.50.ckpt", phantom_dataset, seed=1)
    report = predict(
        ckpt, [tmp_path / "src"], tmp_path / "pred", options=PredictOptions(dicom_seg=True), progress=False
    )
    assert report.ok
    [out] = [r.out_dir for r in report.results]
    info = json.loads((out / "prediction.json").read_text())
    assert info["dicom_files"] == ["enface.dcm", "seg.dcm"]
    for name in info["dicom_files"]:
        errors, _ = dciodvfy(out / name)
        assert errors == [], f"{name}: {errors}"
    opt = pydicom.dcmread(files["opt"], stop_before_pixels=True)
    image, seg = pydicom.dcmread(out / "enface.dcm"), hd.seg.segread(out / "seg.dcm")
    assert image.StudyInstanceUID == seg.StudyInstanceUID == opt.StudyInstanceUID
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == opt.SOPInstanceUID
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    )
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "Geographic atrophy" and desc.SegmentAlgorithmType == "AUTOMATIC"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "13331008"
    assert desc.SegmentAlgorithmName == "enface fpn"
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    np.testing.assert_array_equal(pydicom.dcmread(out / "seg.dcm").pixel_array.reshape(mask.shape) > 0, mask)


def test_dicom_seg_of_a_scan_from_another_format_is_a_note(phantom_dataset: Path, tmp_path: Path) -> None:
    from enface.predict import PredictOptions, predict
    from model_helpers import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "c.ckpt", phantom_dataset, seed=1)
    case = phantom_dataset / "cases" / "P0001_OD_V1"
    report = predict(ckpt, [case], tmp_path / "pred", options=PredictOptions(dicom_seg=True), progress=False)
    info = json.loads((tmp_path / "pred" / "P0001_OD_V1" / "prediction.json").read_text())
    assert report.ok and info["dicom_files"] == [] and any("not a DICOM scan" in n for n in info["notes"])
    assert not (tmp_path / "pred" / "P0001_OD_V1" / "seg.dcm").exists()


def test_predict_on_dicom_matches_predict_on_vol(phantom_dataset: Path, tmp_path: Path) -> None:
    from enface.io.heidelberg import read_heidelberg
    from enface.predict import predict
    from formats_helpers import SLO_PX_MM, write_vol
    from model_helpers import save_checkpoint

    eye = lesion_eye(9)
    vol = eye["vol"]
    ys = slo_positions(*SHAPE[:2], BOX)[::-1]  # the .vol stored bottom-up, as Spectralis does
    (tmp_path / "vol").mkdir()
    write_vol(
        tmp_path / "vol" / "eye.vol",
        vol[::-1].transpose(0, 2, 1),
        eye["slo"],
        ys[:, 0] * SLO_PX_MM,
        ys[:, 1] * SLO_PX_MM,
        scale_x=0.05,
        distance=18 * SLO_PX_MM,
        scale_y=0.0039,
        slo_scale=(SLO_PX_MM, SLO_PX_MM),
        laterality="OD",
    )
    as_read = read_heidelberg(tmp_path / "vol" / "eye.vol")  # the volume the .vol holds, on the grid
    dicom_eye(tmp_path / "dcm", as_read.volume, eye["slo"], box_px=BOX, slo_spacing=SLO_PX_MM)
    ckpt = save_checkpoint(tmp_path / "c.ckpt", phantom_dataset, seed=1)
    p_vol = predict(ckpt, [tmp_path / "vol"], tmp_path / "pv", progress=False).results[0].out_dir
    p_dcm = predict(ckpt, [tmp_path / "dcm"], tmp_path / "pd", progress=False).results[0].out_dir
    a, b = np.load(p_vol / "probability.npy"), np.load(p_dcm / "probability.npy")
    delta = float(np.abs(a - b).max())
    print(f"max |dp| DICOM (16-bit) vs .vol: {delta:.2e}")
    assert a.shape == b.shape and delta < 1e-3


def test_a_circle_scan_is_named_by_its_closed_trajectory(tmp_path: Path) -> None:
    files = dicom_eye(tmp_path, layered_volume((1, 32, 64), seed=0)[0], np.zeros((120, 120), np.uint8), box_px=BOX)
    ds = pydicom.dcmread(files["opt"])
    del ds.ScanPatternTypeCodeSequence  # told by the geometry alone
    loc = ds.PerFrameFunctionalGroupsSequence[0].OphthalmicFrameLocationSequence[0]
    angles = np.linspace(0, 2 * np.pi, 32)  # one (row, column) per column, back to the start
    loc.ReferenceCoordinates = np.ravel(np.stack([60 + 30 * np.sin(angles), 60 + 30 * np.cos(angles)], 1)).tolist()
    loc.OphthalmicImageOrientation = "NONLINEAR"
    ds.save_as(files["opt"])
    _refused(tmp_path, r"eye_b7: circle scan \(closed frame trajectory\)", "circle scan")
