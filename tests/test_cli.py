"""The command line (enface.cli): what it prints when a folder cannot be written or an option is malformed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from enface.cli import main
from tiny_data import disc_dataset


@pytest.fixture()
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder this process may not write (chmod does not stop root: os.access says no)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: not str(p).startswith(str(ro)) and real(p, mode, **kw))
    return ro


def test_read_only_out_is_refused_before_any_work(
    tiny_dataset: Path, tmp_path: Path, read_only: Path, capsys: pytest.CaptureFixture
) -> None:
    discs = disc_dataset(tmp_path / "discs")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"stage: train\ndataset: {tiny_dataset}\ntarget: ga\n")
    fast = ["--width", "0.125", "--set", "crop=[8,32]", "num_workers=0", "accelerator=cpu"]
    commands = {
        "progression": ["progression", str(discs), "--reference", "--out", str(read_only / "prog")],
        "evaluate": ["evaluate", str(run), "--split", "all", "--out", str(read_only / "eval")],
        "synth": ["synth", str(read_only / "syn"), "--patients", "2"],
        "train": ["train", "--dataset", str(tiny_dataset), "--task", "ga", "--runs-dir", str(read_only), *fast],
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
    assert main(["progression", str(disc_dataset(tmp_path / "ds")), "--reference", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'out' / '.tmp'} (folder {tmp_path / 'out'}): Permission denied" in err


@pytest.mark.parametrize("item", ["crop=[16", "crop=!!python/object/apply:os.system [echo]", "seed=!tag 1"])
def test_bad_yaml_in_set_names_the_item(item: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--dataset", "nowhere", "--set", item]) == 2
    err = capsys.readouterr().err
    assert f"--set {item!r}: the value is not a YAML scalar or list" in err and "Traceback" not in err


def test_bad_cli_options_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "s").mkdir()
    rc = main(["prepare", str(tmp_path / "s"), str(tmp_path / "o"), "--format", "numpy", "--window-mm", "0.3"])
    assert rc == 2 and "--window-mm must be two numbers" in capsys.readouterr().err
    rc = main(["prepare", str(tmp_path / "s"), str(tmp_path / "o"), "--format", "vol", "--octa"])
    assert rc == 2 and "octa500" in capsys.readouterr().err
    rc = main(["prepare", str(tmp_path / "s"), str(tmp_path / "o"), "--format", "numpy", "--patient-regex", "(x"])
    assert rc == 2 and "invalid patient regex" in capsys.readouterr().err


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_told(preset: str | None, expected: str) -> None:
    """Importing enface (before torch) makes OpenMP threads sleep at barriers; a user's choice is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, enface, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
