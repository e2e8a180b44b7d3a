"""``enface prepare`` / ``enface check``: exports and generic volumes in, a dataset folder out."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.cli import build_parser, main
from enface.data.check import check_dataset
from enface.data.folder import list_cases, read_dataset_info, read_splits
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams, enface_points, sample_enface, sample_enface_mask
from enface.data.register import apply_matrix, warp_image
from enface.io.base import full_image_box, positions_from_box
from enface.io.formats import list_formats
from formats_helpers import layered_volume, vessel_pair, write_octa500, write_vol

GRID = (8, 32)
SPACING = [0.2, 0.05, 0.01]


def _write_numpy_scan(src: Path, name: str, seed: int, **sidecar) -> np.ndarray:
    vol, _, ga = layered_volume((*GRID, 96), seed=seed, ga=True)
    np.save(src / f"{name}.npy", vol.transpose(2, 1, 0))  # stored D, W, H
    (src / f"{name}.json").write_text(json.dumps({"axes": "DWH", "spacing": SPACING, **sidecar}))
    return ga


def _rotation(shape: tuple[int, int], deg: float, shift: tuple[float, float]) -> np.ndarray:
    h, w = shape
    c = np.array([w / 2, h / 2])
    a = np.deg2rad(deg)
    lin = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + np.asarray(shift) - lin @ c
    return m


def test_formats_match_the_cli() -> None:
    """prepare and predict offer exactly the formats the readers know (one list)."""
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("prepare", "predict"):
        fmt = next(a for a in sub.choices[command]._actions if a.dest == "fmt")
        assert list(fmt.choices) == list_formats(), command
    assert list_formats() == ["dicom", "e2e", "nifti", "numpy", "octa500", "vol", "xml"]


def test_prepare_numpy_layout_with_slo_faf_and_faf_mask(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    ga = _write_numpy_scan(src, "p1_visit1", 0, visit=0, eye="OS")
    _write_numpy_scan(src, "p1_visit2", 1, visit=90, eye="OS")
    _write_numpy_scan(src, "p2_visit1", 2)
    Image.fromarray((ga * 255).astype(np.uint8)).save(src / "p1_visit2_mask_ga.png")  # on the OCT grid
    # p1_visit1: SLO, and a FAF rotated/shifted against it with a GA mask drawn on the FAF
    slo, faf_aligned = vessel_pair(3, (128, 128))
    t = _rotation(slo.shape, 5.0, (6.0, -4.0))
    faf = np.nan_to_num(warp_image(faf_aligned, t, slo.shape, cval=0.0))
    mask_slo = np.zeros((128, 128), np.float32)
    mask_slo[40:90, 30:100] = 1
    mask_faf = (np.nan_to_num(warp_image(mask_slo, t, slo.shape, cval=0.0)) > 0.5).astype(np.uint8)
    Image.fromarray((slo * 255).astype(np.uint8)).save(src / "p1_visit1_slo.png")
    Image.fromarray((faf * 255).astype(np.uint8)).save(src / "p1_visit1_faf.png")
    Image.fromarray(mask_faf * 255).save(src / "p1_visit1_mask_ga.png")
    (src / "p1_visit1.json").write_text(
        json.dumps({"axes": "DWH", "spacing": SPACING, "visit": 0, "eye": "OS", "mask_space": {"ga": "faf"}})
    )

    opts = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.3, 0.1, 32), patient_regex=r"^(?P<patient>p\d+)_")
    report = prepare_dataset(src, out, opts, progress=False)
    assert report.ok and sorted(report.written) == ["p1_visit1", "p1_visit2", "p2_visit1"]
    assert report.splits == "written"

    info = read_dataset_info(out)
    assert info["modalities"] == ["oct", "slo", "faf"] and info["tasks"] == ["ga"]
    assert info["spacing"] == pytest.approx([0.2, 0.05, 0.4 / 32])
    splits = read_splits(out)
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ["p1", "p2"]

    cases = {c.case_id: c for c in list_cases(out)}
    c1 = cases["p1_visit1"]
    assert c1.patient_id == "p1" and c1.meta.eye == "OS" and cases["p1_visit2"].meta.visit == 90
    assert c1.oct_shape() == (*GRID, 32)
    assert c1.meta.extra["bm_source"] == "estimated"
    assert c1.meta.extra["faf_registration"]["quality"] >= opts.faf_min_quality  # kept, and right (below)
    # the FAF-space mask lands where the SLO-space truth is
    pts = enface_points(positions_from_box(full_image_box((128, 128), GRID), GRID), GRID[1])
    truth = sample_enface_mask(mask_slo, pts)
    got = c1.load_mask("ga")
    dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
    assert dice > 0.9
    expected_faf, _ = sample_enface(faf, apply_matrix(t, pts))  # the FAF seen through the true warp
    assert np.abs(c1.load_image("faf") - expected_faf).mean() < 0.03
    expected_slo, _ = sample_enface(np.floor(slo * 255) / 255, pts)  # as stored in the PNG
    np.testing.assert_allclose(c1.load_image("slo"), expected_slo, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(cases["p1_visit2"].load_mask("ga"), ga.astype(np.uint8))
    assert cases["p2_visit1"].tasks() == [] and not cases["p2_visit1"].has_image("slo")
    assert check_dataset(out).ok

    again = prepare_dataset(src, out, opts, progress=False)
    assert again.written == [] and sorted(again.skipped) == sorted(cases) and again.splits == "kept"


def _vol_pair(tmp_path: Path) -> Path:
    src = tmp_path / "exports"
    src.mkdir()
    n, w, d = 6, 24, 80
    for k, day in enumerate((dt.date(2020, 1, 10), dt.date(2020, 7, 8))):
        vol, bm, _ = layered_volume((n, w, d), seed=k, speckle=0.1)
        slo = (np.random.default_rng(k).random((90, 90)) * 255).astype(np.uint8)
        ys = np.linspace(2.2, 0.5, n)
        write_vol(
            src / f"scan{k}.vol",
            vol.transpose(0, 2, 1),
            slo,
            np.stack([np.full(n, 0.4), ys], 1),
            np.stack([np.full(n, 2.3), ys], 1),
            scale_x=0.08,
            distance=0.34,
            scale_y=0.0039 * 2,
            slo_scale=(0.025, 0.025),
            bm_rows=bm,
            patient_id="HD 17",
            laterality="OD",
            visit_date=day,
        )
    return src


def test_prepare_vol_via_cli_with_visit_days(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _vol_pair(tmp_path)
    out = tmp_path / "ds"
    rc = main(
        ["prepare", str(src), str(out), "--format", "vol", "--depth", "24", "--window-mm", "0.3,0.1", "--no-progress"]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "2 case(s) written" in text
    cases = list_cases(out)
    assert [c.patient_id for c in cases] == ["HD_17", "HD_17"]
    assert sorted(c.meta.visit for c in cases) == [0, (dt.date(2020, 7, 8) - dt.date(2020, 1, 10)).days]
    assert all(c.meta.extra["bm_source"] == "export" for c in cases)
    assert all(c.has_image("slo") and c.oct_shape() == (6, 24, 24) for c in cases)
    assert cases[0].spacing == pytest.approx((0.34, 0.08, 0.4 / 24))
    assert main(["check", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


def test_flattening_with_the_export_bm_puts_the_rpe_at_a_fixed_depth(tmp_path: Path) -> None:
    src = _vol_pair(tmp_path)
    out = tmp_path / "ds"
    params = FlattenParams(0.2, 0.1, 30)
    prepare_dataset(src, out, PrepareOptions(fmt="vol", flatten=params), progress=False)
    vol = list_cases(out)[0].load_oct()
    k = int(round(params.bm_index))
    # RPE (bright) just above BM, choroid (darker) just below, in every A-scan
    assert (vol[..., k - 1] > vol[..., k + 2]).mean() > 0.95


def test_prepare_octa500_two_channels_and_official_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shape = (5, 8, 48)
    mask = np.zeros(shape[:2], np.uint8)
    mask[1:3, 2:6] = 1
    write_octa500(
        tmp_path / "OCTA-500", [10001, 10190, 10250], shape=shape, labels={"GT_LargeVessel": {10001: mask, 10250: mask}}
    )
    out = tmp_path / "octa"
    rc = main(
        [
            "prepare",
            str(tmp_path / "OCTA-500"),
            str(out),
            "--format",
            "octa500",
            "--octa",
            "--depth",
            "16",
            "--window-mm",
            "0.8,0.4",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().out
    splits = read_splits(out)
    assert splits["train"] == ["10001"] and splits["val"] == ["10190"] and splits["test"] == ["10250"]
    info = read_dataset_info(out)
    assert info["channels"] == ["oct", "octa"] and info["tasks"] == ["largevessel"]
    case = {c.case_id: c for c in list_cases(out)}["10001"]
    assert case.has_volume("octa") and case.load_volume("octa").shape == case.oct_shape() == (5, 8, 16)
    np.testing.assert_array_equal(case.load_mask("largevessel"), mask)
    assert case.spacing == pytest.approx((6 / 5, 6 / 8, 1.2 / 16))


def test_low_quality_faf_is_dropped_and_faf_masks_fail(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_numpy_scan(src, "a", 0)
    slo, _ = vessel_pair(0, (96, 96))
    noise = np.random.default_rng(0).random((96, 96))
    Image.fromarray((slo * 255).astype(np.uint8)).save(src / "a_slo.png")
    Image.fromarray((noise * 255).astype(np.uint8)).save(src / "a_faf.png")
    opts = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.3, 0.1, 16))
    report = prepare_dataset(src, tmp_path / "out", opts, progress=False)
    assert report.ok
    case = list_cases(tmp_path / "out")[0]
    assert case.has_image("slo") and not case.has_image("faf")
    assert case.meta.extra["faf_registration"]["quality"] < 0.3
    assert any("FAF not used" in msg for _, msg in report.notes)

    # the same with a mask drawn on that FAF: the case fails, naming the reason
    Image.fromarray(np.pad(np.ones((20, 20), np.uint8) * 255, 38)).save(src / "a_mask_ga.png")
    (src / "a.json").write_text(json.dumps({"axes": "DWH", "spacing": SPACING, "mask_space": {"ga": "faf"}}))
    report = prepare_dataset(src, tmp_path / "out2", opts, progress=False)
    assert not report.ok and "drawn on the FAF" in report.failed[0][1]


def test_check_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_numpy_scan(src, "p1_a", 0)
    _write_numpy_scan(src, "p2_a", 1)
    out = tmp_path / "out"
    prepare_dataset(src, out, PrepareOptions(fmt="numpy", flatten=FlattenParams(0.3, 0.1, 16)), progress=False)
    (out / "splits.json").write_text(json.dumps({"train": ["p1_a"], "val": ["p1_a"], "test": ["p2_a"]}))
    Image.fromarray(np.full((8, 32), 128, np.uint8)).save(out / "cases" / "p1_a" / "mask_ga.png")
    Image.fromarray(np.ones((3, 3), np.uint8)).save(out / "cases" / "p2_a" / "mask_ga.png")
    report = check_dataset(out)
    assert not report.ok
    text = report.format()
    assert "appears in both 'train' and 'val'" in text
    assert "not binary" in text and "mask has shape (3, 3)" in text
    assert "task 'ga' is present in cases but not declared" in text
    assert main(["check", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_prepare_flattened_nifti_and_xml_export(tmp_path: Path) -> None:
    import nibabel as nib

    from formats_helpers import write_heyex_xml

    src = tmp_path / "nii"
    src.mkdir()
    vol = np.random.default_rng(0).random((4, 10, 40)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([0.2, 0.05, 0.01, 1.0])), src / "flat_eye.nii.gz")
    (src / "flat_eye.json").write_text(json.dumps({"flattened": True, "patient_id": "F1"}))
    report = prepare_dataset(
        src, tmp_path / "o1", PrepareOptions(fmt="nifti", flatten=FlattenParams(depth=20)), progress=False
    )
    assert report.ok
    case = list_cases(tmp_path / "o1")[0]
    assert case.oct_shape() == (4, 10, 20) and case.spacing == pytest.approx((0.2, 0.05, 0.02))
    assert case.patient_id == "F1" and "bm_source" not in case.meta.extra

    n, w, d = 4, 16, 64
    volx, bm, _ = layered_volume((n, w, d), seed=0, speckle=0)
    ys = np.linspace(1.5, 0.5, n)
    write_heyex_xml(
        tmp_path / "xml" / "visit1",
        volx.transpose(0, 2, 1),
        np.zeros((60, 60), np.uint8),
        np.stack([np.full(n, 0.3), ys], 1),
        np.stack([np.full(n, 1.2), ys], 1),
        scale_x=0.06,
        scale_y=0.0078,
        slo_scale=(0.025, 0.025),
        bm_rows=bm,
    )
    report = prepare_dataset(
        tmp_path / "xml",
        tmp_path / "o2",
        PrepareOptions(fmt="xml", flatten=FlattenParams(0.2, 0.1, 16)),
        progress=False,
    )
    assert report.ok and report.written == ["visit1_export"]
    case = list_cases(tmp_path / "o2")[0]
    assert case.patient_id == "P002" and case.meta.eye == "OD" and case.meta.extra["bm_source"] == "export"
