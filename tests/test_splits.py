"""Splits and label fractions: patient-wise, deterministic, nested, never empty."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.data.folder import CaseMeta, list_cases, read_splits, write_case
from enface.data.splits import fraction_key, label_fractions, make_splits, select_cases, split_dataset
from enface.errors import DatasetError

N_PATIENTS = 20


def _build(root: Path) -> None:
    """20 patients; even ones have 2 visits; GA masks on patients 0-13, SLO on patients 0-9."""
    rng = np.random.default_rng(0)
    for p in range(N_PATIENTS):
        for visit in range(2 if p % 2 == 0 else 1):
            cid = f"p{p:02d}_v{visit}"
            images = {"slo": rng.random((4, 6))} if p < 10 else None
            # the second visit of a labeled patient is unlabeled
            masks = {"ga": rng.random((4, 6)) > 0.5} if p < 14 and visit == 0 else None
            vol = rng.random((4, 6, 5)).astype(np.float32)
            write_case(root, CaseMeta(cid, f"P{p:02d}", visit=visit), vol, images=images, masks=masks)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("splits_ds")
    _build(root)
    return root


@pytest.fixture
def fresh(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset without splits.json (so tests may write their own)."""
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    (root / "splits.json").unlink(missing_ok=True)
    return root


def test_fraction_key() -> None:
    assert [fraction_key(f) for f in (0.05, 0.1, 0.2, 1.0, 0.125, 0.07)] == ["5", "10", "20", "100", "12.5", "7"]
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="label fraction"):
            fraction_key(bad)


def test_label_fractions_nested_nonempty_deterministic() -> None:
    pids = [f"P{i:02d}" for i in range(30)]
    out = label_fractions(pids, (0.2, 0.05, 1.0, 0.1), seed=3)
    assert list(out) == ["5", "10", "20", "100"]
    # 5% of 30 = 1.5 -> 2 (half up), 10% -> 3, 20% -> 6, 100% -> all
    assert [len(v) for v in out.values()] == [2, 3, 6, 30]
    keys = list(out)
    for small, large in itertools.pairwise(keys):
        assert set(out[small]) < set(out[large])
    assert out == label_fractions(list(reversed(pids)), (0.05, 0.1, 0.2, 1.0), seed=3)
    assert out != label_fractions(pids, (0.05, 0.1, 0.2, 1.0), seed=4)


def test_label_fractions_at_least_one_patient() -> None:
    out = label_fractions(["a", "b", "c"], (0.05, 0.1, 0.2, 1.0), seed=0)
    assert [len(v) for v in out.values()] == [1, 1, 1, 3]
    assert out["5"] == out["10"] == out["20"]
    assert len(label_fractions([f"p{i}" for i in range(10)], (0.05,))["5"]) == 1  # 0.5 -> 1


