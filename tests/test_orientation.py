"""Everything on the OCT grid lands on the same B-scans: volumes stored bottom-up or
top-down (and A-scans right-to-left), with companions in the file's order (issue 11).

Each test writes one eye, given on the SLO-oriented grid, as a device would store it, with
``<stem>_mask_<task>.png`` on the OCT grid (two graders), a mask drawn on the SLO and a
``<stem>_bm.npy``, all in the file's order; the prepared cases must agree with the eye.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.data.check import check_dataset
from enface.data.folder import list_cases
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams, flatten_volume
from enface.fileio import atomic_write_json
from enface.io.heidelberg import read_heidelberg
from formats_helpers import (
    BOX_MM,
    SLO_PX_MM,
    oriented_export,
    steep_bm_eye,
    write_heyex_xml,
    write_oriented_companions,
    write_oriented_vol,
)

N, W, D = 6, 24, 80
SD = 0.0078
PARAMS = FlattenParams(0.3, 0.1, 24)
LAYOUTS = [("bottom-up", "left-right"), ("top-down", "left-right"), ("bottom-up", "right-left")]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.parametrize(("bscans", "ascans"), LAYOUTS)
def test_vol_companions_land_on_the_right_bscans(tmp_path: Path, bscans: str, ascans: str) -> None:
    eye = steep_bm_eye()
    src = tmp_path / "src"
    src.mkdir()
    path = write_oriented_vol(src, "eye", eye, bscans, ascans)
    report = prepare_dataset(src, tmp_path / "ds", PrepareOptions(fmt="vol", flatten=PARAMS), progress=False)
    assert report.ok, report.summary()
    case = list_cases(tmp_path / "ds")[0]
    extra = case.meta.extra
    assert bool(extra.get("flipped_bscans")) == (bscans == "bottom-up")
    assert bool(extra.get("flipped_ascans")) == (ascans == "right-left")
    # OCT-grid masks (both graders): exactly the eye's labels
    np.testing.assert_array_equal(case.load_mask("ga"), eye["ga"])
    np.testing.assert_array_equal(case.load_mask("ga", "grader2"), eye["ga2"])
    # the SLO mask (drawn upside down on purpose: rows 0-1 of the grid flipped) lands there too
    assert _dice(case.load_mask("rpd").astype(bool), eye["ga"][::-1].astype(bool)) > 0.95
    # the _bm.npy (file order) flattens exactly like the eye's true BM on the grid
    assert extra["bm_source"] == "companion eye_bm.npy"
    volume = read_heidelberg(path).volume  # the volume as read, on the grid
    np.testing.assert_allclose(case.load_oct(), flatten_volume(volume, eye["bm"], SD, PARAMS), atol=1e-5)
    wrong = flatten_volume(volume, eye["bm"][::-1].copy(), SD, PARAMS)
    assert np.abs(case.load_oct() - wrong).max() > 0.1, "the test must tell a reversed BM apart"
    assert check_dataset(tmp_path / "ds").ok


def test_every_layout_gives_the_same_case(tmp_path: Path) -> None:
    eye = steep_bm_eye(1)
    cases = {}
    for k, (bscans, ascans) in enumerate(LAYOUTS):
        src = tmp_path / f"src{k}"
        src.mkdir()
        write_oriented_vol(src, "eye", eye, bscans, ascans)
        prepare_dataset(src, tmp_path / f"ds{k}", PrepareOptions(fmt="vol", flatten=PARAMS), progress=False)
        cases[(bscans, ascans)] = list_cases(tmp_path / f"ds{k}")[0]
    ref = cases[LAYOUTS[1]]  # top-down, left-right: stored as on the SLO
    for c in cases.values():
        np.testing.assert_allclose(c.load_oct(), ref.load_oct(), atol=1e-5)
        np.testing.assert_array_equal(c.load_mask("ga"), ref.load_mask("ga"))
        np.testing.assert_allclose(c.load_image("slo"), ref.load_image("slo"), atol=1e-6)


def test_heyex_xml_bottom_up_with_companions(tmp_path: Path) -> None:
    eye = steep_bm_eye(2)
    to_file, starts, ends = oriented_export(eye["vol"], "bottom-up", "left-right", BOX_MM)
    slo = np.zeros((90, 90), np.uint8)
    folder = tmp_path / "src" / "visit"
    xml = write_heyex_xml(
        folder,
        to_file(eye["vol"]).transpose(0, 2, 1),
        slo,
        starts,
        ends,
        scale_x=0.08,
        scale_y=SD,
        slo_scale=(SLO_PX_MM, SLO_PX_MM),
    )
    write_oriented_companions(folder, xml.stem, eye, to_file)
    report = prepare_dataset(
        tmp_path / "src", tmp_path / "ds", PrepareOptions(fmt="xml", flatten=PARAMS), progress=False
    )
    assert report.ok, report.summary()
    case = list_cases(tmp_path / "ds")[0]
    assert case.meta.extra["flipped_bscans"] is True
    np.testing.assert_array_equal(case.load_mask("ga"), eye["ga"])
    np.testing.assert_allclose(
        case.load_oct(), flatten_volume(read_heidelberg(xml).volume, eye["bm"], SD, PARAMS), atol=1e-5
    )


def test_numpy_depth_flipped_bm_is_in_file_depth(tmp_path: Path) -> None:
    eye = steep_bm_eye(3)
    src = tmp_path / "src"
    src.mkdir()
    stored = eye["vol"][:, :, ::-1]  # choroid at depth index 0, stored D, W, H
    np.save(src / "e.npy", np.ascontiguousarray(stored.transpose(2, 1, 0)))
    (src / "e.json").write_text(json.dumps({"axes": "DWH", "spacing": [0.34, 0.08, SD], "depth_flipped": True}))
    np.save(src / "e_bm.npy", (D - 1) - eye["bm"])  # BM depth as the user holds it: in the file's depth
    Image.fromarray(eye["ga"] * 255).save(src / "e_mask_ga.png")  # [B-scan, A-scan], file order
    report = prepare_dataset(src, tmp_path / "ds", PrepareOptions(fmt="numpy", flatten=PARAMS), progress=False)
    assert report.ok, report.summary()
    case = list_cases(tmp_path / "ds")[0]
    assert case.meta.extra["depth_flipped"] is True and case.meta.extra["source_spacing"] == [0.34, 0.08, SD]
    np.testing.assert_array_equal(case.load_mask("ga"), eye["ga"])
    np.testing.assert_allclose(case.load_oct(), flatten_volume(eye["vol"], eye["bm"], SD, PARAMS), atol=1e-5)


def test_transposed_oct_grid_companions_are_refused(tmp_path: Path) -> None:
    eye = steep_bm_eye(4)
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "e.npy", eye["vol"])
    (src / "e.json").write_text(json.dumps({"spacing": [0.34, 0.08, SD]}))
    Image.fromarray(eye["ga"].T.copy() * 255).save(src / "e_mask_ga.png")
    report = prepare_dataset(src, tmp_path / "ds", PrepareOptions(fmt="numpy", flatten=PARAMS), progress=False)
    assert not report.ok and "transposed" in report.failed[0][1]


def test_meta_records_source_spacing_window_and_resampling(tmp_path: Path) -> None:
    eye = steep_bm_eye(5)
    src = tmp_path / "src"
    src.mkdir()
    write_oriented_vol(src, "eye", eye, "bottom-up", "left-right")
    prepare_dataset(src, tmp_path / "ds", PrepareOptions(fmt="vol", flatten=PARAMS), progress=False)
    case = list_cases(tmp_path / "ds")[0]
    extra = case.meta.extra
    assert extra["source_spacing"] == pytest.approx([0.34, 0.08, SD])
    assert extra["input_shape"] == [N, W, D]
    f = extra["flatten"]
    assert f["input_depth_spacing_mm"] == pytest.approx(SD)
    assert f["step_voxels"] == pytest.approx(0.4 / SD / 24, rel=1e-5)
    assert f["above_voxels"] == pytest.approx(0.3 / SD, rel=1e-5)
    # the recorded mapping reproduces an output sample from the export's volume and BM
    vol = read_heidelberg(src / "eye.vol").volume
    i, j, k = 2, 5, 7
    z = eye["bm"][i, j] - f["above_voxels"] + (k + 0.5) * f["step_voxels"]
    smooth = __import__("scipy.ndimage", fromlist=["x"]).gaussian_filter1d(
        vol[i, j].astype(np.float32), f["antialias_sigma_voxels"], mode="nearest"
    )
    assert case.load_oct()[i, j, k] == pytest.approx(np.interp(z, np.arange(D), smooth), abs=1e-4)
    assert case.spacing[2] == pytest.approx(0.4 / 24)


def test_check_warns_about_cases_prepared_before_companions_followed_the_flip(tmp_path: Path) -> None:
    eye = steep_bm_eye(6)
    src = tmp_path / "src"
    src.mkdir()
    write_oriented_vol(src, "eye", eye, "bottom-up", "left-right")
    out = tmp_path / "ds"
    prepare_dataset(src, out, PrepareOptions(fmt="vol", flatten=PARAMS), progress=False)
    assert check_dataset(out).ok and not check_dataset(out).warnings
    meta_path = list_cases(out)[0].path / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["extra"]["grid_order"]  # as written before issue 11
    atomic_write_json(meta_path, meta)
    report = check_dataset(out)
    assert report.ok and any("wrong B-scans" in m for _, m in report.warnings)
