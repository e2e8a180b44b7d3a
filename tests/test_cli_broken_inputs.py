"""A table-driven sweep of hostile or unlucky inputs through every sub-command that reads them.

Each entry breaks a copy of a good dataset folder, checkpoint or run folder in one way, runs
one command of the CLI on it (in-process), and asserts what a user must get: a non-zero exit,
a message that names the broken file or field, no traceback, and the input left
byte-for-byte as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from enface.cli import main
from enface.config import load_config
from enface.engine.checkpoint import topk_checkpoints
from enface.engine.fit import fit
from tiny_data import FAST, make_tiny_dataset

# --------------------------------------------------------------------------- good inputs


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    data = make_tiny_dataset(root / "tiny", patients=6)
    runs = root / "runs"
    cfg = load_config(None, "train", {"dataset": str(data), "runs_dir": str(runs), **FAST, "epochs": 1, "top_k": 1})
    run = fit(cfg, progress=False).run_dir
    pre = load_config(None, "pretrain", {"dataset": str(data), "runs_dir": str(runs), **FAST, "epochs": 1, "top_k": 1})
    pre_run = fit(pre, progress=False).run_dir
    return {"data": data, "run": run, "ckpt": topk_checkpoints(run)[0], "recon": topk_checkpoints(pre_run)[0]}


def _digest(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def _first_case(data: Path) -> Path:
    """The first case of a training patient (so that every command that reads cases reads it)."""
    train = set(json.loads((data / "splits.json").read_text())["train"])
    return next(
        p
        for p in sorted((data / "cases").iterdir())
        if json.loads((p / "meta.json").read_text())["patient_id"] in train
    )


def _edit_json(path: Path, **changes: object) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


# --------------------------------------------------------------------------- broken datasets


def _no_dataset_json(d: Path) -> str:
    (d / "dataset.json").unlink()
    return "dataset.json"


def _dataset_json_garbage(d: Path) -> str:
    (d / "dataset.json").write_text("{ not json")
    return "dataset.json"


def _dataset_name_escapes(d: Path) -> str:
    _edit_json(d / "dataset.json", name="../../escaped")
    return "dataset name '../../escaped'"


def _patient_in_two_splits(d: Path) -> str:
    splits = json.loads((d / "splits.json").read_text())
    splits["test"].append(splits["train"][0])
    (d / "splits.json").write_text(json.dumps(splits))
    return f"patient '{splits['train'][0]}' appears in both"


def _no_splits_json(d: Path) -> str:
    (d / "splits.json").unlink()
    return "splits.json"


def _null_patient(d: Path) -> str:
    _edit_json(_first_case(d) / "meta.json", patient_id=None)
    return "patient_id"


def _meta_garbage(d: Path) -> str:
    (_first_case(d) / "meta.json").write_text("{")
    return "meta.json"


def _case_id_mismatch(d: Path) -> str:
    _edit_json(_first_case(d) / "meta.json", case_id="someone-else")
    return "someone-else"


def _oct_random_bytes(d: Path) -> str:
    (_first_case(d) / "oct.npy").write_bytes(os.urandom(2048))
    return "oct.npy"


def _oct_complex(d: Path) -> str:
    np.save(_first_case(d) / "oct.npy", np.zeros((8, 32, 64), np.complex64))
    return "complex64"


def _oct_2d(d: Path) -> str:
    np.save(_first_case(d) / "oct.npy", np.zeros((8, 32), np.float32))
    return "oct.npy"


def _oct_truncated(d: Path) -> str:
    p = _first_case(d) / "oct.npy"
    p.write_bytes(p.read_bytes()[:500])
    return "oct.npy"


def _mask_grey(d: Path) -> str:
    Image.fromarray(np.full((8, 32), 128, np.uint8)).save(_first_case(d) / "mask_ga.png")
    return "mask_ga.png"


def _mask_colour(d: Path) -> str:
    rgb = np.zeros((8, 32, 3), np.uint8)
    rgb[2:5, 4:9] = (255, 0, 0)
    Image.fromarray(rgb).save(_first_case(d) / "mask_ga.png")
    return "mask_ga.png"


def _mask_wrong_size(d: Path) -> str:
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(_first_case(d) / "mask_ga.png")
    return "mask_ga.png"


def _faf_truncated(d: Path) -> str:
    p = _first_case(d) / "faf.png"
    p.write_bytes(p.read_bytes()[:40])
    return "faf.png"


DATASET_BREAKS: dict[str, Callable[[Path], str]] = {
    f.__name__.lstrip("_"): f
    for f in (
        _no_dataset_json,
        _dataset_json_garbage,
        _dataset_name_escapes,
        _patient_in_two_splits,
        _no_splits_json,
        _null_patient,
        _meta_garbage,
        _case_id_mismatch,
        _oct_random_bytes,
        _oct_complex,
        _oct_2d,
        _oct_truncated,
        _mask_grey,
        _mask_colour,
        _mask_wrong_size,
        _faf_truncated,
    )
}

# which breaks each command must refuse (the others concern files the command does not read)
_READS_CASES = ("null_patient", "meta_garbage", "case_id_mismatch")
_TRAINING = (
    "no_dataset_json",
    "dataset_json_garbage",
    "dataset_name_escapes",
    "patient_in_two_splits",
    "no_splits_json",
    *_READS_CASES,
    "oct_random_bytes",
    "oct_complex",
    "oct_2d",
    "oct_truncated",
)


def _select_args(run: Path, dataset: Path, good: dict, tmp: Path) -> list[str]:
    """``enface select`` of ``run`` on a copy of ``dataset`` whose first training case (the one
    the breaks touch) has lost its label, so that it is in the pool and read."""
    pool = tmp / "pool"
    shutil.copytree(dataset, pool)
    for mask in (pool / "cases" / _first_case(good["data"]).name).glob("mask_*.png"):
        mask.unlink()
    return ["select", str(run), str(pool), "--n", "2", "--out", str(tmp / "queue.csv")]


def _fit_args(stage: str, dataset: Path, tmp: Path) -> list[str]:
    """A one-epoch ``pretrain``/``train`` of the tiny network on ``dataset``."""
    fixed = "--width 0.125 --epochs 1 --no-progress --set crop=[8,32] num_workers=0".split()
    return [stage, "--dataset", str(dataset), "--runs-dir", str(tmp / "runs"), *fixed]


DATASET_COMMANDS: dict[str, tuple[Callable[[Path, dict, Path], list[str]], tuple[str, ...]]] = {
    "check": (lambda d, g, t: ["check", str(d)], tuple(k for k in DATASET_BREAKS if k != "no_splits_json")),
    "split": (lambda d, g, t: ["split", str(d)], ("patient_in_two_splits", *_READS_CASES)),
    "train": (
        lambda d, g, t: _fit_args("train", d, t),
        (*_TRAINING, "mask_grey", "mask_colour", "mask_wrong_size"),
    ),
    "pretrain": (
        lambda d, g, t: _fit_args("pretrain", d, t),
        (*_TRAINING, "faf_truncated"),
    ),
    "evaluate": (
        lambda d, g, t: ["evaluate", str(g["run"]), "--dataset", str(d), "--split", "all", "--out", str(t / "ev")],
        (
            "no_dataset_json",
            "dataset_json_garbage",
            "dataset_name_escapes",
            *_READS_CASES,
            "oct_random_bytes",
            "oct_complex",
            "oct_2d",
            "oct_truncated",
            "mask_grey",
            "mask_colour",
            "mask_wrong_size",
        ),
    ),
    "predict": (
        lambda d, g, t: ["predict", str(g["ckpt"]), str(d), "--out", str(t / "pred")],
        (*_READS_CASES[1:], "oct_random_bytes", "oct_complex", "oct_2d", "oct_truncated"),
    ),
    "progression": (
        lambda d, g, t: ["progression", str(d), "--reference", "--out", str(t / "prog")],
        ("null_patient", "meta_garbage", "case_id_mismatch", "mask_grey", "mask_colour"),
    ),
    "select": (
        lambda d, g, t: _select_args(g["run"], d, g, t),
        (
            "no_dataset_json",
            "dataset_json_garbage",
            "no_splits_json",
            *_READS_CASES,
            "oct_random_bytes",
            "oct_complex",
            "oct_2d",
            "oct_truncated",
        ),
    ),
    "show": (
        lambda d, g, t: ["show", str(d / "cases" / _first_case(g["data"]).name), "--out", str(t / "show.png")],
        ("meta_garbage", "oct_random_bytes", "oct_complex", "oct_2d", "oct_truncated", "mask_colour", "faf_truncated"),
    ),
}


# readers
def _visit_fractional(d: Path) -> str:
    _edit_json(_first_case(d) / "meta.json", visit=398.5)
    return "visit must be a whole number of days"


def _visit_huge(d: Path) -> str:
    _edit_json(_first_case(d) / "meta.json", visit=1e30)
    return "visit must be"


def _meta_nested_deeply(d: Path) -> str:
    (_first_case(d) / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    return "nested too deeply"


_VISIT_BREAKS = ("visit_fractional", "visit_huge", "meta_nested_deeply")
DATASET_BREAKS.update({f.__name__.lstrip("_"): f for f in (_visit_fractional, _visit_huge, _meta_nested_deeply)})
for _command in ("check", "split", "train", "pretrain", "evaluate", "predict", "progression", "select", "show"):
    _args, _kinds = DATASET_COMMANDS[_command]
    DATASET_COMMANDS[_command] = (_args, (*_kinds, *_VISIT_BREAKS))
# end readers


@dataclass(frozen=True)
class Entry:
    command: str
    target: str  # which input is broken: dataset, checkpoint or run folder
    kind: str


CATALOGUE = [Entry(c, "dataset", k) for c, (_, kinds) in DATASET_COMMANDS.items() for k in kinds]


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out + out.err


def _assert_refused(rc: int, text: str, expected: str, before: dict, after: dict) -> None:
    assert rc != 0, text
    assert expected in text, text
    assert "Traceback" not in text, text
    assert after == before, "the input was modified"


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda e: f"{e.command}-{e.kind}")
def test_broken_dataset(entry: Entry, good: dict[str, Path], tmp_path: Path, capsys) -> None:
    data = tmp_path / "tiny"
    shutil.copytree(good["data"], data)
    expected = DATASET_BREAKS[entry.kind](data)
    before = _digest(data)
    args = DATASET_COMMANDS[entry.command][0](data, good, tmp_path)
    rc, text = _run(args, capsys)
    _assert_refused(rc, text, expected, before, _digest(data))


# --------------------------------------------------------------------------- broken checkpoints


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _ck_random(p: Path, g: dict) -> str:
    p.write_bytes(os.urandom(4096))
    return "unreadable checkpoint"


def _ck_pickled_code(p: Path, g: dict) -> str:
    torch.save({"state_dict": {}, "x": _Payload()}, p)
    return "refused"


def _ck_truncated(p: Path, g: dict) -> str:
    p.write_bytes(g["ckpt"].read_bytes()[:2000])
    return "unreadable checkpoint"


def _ck_not_enface(p: Path, g: dict) -> str:
    torch.save({"weights": torch.zeros(3)}, p)
    return str(p.name)


def _ck_a_list(p: Path, g: dict) -> str:
    torch.save([torch.zeros(3)], p)
    return "not a checkpoint"


def _ck_reconstruction(p: Path, g: dict) -> str:
    shutil.copy(g["recon"], p)
    return "segmentation model"


def _ck_other_architecture(p: Path, g: dict) -> str:
    from enface.models import create_model, model_spec

    m = create_model("lachinov", width=0.125)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in m.state_dict().items()},
            "enface": {"model": model_spec(m), "task": "reconstruct", "config": {"target": "faf_inv"}},
        },
        p,
    )
    return "lachinov"


CHECKPOINT_BREAKS = {
    f.__name__.removeprefix("_ck_"): f
    for f in (
        _ck_random,
        _ck_pickled_code,
        _ck_truncated,
        _ck_not_enface,
        _ck_a_list,
        _ck_reconstruction,
        _ck_other_architecture,
    )
}
CHECKPOINT_COMMANDS: dict[str, tuple[Callable[[Path, dict, Path], list[str]], tuple[str, ...]]] = {
    "train-init": (
        lambda c, g, t: [
            "train",
            "--dataset",
            str(g["data"]),
            "--runs-dir",
            str(t / "runs"),
            "--init",
            str(c),
            "--width",
            "0.125",
            "--epochs",
            "1",
            "--no-progress",
            "--set",
            "crop=[8,32]",
            "num_workers=0",
        ],
        ("random", "pickled_code", "truncated", "not_enface", "a_list", "other_architecture"),
    ),
    "predict": (
        lambda c, g, t: ["predict", str(c), str(_first_case(g["data"])), "--out", str(t / "pred")],
        tuple(k for k in CHECKPOINT_BREAKS if k != "other_architecture"),
    ),
    "import-weights": (
        lambda c, g, t: ["import-weights", str(c), str(t / "out.ckpt"), "--model", "fpn"],
        ("random", "pickled_code", "truncated", "a_list"),
    ),
}
CATALOGUE_CK = [Entry(c, "checkpoint", k) for c, (_, kinds) in CHECKPOINT_COMMANDS.items() for k in kinds]


@pytest.mark.parametrize("entry", CATALOGUE_CK, ids=lambda e: f"{e.command}-{e.kind}")
def test_broken_checkpoint(entry: Entry, good: dict[str, Path], tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "model.ckpt"
    expected = CHECKPOINT_BREAKS[entry.kind](ckpt, good)
    before = _digest(ckpt)
    rc, text = _run(CHECKPOINT_COMMANDS[entry.command][0](ckpt, good, tmp_path), capsys)
    _assert_refused(rc, text, expected, before, _digest(ckpt))
    assert not (tmp_path / "runs").exists()  # nothing started


# --------------------------------------------------------------------------- broken run folders


def _run_no_config(r: Path) -> str:
    (r / "config.yaml").unlink()
    return "config.yaml"


def _run_config_garbage(r: Path) -> str:
    (r / "config.yaml").write_text("stage: [unclosed")
    return "config.yaml"


def _run_pretraining(r: Path) -> str:
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    cfg["stage"] = "pretrain"
    (r / "config.yaml").write_text(yaml.safe_dump(cfg))
    return "segmentation run"


def _run_no_checkpoints(r: Path) -> str:
    shutil.rmtree(r / "checkpoints")
    (r / "checkpoints").mkdir()
    return "no checkpoints"


def _run_checkpoints_truncated(r: Path) -> str:
    for p in (r / "checkpoints").glob("*.ckpt"):
        p.write_bytes(p.read_bytes()[:1000])
    return "unreadable checkpoint"


RUN_BREAKS = {
    f.__name__.removeprefix("_run_"): f
    for f in (_run_no_config, _run_config_garbage, _run_pretraining, _run_no_checkpoints, _run_checkpoints_truncated)
}
RUN_COMMANDS: dict[str, tuple[Callable[[Path, dict, Path], list[str]], tuple[str, ...]]] = {
    "select": (
        lambda r, g, t: _select_args(r, g["data"], g, t),
        tuple(RUN_BREAKS),
    ),
    "evaluate": (lambda r, g, t: ["evaluate", str(r), "--split", "all", "--out", str(t / "ev")], tuple(RUN_BREAKS)),
    "predict": (
        lambda r, g, t: ["predict", str(r), str(_first_case(g["data"])), "--out", str(t / "pred")],
        ("no_checkpoints", "checkpoints_truncated"),
    ),
}
CATALOGUE_RUN = [Entry(c, "run", k) for c, (_, kinds) in RUN_COMMANDS.items() for k in kinds]


@pytest.mark.parametrize("entry", CATALOGUE_RUN, ids=lambda e: f"{e.command}-{e.kind}")
def test_broken_run_folder(entry: Entry, good: dict[str, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(good["run"], run)
    expected = RUN_BREAKS[entry.kind](run)
    before = _digest(run)
    rc, text = _run(RUN_COMMANDS[entry.command][0](run, good, tmp_path), capsys)
    _assert_refused(rc, text, expected, before, _digest(run))


def test_resume_of_a_run_whose_checkpoints_are_all_unreadable(good: dict[str, Path], tmp_path: Path, capsys) -> None:
    """train --resume: the folder is left as it was, with a message naming the checkpoints."""
    runs = tmp_path / "runs"
    folder = runs / good["run"].relative_to(good["run"].parents[5])
    shutil.copytree(good["run"], folder)
    (folder / "done.json").unlink()
    _run_checkpoints_truncated(folder)
    before = _digest(folder)
    args = [
        "train",
        "--dataset",
        str(good["data"]),
        "--runs-dir",
        str(runs),
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--accelerator",
        "cpu",
        "--no-progress",
        "--resume",
        "--set",
        "crop=[8,32]",
        "num_workers=0",
        "top_k=1",
    ]
    rc, text = _run(args, capsys)
    _assert_refused(rc, text, "last.ckpt unusable", before, _digest(folder))


NOT_SWEPT = {
    "models": "reads nothing",
    "synth": "writes a new dataset; reads nothing",
    "prepare": "reads device exports, not dataset folders (tests/test_prepare.py, tests/test_prepare_bad_input.py)",
    "experiment": "reads a study YAML (tests/test_study.py); its runs go through train and evaluate, swept here",
    "demo": "generates its own phantom and runs a study on it",
    "review": "serves until stopped; its hostile inputs (traversal, symlinks, uploads, bad dataset, queue and "
    "predictions folders) are tested in tests/test_review.py",
}
"""Sub-commands the sweep leaves out, each with the reason."""


def test_catalogue_covers_every_cli_command() -> None:
    """Every sub-command of the CLI is swept with the inputs it reads (datasets, checkpoints,
    run folders), or listed in NOT_SWEPT with the reason: a new sub-command fails here until
    it is one or the other."""
    from enface.cli import build_parser

    parser = build_parser()
    commands = set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    swept = {e.command.removesuffix("-init") for e in (*CATALOGUE, *CATALOGUE_CK, *CATALOGUE_RUN)}
    assert swept.isdisjoint(NOT_SWEPT)
    assert commands == swept | set(NOT_SWEPT), commands ^ (swept | set(NOT_SWEPT))
    assert {e.command for e in CATALOGUE} == set(DATASET_COMMANDS)
    assert len(CATALOGUE) + len(CATALOGUE_CK) + len(CATALOGUE_RUN) >= 90
