"""``prepare`` at scale: workers, re-runs after new files, where OUT may lie, bm.npy."""

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
from formats_helpers import layered_volume

OPTS = PrepareOptions(fmt="numpy", flatten=FlattenParams(0.2, 0.1, 16), spacing=(0.1, 0.02, 0.005))


def _scan(folder: Path, name: str, seed: int, **sidecar: object) -> np.ndarray:
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


def test_rerun_with_a_new_file_whose_name_sanitises_alike(tmp_path: Path) -> None:
    """a b, a_b, a&b -> three cases; adding a+b writes a fourth case from a+b, skips the others."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(("a b", "a_b", "a&b")):
        _scan(src, name, i)
    out = tmp_path / "ds"
    first = prepare_dataset(src, out, OPTS, progress=False)
    assert len(first.written) == 3
    before = {cid: json.loads((out / "cases" / cid / "meta.json").read_text())["source"] for cid in first.written}
    _scan(src, "a+b", 7)
    second = prepare_dataset(src, out, OPTS, progress=False)
    assert len(second.written) == 1 and sorted(second.skipped) == sorted(first.written)
    new = second.written[0]
    assert new not in before
    assert json.loads((out / "cases" / new / "meta.json").read_text())["source"].endswith("a+b.npy")
    after = {cid: json.loads((out / "cases" / cid / "meta.json").read_text())["source"] for cid in first.written}
    assert after == before  # every finished case still holds its own scan
    assert len({v for v in after.values()} | {str(src / "a+b.npy")}) == 4


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_out_and_src_must_not_nest(tmp_path: Path, where: str, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _scan(src, "s", 0)
    out = {"same": src, "inside": src / "ds", "holds": tmp_path}[where]
    with pytest.raises(DatasetError, match="inside the source folder|holds the source"):
        prepare_dataset(src, out, OPTS, progress=False)
    assert sorted(p.name for p in src.iterdir()) == ["s.npy"]
    rc = main(["prepare", str(src), str(out), "--format", "numpy", "--spacing", "0.1,0.02,0.005", "--no-progress"])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err


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
