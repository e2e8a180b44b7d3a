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


class _FillingDisk:
    """A file on a disk that fills after ``room`` bytes: then every write fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_prepare_a_disk_filling_while_a_volume_is_written_fails_that_case_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "src", tmp_path / "ds"
    for i in range(2):
        _scan(src, f"s{i}", i)
    import enface.fileio as fileio

    real = fileio.atomic_write

    def write(path, writer):
        if "s1" in str(path) and str(path).endswith(".npy"):
            writer(_FillingDisk(room=512))  # the header fits, the voxels do not
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


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-case dataset of depth 64, a run folder with one hand-made checkpoint of it."""
    import torch
    import yaml

    from enface.models import create_model, model_spec
    from tiny_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("workflow")
    ds = make_tiny_dataset(root / "ds", patients=2)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    net = create_model("fpn", width=0.125).eval()
    config = {"dataset": str(ds), "target": "ga", "stage": "train"}
    ckpt = run / "checkpoints" / "epoch=1-val_dice=0.50.ckpt"
    enface = {"model": model_spec(net), "task": "segment", "metric": None, "epoch": 1, "config": config}
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "enface": enface}, ckpt)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "done.json").write_text("{}")
    return {"ds": ds, "run": run, "ckpt": ckpt}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _predict(model: dict[str, Path], out: Path, *extra: str, inputs: tuple[str, ...] = ()) -> list[str]:
    return ["-q", "predict", str(model["ckpt"]), *(inputs or (str(model["ds"]),)), "--out", str(out), *extra]


@pytest.mark.parametrize("where", ["ds", "ds/cases", "ds/cases/P00_OD_v0", "ds/new", "holds"])
def test_predict_refuses_out_inside_the_input_dataset(
    model: dict[str, Path], where: str, capsys: pytest.CaptureFixture
) -> None:
    """Finding 7: --out ds, ds/cases, a case folder, or a folder holding the dataset: refused."""
    ds = model["ds"]
    out = ds.parent if where == "holds" else ds.parent / where
    before = _tree(ds)
    for inputs in ((str(ds),), (str(ds / "cases" / "P00_OD_v0"),)):
        if where == "holds" and inputs[0] != str(ds):
            continue
        rc = main(_predict(model, out, inputs=inputs))
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and str(out) in err
        assert "--out lies inside the input" in err or "--out holds the input" in err
    assert _tree(ds) == before


