"""The label-efficiency study on the tiny phantom: plan, run-index, resume/skip, results, report."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import wilcoxon

from enface.cli import main
from enface.errors import ConfigError, RunFolderError
from enface.fileio import FolderLock
from enface.study import collect_results, load_study, paired_wilcoxon, plan_study, run_folder, run_study
from enface.study.plan import run_config
from tiny_data import disc_dataset

FAST = {"width": 0.125, "crop": [8, 32], "batch_size": 2, "num_workers": 0, "accelerator": "cpu"}


def _study_yaml(tmp_path: Path, dataset: Path, **extra) -> Path:
    doc = {
        "name": "tiny-study",
        "dataset": str(dataset),
        "task": "ga",
        "models": ["fpn"],
        "inits": ["scratch", "ssl-faf_inv"],
        "fractions": [0.2, 1.0],
        "seeds": [0],
        "common": FAST,
        "pretrain": {"epochs": 1},
        "train": {"epochs": 1},
        "top_k": 2,
        "out": str(tmp_path / "study"),
        **extra,
    }
    if "arms" in extra:  # instead of models x inits x fractions
        doc = {k: v for k, v in doc.items() if k not in ("models", "inits", "fractions")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture()
def dataset(phantom_dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(phantom_dataset, copy)
    return copy


def test_plan_puts_pretraining_first(dataset: Path, tmp_path: Path) -> None:
    study = load_study(
        _study_yaml(
            tmp_path, dataset, models=["fpn", "lachinov"], inits=["scratch", "ssl-faf_inv", "ssl-slo"], seeds=[0, 1]
        )
    )
    plan = plan_study(study)
    stages = [r.stage for r in plan]
    assert stages[:4] == ["pretrain"] * 4 and set(stages[4:]) == {"train"}
    assert len(plan) == 4 + 2 * 3 * 2 * 2
    assert {(r.model, r.target) for r in plan[:4]} == {(m, t) for m in ("fpn", "lachinov") for t in ("faf_inv", "slo")}
    assert [r.index for r in plan] == list(range(len(plan)))


def test_arms_give_each_model_its_inits_fractions_and_training_settings(dataset: Path, tmp_path: Path) -> None:
    arms = [
        {"model": "fpn", "inits": ["scratch", "ssl-faf_inv"], "fractions": [0.2, 1.0]},
        {"model": "lachinov", "inits": ["scratch"], "fractions": [1.0], "train": {"lr": 0.01, "epochs": 3}},
    ]
    study = load_study(_study_yaml(tmp_path, dataset, arms=arms))
    plan = plan_study(study)
    assert [(r.stage, r.model) for r in plan].count(("train", "lachinov")) == 1
    configs = {(r.stage, r.model, r.init, r.fraction): run_config(study, r) for r in plan}
    lachinov = configs["train", "lachinov", "scratch", 1.0]
    assert (lachinov.lr, lachinov.epochs) == (0.01, 3)
    others = [c for key, c in configs.items() if key[1] == "fpn"]  # its pre-training and its runs
    assert others and all(c.lr == 0.1 for c in others) and all(c.epochs == 1 for c in others if c.stage == "train")
    for bad, message in (
        ({"lr": 0.01, "seed": 3}, r"the lachinov arm's train sets \['seed'\], which an arm cannot set"),
        ({"learning_rate": 0.01}, r"the lachinov arm's train sets \['learning_rate'\]"),
        ([0.01], r"arms\[1\]\.train must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_study(_study_yaml(tmp_path, dataset, arms=[arms[0], {**arms[1], "train": bad}]))


def test_study_runs_resumes_and_reports(dataset: Path, tmp_path: Path, capsys) -> None:
    path = _study_yaml(tmp_path, dataset)
    study = load_study(path)
    plan = plan_study(study)
    assert len(plan) == 1 + 2 * 2

    # a segmentation run whose pre-training has not run trains it first; both leave their records
    assert main(["experiment", str(path), "--run-index", "3", "--no-progress"]) == 0
    assert (run_folder(study, plan[0]) / "done.json").is_file()
    assert main(["experiment", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "[  0] recorded" in out and "[  3] recorded" in out and "[  1] todo" in out
    assert out.rstrip().splitlines()[-1] == "5 runs: 2 recorded, 3 to run"
    assert sorted(p.name for p in study.ledger_dir.rglob("*.json")) == ["seed-0.json"] * 2

    result = run_study(study, progress=False)
    assert result["statuses"][0] == result["statuses"][3] == "recorded"
    assert all(result["statuses"][i] == "finished" for i in (1, 2, 4))
    out_dir = tmp_path / "study"
    for name in (
        "results/table.csv",
        "results/table.md",
        "results/wilcoxon.csv",
        "report.md",
        "report.html",
        "figures/test-vs-fraction.png",
        "figures/overlays.png",
        "figures/training-curves.png",
    ):
        assert (out_dir / name).is_file(), name
    with open(out_dir / "results/table.csv") as f:
        table = list(csv.DictReader(f))
    assert {(r["init"], float(r["fraction"])) for r in table} == {
        (i, f) for i in ("scratch", "ssl-faf_inv") for f in (0.2, 1.0)
    }
    assert all(0 <= float(r["dice_mean"]) <= 1 for r in table)
    # every configuration says which seeds did not converge or collapsed, and the mean without them
    assert all((int(r["n_flagged"]) > 0) == bool(r["flags"]) for r in table)
    assert all(r["dice_mean_unflagged"] != "" for r in table)
    assert "## Convergence" in (out_dir / "report.md").read_text()
    html = (out_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html
    # the table agrees with the per-run evaluation files
    run = next(r for r in plan if r.stage == "train" and r.init == "scratch" and r.fraction == 1.0)
    summary = json.loads((run_folder(study, run) / "eval/test/summary.json").read_text())
    row = next(r for r in table if r["init"] == "scratch" and float(r["fraction"]) == 1.0)
    assert float(row["dice_mean"]) == pytest.approx(summary["metrics"]["dice"]["mean"], abs=1e-5)
    results = collect_results(study, plan)
    assert len(results["wilcoxon"]) == 2 and not results["missing"]
    from enface.study.demo import headline

    lines = headline(study).splitlines()  # the demo's summary, from the ledger
    assert lines[0] == "headline (test, training seeds 0; intervals over seeds and test patients):"
    assert sum("% labels: Dice" in line and "(per seed " in line for line in lines) == 4
    assert "SSL (ssl-faf_inv) - scratch at 20 % labels:" in lines[5] and "1 seeds per arm" in lines[5]
    assert all(w["reference"] == "fpn (ssl-faf_inv)" for w in results["wilcoxon"])

    # re-running skips everything and rewrites the report
    again = run_study(study, progress=False)
    assert set(again["statuses"].values()) == {"recorded"}

    # the report comes from the ledger alone: the same tables without a single run folder
    before = {n: (out_dir / n).read_text() for n in ("results/table.csv", "results/wilcoxon.csv")}
    shutil.rmtree(study.runs_dir)
    assert main(["experiment", str(path), "--report-only"]) == 0
    assert {n: (out_dir / n).read_text() for n in before} == before
    assert (out_dir / "figures/overlays.png").is_file() and (out_dir / "figures/training-curves.png").is_file()
    assert main(["experiment", str(path), "--plan"]) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == "5 runs: 5 recorded, 0 to run"

    # a record of another run than the study plans is refused, naming the field
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "train": {"epochs": 2}}))
    assert main(["experiment", str(path), "--plan"]) == 2
    assert "another run than the study plans (epochs: 1 -> 2)" in capsys.readouterr().err


def test_bad_study_files(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="unknown study keys"):
        load_study(_study_yaml(tmp_path, dataset, epochs=3))
    with pytest.raises(ConfigError, match="init 'imagenet'"):
        load_study(_study_yaml(tmp_path, dataset, inits=["imagenet"]))
    with pytest.raises(ConfigError, match="fractions"):
        load_study(_study_yaml(tmp_path, dataset, fractions=[0, 0.5]))
    study = load_study(_study_yaml(tmp_path, dataset))
    with pytest.raises(ConfigError, match="outside the plan"):
        run_study(study, run_index=99, progress=False)


def test_paired_wilcoxon_matches_scipy_on_paired_cases() -> None:
    rng = np.random.default_rng(0)
    ref = {f"c{i}": float(v) for i, v in enumerate(rng.random(20))}
    other = {k: v + 0.05 + 0.01 * rng.standard_normal() for k, v in ref.items()}
    other["extra"] = 0.3  # unpaired cases are ignored
    res = paired_wilcoxon(ref, other)
    keys = sorted(ref)
    expected = wilcoxon([other[k] for k in keys], [ref[k] for k in keys])
    assert res["n"] == 20 and res["p_value"] == pytest.approx(expected.pvalue)
    assert res["median_difference"] > 0
    same = paired_wilcoxon(ref, dict(ref))
    assert math.isnan(same["p_value"]) and same["median_difference"] == 0 and same["signed_rank_sum"] == 0


def test_the_claims_are_summed_up_per_claim() -> None:
    from enface.study.claims import CLAIMS, claim_summary

    rows = [
        {"claim": CLAIMS[1], "comparison": "a", "test_set": "t", "p_value": 0.001, "answer": "yes"},
        {"claim": CLAIMS[0], "comparison": "b", "test_set": "t", "p_value": 0.5, "answer": "not shown"},
        {"claim": CLAIMS[1], "comparison": "c", "test_set": "u", "p_value": 0.02, "answer": "no"},
    ]
    got = claim_summary(rows)
    assert [c["claim"] for c in got] == [CLAIMS[0], CLAIMS[1]]  # the paper's order, only claims compared
    assert got[0]["not shown"] == ["b (t, p = 0.500)"] and got[0]["n"] == 1
    assert got[1]["yes"] == ["a (t, p = 0.001)"] and got[1]["no"] == ["c (u, p = 0.020)"] and got[1]["n"] == 2


def test_a_claim_answers_with_the_side_the_signed_ranks_favour() -> None:
    """Most cases a little higher, two much lower: the means favour the reference, the signed-rank
    test the other side, and the answer follows the test."""
    from enface.study.claims import _compare

    ref = {f"c{i}": 0.8 for i in range(20)}
    other = {k: 0.8 + 0.01 * (1 + i % 3) for i, k in enumerate(ref)}
    other["c0"], other["c1"] = 0.2, 0.1
    row = _compare(1, "t", "x", ref, other)
    assert row["mean_difference"] < 0 and row["p_value"] < 0.05
    assert row["signed_rank_sum"] > 0 and row["answer"] == "yes"
    flipped = _compare(1, "t", "x", other, ref)
    assert flipped["signed_rank_sum"] < 0 and flipped["answer"] == "no"


def test_growth_agreement_matches_an_independent_computation(dataset: Path, tmp_path: Path) -> None:
    """The study's growth-rate agreement equals rates computed straight from the npz masks and PNGs."""
    from enface.data.folder import load_case
    from enface.study.growth import growth_agreement

    study = load_study(
        _study_yaml(
            tmp_path,
            dataset,
            inits=["scratch"],
            fractions=[1.0],
            test_sets={"all": {"dataset": str(dataset), "split": "all"}},
        )
    )
    run_study(study, progress=False)
    rows = growth_agreement(collect_results(study)["records"])
    assert len(rows) == 1 and rows[0]["eyes"] >= 1
    folder = run_folder(study, plan_study(study)[0])
    by_eye: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with np.load(folder / "eval" / "all" / "predictions.npz") as data:
        for cid in data.files:
            case = load_case(dataset / "cases" / cid)
            px = case.spacing[0] * case.spacing[1]
            pred = math.sqrt(float((data[cid] >= 128).sum()) * px)
            ref = math.sqrt(float(case.load_mask("ga").sum()) * px)
            by_eye.setdefault((case.patient_id, case.meta.eye), []).append((case.meta.visit / 365.25, pred, ref))
    diffs = []
    for visits in by_eye.values():
        if len(visits) >= 2:
            t, p, r = (np.array(v) for v in zip(*visits))
            diffs.append(np.polyfit(t, p, 1)[0] - np.polyfit(t, r, 1)[0])
    assert rows[0]["eyes"] == len(diffs)
    assert rows[0]["sqrt_bias"] == pytest.approx(float(np.mean(diffs)), abs=1e-9)
    html = (tmp_path / "study" / "report.html").read_text()
    assert "GA growth rates" in html and (tmp_path / "study" / "results" / "growth.csv").is_file()


