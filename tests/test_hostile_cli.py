"""Hostile input to training, progression, studies and the command line (issue 22, section 4).

One small test per finding, named after it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from enface.config import load_config
from enface.data.folder import CaseMeta, write_case, write_dataset_info
from enface.engine.fit import fit
from enface.engine.launch import launched_worker, run_folder_lock
from enface.errors import RunFolderError
from enface.fileio import FolderLock
from enface.progression.run import run_progression
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
    for (patient, eye), rows in visits.items():
        for i, (day, r) in enumerate(rows):
            mask = np.zeros((24, 24), np.uint8)
            mask[12 - r : 12 + r, 12 - r : 12 + r] = 1
            meta = CaseMeta(f"{patient}_{eye}_V{i + 1}", patient, eye, day, (0.05, 0.05, 0.01))
            write_case(root, meta, np.zeros((24, 24, 4), np.float32), masks={"ga": mask})
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
