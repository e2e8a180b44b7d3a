"""``prepare`` on bad input: every problem gives an error naming the case or file and what
is wrong; a failing case never stops the batch nor damages what is already written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enface.cli import main
from enface.data.check import check_dataset
from enface.data.folder import list_cases
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams
from enface.errors import DatasetError
from enface.io.heidelberg import read_heidelberg
from formats_helpers import layered_volume, write_vol

OPTS = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.3, 0.1, 16))
SHAPE = (4, 12, 64)


def _scan(src: Path, name: str, seed: int = 0, volume: np.ndarray | None = None) -> np.ndarray:
    vol = layered_volume(SHAPE, seed=seed)[0] if volume is None else volume
    np.save(src / f"{name}.npy", vol)
    (src / f"{name}.json").write_text(json.dumps({"spacing": [0.2, 0.05, 0.01]}))
    return vol


def _failed(src: Path, out: Path) -> dict[str, str]:
    """Run prepare; return {file name: reason} of the failed cases, checking the good ones."""
    report = prepare_dataset(src, out, OPTS, progress=False)
    assert report.written, "the good cases must still be written"
    return {Path(f).name: reason for f, reason in report.failed}


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    _scan(d, "good")
    return d


# --------------------------------------------------------------------------- prepare


def test_missing_source_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="source folder not found"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out", OPTS, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no numpy scans found"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", OPTS, progress=False)
    assert not (tmp_path / "out").exists()


def test_wrong_volume_shape(src: Path, tmp_path: Path) -> None:
    np.save(src / "flat.npy", np.zeros((12, 64), np.float32))
    failed = _failed(src, tmp_path / "out")
    assert "expected a 3D volume" in failed["flat.npy"] and "(12, 64)" in failed["flat.npy"]


def test_nan_and_inf_voxels(src: Path, tmp_path: Path) -> None:
    vol = layered_volume(SHAPE, seed=1)[0]
    vol[1, 2, 3] = np.nan
    vol[0, 0, 0] = np.inf
    _scan(src, "nan", volume=vol)
    failed = _failed(src, tmp_path / "out")
    assert "2 NaN/inf voxels" in failed["nan.npy"]
    assert [c.case_id for c in list_cases(tmp_path / "out")] == ["good"]


def test_non_binary_mask(src: Path, tmp_path: Path) -> None:
    _scan(src, "grey", 2)
    Image.fromarray(np.tile(np.arange(12, dtype=np.uint8) * 20, (4, 1))).save(src / "grey_mask_ga.png")
    failed = _failed(src, tmp_path / "out")
    assert "grey_mask_ga.png" in failed["grey.npy"] and "not binary" in failed["grey.npy"]


def test_mask_of_mismatched_size(src: Path, tmp_path: Path) -> None:
    _scan(src, "odd", 3)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(src / "odd_mask_ga.png")
    failed = _failed(src, tmp_path / "out")
    reason = failed["odd.npy"]
    assert "odd_mask_ga.png" in reason and "(5, 7)" in reason and "OCT grid (4, 12)" in reason


def test_mask_matching_both_slo_and_faf_is_ambiguous(src: Path, tmp_path: Path) -> None:
    _scan(src, "amb", 4)
    for name in ("amb_slo.png", "amb_faf.png", "amb_mask_ga.png"):
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(src / name)
    failed = _failed(src, tmp_path / "out")
    assert "mask_space" in failed["amb.npy"]


def test_unreadable_and_truncated_files(src: Path, tmp_path: Path) -> None:
    _scan(src, "trunc_npy", 5)
    data = (src / "trunc_npy.npy").read_bytes()
    (src / "trunc_npy.npy").write_bytes(data[: len(data) // 2])
    _scan(src, "trunc_png", 6)
    buf = src / "trunc_png_slo.png"
    Image.fromarray(np.full((30, 30), 90, np.uint8)).save(buf)
    buf.write_bytes(buf.read_bytes()[:40])
    _scan(src, "not_png", 7)
    (src / "not_png_faf.png").write_text("this is not an image")
    _scan(src, "bad_json", 8)
    (src / "bad_json.json").write_text("{spacing: ")
    failed = _failed(src, tmp_path / "out")
    assert "unreadable or truncated" in failed["trunc_npy.npy"]
    assert "trunc_png_slo.png" in failed["trunc_png.npy"] and "unreadable or truncated" in failed["trunc_png.npy"]
    assert "not_png_faf.png" in failed["not_png.npy"]
    assert "bad_json.json" in failed["bad_json.npy"] and "not valid JSON" in failed["bad_json.npy"]


def test_sidecar_typos_and_bad_values(src: Path, tmp_path: Path) -> None:
    _scan(src, "typo", 9)
    (src / "typo.json").write_text(json.dumps({"spacing": [0.2, 0.05, 0.01], "spcing": 1}))
    _scan(src, "neg", 10)
    (src / "neg.json").write_text(json.dumps({"spacing": [0.2, -0.05, 0.01]}))
    _scan(src, "axes", 11)
    (src / "axes.json").write_text(json.dumps({"spacing": [0.2, 0.05, 0.01], "axes": "HWX"}))
    failed = _failed(src, tmp_path / "out")
    assert "unknown key(s) spcing" in failed["typo.npy"]
    assert "spacing must be" in failed["neg.npy"]
    assert "permutation of 'HWD'" in failed["axes.npy"]


def test_truncated_and_foreign_vol_exports(tmp_path: Path) -> None:
    src = tmp_path / "vols"
    src.mkdir()
    vol, bm, _ = layered_volume((3, 16, 48), seed=0, speckle=0)
    ys = np.linspace(1.0, 0.2, 3)
    args = dict(
        slo=np.zeros((40, 40), np.uint8),
        starts_mm=np.stack([np.full(3, 0.2), ys], 1),
        ends_mm=np.stack([np.full(3, 0.9), ys], 1),
        scale_x=0.05,
        distance=0.4,
        scale_y=0.01,
        slo_scale=(0.025, 0.025),
        bm_rows=bm,
    )
    write_vol(src / "ok.vol", vol.transpose(0, 2, 1), **args)
    data = write_vol(src / "cut.vol", vol.transpose(0, 2, 1), **args).read_bytes()
    (src / "cut.vol").write_bytes(data[: len(data) - 500])
    (src / "junk.vol").write_bytes(os.urandom(100))
    with pytest.raises(DatasetError, match=f"truncated at byte {len(data) - 500} of {len(data)}"):
        read_heidelberg(src / "cut.vol")
    report = prepare_dataset(
        src, tmp_path / "out", PrepareOptions(fmt="vol", flatten=FlattenParams(0.2, 0.1, 16)), progress=False
    )
    failed = {Path(f).name: r for f, r in report.failed}
    assert report.written == ["ok"]
    assert set(failed) == {"cut.vol", "junk.vol"}
    assert "truncated at byte" in failed["cut.vol"] and "not a Heidelberg .vol file" in failed["junk.vol"]
    assert report.kind_counts() == {"damaged file": 1, "truncated file": 1}


def test_failing_rerun_never_damages_finished_cases(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    _scan(src, "second", 12)
    assert prepare_dataset(src, out, OPTS, progress=False).ok
    before = {p.relative_to(out / "cases"): p.read_bytes() for p in (out / "cases").rglob("*") if p.is_file()}
    # the source of a finished case goes bad; an overwrite re-run fails on it...
    vol = np.load(src / "second.npy")
    vol[0, 0, 0] = np.nan
    np.save(src / "second.npy", vol)
    rc = main(
        [
            "prepare",
            str(src),
            str(out),
            "--format",
            "numpy",
            "--depth",
            "16",
            "--window-mm",
            "0.3,0.1",
            "--overwrite",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 1
    assert "second.npy" in text and "NaN/inf" in text and "1 failed" in text
    # ...and the finished case is untouched, with no temporary leftovers
    after = {p.relative_to(out / "cases"): p.read_bytes() for p in (out / "cases").rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    second = [k for k in before if k.parts[0] == "second"]
    assert second and all(after[k] == before[k] for k in second)
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]
    assert check_dataset(out).ok


# --------------------------------------------------------------------------- reading 2D files


# --------------------------------------------------------------------------- check