def test_label_fractions_errors() -> None:
    with pytest.raises(ValueError, match="at least one patient"):
        label_fractions([], (0.5,))
    with pytest.raises(ValueError, match="distinct"):
        label_fractions(["a", "b"], (0.5, 0.5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        label_fractions(["a", "b"], (0.5, 2.0))


def test_split_dataset_patient_wise_and_fractions(fresh: Path) -> None:
    out = split_dataset(fresh, seed=1)
    on_disk = read_splits(fresh)
    assert on_disk == out
    assert (out["seed"], out["ratios"]) == (1, [0.6, 0.1, 0.3])
    assert [len(out[k]) for k in ("train", "val", "test")] == [12, 2, 6]
    sets = [set(out[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == {f"P{p:02d}" for p in range(N_PATIENTS)}
    # every case of a patient lands in the patient's split
    for split in ("train", "val", "test"):
        pids = {c.split("_")[0].upper() for c in select_cases(fresh, split)}
        assert pids == set(out[split])
    # fractions: over the labeled (P00-P13) training patients only, nested, each >= 1
    labeled_train = sorted(p for p in out["train"] if int(p[1:]) < 14)
    fr = out["fractions"]["ga"]
    assert list(fr) == ["5", "10", "20", "100"]
    assert fr["100"] == labeled_train
    assert all(len(v) >= 1 for v in fr.values())
    assert set(fr["5"]) <= set(fr["10"]) <= set(fr["20"]) <= set(fr["100"])
    # deterministic
    again = split_dataset(fresh, seed=1, redo=True)
    assert again == out


def test_split_dataset_keeps_existing_assignment(fresh: Path) -> None:
    pids = [f"P{p:02d}" for p in range(N_PATIENTS)]
    given = {"train": pids[:10], "val": pids[10:12], "test": pids[12:], "source": "official"}
    (fresh / "splits.json").write_text(json.dumps(given))
    out = split_dataset(fresh, seed=5, fractions=(0.5, 1.0))
    assert out["train"] == pids[:10] and out["val"] == pids[10:12] and out["test"] == pids[12:]
    assert out["source"] == "official"
    assert out["fractions"]["ga"]["100"] == pids[:10]
    assert len(out["fractions"]["ga"]["50"]) == 5
    redone = split_dataset(fresh, seed=5, redo=True)
    assert redone["train"] != pids[:10]
    assert "source" not in redone  # a new assignment drops what described the old one


def test_split_dataset_task_without_labels(fresh: Path) -> None:
    with pytest.raises(DatasetError, match="rpd"):
        split_dataset(fresh, tasks=("rpd",))


def test_duplicate_patient_rejected_naming_it(fresh: Path) -> None:
    bad = {"train": ["P00", "P01"], "val": ["P02"], "test": ["P01", "P03"]}
    (fresh / "splits.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="'P01'.*'train' and 'test'"):
        select_cases(fresh, "train")
    with pytest.raises(DatasetError, match="P01"):
        split_dataset(fresh)


def test_select_cases_filters(fresh: Path) -> None:
    out = split_dataset(fresh, seed=2, fractions=(0.1, 1.0))
    every = [c.case_id for c in list_cases(fresh)]
    assert select_cases(fresh, "all") == every
    assert select_cases(fresh, "all", requires=("slo",)) == [c for c in every if int(c[1:3]) < 10]
    labeled = select_cases(fresh, "all", requires=("mask:ga",))
    assert labeled == [f"p{p:02d}_v0" for p in range(14)]
    assert select_cases(fresh, "all", requires=("slo", "mask:ga")) == [f"p{p:02d}_v0" for p in range(10)]
    train = select_cases(fresh, "train", requires=("mask:ga",))
    assert {f"P{c[1:3]}" for c in train} == set(out["fractions"]["ga"]["100"])
    small = select_cases(fresh, "train", requires=("mask:ga",), fraction=0.1, task="ga")
    assert 1 <= len(small) < len(train) and set(small) <= set(train)
    assert {f"P{c[1:3]}" for c in small} == set(out["fractions"]["ga"]["10"])
    # an unlabeled visit of a fraction patient is kept unless masks are required
    with_unlabeled = select_cases(fresh, "train", fraction=0.1, task="ga")
    assert set(small) <= set(with_unlabeled)
    assert select_cases(fresh, "all", requires=("mask:rpd",)) == []


def test_select_cases_errors(fresh: Path) -> None:
    split_dataset(fresh, fractions=(0.1, 1.0))
    with pytest.raises(ValueError, match="unknown split"):
        select_cases(fresh, "training")
    with pytest.raises(ValueError, match="unknown requirement"):
        select_cases(fresh, "all", requires=("oct2",))
    with pytest.raises(ValueError, match="needs the task"):
        select_cases(fresh, "train", fraction=0.1)
    with pytest.raises(ValueError, match="train split only"):
        select_cases(fresh, "val", fraction=0.1, task="ga")
    with pytest.raises(DatasetError, match="no 20% label fraction"):
        select_cases(fresh, "train", fraction=0.2, task="ga")


def test_cli_split(fresh: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["split", str(fresh), "--seed", "3", "--fractions", "0.25", "1"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "25%" in text and "splits.json" in text
    assert list(read_splits(fresh)["fractions"]["ga"]) == ["25", "100"]
    assert main(["split", str(fresh), "--fractions", "5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_make_splits_unchanged() -> None:
    pids = [f"x{i}" for i in range(10)]
    s = make_splits(pids, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [6, 1, 3]
    assert s == make_splits(list(reversed(pids)), seed=0)


def test_split_ratios_that_do_not_sum_to_one_are_an_error(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "d"
    shutil.copytree(tiny_dataset, copy)
    before = (copy / "splits.json").read_bytes()
    assert main(["split", str(copy), "--redo", "--ratios", "0.5", "0.5", "0.5"]) == 2
    assert "sum to 1" in capsys.readouterr().err
    assert (copy / "splits.json").read_bytes() == before