def test_a_study_is_run_by_one_process_at_a_time(dataset: Path, tmp_path: Path) -> None:

    study = load_study(_study_yaml(tmp_path, dataset))
    with FolderLock(study.out_dir, "study"):
        with pytest.raises(RunFolderError, match="this study is being written by another process"):
            run_study(study, progress=False)
    assert not (study.runs_dir).exists()


def test_demo_paired_difference_by_patient_and_seed() -> None:
    from enface.study.demo import demo_study, paired_difference

    rng = np.random.default_rng(1)
    cases = [f"P{p}_V{v}" for p in range(8) for v in range(2)]
    ref = {c: float(rng.uniform(0.5, 0.8)) for c in cases}
    better = {c: v + 0.1 + 0.02 * rng.standard_normal() for c, v in ref.items()}
    groups = {c: c.split("_")[0] for c in cases}
    d = paired_difference({0: ref}, {0: better}, groups)
    assert d["n"] == 16 and d["patients"] == 8 and d["seeds"] == 1
    assert d["low"] < d["mean"] < d["high"] and d["low"] > 0.05 and d["mean"] == pytest.approx(0.1, abs=0.02)
    assert d["p_value"] < 0.01
    same = paired_difference({0: ref}, {0: ref}, groups)
    assert same["mean"] == 0 and same["low"] == same["high"] == 0 and math.isnan(same["p_value"])
    # seeds that disagree widen the interval: it covers training randomness, not only the test cases
    lucky = {0: better, 1: {c: v - 0.15 for c, v in better.items()}, 2: {c: v + 0.1 for c, v in better.items()}}
    seeds = paired_difference({0: ref, 1: ref, 2: ref}, lucky, groups)
    assert seeds["seeds"] == 3 and seeds["mean"] == pytest.approx(d["mean"] - 0.05 / 3, abs=1e-9)
    assert seeds["high"] - seeds["low"] > 3 * (d["high"] - d["low"])
    study = demo_study("/tmp/x")
    assert min(study.fractions) < 1.0 and max(study.fractions) == 1.0 and set(study.inits) == {"scratch", "ssl-faf_inv"}


