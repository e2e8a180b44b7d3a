"""Run folders (enface.engine.fit, enface.engine.launch): a finished run is never overwritten by
another config, a resume keeps the history and falls back to a readable checkpoint, Ctrl+C
keeps the last checkpoint, a second process is refused, a failed start leaves no folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from enface.config import load_config
from enface.engine.checkpoint import read_checkpoint, topk_checkpoints
from enface.engine.fit import fit
from enface.engine.history import read_history
from enface.errors import CheckpointError, ConfigError, RunFolderError
from enface.fileio import FolderLock
from model_helpers import KillAt
from tiny_data import FAST, make_tiny_dataset


def _config(tiny_dataset: Path, runs: Path, stage: str = "train", **kw):
    return load_config(None, stage, {"dataset": str(tiny_dataset), "runs_dir": str(runs), **FAST, **kw})


def _tree_digest(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


# --------------------------------------------------------------------------- wrong today


def test_finished_run_with_other_config_is_refused(tiny_dataset: Path, tiny_finished_run: Path, tmp_path: Path) -> None:
    runs = tiny_finished_run.parents[5]
    same = fit(_config(tiny_dataset, runs, epochs=2), progress=False)
    assert same.status == "skipped"
    with pytest.raises(RunFolderError, match=r"lr: 0.1 -> 0.01.*another --runs-dir"):
        fit(_config(tiny_dataset, runs, epochs=2, lr=0.01), progress=False)
    # another dataset with the same name and case ids, but other content
    other = make_tiny_dataset(tmp_path / "tiny", seed=7)
    with pytest.raises(RunFolderError, match="dataset_fingerprint: content differs"):
        fit(_config(other, runs, epochs=2), progress=False)
    # operational fields (workers, accelerator, where the dataset lives) are not the experiment
    moved = tmp_path / "moved" / "tiny"
    shutil.copytree(tiny_dataset, moved)
    assert fit(_config(moved, runs, epochs=2, num_workers=0), progress=False).status == "skipped"


def test_resume_keeps_the_whole_metrics_history(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_dataset, tmp_path, epochs=5)
    with pytest.raises(RuntimeError):
        fit(cfg, callbacks=[KillAt(2)], progress=False)
    with pytest.raises(RuntimeError):
        fit(cfg, resume=True, callbacks=[KillAt(4)], progress=False)
    result = fit(cfg, resume=True, progress=False)
    rows = read_history(result.run_dir / "logs" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]  # every epoch once, in order
    assert all(r["val_dice"] != "" and r["train_loss"] != "" for r in rows)


@pytest.mark.slow
def test_sigint_exits_130_and_resume_continues(tiny_dataset: Path, tmp_path: Path) -> None:
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
        str(tiny_dataset),
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
    cfg = _config(tiny_dataset, tmp_path, epochs=400, top_k=1)
    with pytest.raises(RuntimeError):
        fit(cfg, resume=True, callbacks=[KillAt(last + 2)], progress=False)
    epochs = [int(r["epoch"]) for r in read_history(history)]
    assert epochs == list(range(last + 2))  # the history before Ctrl+C survived, the resume appended


def _killed_at_epoch_2(tiny_dataset: Path, runs: Path):
    """A 3-epoch run killed at the start of its third epoch: ``(config, run folder)``."""
    cfg = _config(tiny_dataset, runs, epochs=3)
    with pytest.raises(RuntimeError):
        fit(cfg, callbacks=[KillAt(2)], progress=False)
    return cfg, runs / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"


def test_failed_resume_leaves_the_folder_as_it_was(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg, folder = _killed_at_epoch_2(tiny_dataset, tmp_path)
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated by a full disk, say
    for p in topk_checkpoints(folder):
        p.write_bytes(b"")
    before = _tree_digest(folder)
    with pytest.raises(RunFolderError, match="no readable checkpoint to resume from.*left as it is"):
        fit(cfg, resume=True, progress=False)
    assert _tree_digest(folder) == before


def test_failed_resume_falls_back_to_the_newest_readable_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg, folder = _killed_at_epoch_2(tiny_dataset, tmp_path)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 100)
    config_before = (folder / "config.yaml").read_bytes()
    result = fit(cfg, resume=True, progress=False)
    assert result.status == "finished" and result.epochs == 3
    assert (folder / "config.yaml").read_bytes() == config_before  # never rewritten by a resume
    epochs = [int(r["epoch"]) for r in read_history(folder / "logs" / "metrics.csv")]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 2


def test_second_process_on_a_run_folder_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_dataset, tmp_path, epochs=1)
    folder = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"
    with FolderLock(folder):  # another process holds the run (flock is per open file)
        with pytest.raises(RunFolderError, match=rf"being written by another process \(pid {os.getpid()}"):
            fit(cfg, progress=False)
    assert fit(cfg, progress=False).status == "finished"  # the lock went with its holder


# --------------------------------------------------------------------------- confusing today


def test_failed_init_leaves_no_run_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        fit(_config(tiny_dataset, tmp_path / "runs", init=str(bad)), progress=False)
    assert not (tmp_path / "runs").exists()


def test_epochs_null_is_a_config_error(tiny_dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: null\n")
    with pytest.raises(ConfigError, match="'epochs': must be >= 1, got None"):
        load_config(path, "train", {"dataset": str(tiny_dataset)})
