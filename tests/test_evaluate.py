"""Evaluation: ensemble averaging, per-case/grader tables, summaries, paired tests."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from enface.cli import main
from enface.config import load_config
from enface.data.folder import load_case
from enface.engine.checkpoint import load_model, topk_checkpoints
from enface.engine.fit import fit
from enface.engine.inference import Ensemble
from enface.evaluate import evaluate, read_cases_csv, summarize
from model_helpers import tiny_run
from tiny_data import make_tiny_dataset


@pytest.fixture(scope="module")
def run(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    shutil.copytree(phantom_dataset, data)
    cfg = load_config(
        None,
        "train",
        {
            "dataset": str(data),
            "runs_dir": str(root / "runs"),
            "width": 0.125,
            "crop": (8, 32),
            "batch_size": 2,
            "num_workers": 0,
            "accelerator": "cpu",
            "epochs": 3,
            "top_k": 2,
        },
    )
    return fit(cfg, progress=False).run_dir


def test_ensemble_averages_member_probabilities(run: Path) -> None:
    paths = topk_checkpoints(run)
    assert len(paths) == 2
    ens = Ensemble(paths, fast=False)  # the members' own forward: averaging is checked exactly
    x = torch.randn(1, 1, 8, 32, 64)
    mean, std = ens(x)
    members = [torch.sigmoid(load_model(p)[0](x))[0].detach().numpy() for p in paths]
    assert np.allclose(mean, np.mean(members, axis=0), atol=1e-6)
    assert np.allclose(std, np.std(members, axis=0), atol=1e-6)
    assert mean.shape == (1, 8, 32)


def test_evaluate_writes_consistent_tables(run: Path, tmp_path: Path) -> None:
    res = evaluate(run, split="all", top_k=2, out_dir=tmp_path / "ev", progress=False)
    rows = read_cases_csv(tmp_path / "ev" / "cases.csv")
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    primary = [r for r in rows if r["grader"] == ""]
    assert summary["n_cases"] == len(primary) == len({r["case_id"] for r in rows})
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean([r["dice"] for r in primary]), abs=1e-5)
    assert "grader2" in summary["graders"] and summary["inter_grader"]["dice"]["n"] >= 1
    assert 0 < summary["inter_grader"]["dice"]["mean"] < 1  # the phantom's second grader disagrees a little
    data = Path(summary["dataset"])
    with np.load(tmp_path / "ev" / "predictions.npz") as preds:
        for r in primary[:5]:
            case = load_case(data / "cases" / r["case_id"])
            pred = preds[r["case_id"]] >= 128
            ref = case.load_mask("ga").astype(bool)
            inter, total = (pred & ref).sum(), pred.sum() + ref.sum()
            expected = 1.0 if total == 0 else 2 * inter / total
            assert r["dice"] == pytest.approx(expected, abs=1e-4)
            sh, sw, _ = case.spacing
            assert r["area_true_mm2"] == pytest.approx(ref.sum() * sh * sw, rel=1e-4)
    assert json.loads(json.dumps(res.summary).replace("NaN", "null")) == summary  # NaN is written as null


def test_evaluate_cli_and_errors(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(run), "--split", "test", "--top-k", "1", "--out", str(tmp_path / "cli")]) == 0
    assert "dice" in capsys.readouterr().out and (tmp_path / "cli" / "cases.csv").is_file()
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_summarize_counts_undefined_hd95_apart() -> None:
    rows = [
        {"dice": 0.5, "area_diff_mm2": 1.0, "hd95_mm": 2.0},
        {"dice": 0.0, "area_diff_mm2": 3.0, "hd95_mm": math.inf},
    ]
    s = summarize(rows)
    assert s["hd95_mm"] == {"mean": 2.0, "std": 0.0, "median": 2.0, "n": 1, "n_undefined": 1}
    assert s["dice"]["mean"] == 0.25 and s["dice"]["std"] == pytest.approx(np.std([0.5, 0.0], ddof=1))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-case dataset of depth 64, a run folder with one hand-made checkpoint of it."""
    return tiny_run(tmp_path_factory.mktemp("workflow"))


def test_evaluate_warns_of_a_depth_other_than_the_training_depth(
    model: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from enface.evaluate import evaluate

    deep = make_tiny_dataset(tmp_path / "deep", patients=2, shape=(8, 32, 128))
    with caplog.at_level("WARNING"):
        evaluate(model["run"], split="all", dataset=deep, top_k=1, out_dir=tmp_path / "ev", progress=False)
    assert "scan depth 128 differs from the training depth 64" in caplog.text
    assert caplog.text.count("differs from the training depth") == 1  # once, not once per case


def test_evaluate_options_and_unfinished_runs(tiny_finished_run: Path, tmp_path: Path, capsys, caplog) -> None:
    assert main(["evaluate", str(tiny_finished_run), "--top-k", "0"]) == 2
    assert "top-k must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_finished_run), "--threshold", "7"]) == 2
    assert "threshold must lie in (0, 1)" in capsys.readouterr().err
    killed = tmp_path / "killed"
    shutil.copytree(tiny_finished_run, killed)
    (killed / "done.json").unlink()
    with caplog.at_level("WARNING"):
        assert main(["evaluate", str(killed), "--split", "all", "--top-k", "1"]) == 0
    assert "has not finished" in caplog.text


def test_evaluate_from_another_working_directory(tiny_finished_run: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = yaml.safe_load((tiny_finished_run / "config.yaml").read_text())
    assert Path(cfg["dataset"]).is_absolute()  # stored absolute where the run starts
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(tiny_finished_run), "--split", "all", "--out", "ev"]) == 0


def test_wrong_size_mask_names_the_case(tiny_finished_run: Path, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    copy = tmp_path / "d"
    shutil.copytree(tiny_dataset, copy)
    case = sorted((copy / "cases").iterdir())[0]
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(case / "mask_ga.png")
    assert main(["evaluate", str(tiny_finished_run), "--dataset", str(copy), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert f"case {case.name}: mask_ga.png has shape (3, 3)" in err
