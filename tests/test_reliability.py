"""Run folders that never lie, checkpoints that cannot run code, errors that say what is wrong.

One test per finding of the reliability review (issue 10), named after it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from enface.cli import main
from enface.config import load_config
from enface.engine.checkpoint import read_checkpoint, topk_checkpoints
from enface.engine.fit import fit
from enface.engine.history import read_history
from enface.errors import CheckpointError, ConfigError, DatasetError, RunFolderError, UnsafePathError
from enface.fileio import FolderLock, atomic_write_text, path_under
from tiny_data import FAST, make_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("reliability") / "tiny")


@pytest.fixture(scope="module")
def finished_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    return fit(_config(dataset, runs, epochs=2), progress=False).run_dir


def _config(dataset: Path, runs: Path, stage: str = "train", **kw):
    return load_config(None, stage, {"dataset": str(dataset), "runs_dir": str(runs), **FAST, **kw})


def _tree_digest(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


class _TouchOnLoad:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save(
        {"state_dict": {"model.head.weight": torch.zeros(1)}, "enface": {"model": {}}, "x": _TouchOnLoad(marker)}, path
    )
    return path


# --------------------------------------------------------------------------- wrong today


def test_checkpoint_with_code_is_refused_not_run(dataset: Path, finished_run: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    # train --init
    args = [
        "train",
        "--dataset",
        str(dataset),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--init",
        str(evil),
        "--width",
        "0.125",
    ]
    assert main(args) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start
    # predict with the checkpoint
    case = next((dataset / "cases").iterdir())
    assert main(["predict", str(evil), str(case), "--out", str(tmp_path / "pred")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    # evaluate a run folder whose best checkpoint is the crafted one
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for p in topk_checkpoints(run):
        shutil.copy(evil, p)
    assert main(["evaluate", str(run), "--split", "all"]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    # and the payload is real: unpickling it without weights_only would create the file
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_finished_run_with_other_config_is_refused(dataset: Path, finished_run: Path, tmp_path: Path) -> None:
    runs = finished_run.parents[5]
    same = fit(_config(dataset, runs, epochs=2), progress=False)
    assert same.status == "skipped"
    with pytest.raises(RunFolderError, match=r"lr: 0.1 -> 0.01.*another --runs-dir"):
        fit(_config(dataset, runs, epochs=2, lr=0.01), progress=False)
    # another dataset with the same name and case ids, but other content
    other = make_tiny_dataset(tmp_path / "tiny", seed=7)
    with pytest.raises(RunFolderError, match="dataset_fingerprint: content differs"):
        fit(_config(other, runs, epochs=2), progress=False)
    # operational fields (workers, accelerator, where the dataset lives) are not the experiment
    moved = tmp_path / "moved" / "tiny"
    shutil.copytree(dataset, moved)
    assert fit(_config(moved, runs, epochs=2, num_workers=0), progress=False).status == "skipped"


def test_resume_keeps_the_whole_metrics_history(dataset: Path, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import Callback

    class Kill(Callback):
        def __init__(self, at: int) -> None:
            self.at = at

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == self.at:
                raise RuntimeError("simulated kill")

    cfg = _config(dataset, tmp_path, epochs=5)
    with pytest.raises(RuntimeError):
        fit(cfg, callbacks=[Kill(2)], progress=False)
    with pytest.raises(RuntimeError):
        fit(cfg, resume=True, callbacks=[Kill(4)], progress=False)
    result = fit(cfg, resume=True, progress=False)
    rows = read_history(result.run_dir / "logs" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]  # every epoch once, in order
    assert all(r["val_dice"] != "" and r["train_loss"] != "" for r in rows)


@pytest.mark.slow
def test_sigint_exits_130_and_resume_continues(dataset: Path, tmp_path: Path) -> None:
    """Ctrl+C (SIGINT) during training: exit status 130, last checkpoint kept, --resume finishes."""
    import signal
    import subprocess
    import sys
    import time

    args = [
        sys.executable,
        "-m",
        "enface",
        "-q",
        "train",
        "--dataset",
        str(dataset),
        "--runs-dir",
        str(tmp_path),
        "--width",
        "0.125",
        "--epochs",
        "400",
        "--batch-size",
        "2",
        "--accelerator",
        "cpu",
        "--no-progress",
        "--set",
        "crop=[8,32]",
        "num_workers=0",
        "top_k=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # as from a terminal: a shell's background job (`make test &`) ignores SIGINT, and a child inherits that
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint
    )
    history = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0/logs/metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not history.is_file() or len(read_history(history)) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(read_history(history)) >= 2
    last = read_checkpoint(history.parents[1] / "checkpoints" / "last.ckpt")["epoch"]  # the history may be
    # one epoch ahead of it (Ctrl+C between the two writes): the resume trains that epoch again
    from lightning.pytorch.callbacks import Callback

    class Kill(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == last + 2:
                raise RuntimeError("simulated kill")

    cfg = _config(dataset, tmp_path, epochs=400, top_k=1)
    with pytest.raises(RuntimeError):
        fit(cfg, resume=True, callbacks=[Kill()], progress=False)
    epochs = [int(r["epoch"]) for r in read_history(history)]
    assert epochs == list(range(last + 2))  # the history before Ctrl+C survived, the resume appended


def _killed_at_epoch_2(dataset: Path, runs: Path):
    """A 3-epoch run killed at the start of its third epoch: ``(config, run folder)``."""
    from lightning.pytorch.callbacks import Callback

    class Kill(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 2:
                raise RuntimeError("simulated kill")

    cfg = _config(dataset, runs, epochs=3)
    with pytest.raises(RuntimeError):
        fit(cfg, callbacks=[Kill()], progress=False)
    return cfg, runs / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"


def test_failed_resume_leaves_the_folder_as_it_was(dataset: Path, tmp_path: Path) -> None:
    cfg, folder = _killed_at_epoch_2(dataset, tmp_path)
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated by a full disk, say
    for p in topk_checkpoints(folder):
        p.write_bytes(b"")
    before = _tree_digest(folder)
    with pytest.raises(RunFolderError, match="no readable checkpoint to resume from.*left as it is"):
        fit(cfg, resume=True, progress=False)
    assert _tree_digest(folder) == before


def test_failed_resume_falls_back_to_the_newest_readable_checkpoint(dataset: Path, tmp_path: Path) -> None:
    cfg, folder = _killed_at_epoch_2(dataset, tmp_path)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 100)
    config_before = (folder / "config.yaml").read_bytes()
    result = fit(cfg, resume=True, progress=False)
    assert result.status == "finished" and result.epochs == 3
    assert (folder / "config.yaml").read_bytes() == config_before  # never rewritten by a resume
    epochs = [int(r["epoch"]) for r in read_history(folder / "logs" / "metrics.csv")]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 2


def test_second_process_on_a_run_folder_is_refused(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, tmp_path, epochs=1)
    folder = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"
    with FolderLock(folder):  # another process holds the run (flock is per open file)
        with pytest.raises(RunFolderError, match=rf"being written by another process \(pid {os.getpid()}"):
            fit(cfg, progress=False)
    assert fit(cfg, progress=False).status == "finished"  # the lock went with its holder


def test_writes_cannot_escape_their_root(dataset: Path, finished_run: Path, tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(dataset, evil)
    info = json.loads((evil / "dataset.json").read_text())
    info["name"] = "../../escaped"
    (evil / "dataset.json").write_text(json.dumps(info))
    assert main(["evaluate", str(finished_run), "--dataset", str(evil), "--split", "all"]) == 2
    assert "dataset name '../../escaped' is not a valid name" in capsys.readouterr().err
    assert not (finished_run.parents[1] / "escaped").exists()
    assert main(["check", str(evil), "--quick"]) == 1
    assert "dataset name '../../escaped'" in capsys.readouterr().out
    with pytest.raises(DatasetError, match="not a valid name"):
        fit(_config(evil, tmp_path / "runs", epochs=1), progress=False)
    with pytest.raises(UnsafePathError):
        path_under(tmp_path, "..", "x")
    link = tmp_path / "link"
    link.symlink_to("/")
    with pytest.raises(UnsafePathError, match="outside"):
        path_under(tmp_path, "link", "etc")


def test_study_test_set_name_cannot_escape(tmp_path: Path, dataset: Path) -> None:
    from enface.study import load_study

    doc = {"name": "s", "dataset": str(dataset), "test_sets": {"../../out": {"dataset": str(dataset)}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"s.yaml: study: test set name '../../out' is not a valid name"):
        load_study(path)


# --------------------------------------------------------------------------- confusing today


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


def test_case_id_is_optional_but_must_match(dataset: Path, tmp_path: Path) -> None:
    from enface.data.check import check_dataset
    from enface.data.folder import list_cases

    copy = tmp_path / "d"
    shutil.copytree(dataset, copy)
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


def test_check_groups_repeated_problems(dataset: Path, tmp_path: Path) -> None:
    from enface.data.check import check_dataset

    copy = tmp_path / "d"
    shutil.copytree(dataset, copy)
    for meta in (copy / "cases").glob("*/meta.json"):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "patient_id": None}))
    text = check_dataset(copy, deep=False).format()
    n = len(list((copy / "cases").iterdir()))
    assert f"{n} places: patient_id is missing, null or not a name" in text
    assert len([line for line in text.splitlines() if "patient_id is missing" in line]) == 1


def test_split_ratios_that_do_not_sum_to_one_are_an_error(dataset: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "d"
    shutil.copytree(dataset, copy)
    before = (copy / "splits.json").read_bytes()
    assert main(["split", str(copy), "--redo", "--ratios", "0.5", "0.5", "0.5"]) == 2
    assert "sum to 1" in capsys.readouterr().err
    assert (copy / "splits.json").read_bytes() == before


def test_negative_spacing_reaches_the_check(tmp_path: Path, capsys) -> None:
    assert main(["prepare", str(tmp_path), str(tmp_path / "out"), "--format", "numpy", "--spacing", "-1,0,1"]) == 2
    err = capsys.readouterr().err
    assert "--spacing" in err and "-1.0 is not positive" in err


def test_evaluate_options_and_unfinished_runs(finished_run: Path, tmp_path: Path, capsys, caplog) -> None:
    assert main(["evaluate", str(finished_run), "--top-k", "0"]) == 2
    assert "top-k must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", str(finished_run), "--threshold", "7"]) == 2
    assert "threshold must lie in (0, 1)" in capsys.readouterr().err
    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed)
    (killed / "done.json").unlink()
    with caplog.at_level("WARNING"):
        assert main(["evaluate", str(killed), "--split", "all", "--top-k", "1"]) == 0
    assert "has not finished" in caplog.text


def test_evaluate_from_another_working_directory(finished_run: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert Path(cfg["dataset"]).is_absolute()  # stored absolute where the run starts
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(finished_run), "--split", "all", "--out", "ev"]) == 0


def test_wrong_size_mask_names_the_case(finished_run: Path, dataset: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    copy = tmp_path / "d"
    shutil.copytree(dataset, copy)
    case = sorted((copy / "cases").iterdir())[0]
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(case / "mask_ga.png")
    assert main(["evaluate", str(finished_run), "--dataset", str(copy), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert f"case {case.name}: mask_ga.png has shape (3, 3)" in err


def test_predict_checks_its_output_folder_first(finished_run: Path, dataset: Path, tmp_path: Path, capsys) -> None:
    case = str(sorted((dataset / "cases").iterdir())[0])
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


def test_empty_study_yaml_is_a_clear_error(tmp_path: Path) -> None:
    from enface.study import load_study

    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"empty.yaml: the study needs 'name' and 'dataset'") as e:
        load_study(path)
    assert "StudyConfig" not in str(e.value)


def test_outputs_follow_the_umask(finished_run: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    ckpt = topk_checkpoints(finished_run)[0]  # written under this process's umask
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o666 & ~old


def test_failed_init_leaves_no_run_folder(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        fit(_config(dataset, tmp_path / "runs", init=str(bad)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_epochs_null_is_a_config_error(dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: null\n")
    with pytest.raises(ConfigError, match="'epochs': must be >= 1, got None"):
        load_config(path, "train", {"dataset": str(dataset)})
