"""Which process of a multi-process launch this is (enface.engine.launch): rank variables are
trusted only with a real launch, and rank 0 holds the run lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enface.config import load_config
from enface.engine.fit import fit
from enface.engine.launch import launched_worker, run_folder_lock
from enface.errors import RunFolderError
from enface.fileio import FolderLock
from tiny_data import FAST


def test_rank_variable_alone_does_not_switch_the_run_lock_off(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(None, "train", {"dataset": str(tiny_dataset), "runs_dir": str(tmp_path), **FAST, "epochs": 1})
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
