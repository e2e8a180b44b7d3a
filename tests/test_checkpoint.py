"""Checkpoints (enface.engine.checkpoint): a file whose pickle could run code is refused, never
run, by every command that reads one."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from enface.cli import main
from enface.engine.checkpoint import topk_checkpoints


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


def test_checkpoint_with_code_is_refused_not_run(
    tiny_dataset: Path, tiny_finished_run: Path, tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    # train --init
    args = [
        "train",
        "--dataset",
        str(tiny_dataset),
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
    case = next((tiny_dataset / "cases").iterdir())
    assert main(["predict", str(evil), str(case), "--out", str(tmp_path / "pred")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    # evaluate a run folder whose best checkpoint is the crafted one
    run = tmp_path / "run"
    shutil.copytree(tiny_finished_run, run)
    for p in topk_checkpoints(run):
        shutil.copy(evil, p)
    assert main(["evaluate", str(run), "--split", "all"]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()
    # and the payload is real: unpickling it without weights_only would create the file
    torch.load(evil, weights_only=False)
    assert marker.exists()
