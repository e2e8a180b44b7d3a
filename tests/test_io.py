"""Readers: Heidelberg .vol / HEYEX XML (through eyepy), OCTA-500, NumPy, NIfTI, 2D images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.errors import DatasetError
from enface.io.base import positions_from_box
from enface.io.heidelberg import read_heidelberg
from enface.io.images import read_bscan_stack, read_image, read_mask
from enface.io.octa500 import find_octa500_cases, octa500_split, read_octa500_case
from enface.io.volumes import find_companions, read_nifti_volume, read_numpy_volume, read_volume_scan
from formats_helpers import layered_volume, write_heyex_xml, write_octa500, write_vol

N_BSCANS, WIDTH, DEPTH = 5, 32, 64


def _export_inputs(seed: int = 1):
    vol, bm, _ = layered_volume((N_BSCANS, WIDTH, DEPTH), seed=seed, speckle=0)
    slo = (np.random.default_rng(seed).random((96, 96)) * 255).astype(np.uint8)
    # Spectralis order: B-scan 0 at the bottom of the SLO (largest y)
    ys = np.linspace(2.4, 0.6, N_BSCANS)
    starts = np.stack([np.full(N_BSCANS, 0.6), ys], 1)
    ends = np.stack([np.full(N_BSCANS, 2.4), ys], 1)
    return vol, bm, slo, starts, ends


def test_vol_reader_geometry_bm_and_metadata(tmp_path: Path) -> None:
    vol, bm, slo, starts, ends = _export_inputs()
    path = write_vol(
        tmp_path / "scan.vol",
        vol.transpose(0, 2, 1),
        slo,
        starts,
        ends,
        scale_x=0.058,
        distance=0.45,
        scale_y=0.0039,
        slo_scale=(0.03, 0.03),
        bm_rows=bm,
    )
    scan = read_heidelberg(path)
    assert scan.volume.shape == (N_BSCANS, WIDTH, DEPTH)
    assert scan.spacing == pytest.approx((0.45, 0.058, 0.0039))
    # flipped so that B-scan 0 is the topmost one on the SLO
    np.testing.assert_allclose(scan.volume, vol[::-1], atol=2.5 / 255)
    np.testing.assert_allclose(scan.bm, bm[::-1], atol=1e-4)
    np.testing.assert_array_equal(np.round(scan.slo * 255).astype(np.uint8), slo)
    assert scan.bscan_positions.shape == (N_BSCANS, 2, 2)
    np.testing.assert_allclose(scan.bscan_positions[0], [[20, 20], [80, 20]], atol=1e-6)
    np.testing.assert_allclose(scan.bscan_positions[-1], [[20, 80], [80, 80]], atol=1e-6)
    assert scan.meta["patient_id"] == "P001"
    assert scan.meta["eye"] == "OS"
    assert scan.meta["visit_date"] == "2020-03-04"
    assert scan.meta["flipped_bscans"] is True


def test_vol_without_segmentation_has_no_bm(tmp_path: Path) -> None:
    vol, _, slo, starts, ends = _export_inputs(2)
    path = write_vol(
        tmp_path / "noseg.vol",
        vol.transpose(0, 2, 1),
        slo,
        starts,
        ends,
        scale_x=0.058,
        distance=0.45,
        scale_y=0.0039,
        slo_scale=(0.03, 0.03),
    )
    scan = read_heidelberg(path)
    assert scan.bm is None
    assert scan.volume.shape == (N_BSCANS, WIDTH, DEPTH)


def test_heyex_xml_reader(tmp_path: Path) -> None:
    vol, bm, slo, starts, ends = _export_inputs(3)
    xml = write_heyex_xml(
        tmp_path / "xml",
        vol.transpose(0, 2, 1),
        slo,
        starts,
        ends,
        scale_x=0.058,
        scale_y=0.0039,
        slo_scale=(0.03, 0.03),
        bm_rows=bm,
    )
    scan = read_heidelberg(xml)
    assert scan.volume.shape == (N_BSCANS, WIDTH, DEPTH)
    assert scan.spacing == pytest.approx((0.45, 0.058, 0.0039))
    np.testing.assert_allclose(scan.volume, vol[::-1], atol=1 / 255)
    np.testing.assert_allclose(scan.bm, bm[::-1], atol=1e-3)
    np.testing.assert_allclose(scan.bscan_positions[0, 1], [80, 20], atol=1e-6)
    assert scan.meta["patient_id"] == "P002"
    assert scan.meta["eye"] == "OD"
    assert scan.meta["visit_date"] == "2021-05-06"
    # the folder holding the export works too
    assert read_heidelberg(tmp_path / "xml", "xml").volume.shape == scan.volume.shape


def test_e2e_needs_a_spacing_in_mm(tmp_path: Path) -> None:
    from eyepy import EyeVolume, EyeVolumeMeta
    from eyepy.core.eyemeta import EyeBscanMeta

    from enface.io.heidelberg import eyevolume_to_scan

    data = np.random.default_rng(0).random((3, 20, 16)).astype(np.float32)
    meta = EyeVolumeMeta(
        scale_x=1,
        scale_y=1,
        scale_z=1,
        scale_unit="px",
        bscan_meta=[EyeBscanMeta(start_pos=(0, i), end_pos=(15, i), pos_unit="px") for i in range(3)],
    )
    ev = EyeVolume(data=data, meta=meta)
    with pytest.raises(DatasetError, match="no spacing in mm"):
        eyevolume_to_scan(ev, "x.e2e")
    scan = eyevolume_to_scan(ev, "x.e2e", default_spacing=(0.1, 0.01, 0.004))
    assert scan.volume.shape == (3, 16, 20)
    assert scan.spacing == (0.1, 0.01, 0.004)


# --------------------------------------------------------------------------- OCTA-500


def test_octa500_reader_orientation_layers_and_channels(tmp_path: Path) -> None:
    shape = (6, 10, 48)
    mask = np.zeros(shape[:2], np.uint8)
    mask[1, 2:7] = 1  # asymmetric: a transposition or flip would move it
    mask[4, 8] = 1
    surf = np.zeros((6,) + shape[:2])
    surf[5] = 30.25
    written = write_octa500(
        tmp_path / "OCTA-500",
        [10001, 10190],
        shape=shape,
        labels={"GT_LargeVessel": {10001: mask}, "GT_FAZ": {10001: 1 - mask}},
        layers={10001: surf},
    )
    cases = find_octa500_cases(tmp_path / "OCTA-500")
    assert [c.case_id for c in cases] == ["10001", "10190"]
    scan = read_octa500_case(cases[0], with_octa=True)
    oct_u8, octa_u8 = written[10001]
    np.testing.assert_array_equal(scan.volume, oct_u8)
    np.testing.assert_array_equal(scan.extra_volumes["octa"], octa_u8)
    np.testing.assert_array_equal(scan.masks["largevessel"], mask)
    np.testing.assert_array_equal(scan.masks["faz"], 1 - mask)
    assert np.allclose(scan.bm, 30.25)
    assert scan.spacing == pytest.approx((6 / 6, 6 / 10, 2 / 48))
    assert scan.meta["split"] == "train"
    only = read_octa500_case(cases[0], tasks=("faz",))
    assert set(only.masks) == {"faz"} and "octa" not in only.extra_volumes
    second = read_octa500_case(cases[1])
    assert second.masks == {} and second.bm is None and second.meta["split"] == "val"


def test_octa500_official_split() -> None:
    assert octa500_split("10001") == "train" and octa500_split("10180") == "train"
    assert octa500_split("10181") == "val" and octa500_split("10200") == "val"
    assert octa500_split("10201") == "test" and octa500_split("10300") == "test"
    assert octa500_split("10301") == "train" and octa500_split("10440") == "train"
    assert octa500_split("10441") == "val" and octa500_split("10450") == "val"
    assert octa500_split("10451") == "test" and octa500_split("10500") == "test"
    assert octa500_split("10501") is None and octa500_split("abc") is None


def test_octa500_requires_its_layout(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError, match="OCTA_6mm"):
        find_octa500_cases(tmp_path / "random")


# --------------------------------------------------------------------------- NumPy / NIfTI


def test_numpy_axes_sidecar_and_companions(tmp_path: Path) -> None:
    vol, _, _ = layered_volume((4, 12, 40), seed=0)
    np.save(tmp_path / "eye1.npy", vol.transpose(2, 0, 1))  # stored as D, H, W
    (tmp_path / "eye1.json").write_text(
        json.dumps({"axes": "DHW", "spacing": [0.2, 0.05, 0.01], "patient_id": "pat 7", "eye": "L", "visit": 3})
    )
    slo = np.random.default_rng(1).random((60, 60))
    Image.fromarray((slo * 255).astype(np.uint8)).save(tmp_path / "eye1_slo.png")
    grid_mask = np.zeros((4, 12), np.uint8)
    grid_mask[1:3, 4:9] = 1
    Image.fromarray(grid_mask * 255).save(tmp_path / "eye1_mask_ga.png")
    slo_mask = np.zeros((60, 60), np.uint8)
    slo_mask[10:30, 10:40] = 1
    Image.fromarray(slo_mask).save(tmp_path / "eye1_mask_ga.grader2.png")
    scan = read_volume_scan(tmp_path / "eye1.npy", "numpy")
    np.testing.assert_array_equal(scan.volume, vol)
    assert scan.spacing == (0.2, 0.05, 0.01)
    assert scan.meta["patient_id"] == "pat_7" and scan.meta["eye"] == "OS" and scan.meta["visit"] == 3
    assert scan.mask_spaces == {"ga": "oct", "ga.grader2": "slo"}
    np.testing.assert_array_equal(scan.masks["ga"], grid_mask)
    # the default box lets the 4 x 12 grid tile the whole 60 x 60 SLO
    np.testing.assert_allclose(scan.bscan_positions[0], [[2.0, 7.0], [57.0, 7.0]])
    np.testing.assert_allclose(scan.bscan_positions[-1, 1], [57.0, 52.0])
    assert read_numpy_volume(tmp_path / "eye1.npy", "DHW").shape == (4, 12, 40)


def test_nifti_spacing_from_header_in_microns(tmp_path: Path) -> None:
    import nibabel as nib

    vol, _, _ = layered_volume((4, 10, 32), seed=0)
    img = nib.Nifti1Image(vol.transpose(1, 0, 2), affine=np.diag([20.0, 150.0, 5.0, 1.0]))  # W, H, D
    img.header.set_zooms((20.0, 150.0, 5.0))
    img.header.set_xyzt_units("micron")
    nib.save(img, tmp_path / "v.nii.gz")
    arr, spacing = read_nifti_volume(tmp_path / "v.nii.gz", "WHD")
    np.testing.assert_allclose(arr, vol)
    assert spacing == pytest.approx((0.15, 0.02, 0.005))
    scan = read_volume_scan(tmp_path / "v.nii.gz", "nifti", axes="WHD")
    assert scan.spacing == pytest.approx((0.15, 0.02, 0.005))


def test_numpy_without_spacing_is_an_error(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 20), np.float32))
    with pytest.raises(DatasetError, match="spacing unknown"):
        read_volume_scan(tmp_path / "a.npy", "numpy")
    assert read_volume_scan(tmp_path / "a.npy", "numpy", spacing=(0.1, 0.1, 0.01)).volume.shape == (3, 4, 20)


def test_companion_roles_are_not_confused(tmp_path: Path) -> None:
    names = ("p1_slo.png", "p1_v2_slo.png", "p1_mask_ga.png", "p1_mask_rpd.expert2.tif", "p1_bm.npy", "p1_notes.png")
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    comp = find_companions(tmp_path, "p1")
    assert comp["slo"].name == "p1_slo.png"
    assert comp["faf"] is None
    assert comp["bm"].name == "p1_bm.npy"
    assert sorted(comp["masks"]) == ["ga", "rpd.expert2"]


# --------------------------------------------------------------------------- 2D images


def test_image_formats(tmp_path: Path) -> None:
    ramp8 = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    Image.fromarray(ramp8).save(tmp_path / "a.png")
    Image.fromarray(ramp8).save(tmp_path / "a.bmp")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), ramp8 / 255, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "a.bmp"), ramp8 / 255, atol=1e-6)
    ramp16 = ramp8.astype(np.uint16) * 257
    Image.fromarray(ramp16).save(tmp_path / "b.tif")
    np.testing.assert_allclose(read_image(tmp_path / "b.tif"), ramp8 / 255, atol=1e-4)
    Image.fromarray(np.linspace(-3, 5, 30, dtype=np.float32).reshape(5, 6)).save(tmp_path / "c.tif")
    f = read_image(tmp_path / "c.tif")
    assert f.min() == 0 and f.max() == 1
    rgb = np.stack([ramp8] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "d.png")
    np.testing.assert_allclose(read_image(tmp_path / "d.png"), ramp8 / 255, atol=1 / 255)


def test_mask_encodings(tmp_path: Path) -> None:
    m = np.zeros((5, 7), np.uint8)
    m[1:3, 2:5] = 1
    Image.fromarray(m).save(tmp_path / "01.png")
    Image.fromarray(m * 255).save(tmp_path / "0255.bmp")
    Image.fromarray(np.stack([m * 255] * 3, -1)).save(tmp_path / "rgb.png")
    for name in ("01.png", "0255.bmp", "rgb.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), m)


def test_bscan_stack_keeps_uint8(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        Image.fromarray(np.full((20, 8), 10 * i, np.uint8)).save(tmp_path / f"{i + 1}.bmp")
        files.append(tmp_path / f"{i + 1}.bmp")
    vol = read_bscan_stack(files, "stack")
    assert vol.dtype == np.uint8 and vol.shape == (3, 8, 20)
    assert vol[2, 0, 0] == 20


def test_positions_from_box() -> None:
    pos = positions_from_box((1, 2, 9, 6), (3, 5))
    np.testing.assert_allclose(pos[:, 0, 1], [2, 4, 6])
    np.testing.assert_allclose(pos[1], [[1, 4], [9, 4]])


def test_vol_display_gives_eyepys_uint8_values() -> None:
    """enface maps .vol intensities itself (faster); the values are eyepy's, bit for bit."""
    from eyepy.core.utils import from_vol_intensity

    from enface.io.heidelberg import vol_display

    rng = np.random.default_rng(0)
    raw = rng.random((3, 40, 50), dtype=np.float32) ** 4  # linear intensities, mostly dark
    raw[0, :5] = np.finfo(np.float32).max  # not measured
    raw[1, :3] = 0.0
    raw[1, 3:6] = 1.0
    raw[2, :4] = rng.uniform(1.0, 3.0, (4, 50)).astype(np.float32)  # above the file's range
    expected = from_vol_intensity(np.copy(raw))
    got = vol_display(raw)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert (got[0, :5] == 0).all()
