"""The ground floor's file writers (:mod:`enface.fileio`): what they leave behind on failure."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from enface.cli import main
from enface.config import load_config
from enface.engine.checkpoint import topk_checkpoints
from enface.engine.fit import fit
from enface.errors import DatasetError, UnsafePathError
from enface.fileio import atomic_write_text, path_under
from tiny_data import FAST

_SHORT_WRITE = """
import resource, signal, sys
import numpy as np
from enface.fileio import atomic_save_npy
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    atomic_save_npy(sys.argv[1], np.zeros(100_000))
except OSError as e:
    print(e.errno)
"""


def test_a_short_write_of_a_volume_keeps_the_file_systems_errno(tmp_path: Path) -> None:
    """Regression: NumPy writes an array to a real file with ``tofile``, whose short write raised an
    ``OSError`` without an errno ("800000 requested and 65408 written"), so a full disk could only
    be recognised by that text. A file size limit makes the same short write happen here."""
    out = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path / "v.npy")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(errno.EFBIG)
    assert not list(tmp_path.iterdir())  # the temporary file is gone too


def test_outputs_follow_the_umask(tiny_finished_run: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    ckpt = topk_checkpoints(tiny_finished_run)[0]  # written under this process's umask
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o666 & ~old


def test_writes_cannot_escape_their_root(tiny_dataset: Path, tiny_finished_run: Path, tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(tiny_dataset, evil)
    info = json.loads((evil / "dataset.json").read_text())
    info["name"] = "../../escaped"
    (evil / "dataset.json").write_text(json.dumps(info))
    assert main(["evaluate", str(tiny_finished_run), "--dataset", str(evil), "--split", "all"]) == 2
    assert "dataset name '../../escaped' is not a valid name" in capsys.readouterr().err
    assert not (tiny_finished_run.parents[1] / "escaped").exists()
    assert main(["check", str(evil), "--quick"]) == 1
    assert "dataset name '../../escaped'" in capsys.readouterr().out
    with pytest.raises(DatasetError, match="not a valid name"):
        overrides = {"dataset": str(evil), "runs_dir": str(tmp_path / "runs"), **FAST, "epochs": 1}
        fit(load_config(None, "train", overrides), progress=False)
    with pytest.raises(UnsafePathError):
        path_under(tmp_path, "..", "x")
    link = tmp_path / "link"
    link.symlink_to("/")
    with pytest.raises(UnsafePathError, match="outside"):
        path_under(tmp_path, "link", "etc")