def test_a_second_predict_into_a_locked_out_is_refused(
    model: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Finding 8: the out folder is locked while one predict writes it."""
    from enface.fileio import FolderLock

    out = tmp_path / "pred"
    with FolderLock(out, "predictions folder"):  # another predict writing there
        rc = main(_predict(model, out))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and str(out) in err and "another process" in err
    assert _tree(out) == [".lock"]


def test_predict_into_an_earlier_out_merges_the_summary_and_asks_before_replacing(
    model: dict[str, Path], tmp_path: Path
) -> None:
    import csv

    from enface.predict import Predictor, predict

    out, cases = tmp_path / "pred", model["ds"] / "cases"
    predictor = Predictor.load(model["ckpt"])

    def rows() -> list[str]:
        with open(out / "summary.csv", newline="") as f:
            return [r["scan_id"] for r in csv.DictReader(f)]

    predict(predictor, [cases / "P00_OD_v0"], out, progress=False)
    predict(predictor, [cases / "P01_OD_v0"], out, progress=False)
    assert rows() == ["P00_OD_v0", "P01_OD_v0"]  # the first run's row is kept
    with pytest.raises(DatasetError, match=r"already holds predictions of 1 scan.*P00_OD_v0.*--overwrite"):
        predict(predictor, [cases / "P00_OD_v0"], out, progress=False)
    predict(predictor, [cases / "P00_OD_v0"], out, progress=False, overwrite=True)
    assert rows() == ["P01_OD_v0", "P00_OD_v0"]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "P00_OD_v0", "P01_OD_v0", "summary.csv"]


def test_a_refused_predict_leaves_no_out_and_never_advises_weights_only(
    model: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bogus = tmp_path / "model.ckpt"
    np.save(bogus, np.zeros(3))  # torch's message for it advises weights_only=False
    bogus = bogus.with_suffix(".ckpt.npy").rename(bogus)
    out = tmp_path / "pred"
    assert main(["predict", str(bogus), str(model["ds"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unreadable checkpoint" in err and "weights_only" not in err and "trusted" not in err
    assert not out.exists()
    from enface.engine.paper_weights import read_paper_state_dict  # what import-weights reads with
    from enface.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
        read_paper_state_dict(bogus)
    assert "weights_only" not in str(caught.value) and "trusted" not in str(caught.value)


@pytest.mark.parametrize("device", ["banana", "cuda", "cuda:7"])
def test_predict_on_a_device_this_machine_lacks(
    model: dict[str, Path], tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda:7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if device == "cuda:7" else 0)
    out = tmp_path / "pred"
    assert main(_predict(model, out, "--device", device)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"device {device!r}" in err and not out.exists()
    assert {"banana": "not a torch device", "cuda": "CUDA is not available", "cuda:7": "1 CUDA device"}[device] in err


def test_predict_given_the_checkpoints_folder_names_the_run_folder(
    model: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckdir = model["run"] / "checkpoints"
    assert main(["predict", str(ckdir), str(model["ds"]), "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert "checkpoints folder" in err and str(model["run"]) in err and "has not finished" not in err


@pytest.mark.parametrize("error", ["MemoryError", "OutOfMemoryError", "cpu allocator"])
def test_out_of_memory_fails_that_scan_and_the_batch_goes_on(
    model: dict[str, Path], tmp_path: Path, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from enface.engine.predictor import Predictor
    from enface.predict import predict

    real = Predictor.__call__
    calls = []

    def call(self, volumes):
        calls.append(1)
        if len(calls) == 1:
            raise {
                "MemoryError": MemoryError(),
                "OutOfMemoryError": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB"),
                "cpu allocator": RuntimeError(
                    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
                ),
            }[error]
        return real(self, volumes)

    monkeypatch.setattr(Predictor, "__call__", call)
    report = predict(model["ckpt"], [model["ds"]], tmp_path / "pred", progress=False)
    assert [r.status for r in report.results] == ["failed", "ok"]
    assert "out of memory" in report.results[0].reason
    assert (tmp_path / "pred" / "summary.csv").read_text().count("\n") == 3
    assert not (tmp_path / "pred" / report.results[0].scan_id).exists()


@pytest.mark.parametrize("allowed", ["", "P00_OD_v0"])
def test_predict_on_a_full_disk_gives_one_message_and_no_half_scan(
    model: dict[str, Path], tmp_path: Path, allowed: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "pred"
    _disk_fills_after(monkeypatch, allowed or "nothing")
    rc = main(_predict(model, out))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "disk is full" in err and str(out) in err and "summary.csv could not be written" in err
    names = ("mask.png", "overlay.png", "prediction.json", "probability.npy", "probability.png", "uncertainty.npy")
    written = [allowed, *(f"{allowed}/{n}" for n in (*names, "uncertainty.png"))] if allowed else []
    if allowed:
        assert _tree(out) == [".lock", *written]  # the first scan complete, nothing of the second
    else:
        assert not out.exists()  # nothing written: the folder this run made is gone


def test_evaluate_warns_of_a_depth_other_than_the_training_depth(
    model: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from enface.evaluate import evaluate
    from tiny_data import make_tiny_dataset

    deep = make_tiny_dataset(tmp_path / "deep", patients=2, shape=(8, 32, 128))
    with caplog.at_level("WARNING"):
        evaluate(model["run"], split="all", dataset=deep, top_k=1, out_dir=tmp_path / "ev", progress=False)
    assert "scan depth 128 differs from the training depth 64" in caplog.text
    assert caplog.text.count("differs from the training depth") == 1  # once, not once per case
