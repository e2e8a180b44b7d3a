"""The readers (enface.io) refuse what they cannot read right, naming the file and what is wrong:
an out-of-range ``_bm.npy``, sidecar strings for booleans, malformed visit dates, blank patient
ids, NIfTI voxel sizes of 0, identical B-scan positions, ``.vol`` headers counting fewer B-scans
than the file holds, implausible spacings, constant volumes. Each once gave a wrong result, lost
data or a misleading message.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from enface.cli import main
from enface.data.folder import CaseMeta
from enface.data.options import FlattenParams, PrepareOptions
from enface.data.prepare import prepare_dataset
from enface.data.scan_case import scan_to_case
from enface.errors import DatasetError, ScanKindError
from enface.io.heidelberg import read_heidelberg
from enface.io.volumes import read_volume_scan
from formats_helpers import layered_volume, write_heyex_xml, write_vol

SHAPE = (4, 12, 64)
SPACING = [0.2, 0.05, 0.01]
OPTS = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.3, 0.1, 16))


def _npy_scan(folder: Path, name: str = "eye", volume: np.ndarray | None = None, **sidecar: object) -> Path:
    """A ``.npy`` scan with its sidecar (spacing unless given)."""
    folder.mkdir(parents=True, exist_ok=True)
    vol = layered_volume(SHAPE)[0] if volume is None else volume
    path = folder / f"{name}.npy"
    np.save(path, vol)
    (folder / f"{name}.json").write_text(json.dumps({"spacing": SPACING, **sidecar}))
    return path


def _vol_args(n: int, ys: np.ndarray | None = None, distance: float = 0.3) -> dict:
    ys = np.linspace(1.2, 0.3, n) if ys is None else ys
    return dict(
        slo=np.full((48, 48), 90, np.uint8),
        starts_mm=np.stack([np.full(n, 0.2), ys], 1),
        ends_mm=np.stack([np.full(n, 1.0), ys], 1),
        scale_x=0.035,
        distance=distance,
        scale_y=0.006,
        slo_scale=(0.03, 0.03),
    )


def _bscans(n: int = 4, seed: int = 0) -> np.ndarray:
    return layered_volume((n, 24, 64), seed=seed, speckle=0.1)[0].transpose(0, 2, 1)  # (n, depth, width)


def _refused(path: Path, fmt: str = "numpy") -> str:
    with pytest.raises(DatasetError) as info:
        scan = read_volume_scan(path, fmt)
        scan_to_case(scan, "c", OPTS)
    return str(info.value)


# --------------------------------------------------------------------------- 1. _bm.npy


@pytest.mark.parametrize("change", ["plus_1000", "minus_200", "three_columns_out", "inf"])
def test_bm_companion_outside_the_depth_range_is_refused(tmp_path: Path, change: str) -> None:
    path = _npy_scan(tmp_path)
    bm = layered_volume(SHAPE)[1].astype(np.float64)
    if change == "plus_1000":
        bm += 1000
    elif change == "minus_200":
        bm -= 200
    elif change == "three_columns_out":
        bm[:, -3:] = SHAPE[2] + 5
    else:
        bm[1, 1] = np.inf
    np.save(tmp_path / "eye_bm.npy", bm)
    text = _refused(path)
    assert "eye_bm.npy" in text and "outside the volume's depth range 0 to 63 voxels" in text, text


def test_bm_companion_in_range_with_missing_values_is_used(tmp_path: Path) -> None:
    path = _npy_scan(tmp_path)
    bm = layered_volume(SHAPE)[1]
    bm[0, 0] = np.nan  # missing: filled from neighbours
    np.save(tmp_path / "eye_bm.npy", bm)
    case = scan_to_case(read_volume_scan(path, "numpy"), "c", OPTS)
    assert case.meta.extra["bm_source"] == "companion eye_bm.npy"
    assert float(case.oct.std()) > 0.01  # tissue, not padding
    np.save(tmp_path / "eye_bm.npy", np.full(SHAPE[:2], np.nan))
    assert "NaN everywhere" in _refused(path)


# --------------------------------------------------------------------------- 2. booleans


@pytest.mark.parametrize("key, value", [("flattened", "no"), ("depth_flipped", "false"), ("faf_registered", 1)])
def test_sidecar_booleans_must_be_json_booleans(tmp_path: Path, key: str, value: object) -> None:
    text = _refused(_npy_scan(tmp_path, **{key: value}))
    assert "eye.json" in text and f"{key} must be true or false" in text, text


def test_flattened_true_is_still_read(tmp_path: Path) -> None:
    assert read_volume_scan(_npy_scan(tmp_path, flattened=True), "numpy").flattened
    assert not read_volume_scan(_npy_scan(tmp_path, "b", flattened=False), "numpy").flattened


# --------------------------------------------------------------------------- 3. visit_date


@pytest.mark.parametrize("value", ["2021-02-30", "yesterday", "01/02/2020", "2021-03-04T10:00:00", 20210304])
def test_malformed_visit_date_is_refused(tmp_path: Path, value: object) -> None:
    text = _refused(_npy_scan(tmp_path, visit_date=value))
    assert "eye.json" in text and "visit_date" in text, text


def test_iso_visit_dates_give_days_apart(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _npy_scan(src, "a", patient_id="P1", visit_date="2020-01-01")
    _npy_scan(src, "b", patient_id="P1", visit_date="2021-07-01")
    prepare_dataset(src, tmp_path / "out", OPTS, progress=False)
    visits = {p.name: json.loads((p / "meta.json").read_text())["visit"] for p in (tmp_path / "out/cases").iterdir()}
    assert visits == {"a": 0, "b": 547}


# --------------------------------------------------------------------------- 4. patient_id


@pytest.mark.parametrize("value", ["", "   ", "???", None, True])
def test_blank_patient_id_is_refused(tmp_path: Path, value: object) -> None:
    text = _refused(_npy_scan(tmp_path, patient_id=value))
    assert "eye.json" in text and "patient_id" in text, text


def test_export_patient_id_without_letters_is_no_shared_patient() -> None:
    """An export's patient field with no letter or digit gives no id (the device's own patient
    number, or the file name, is used next), never one "unknown" shared by every such scan."""
    from enface.io.base import clean_id as _clean_id

    assert _clean_id("???") is None and _clean_id(" - ") is None
    assert _clean_id("P 7") == "P_7"


# --------------------------------------------------------------------------- 9. NIfTI pixdim


@pytest.mark.parametrize("zooms", [(0.0, 0.05, 0.01), (0.2, -0.05, 0.01), (0.2, 0.05, float("nan"))])
def test_nifti_without_usable_voxel_sizes_is_refused(tmp_path: Path, zooms: tuple, capfd) -> None:
    vol = layered_volume(SHAPE)[0]
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header["pixdim"][1:4] = zooms
    path = tmp_path / "eye.nii.gz"
    nib.save(img, path)
    text = _refused(path, "nifti")
    assert str(path) in text and "pixdim" in text, text
    assert "setting 0 dims to 1" not in capfd.readouterr().err  # nibabel's own message held back
    (tmp_path / "eye.json").write_text(json.dumps({"spacing": SPACING}))  # a spacing given: the header is not used
    assert read_volume_scan(path, "nifti").spacing == tuple(SPACING)


# --------------------------------------------------------------------------- 10. positions


@pytest.mark.parametrize(
    "box, expected",
    [([2, 5, 40, 5], "all 4 B-scan positions are identical"), ([7, 2, 7, 40], "starts and ends at the same point")],
)
def test_degenerate_slo_placement_is_refused(tmp_path: Path, box: list, expected: str) -> None:
    path = _npy_scan(tmp_path, slo_box=box)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / "eye_slo.png")
    text = _refused(path)
    assert str(path) in text and expected in text, text


def test_vol_with_identical_bscan_positions_gives_no_constant_slo(tmp_path: Path) -> None:
    """Already refused on main (ScanKindError "repeated line scan"): kept covered here."""
    path = write_vol(tmp_path / "one.vol", _bscans(), **_vol_args(4, ys=np.full(4, 0.8)))
    with pytest.raises(ScanKindError, match="all 4 B-scans lie at the same place on the SLO") as info:
        read_heidelberg(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- 13. B-scan count


def test_vol_holding_more_bscans_than_its_header_counts_is_refused(tmp_path: Path) -> None:
    """Refused since the first readers: kept covered here."""
    path = write_vol(tmp_path / "u.vol", _bscans(5), **_vol_args(5), n_header=3)
    with pytest.raises(ScanKindError, match="the header counts 3 B-scans but the file holds 5") as info:
        read_heidelberg(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- confusing messages


def test_valid_vol_reads_without_library_messages(tmp_path: Path, capfd) -> None:
    """eyepy's "The volume contains less layers than expected" (a log line or a warning) is held back."""
    path = write_vol(tmp_path / "ok.vol", _bscans(), **_vol_args(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = read_heidelberg(path)
    assert scan.volume.shape == (4, 24, 64)
    assert not caught, [str(w.message) for w in caught]
    assert "less layers" not in capfd.readouterr().err


def test_nan_bscan_in_a_vol_is_refused(tmp_path: Path) -> None:
    data = _bscans()
    data[2, 3, 3] = np.nan
    path = write_vol(tmp_path / "nan.vol", data, **_vol_args(4))
    with pytest.raises(ScanKindError, match=r"hold NaN samples \(first: B-scan 2\)") as info:
        read_heidelberg(path)
    assert str(path) in str(info.value)


def test_xml_bscan_png_corrupt_or_of_another_size_names_the_png(tmp_path: Path) -> None:
    n = 4
    ys = np.linspace(1.2, 0.3, n)
    starts, ends = np.stack([np.full(n, 0.2), ys], 1), np.stack([np.full(n, 1.0), ys], 1)
    slo = np.full((48, 48), 90, np.uint8)
    xml = write_heyex_xml(tmp_path / "x", _bscans(n), slo, starts, ends, 0.035, 0.006, (0.03, 0.03))
    good = (tmp_path / "x" / "bscan_001.png").read_bytes()
    (tmp_path / "x" / "bscan_001.png").write_bytes(good[:60])
    with pytest.raises(ScanKindError, match="bscan_001.png: unreadable B-scan image") as info:
        read_heidelberg(xml, "xml")
    assert "pip install" not in str(info.value)
    Image.fromarray(np.zeros((64, 30), np.uint8)).save(tmp_path / "x" / "bscan_001.png")
    with pytest.raises(ScanKindError, match="B-scan image bscan_001.png is not 24 x 64 like the other B-scans"):
        read_heidelberg(xml, "xml")


@pytest.mark.parametrize("spacing", [[1e300, 0.05, 0.01], [0.2, 0.05, 1e-9], [True, 0.05, 0.01], [0.2, "0.05", 0.01]])
def test_implausible_sidecar_spacing_is_refused(tmp_path: Path, spacing: list) -> None:
    text = _refused(_npy_scan(tmp_path, spacing=spacing))
    assert "eye.json: spacing must be three voxel sizes" in text, text


def test_huge_spacing_of_a_vol_export_is_refused_before_any_fit(tmp_path: Path) -> None:
    path = write_vol(tmp_path / "far.vol", _bscans(), **_vol_args(4, distance=1e30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning on the way
        with pytest.raises(DatasetError, match="outside the plausible range") as info:
            scan_to_case(read_heidelberg(path), "c", PrepareOptions(fmt="vol", register_faf=False))
    assert str(path) in str(info.value)


def test_huge_spacing_on_the_command_line_is_refused(tmp_path: Path, capsys) -> None:
    _npy_scan(tmp_path / "src")
    rc = main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--format", "numpy", "--spacing", "1e300,1,1"])
    text = capsys.readouterr().err
    assert rc != 0 and "--spacing" in text and "plausible range" in text and "Traceback" not in text, text


@pytest.mark.parametrize("value", [["ga"], "ga", {"ga": ["slo"]}])
def test_mask_space_must_be_an_object_of_spaces(tmp_path: Path, value: object) -> None:
    text = _refused(_npy_scan(tmp_path, mask_space=value))
    assert "eye.json: mask_space" in text and "'g'" not in text, text


def test_visit_and_visit_date_together_are_refused(tmp_path: Path) -> None:
    text = _refused(_npy_scan(tmp_path, visit=3, visit_date="2021-03-04"))
    assert "eye.json: both visit (3) and visit_date ('2021-03-04') are given" in text, text


def test_eye_with_dated_and_undated_visits_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _npy_scan(src, "a", patient_id="P1", eye="OD", visit_date="2023-05-01")
    _npy_scan(src, "b", patient_id="P1", eye="OD", visit=400)
    _npy_scan(src, "c", patient_id="P2", eye="OD", visit=0)  # another patient: fine
    with pytest.raises(DatasetError, match=r"patient 'P1' eye OD: visits given both as dates \(case a\)"):
        prepare_dataset(src, tmp_path / "out", OPTS, progress=False)
    assert not (tmp_path / "out" / "dataset.json").exists()


@pytest.mark.parametrize("value", [1e30, 398.5, 10**30, -1, "3", True])
def test_visit_must_be_a_whole_day_in_range(tmp_path: Path, value: object) -> None:
    text = _refused(_npy_scan(tmp_path, visit=value))
    assert "eye.json: visit must be" in text, text
    with pytest.raises(DatasetError, match="meta.json: visit must be"):
        CaseMeta.from_json({"patient_id": "P", "spacing": SPACING, "visit": value}, "meta.json", "c")
    assert CaseMeta.from_json({"patient_id": "P", "spacing": SPACING, "visit": 398}, "m", "c").visit == 398


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_constant_volume_is_refused(tmp_path: Path, value: float) -> None:
    text = _refused(_npy_scan(tmp_path, volume=np.full(SHAPE, value, np.float32)))
    assert str(tmp_path / "eye.npy") in text and "OCT volume is constant" in text, text


def test_depth_window_under_one_voxel_or_four_samples_is_refused(tmp_path: Path, capsys) -> None:
    path = _npy_scan(tmp_path / "src")
    thin = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.004, 0.004, 16))  # 0.008 mm < sd 0.01 mm
    with pytest.raises(DatasetError, match="is under one depth voxel of the scan"):
        scan_to_case(read_volume_scan(path, "numpy"), "c", thin)
    with pytest.raises(ValueError, match="depth >= 4 samples"):
        FlattenParams(0.3, 0.1, 3)
    rc = main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--format", "numpy", "--depth", "3"])
    text = capsys.readouterr().err
    assert rc != 0 and "depth >= 4" in text and "Traceback" not in text, text
