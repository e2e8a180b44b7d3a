"""Issue 22 section 4, the prepare/predict workflow: re-runs, nested folders, concurrent runs,
full disks, out of memory, devices, checkpoints folders, depth mismatches."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams
from enface.errors import DatasetError
from formats_helpers import layered_volume

OPTS = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.2, 0.1, 16), spacing=(0.1, 0.02, 0.005))
SPACING = ["--spacing", "0.1,0.02,0.005"]


def _scan(folder: Path, name: str, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", layered_volume((4, 24, 64), seed=seed)[0])


def _meta(case: Path) -> dict:
    return json.loads((case / "meta.json").read_text())


# --------------------------------------------------------------------------- prepare


def test_prepare_rerun_writes_exactly_the_new_scan_when_names_sanitise_alike(tmp_path: Path) -> None:
    """Finding 5: ids are kept per source file; a+b added later gets a new id, nothing is rewritten."""
    src, out = tmp_path / "src", tmp_path / "ds"
    for i, name in enumerate(("a b", "a_b", "a&b")):
        _scan(src, name, i)
    first = prepare_dataset(src, out, OPTS, progress=False)
    assert first.written == ["a_b", "a_b-2", "a_b-3"]  # by sorted source name: 'a b', 'a&b', 'a_b'
    keys = {cid: _meta(out / "cases" / cid)["extra"]["source_key"] for cid in first.written}
    assert keys == {"a_b": "a b.npy", "a_b-2": "a&b.npy", "a_b-3": "a_b.npy"}
    before = {cid: (out / "cases" / cid / "oct.npy").read_bytes() for cid in first.written}
    _scan(src, "a+b", 7)  # sorts between 'a&b' and 'a_b': positions would shift
    second = prepare_dataset(src, out, OPTS, progress=False)
    assert second.written == ["a_b-4"] and sorted(second.skipped) == sorted(first.written)
    assert _meta(out / "cases" / "a_b-4")["extra"]["source_key"] == "a+b.npy"
    assert {cid: (out / "cases" / cid / "oct.npy").read_bytes() for cid in first.written} == before
    assert {cid: _meta(out / "cases" / cid)["extra"]["source_key"] for cid in first.written} == keys


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_prepare_refuses_out_and_src_nested(tmp_path: Path, where: str, capsys: pytest.CaptureFixture) -> None:
    """Finding 6: OUT equal to or inside SRC, or holding it: refused, nothing written."""
    src = tmp_path / "src"
    _scan(src, "s", 0)
    out = {"same": src, "inside": src / "ds", "holds": tmp_path}[where]
    rc = main(["prepare", str(src), str(out), "--format", "numpy", *SPACING, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and ("inside the source folder" in err or "holds the source" in err)
    assert sorted(p.name for p in src.iterdir()) == ["s.npy"]


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, allowed: str) -> None:
    """Every atomic write fails as on a full disk, except those under a folder named ``allowed``."""
    import enface.fileio as fileio

    real = fileio.atomic_write

    def write(path, writer):
        if allowed in Path(path).parts or any(p.startswith(f".{allowed}.") for p in Path(path).parts):
            return real(path, writer)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "atomic_write", write)


def test_prepare_on_a_full_disk_gives_one_message_and_no_half_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src, out = tmp_path / "src", tmp_path / "ds"
    for i in range(2):
        _scan(src, f"s{i}", i)
    _disk_fills_after(monkeypatch, "s0")
    rc = main(["prepare", str(src), str(out), "--format", "numpy", *SPACING, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "disk is full" in err and str(out) in err
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["s0"]  # no temporary or half-written case
    assert (out / "cases" / "s0" / "meta.json").is_file()


def test_prepare_numpy_short_write_is_reported_as_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = tmp_path / "src", tmp_path / "ds"
    for i in range(2):
        _scan(src, f"s{i}", i)
    import enface.fileio as fileio

    real = fileio.atomic_write

    def write(path, writer):
        if "s1" in str(path) and str(path).endswith(".npy"):
            raise OSError("32768 requested and 2016 written")
        return real(path, writer)

    monkeypatch.setattr(fileio, "atomic_write", write)
    report = prepare_dataset(src, out, OPTS, progress=False)
    assert report.written == ["s0"] and report.kinds == {str(src / "s1.npy"): "disk full"}
    assert "disk is full" in report.summary() and "requested" not in report.summary()
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["s0"]


def test_prepare_nested_check_raises_before_anything_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _scan(src, "s", 0)
    with pytest.raises(DatasetError, match="inside the source folder"):
        prepare_dataset(src, src / "cases", OPTS, progress=False)
    assert not (src / "cases").exists()
