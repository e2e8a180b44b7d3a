"""Hostile input to training, progression, studies and the command line (issue 22, section 4).

One small test per finding, named after it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.config import load_config
from enface.data.check import check_dataset
from enface.data.folder import CaseMeta, write_case, write_dataset_info
from enface.engine.fit import fit
from enface.engine.launch import launched_worker, run_folder_lock
from enface.errors import ConfigError, DatasetError, RunFolderError
from enface.fileio import FolderLock
from enface.progression.run import run_progression
from enface.study import load_study
from tiny_data import FAST, make_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("hostile_cli") / "tiny", patients=4)


# --------------------------------------------------------------------------- 11: rank variables


def test_rank_variable_alone_does_not_switch_the_run_lock_off(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, "train", {"dataset": str(dataset), "runs_dir": str(tmp_path), **FAST, "epochs": 1})
    folder = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.setenv(var, "1")
        with FolderLock(folder):  # another process trains into this folder
            with pytest.raises(RunFolderError, match="being written by another process"):
                fit(cfg, progress=False)
        monkeypatch.delenv(var)


def test_rank_variables_are_trusted_only_with_a_real_launch() -> None:
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    ddp = type("Cfg", (), {"devices": 2, "num_nodes": 1})()
    one = type("Cfg", (), {"devices": 1, "num_nodes": 1})()
    assert not launched_worker(ddp, {"RANK": "1"})
    assert not launched_worker(ddp, {"LOCAL_RANK": "1", "WORLD_SIZE": "2"})  # no master address
    assert not launched_worker(ddp, {"LOCAL_RANK": "1", **launch, "WORLD_SIZE": "1"})
    assert not launched_worker(one, {"LOCAL_RANK": "1", **launch})  # a one-process run has no workers
    assert not launched_worker(ddp, {"LOCAL_RANK": "0", **launch})  # rank 0 locks
    assert launched_worker(ddp, {"LOCAL_RANK": "1", **launch})


def test_worker_requires_rank_zero_to_hold_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ddp = type("Cfg", (), {"devices": 2, "num_nodes": 1})()
    for k, v in {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RunFolderError, match="not locked by rank 0"):
        with run_folder_lock(tmp_path, ddp, wait_s=0.0):
            pass
    with FolderLock(tmp_path):  # rank 0 holds it: the worker goes on
        with run_folder_lock(tmp_path, ddp, wait_s=0.0):
            assert str(os.getpid()) in (tmp_path / ".lock").read_text()


# --------------------------------------------------------------------------- 12: progression --out


def _discs(root: Path, visits: dict[tuple[str, str], list[tuple[int, int]]] | None = None) -> Path:
    """A dataset of square 'lesions': one case per (day, half-width in pixels) of each eye."""
    visits = visits or {("P1", "OD"): [(0, 3), (365, 5)]}
    rng = np.random.default_rng(0)
    for (patient, eye), rows in visits.items():
        for i, (day, r) in enumerate(rows):
            mask = np.zeros((24, 24), np.uint8)
            mask[12 - r : 12 + r, 12 - r : 12 + r] = 1
            meta = CaseMeta(f"{patient}_{eye}_V{i + 1}", patient, eye, day, (0.05, 0.05, 0.01))
            write_case(root, meta, rng.random((24, 24, 4), np.float32), masks={"ga": mask})
    write_dataset_info(root, "discs", ["oct"], ["ga"], (0.05, 0.05, 0.01))
    return root


def test_progression_keeps_a_users_files_in_its_earlier_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds, out = _discs(tmp_path / "ds"), tmp_path / "out"
    run_progression(ds, out)
    with caplog.at_level(logging.INFO, logger="enface.progression"):
        run_progression(ds, out)  # an earlier output alone is replaced, and said so
    assert "replacing the earlier progression output" in caplog.text and "cohort.json" in caplog.text
    (out / "notes.txt").write_text("my notes")
    (out / "figs").mkdir()
    with pytest.raises(ValueError, match=r"also holds files it did not write \(figs/, notes.txt\)"):
        run_progression(ds, out)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "figs").is_dir()


# --------------------------------------------------------------------------- confusing: read-only --out


@pytest.fixture()
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder this process may not write (chmod does not stop root: os.access says no)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not str(p).startswith(str(ro)) and real(p, mode, **kw))
    return ro


def test_read_only_out_is_refused_before_any_work(
    dataset: Path, tmp_path: Path, read_only: Path, capsys: pytest.CaptureFixture
) -> None:
    discs = _discs(tmp_path / "discs")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"stage: train\ndataset: {dataset}\ntarget: ga\n")
    fast = ["--width", "0.125", "--set", "crop=[8,32]", "num_workers=0", "accelerator=cpu"]
    commands = {
        "progression": ["progression", str(discs), "--reference", "--out", str(read_only / "prog")],
        "evaluate": ["evaluate", str(run), "--split", "all", "--out", str(read_only / "eval")],
        "synth": ["synth", str(read_only / "syn"), "--patients", "2"],
        "train": ["train", "--dataset", str(dataset), "--task", "ga", "--runs-dir", str(read_only), *fast],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"enface {name}: error:" in err and "cannot write there" in err and str(read_only) in err, err
        assert "Traceback" not in err
    assert list(read_only.iterdir()) == []


def test_permission_error_from_a_writer_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import enface.progression.run as prog

    def denied(*args: object, **kw: object) -> Path:
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / ".tmp"))

    monkeypatch.setattr(prog, "temp_dir", denied)
    assert main(["progression", str(_discs(tmp_path / "ds")), "--reference", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'out' / '.tmp'} (folder {tmp_path / 'out'}): Permission denied" in err


# --------------------------------------------------------------------------- confusing: --set, meta.json, show


@pytest.mark.parametrize("item", ["crop=[16", "crop=!!python/object/apply:os.system [echo]", "seed=!tag 1"])
def test_bad_yaml_in_set_names_the_item(item: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--dataset", "nowhere", "--set", item]) == 2
    err = capsys.readouterr().err
    assert f"--set {item!r}: the value is not a YAML scalar or list" in err and "Traceback" not in err


def test_deeply_nested_meta_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = _discs(tmp_path / "ds")
    meta = ds / "cases" / "P1_OD_V1" / "meta.json"
    meta.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["check", str(ds)]) == 1
    assert "meta.json: nested too deeply" in capsys.readouterr().out
    assert main(["progression", str(ds), "--reference", "--out", str(tmp_path / "out")]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_show_out_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = _discs(tmp_path / "ds")
    assert main(["show", str(ds / "cases" / "P1_OD_V1"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path}: is a folder; give the image file to write" in err


# --------------------------------------------------------------------------- confusing: study YAML


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("seeds: ['a']", "seeds must be a list of integers: 'a' is not a number"),
        ("seeds: 'a'", r"seeds must be a list \(e.g. seeds: \[...\]\), got 'a'"),
        ("fractions: '0.5'", "fractions must be a list"),
        ("seeds: [1.5]", "1.5 is not an integer"),
        ("top_k: x", "top_k must be an integer"),
        ("common: [1]", "common must be a mapping"),
        ("seeds: [0, 1, 0]", r"seeds lists the same value more than once \(0 and 0\)"),
        ("fractions: [0.1, 0.2, 0.1]", r"fractions lists the same value more than once \(0.1 and 0.1\)"),
        ("models: [fpn, fpn]", r"models lists the same value more than once \(fpn and fpn\)"),
        ("test_sets: {ext: {dataset: ds, split: tset}}", "test set 'ext': unknown split 'tset'"),
        ("test_sets: {ext: {dataset: ds, splt: test}}", r"test set 'ext': unknown keys \['splt'\]"),
    ],
)
def test_study_yaml_values_are_checked_by_name(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndataset: ds\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_test_set_without_its_split_fails_at_plan_time(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nosplit = _discs(tmp_path / "nosplit")  # no splits.json
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndataset: {dataset}\ntest_sets: {{ext: {{dataset: {nosplit}, split: test}}}}\n")
    assert main(["experiment", str(path), "--plan", "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert "test set 'ext'" in err and "splits.json" in err


# --------------------------------------------------------------------------- confusing: progression, check


def test_one_rated_eye_prints_no_nan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["progression", str(_discs(tmp_path / "ds")), "--reference", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "mm²/year (n = 1, no spread)" in out
    assert "nan" not in (tmp_path / "o" / "report.html").read_text()


def _predictions(pred: Path, ds: Path, **per_scan: dict) -> Path:
    """A predictions folder as `enface predict` writes it, for the cases named in ``per_scan``."""
    rows = ["scan_id,source,status"]
    for scan_id, extra in per_scan.items():
        (pred / scan_id).mkdir(parents=True)
        case = ds / "cases" / scan_id
        shutil.copy(case / "mask_ga.png", pred / scan_id / "mask.png")
        pj = {"scan_id": scan_id, "source": str(case), "task": "ga", "spacing": [0.05, 0.05, 0.01], **extra}
        (pred / scan_id / "prediction.json").write_text(json.dumps(pj))
        rows.append(f"{scan_id},{case},ok")
    (pred / "summary.csv").write_text("\n".join(rows) + "\n")
    return pred


def test_predictions_of_two_models_in_one_folder_are_refused(tmp_path: Path) -> None:
    ds = _discs(tmp_path / "ds")
    a, b = {"checkpoints": ["/runs/a/best.ckpt"]}, {"checkpoints": ["/runs/b/best.ckpt"]}
    pred = _predictions(tmp_path / "pred", ds, P1_OD_V1=a, P1_OD_V2=b)
    with pytest.raises(DatasetError, match=r"different models .*/runs/a/best.ckpt: P1_OD_V1; /runs/b/best.ckpt: P1"):
        run_progression(ds, tmp_path / "out", predictions=pred)
    same = _predictions(tmp_path / "same", ds, P1_OD_V1=a, P1_OD_V2=a)
    assert run_progression(ds, tmp_path / "out", predictions=same).cohort["eyes"] == 1


def test_hand_edited_member_areas_are_refused(tmp_path: Path) -> None:
    ds = _discs(tmp_path / "ds")
    huge = {"member_areas_mm2": [1e308, 0.1]}
    pred = _predictions(tmp_path / "pred", ds, P1_OD_V1=huge, P1_OD_V2={})
    with pytest.raises(DatasetError, match=r"'member_areas_mm2' 1e\+308 exceeds the scan's whole en-face field"):
        run_progression(ds, tmp_path / "out", predictions=pred)


def test_check_reports_two_visits_of_one_eye_on_one_day(tmp_path: Path) -> None:
    ds = _discs(tmp_path / "ds", {("P1", "OD"): [(0, 3), (90, 4), (90, 5)]})
    problems = [m for _, m in check_dataset(ds, deep=False).problems]
    assert any("two visits of one eye on one day: P1 OD day 90: P1_OD_V2, P1_OD_V3" in m for m in problems)


def test_check_reports_one_scan_under_two_names(tmp_path: Path) -> None:
    ds = _discs(tmp_path / "ds", {("P1", "OD"): [(0, 3), (365, 4)], ("P2", "OS"): [(0, 3)]})
    assert check_dataset(ds, deep=False).ok  # different volumes
    shutil.copy(ds / "cases" / "P1_OD_V1" / "oct.npy", ds / "cases" / "P2_OS_V1" / "oct.npy")
    problems = [m for _, m in check_dataset(ds, deep=False).problems]
    assert problems == [
        "the same volume (oct.npy, byte for byte) in 2 cases: P1_OD_V1, P2_OS_V1 "
        "(one scan prepared under two names? keep one: a copy can land in two splits)"
    ]
