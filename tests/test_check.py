"""`enface check`: every problem and warning of a dataset folder (enface.data.check), each
named by its file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.cli import main
from enface.data.check import check_dataset
from enface.data.folder import CaseMeta, write_case, write_dataset_info
from tiny_data import disc_dataset


def test_check_groups_repeated_problems(tiny_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "d"
    shutil.copytree(tiny_dataset, copy)
    for meta in (copy / "cases").glob("*/meta.json"):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "patient_id": None}))
    text = check_dataset(copy, deep=False).format()
    n = len(list((copy / "cases").iterdir()))
    assert f"{n} places: patient_id is missing, null or not a name" in text
    assert len([line for line in text.splitlines() if "patient_id is missing" in line]) == 1


def test_negative_spacing_reaches_the_check(tmp_path: Path, capsys) -> None:
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--format", "numpy", "--spacing", "-1,0,1"]) == 2
    err = capsys.readouterr().err
    assert "--spacing" in err and "-1.0 is not positive" in err


def test_check_reports_two_visits_of_one_eye_on_one_day(tmp_path: Path) -> None:
    ds = disc_dataset(tmp_path / "ds", {("P1", "OD"): [(0, 3), (90, 4), (90, 5)]})
    problems = [m for _, m in check_dataset(ds, deep=False).problems]
    assert any("two visits of one eye on one day: P1 OD day 90: P1_OD_V2, P1_OD_V3" in m for m in problems)


def test_check_reports_one_scan_under_two_names(tmp_path: Path) -> None:
    ds = disc_dataset(tmp_path / "ds", {("P1", "OD"): [(0, 3), (365, 4)], ("P2", "OS"): [(0, 3)]})
    assert check_dataset(ds, deep=False).ok  # different volumes
    shutil.copy(ds / "cases" / "P1_OD_V1" / "oct.npy", ds / "cases" / "P2_OS_V1" / "oct.npy")
    problems = [m for _, m in check_dataset(ds, deep=False).problems]
    assert problems == [
        "the same volume (oct.npy, byte for byte) in 2 cases: P1_OD_V1, P2_OS_V1 "
        "(one scan prepared under two names? keep one: a copy can land in two splits)"
    ]


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """Two cases, ``good`` and ``other`` (4 x 12 x 16 volumes), in which check finds nothing wrong."""
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for cid in ("good", "other"):
        write_case(out, CaseMeta(cid, cid, "OD", 0, (0.2, 0.05, 0.01)), rng.random((4, 12, 16)).astype(np.float32))
    write_dataset_info(out, "ds", ["oct"], [], (0.2, 0.05, 0.01))
    assert check_dataset(out).ok
    return out


def _problems(root: Path) -> str:
    report = check_dataset(root)
    assert not report.ok
    return "\n".join(f"{w}: {m}" for w, m in report.problems)


def test_check_missing_files(dataset: Path) -> None:
    (dataset / "cases" / "good" / "oct.npy").unlink()
    (dataset / "cases" / "other" / "meta.json").unlink()
    text = _problems(dataset)
    assert "good/oct.npy: file not found" in text and "other: meta.json missing" in text
    (dataset / "dataset.json").unlink()
    assert "dataset.json: file not found" in _problems(dataset)


def test_check_truncated_volume_and_nan(dataset: Path) -> None:
    p = dataset / "cases" / "good" / "oct.npy"
    p.write_bytes(p.read_bytes()[:-100])
    q = dataset / "cases" / "other" / "oct.npy"
    vol = np.load(q)
    vol[0, 1, 2] = np.inf
    np.save(q, vol)
    text = _problems(dataset)
    assert "good/oct.npy: unreadable or truncated" in text
    assert "other/oct.npy: 1 NaN/inf voxel(s)" in text
    assert check_dataset(dataset, deep=False).problems == [(str(p), check_dataset(dataset).problems[0][1])]


def test_check_wrong_shapes_and_images(dataset: Path) -> None:
    case = dataset / "cases" / "good"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(case / "slo.png")
    (case / "faf.png").write_bytes(b"garbage")
    np.save(case / "octa.npy", np.zeros((2, 2, 2), np.float32))
    text = _problems(dataset)
    assert "slo.png: slo has shape (5, 5), expected the en-face grid (4, 12)" in text
    assert "faf.png: unreadable or truncated" in text
    assert "octa.npy: shape (2, 2, 2) differs from oct.npy (4, 12, 16)" in text


def test_check_leftover_temp_folder_is_a_warning(dataset: Path) -> None:
    (dataset / "cases" / ".good.abc.tmp").mkdir()
    report = check_dataset(dataset)
    assert report.ok and any("interrupted write" in m for _, m in report.warnings)
