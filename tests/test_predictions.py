"""The output folder of ``enface predict`` (enface.data.predictions): what its writer leaves and
what its readers refuse, for predict, progression and review alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enface.data.folder import CaseMeta, dataset_of, is_case, is_dataset, write_case, write_dataset_info
from enface.data.predictions import (
    MASK_FILE,
    RECORD_FILE,
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    read_record,
    read_summary,
    write_scan_outputs,
)
from enface.errors import DatasetError
from enface.fileio import atomic_write_csv


def _scan(folder: Path, **record: object) -> Path:
    prob = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    overlay = np.zeros((6, 8, 3), np.uint8)
    folder.mkdir(parents=True)
    record = {"shape": [3, 4], "spacing": [0.1, 0.02], "member_areas_mm2": [0.1, 0.2], **record}
    write_scan_outputs(folder, prob >= 0.5, prob, np.full((3, 4), 0.1, np.float32), overlay, record)
    return folder


def test_one_scan_written_and_read_back(tmp_path: Path) -> None:
    folder = _scan(tmp_path / "s1")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            MASK_FILE,
            RECORD_FILE,
            "overlay.png",
            "probability.npy",
            "probability.png",
            "uncertainty.npy",
            "uncertainty.png",
        ]
    )
    record = read_record(folder)
    assert record.shape() == (3, 4) and record.spacing() == (0.1, 0.02) and record.member_areas_mm2 == (0.1, 0.2)
    np.testing.assert_array_equal(record.load_mask((3, 4)), np.linspace(0, 1, 12).reshape(3, 4) >= 0.5)
    assert record.load_map("uncertainty", (3, 4)).max() == pytest.approx(0.1)
    with pytest.raises(DatasetError, match=r"probability.npy: shape \(3, 4\), expected \(4, 3\)"):
        record.load_map("probability", (4, 3))


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"member_areas_mm2": [1.0, float("nan")]}, "'member_areas_mm2' must be a list of areas"),
        ({"spacing": [0.1, -1]}, "'spacing' must list the positive voxel spacing"),
        ({"shape": "3x4"}, "missing or invalid 'shape'"),
    ],
)
def test_a_bad_record_is_refused_naming_the_file(tmp_path: Path, record: dict, match: str) -> None:
    folder = _scan(tmp_path / "s1", **record)
    with pytest.raises(DatasetError, match=match) as err:
        r = read_record(folder)
        r.spacing()
        r.shape()
    assert err.value.path == str(folder / RECORD_FILE)


def test_summary_is_read_by_its_columns_and_refused_when_it_is_none(tmp_path: Path) -> None:
    path = tmp_path / SUMMARY_FILE
    with pytest.raises(DatasetError, match="is .* an output folder of `enface predict`"):
        read_summary(path)
    atomic_write_csv(path, [{"scan_id": "a", "status": "ok"}, {"scan_id": "b", "status": "failed"}], SUMMARY_COLUMNS)
    assert [r["scan_id"] for r in read_summary(path)] == ["a", "b"]
    atomic_write_csv(path, [{"scan_id": "a", "status": "ok"}] * 2, SUMMARY_COLUMNS)
    with pytest.raises(DatasetError, match="scan id\\(s\\) listed twice: a"):
        read_summary(path)
    path.write_text("scan,state\na,ok\n")
    with pytest.raises(DatasetError, match="missing column\\(s\\) scan_id, status"):
        read_summary(path)


def test_one_rule_for_a_dataset_a_case_and_the_dataset_they_belong_to(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    write_case(ds, CaseMeta("c1", "p1", "OD", 0, (0.1, 0.02, 0.01)), np.random.rand(2, 3, 4).astype(np.float32))
    assert not is_dataset(ds) and is_dataset(ds, unfinished=True)  # cases/ but no dataset.json yet
    write_dataset_info(ds, "ds", ["oct"], [], (0.1, 0.02, 0.01))
    case = ds / "cases" / "c1"
    assert is_dataset(ds) and is_case(case) and not is_case(ds)
    assert dataset_of(ds) == dataset_of(ds / "cases") == dataset_of(case) == ds
    assert dataset_of(tmp_path) is None and dataset_of(case / "oct.npy") is None
    assert json.loads((ds / "dataset.json").read_text())["name"] == "ds"