def test_study_test_set_name_cannot_escape(tmp_path: Path, tiny_dataset: Path) -> None:
    from enface.study import load_study

    doc = {
        "name": "s",
        "dataset": str(tiny_dataset),
        "test_sets": {"../../out": {"dataset": str(tiny_dataset)}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"s.yaml: study: test set name '../../out' is not a valid name"):
        load_study(path)


def test_empty_study_yaml_is_a_clear_error(tmp_path: Path) -> None:
    from enface.study import load_study

    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"empty.yaml: the study needs 'name' and 'dataset'") as e:
        load_study(path)
    assert "StudyConfig" not in str(e.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("seeds: ['a']", "seeds must be a list of integers: 'a' is not a number"),
        ("seeds: 'a'", r"seeds must be a list \(e.g. seeds: \[...\]\), got 'a'"),
        ("fractions: '0.5'", "fractions must be a list"),
        ("seeds: [1.5]", "1.5 is not an integer"),
        ("top_k: x", "top_k must be an integer"),
        ("common: [1]", "common must be a mapping"),
        ("seeds: [0, 1, 0]", r"seeds lists the same value more than once \(0 and 0\)"),
        ("fractions: [0.1, 0.2, 0.1]", r"fractions lists the same value more than once \(0.1 and 0.1\)"),
        ("models: [fpn, fpn]", r"models lists the same value more than once \(fpn and fpn\)"),
        ("test_sets: {ext: {dataset: ds, split: tset}}", "test set 'ext': unknown split 'tset'"),
        ("test_sets: {ext: {dataset: ds, splt: test}}", r"test set 'ext': unknown keys \['splt'\]"),
    ],
)
def test_study_yaml_values_are_checked_by_name(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndataset: ds\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_test_set_without_its_split_fails_at_plan_time(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    nosplit = disc_dataset(tmp_path / "nosplit")  # no splits.json
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndataset: {tiny_dataset}\ntest_sets: {{ext: {{dataset: {nosplit}, split: test}}}}\n")
    assert main(["experiment", str(path), "--plan", "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert "test set 'ext'" in err and "splits.json" in err


@pytest.mark.parametrize(
    ("random_dice", "other_dice", "expected"),
    [
        ([0.80, 0.85, 0.90], [0.80, 0.90, 0.92], "1 patients saved"),  # reaches 0.90 one round earlier
        ([0.80, 0.92, 0.90], [0.80, 0.91, 0.93], "0 patients saved"),  # random itself had 0.90 at 2 patients
        ([0.80, 0.85, 0.90], [0.80, 0.84, 0.89], "never reached"),
    ],
)
def test_labels_saved_count_from_where_random_first_reached_its_final_dice(
    random_dice: list[float], other_dice: list[float], expected: str
) -> None:
    from enface.study.report import _labels_saved

    rows = [
        {"test_set": "t", "strategy": s, "round": r, "n_patients": 1 + r, "dice_mean": d}
        for s, values in (("random", random_dice), ("uncertainty", other_dice))
        for r, d in enumerate(values)
    ]
    (line,) = _labels_saved(rows)
    assert line.endswith(expected), line
