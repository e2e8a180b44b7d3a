"""``prepare``'s batch: workers, re-runs after new files, where OUT may lie, a full disk, bm.npy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.data.prepare import PrepareOptions, prepare_dataset
from enface.data.preprocess import FlattenParams, flatten_volume
from enface.errors import DatasetError
from fault_helpers import FillingDisk, disk_fills_after
from formats_helpers import layered_volume

OPTS = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.2, 0.1, 16), spacing=(0.1, 0.02, 0.005))


def _scan(folder: Path, name: str, seed: int, **sidecar: object) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    vol, bm, _ = layered_volume((4, 24, 64), seed=seed)
    np.save(folder / f"{name}.npy", vol)
    if sidecar:
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
    return bm


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_workers_give_the_same_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _scan(src, f"s{i}", i, patient_id=f"P{i}")
    one, two = tmp_path / "w1" / "ds", tmp_path / "w2" / "ds"  # dataset.json names the folder
    r1 = prepare_dataset(src, one, OPTS, progress=False, workers=1)
    r2 = prepare_dataset(src, two, OPTS, progress=False, workers=2)
    assert r1.written == r2.written == ["s0", "s1", "s2"]
    assert _digest(one) == _digest(two)
    # resumable the same way: a re-run with workers skips everything
    again = prepare_dataset(src, two, OPTS, progress=False, workers=2)
    assert again.written == [] and again.skipped == ["s0", "s1", "s2"]
    assert _digest(one) == _digest(two)


def test_bm_npy_records_the_bm_flattened_along(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    bm = _scan(src, "s", 3)
    np.save(src / "s_bm.npy", bm)  # the export's BM: used as is and recorded
    out = tmp_path / "ds"
    assert prepare_dataset(src, out, OPTS, progress=False).ok
    case = out / "cases" / "s"
    recorded = np.load(case / "bm.npy")
    assert recorded.dtype == np.float32 and recorded.shape == (4, 24)
    np.testing.assert_allclose(recorded, bm, atol=1e-6)
    vol = np.load(src / "s.npy")
    np.testing.assert_allclose(np.load(case / "oct.npy"), flatten_volume(vol, recorded, 0.005, OPTS.flatten), atol=1e-6)
    assert main(["check", str(out)]) == 0
    np.save(case / "bm.npy", recorded + 1000)  # out of the source depth: check says so
    assert main(["check", str(out)]) == 1


SPACING = ["--spacing", "0.1,0.02,0.005"]


def _meta(case: Path) -> dict:
    return json.loads((case / "meta.json").read_text())


def test_prepare_rerun_writes_exactly_the_new_scan_when_names_sanitise_alike(tmp_path: Path) -> None:
    """Ids are kept per source file; a+b added later gets a new id, nothing is rewritten."""
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
    """OUT equal to or inside SRC, or holding it: refused, nothing written."""
    src = tmp_path / "src"
    _scan(src, "s", 0)
    out = {"same": src, "inside": src / "ds", "holds": tmp_path}[where]
    with pytest.raises(DatasetError, match="inside the source folder|holds the source"):
        prepare_dataset(src, out, OPTS, progress=False)
    rc = main(["prepare", str(src), str(out), "--format", "numpy", *SPACING, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and ("inside the source folder" in err or "holds the source" in err)
    assert sorted(p.name for p in src.iterdir()) == ["s.npy"]


def test_prepare_on_a_full_disk_gives_one_message_and_no_half_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    src, out = tmp_path / "src", tmp_path / "ds"
    for i in range(2):
        _scan(src, f"s{i}", i)
    disk_fills_after(monkeypatch, "s0")
    rc = main(["prepare", str(src), str(out), "--format", "numpy", *SPACING, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "disk is full" in err and str(out) in err
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["s0"]  # no temporary or half-written case
    assert (out / "cases" / "s0" / "meta.json").is_file()


def test_prepare_a_disk_filling_while_a_volume_is_written_fails_that_case_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "src", tmp_path / "ds"
    for i in range(2):
        _scan(src, f"s{i}", i)
    import enface.fileio as fileio

    real = fileio.atomic_write

    def write(path, writer):
        in_s1 = any(part == "s1" or part.startswith(".s1.") for part in Path(path).parts)  # not a random name
        if in_s1 and str(path).endswith(".npy"):
            writer(FillingDisk(room=512))  # the header fits, the voxels do not
        return real(path, writer)

    monkeypatch.setattr(fileio, "atomic_write", write)
    report = prepare_dataset(src, out, OPTS, progress=False)
    assert report.written == ["s0"] and report.kinds == {str(src / "s1.npy"): "disk full"}
    assert "disk is full" in report.summary()
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["s0"]


def test_prepare_nested_check_raises_before_anything_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _scan(src, "s", 0)
    with pytest.raises(DatasetError, match="inside the source folder"):
        prepare_dataset(src, src / "cases", OPTS, progress=False)
    assert not (src / "cases").exists()
