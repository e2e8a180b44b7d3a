"""Simulated active learning in the study: the ``active:`` block, its plan, an end-to-end tiny run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from enface.cli import main
from enface.config import load_config
from enface.data.folder import load_case
from enface.engine.fit import resolve_run
from enface.errors import ConfigError, DatasetError
from enface.study import load_study, plan_study, run_folder, run_study
from enface.study.active import labeled_training_patients, selection_path, start_patients
from enface.study.plan import run_label

FAST = {"width": 0.125, "crop": [8, 32], "batch_size": 2, "num_workers": 0, "accelerator": "cpu", "fast": False}
ACTIVE = {"strategies": ["random", "uncertainty", "diverse"], "start_patients": 1, "patients_per_round": 1}


def _study_yaml(tmp_path: Path, dataset: Path, active: dict | None = None, **extra) -> Path:
    doc = {
        "name": "tiny-active",
        "dataset": str(dataset),
        "task": "ga",
        "models": ["fpn"],
        "inits": ["scratch"],
        "fractions": [],
        "seeds": [0],
        "common": FAST,
        "train": {"epochs": 1, "samples_per_epoch": 2},
        "top_k": 2,
        "out": str(tmp_path / "study"),
        "active": {**ACTIVE, "rounds": 1, "init": "scratch", **(active or {})},
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture()
def dataset(phantom_dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(phantom_dataset, copy)
    return copy


def test_active_block_is_checked_and_planned_round_by_round(dataset: Path, tmp_path: Path) -> None:
    for bad, match in (
        ({"strategies": ["uncertainty"]}, "must include 'random'"),
        ({"strategies": ["random", "greedy"]}, "active strategies"),
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"model": "lachinov"}, "one of the study's models"),
        ({"init": "imagenet"}, "init 'imagenet'"),
        ({"budget": 3}, "unknown keys in 'active'"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_study(_study_yaml(tmp_path, dataset, bad))
    with pytest.raises(ConfigError, match="fractions"):
        load_study(_no_active(tmp_path, dataset))
    study = load_study(_study_yaml(tmp_path, dataset, {"rounds": 2, "init": "ssl-faf_inv", "start_patients": 2}))
    plan = plan_study(study)
    assert [r.stage for r in plan] == ["pretrain"] + ["active"] * 7  # the SSL init is pre-trained first
    assert [(r.strategy, r.round) for r in plan[1:3]] == [("start", 0), ("random", 1)]
    assert [r.round for r in plan[1:]] == [0, 1, 1, 1, 2, 2, 2]
    assert "uncertainty round 2 (4 patients) seed 0" in run_label(study, plan[6])
    assert len({run_folder(study, r) for r in plan}) == len(plan)
    with pytest.raises(ConfigError, match="needs 4 labeled training patients"):
        start_patients(study, 0)  # the tiny phantom has 3


def _no_active(tmp_path: Path, dataset: Path) -> Path:
    path = _study_yaml(tmp_path, dataset)
    doc = yaml.safe_load(path.read_text())
    del doc["active"]
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_config_that_names_its_patients_trains_on_their_labeled_cases_only(dataset: Path, tmp_path: Path) -> None:
    base = {"dataset": str(dataset), "runs_dir": str(tmp_path / "runs"), **FAST}
    run = resolve_run(load_config(None, "train", {**base, "patients": ["P0004"]}))
    assert run.train_ids and {load_case(dataset / "cases" / c).patient_id for c in run.train_ids} == {"P0004"}
    assert all((dataset / "cases" / c / "mask_ga.png").is_file() for c in run.train_ids)
    assert run.identity["patients"] == ["P0004"]
    with pytest.raises(ConfigError, match="either patients or a label fraction"):
        load_config(None, "train", {**base, "patients": ["P0004"], "fraction": 0.5})
    with pytest.raises(DatasetError, match=r"\['P0001'\], which are not training patients"):
        resolve_run(load_config(None, "train", {**base, "patients": ["P0001"]}))


def test_active_study_runs_end_to_end_resumes_and_reports(dataset: Path, tmp_path: Path, capsys) -> None:
    path = _study_yaml(tmp_path, dataset)
    study = load_study(path)
    plan = plan_study(study)
    assert len(plan) == 4
    with pytest.raises(ConfigError, match="round 0, which has not finished"):
        run_study(study, run_index=2, progress=False)
    assert not selection_path(study, plan[2]).exists()
    assert main(["experiment", str(path), "--run-index", "0", "--no-progress"]) == 0
    result = run_study(study, progress=False)
    assert result["statuses"] == {0: "recorded", 1: "finished", 2: "finished", 3: "finished"}

    start = set(start_patients(study, 0))
    labeled = labeled_training_patients(study)
    for run in plan[1:]:
        record = json.loads(selection_path(study, run).read_text())
        picked = {p["patient_id"] for p in record["picked"]}
        assert len(picked) == 1 and not picked & start and set(record["patients"]) == start | picked
        cfg = yaml.safe_load((run_folder(study, run) / "config.yaml").read_text())
        assert set(cfg["patients"]) == start | picked  # the run trained on the selected patients only
        ident = json.loads((run_folder(study, run) / "identity.json").read_text())
        assert set(ident["patients"]) == start | picked and picked <= set(labeled)
    out = tmp_path / "study"
    with open(out / "results" / "active.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted((r["strategy"], int(r["round"]), int(r["n_patients"])) for r in table) == sorted(
        (s, r, 1 + r) for s in ACTIVE["strategies"] for r in (0, 1)
    )
    assert all(0 <= float(r["dice_mean"]) <= 1 and int(r["n_seeds"]) == 1 for r in table)
    round0 = {r["dice_mean"] for r in table if r["round"] == "0"}
    assert len(round0) == 1  # round 0 is one run, shared
    with open(out / "results" / "active-wilcoxon.csv") as f:
        assert sorted(r["strategy"] for r in csv.DictReader(f)) == ["diverse", "uncertainty"]
    report = (out / "report.md").read_text()
    assert "## Active learning" in report and (out / "figures" / "test-active-learning.png").is_file()
    assert "data:image/png;base64," in (out / "report.html").read_text()

    again = run_study(study, progress=False)
    assert set(again["statuses"].values()) == {"recorded"}
    assert main(["experiment", str(path), "--plan"]) == 0
    assert "[  3] recorded active fpn-w0.125 scratch diverse round 1 (2 patients) seed 0" in capsys.readouterr().out

    # on another machine (no run folders, no selections) a round whose record is missing is
    # trained again: its round 0, recorded, is trained first, and selects the same patients
    from enface.study.ledger import read_record, record_path

    old = read_record(study, plan[3])
    assert old is not None and old["active"]["diagnostics"]["pool_area_mm2"] > 0
    shutil.rmtree(study.runs_dir)
    shutil.rmtree(study.out_dir / "active")
    record_path(study, plan[3]).unlink()
    third = run_study(study, progress=False)
    assert third["statuses"] == {0: "recorded", 1: "recorded", 2: "recorded", 3: "finished"}
    new = read_record(study, plan[3])
    assert new["active"]["patients"] == old["active"]["patients"]
    assert new["active"]["selection"]["picked"] == old["active"]["selection"]["picked"]
    assert [r["dice"] for r in new["evaluations"]["test"]["cases"]] == [
        r["dice"] for r in old["evaluations"]["test"]["cases"]
    ]

    # given more rounds later, the study keeps the rounds it has recorded
    from enface.study.ledger import ledger_records

    longer = load_study(_study_yaml(tmp_path, dataset, {"rounds": 2}))
    assert len(plan_study(longer)) == 7 and sorted(ledger_records(longer, plan_study(longer))) == [0, 1, 2, 3]


def test_the_pool_is_scored_where_and_how_the_round_trained(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the pool's ensemble read ``fast`` from the raw ``common:`` block (a ``fast:``
    under ``train:`` was ignored) and got no device (always the CPU, also for a study on a GPU)."""
    import torch

    from enface.engine.inference import Ensemble
    from enface.study.active import pool_scores

    path = _study_yaml(tmp_path, dataset, common={**FAST, "accelerator": "auto"})
    doc = yaml.safe_load(path.read_text())
    doc["train"]["fast"] = True  # over common's fast: False
    path.write_text(yaml.safe_dump(doc))
    study = load_study(path)
    asked: list[tuple] = []

    class Asked(Exception):
        pass

    def from_run(cls, run, top_k=5, device="cpu", fast=False):
        asked.append((str(device), fast))
        raise Asked

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a study that trains on a GPU
    monkeypatch.setattr(Ensemble, "from_run", classmethod(from_run))
    with pytest.raises(Asked):
        pool_scores(study, plan_study(study)[1], ["P0004_OD_V1"], [], tta=False)
    assert asked == [("cuda", True)]
