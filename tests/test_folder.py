"""The dataset folder contract: write/read round trip, atomic cases, validation errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.data.folder import (
    CaseMeta,
    list_cases,
    load_case,
    read_mask,
    read_splits,
    write_case,
    write_dataset_info,
    write_splits,
)
from enface.errors import DatasetError
from enface.fileio import atomic_save_png, atomic_write
from tiny_data import disc_dataset

META = CaseMeta(case_id="P1_OD_v0", patient_id="P1", eye="OD", visit=0, spacing=(0.12, 0.01, 0.004))


def _arrays(h: int = 6, w: int = 10, d: int = 16):
    rng = np.random.default_rng(0)
    vol = rng.random((h, w, d)).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    mask[2:4, 3:7] = 1
    return vol, rng.random((h, w)).astype(np.float32), mask


def test_round_trip(tmp_path: Path) -> None:
    vol, img, mask = _arrays()
    write_dataset_info(tmp_path, "t", ("oct", "faf"), ("ga",), (0.12, 0.01, 0.004))
    write_case(tmp_path, META, vol, images={"faf": img}, masks={"ga": mask, "ga.grader2": 1 - mask})
    (case,) = list_cases(tmp_path)
    assert case.meta == META
    assert np.array_equal(case.load_oct(), vol) and isinstance(case.load_oct(), np.memmap)
    assert np.abs(case.load_image("faf") - img).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(case.load_mask("ga"), mask)
    assert np.array_equal(case.load_mask("ga", "grader2"), 1 - mask)
    assert case.tasks() == ["ga"] and case.graders("ga") == [None, "grader2"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "cases").iterdir())


def test_existing_case_needs_overwrite_and_is_replaced_whole(tmp_path: Path) -> None:
    vol, img, mask = _arrays()
    write_case(tmp_path, META, vol, images={"faf": img}, masks={"ga": mask})
    with pytest.raises(DatasetError, match="already exists"):
        write_case(tmp_path, META, vol)
    write_case(tmp_path, META, vol * 2, overwrite=True)
    case = load_case(tmp_path / "cases" / META.case_id)
    assert np.allclose(case.load_oct(), vol * 2) and not case.has_image("faf") and not case.has_mask("ga")


def test_interrupted_replacement_is_recovered(tmp_path: Path) -> None:
    vol, _, _ = _arrays()
    final = write_case(tmp_path, META, vol)
    os.replace(final, final.parent / f".{final.name}.old")  # crash between the two renames
    (case,) = list_cases(tmp_path)
    assert np.array_equal(case.load_oct(), vol)


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    vol, _, mask = _arrays()
    existing = write_case(tmp_path, META, vol, masks={"ga": mask})

    def boom(path, image):
        raise OSError("disk full")

    monkeypatch.setattr("enface.data.folder.atomic_save_png", boom)
    with pytest.raises(OSError, match="disk full"):
        write_case(tmp_path, META, vol * 3, masks={"ga": mask}, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == [META.case_id]
    assert np.array_equal(load_case(existing).load_oct(), vol)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"oct_volume": np.zeros((4, 5))}, "must be 3D"),
        ({"oct_volume": np.full((2, 3, 4), np.nan, np.float32)}, "24 NaN/inf voxels"),
        ({"images": {"faf": np.zeros((3, 3))}}, "expected the en-face grid"),
        ({"images": {"octa": np.zeros((6, 10))}}, "unknown modality"),
        ({"masks": {"ga": np.full((6, 10), 2)}}, "not binary"),
        ({"masks": {"ga": np.zeros((6, 9))}}, "expected the en-face grid"),
        ({"images": {"slo": np.full((6, 10), 1.5)}}, r"must lie in \[0, 1\]"),
    ],
)
def test_invalid_arrays_are_refused_naming_the_case(tmp_path: Path, kwargs: dict, match: str) -> None:
    vol, _, _ = _arrays()
    args = {"oct_volume": vol, **kwargs}
    with pytest.raises(DatasetError, match=match) as err:
        write_case(tmp_path, META, **args)
    assert META.case_id in str(err.value)
    assert not (tmp_path / "cases" / META.case_id).exists()


def test_invalid_ids_and_meta(tmp_path: Path) -> None:
    vol, _, _ = _arrays()
    with pytest.raises(DatasetError, match="not a valid identifier"):
        write_case(tmp_path, CaseMeta(case_id="a/b", patient_id="P"), vol)
    folder = write_case(tmp_path, META, vol)
    meta = json.loads((folder / "meta.json").read_text())
    meta["spacing"] = [0.1, -1, 0.1]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="meta.json: spacing must be 3 positive numbers"):
        load_case(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        list_cases(tmp_path)


def test_mask_encodings(tmp_path: Path) -> None:
    m = np.zeros((4, 4), np.uint8)
    m[1, 1] = 1
    atomic_save_png(tmp_path / "a.png", m)
    atomic_save_png(tmp_path / "b.png", m * 255)
    atomic_save_png(tmp_path / "c.png", m * 128)
    assert np.array_equal(read_mask(tmp_path / "a.png"), m)
    assert np.array_equal(read_mask(tmp_path / "b.png"), m)
    with pytest.raises(DatasetError, match="c.png: mask is not binary"):
        read_mask(tmp_path / "c.png")
    atomic_write(tmp_path / "d.png", lambda f: f.write((tmp_path / "b.png").read_bytes()[:20]))
    with pytest.raises(DatasetError, match="d.png: unreadable or truncated"):
        read_mask(tmp_path / "d.png")


def test_splits_reject_a_patient_in_two_splits(tmp_path: Path) -> None:
    write_splits(tmp_path, {"train": ["A", "B"], "val": ["C"], "test": ["D"]})
    assert read_splits(tmp_path)["train"] == ["A", "B"]
    with pytest.raises(DatasetError, match="patient 'B' appears in both 'train' and 'test'"):
        write_splits(tmp_path, {"train": ["A", "B"], "val": [], "test": ["B"]})
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["A"], "val": ["A"], "test": []}))
    with pytest.raises(DatasetError, match="patient 'A' appears in both 'train' and 'val'"):
        read_splits(tmp_path)


def test_complex_volume_is_refused(tmp_path: Path) -> None:
    from enface.data.folder import CaseMeta, write_case

    with pytest.raises(DatasetError, match="real numbers, got dtype complex64"):
        write_case(tmp_path, CaseMeta("c", "p"), np.zeros((2, 3, 4), np.complex64))
    from enface.fileio import load_npy

    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4), np.complex128))
    with pytest.raises(DatasetError, match="v.npy: expected real numbers, got dtype complex128"):
        load_npy(tmp_path / "v.npy")


def test_random_bytes_npy_is_named_not_a_npy_file(tmp_path: Path) -> None:
    from enface.fileio import load_npy

    (tmp_path / "oct.npy").write_bytes(os.urandom(4096))
    with pytest.raises(DatasetError, match="oct.npy: not a .npy file") as e:
        load_npy(tmp_path / "oct.npy")
    assert "allow_pickle" not in str(e.value)


@pytest.mark.parametrize("patient", [None, "", "  ", True])
def test_null_patient_id_is_an_error(patient: object) -> None:
    from enface.data.folder import CaseMeta

    with pytest.raises(DatasetError, match="meta.json: patient_id is missing, null or not a name"):
        CaseMeta.from_json({"case_id": "c", "patient_id": patient, "spacing": [1, 1, 1]})


def test_case_id_is_optional_but_must_match(tiny_dataset: Path, tmp_path: Path) -> None:
    from enface.data.check import check_dataset
    from enface.data.folder import list_cases

    copy = tmp_path / "d"
    shutil.copytree(tiny_dataset, copy)
    for meta in (copy / "cases").glob("*/meta.json"):
        obj = json.loads(meta.read_text())
        del obj["case_id"]
        meta.write_text(json.dumps(obj))
    assert [c.case_id for c in list_cases(copy)] == sorted(p.name for p in (copy / "cases").iterdir())
    assert check_dataset(copy, deep=False).ok
    first = sorted((copy / "cases").iterdir())[0] / "meta.json"
    first.write_text(json.dumps({**json.loads(first.read_text()), "case_id": "other"}))
    with pytest.raises(DatasetError, match="does not match"):
        list_cases(copy)


def test_deeply_nested_meta_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = disc_dataset(tmp_path / "ds")
    meta = ds / "cases" / "P1_OD_V1" / "meta.json"
    meta.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["check", str(ds)]) == 1
    assert "meta.json: nested too deeply" in capsys.readouterr().out
    assert main(["progression", str(ds), "--reference", "--out", str(tmp_path / "out")]) == 2
    assert "nested too deeply" in capsys.readouterr().err
