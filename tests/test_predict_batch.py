"""predict's batch and its output folder (enface.predict.run, .scan, .output): where
--out may lie, its lock, an earlier run's outputs, whole scan folders on a full disk, a scan
that runs out of memory, devices, a checkpoints folder given for a run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.errors import CheckpointError, DatasetError
from enface.fileio import FolderLock
from fault_helpers import disk_fills_after
from model_helpers import tiny_run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-case dataset of depth 64, a run folder with one hand-made checkpoint of it."""
    return tiny_run(tmp_path_factory.mktemp("workflow"))


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _predict(model: dict[str, Path], out: Path, *extra: str, inputs: tuple[str, ...] = ()) -> list[str]:
    return ["-q", "predict", str(model["ckpt"]), *(inputs or (str(model["ds"]),)), "--out", str(out), *extra]


@pytest.mark.parametrize("where", ["ds", "ds/cases", "ds/cases/P00_OD_v0", "ds/new", "holds"])
def test_predict_refuses_out_inside_the_input_dataset(
    model: dict[str, Path], where: str, capsys: pytest.CaptureFixture
) -> None:
    """--out ds, ds/cases, a case folder, or a folder holding the dataset: refused."""
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
    """The out folder is locked while one predict writes it."""

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

    with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
        read_paper_state_dict(bogus)
    assert "weights_only" not in str(caught.value) and "trusted" not in str(caught.value)


@pytest.mark.parametrize("allowed", ["", "P00_OD_v0"])
def test_predict_on_a_full_disk_gives_one_message_and_no_half_scan(
    model: dict[str, Path], tmp_path: Path, allowed: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "pred"
    disk_fills_after(monkeypatch, allowed or "nothing")
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


def test_predict_checks_its_output_folder_first(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    finished_run = model["run"]
    case = str(sorted((model["ds"] / "cases").iterdir())[0])
    file_out = tmp_path / "file"
    file_out.write_text("x")
    assert main(["predict", str(finished_run), case, "--out", str(file_out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: nothing to check then
            return
        assert main(["predict", str(finished_run), case, "--out", str(locked / "out")]) == 2
        assert "cannot write predictions there" in capsys.readouterr().err
    finally:
        locked.chmod(stat.S_IRWXU)
