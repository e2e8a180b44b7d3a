"""``enface select``: scores, strategies, the queue file and its bad inputs, on the tiny phantom."""

from __future__ import annotations

import csv
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from enface.cli import main
from enface.config import load_config
from enface.data.folder import load_case
from enface.engine.fastpath import FastPath
from enface.engine.fit import fit
from enface.errors import DatasetError
from enface.select import (
    QUEUE_COLUMNS,
    TTA_VIEWS,
    CaseScore,
    mutual_information,
    rank_cases,
    select_queue,
    uncertainty_score,
)
from enface.select.scoring import _samples

UNLABELED_PATIENTS = ("P0003", "P0004")  # training patients whose masks are removed in the pool dataset


@pytest.fixture(scope="module")
def run(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("select")
    data = root / "data"
    shutil.copytree(phantom_dataset, data)
    overrides = {"dataset": str(data), "runs_dir": str(root / "runs"), "width": 0.125, "crop": (8, 32)}
    overrides.update(batch_size=2, num_workers=0, accelerator="cpu", epochs=2, top_k=2, fast=False)
    return fit(load_config(None, "train", overrides), progress=False).run_dir


@pytest.fixture(scope="module")
def pool(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training dataset with the GA masks of two training patients removed."""
    data = tmp_path_factory.mktemp("pool") / "data"
    shutil.copytree(Path(yaml.safe_load((run / "config.yaml").read_text())["dataset"]), data)
    for case in (data / "cases").iterdir():
        if case.name.split("_")[0] in UNLABELED_PATIENTS:
            for mask in case.glob("mask_ga*.png"):
                mask.unlink()
    return data


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_queue_holds_only_unlabeled_cases_with_its_columns(run: Path, pool: Path, tmp_path: Path) -> None:
    res = select_queue(run, pool, 4, tmp_path / "q.csv", strategy="uncertainty", top_k=2)
    rows = _read(tmp_path / "q.csv")
    assert list(rows[0]) == list(QUEUE_COLUMNS) and len(rows) == 4 == len(res.rows)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        case = load_case(pool / "cases" / r["case_id"])
        assert not case.has_mask("ga") and case.patient_id == r["patient_id"] and case.meta.eye == r["eye"]
        assert r["strategy"] == "uncertainty" and float(r["predicted_area_mm2"]) >= 0 and float(r["area_sd_mm2"]) >= 0
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "diverse"])
def test_per_patient_never_repeats_a_patient(run: Path, pool: Path, tmp_path: Path, strategy: str) -> None:
    select_queue(run, pool, 10, tmp_path / "q.csv", strategy=strategy, per="patient", split="all", top_k=2, tta=False)
    patients = [r["patient_id"] for r in _read(tmp_path / "q.csv")]
    assert len(patients) == len(set(patients)) >= 3


def test_same_seed_same_queue_and_n_beyond_the_pool(run: Path, pool: Path, tmp_path: Path, caplog) -> None:
    def queue(seed: int, name: str, n: int = 5) -> list[str]:
        select_queue(run, pool, n, tmp_path / name, strategy="random", split="all", seed=seed, top_k=1, tta=False)
        return [r["case_id"] for r in _read(tmp_path / name)]

    assert queue(3, "a.csv") == queue(3, "b.csv")
    assert queue(3, "a.csv") != queue(4, "c.csv")
    with caplog.at_level(logging.WARNING):
        everything = queue(0, "all.csv", n=1000)
    unlabeled = [c.name for c in (pool / "cases").iterdir() if not (c / "mask_ga.png").is_file()]
    assert sorted(everything) == sorted(unlabeled) and "selecting all of them" in caplog.text


def test_bad_inputs_are_refused_before_anything_is_written(run: Path, pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.csv"
    recon = tmp_path / "recon-run"
    shutil.copytree(run, recon)
    cfg = yaml.safe_load((recon / "config.yaml").read_text())
    (recon / "config.yaml").write_text(yaml.safe_dump({**cfg, "stage": "pretrain", "target": "faf_inv"}))
    with pytest.raises(DatasetError, match="needs a segmentation run"):
        select_queue(recon, pool, 2, out)
    with pytest.raises(DatasetError, match="segments 'ga', not 'rpd'"):
        select_queue(run, pool, 2, out, task="rpd")
    with pytest.raises(DatasetError, match="no unlabeled case left"):
        select_queue(run, cfg["dataset"], 2, out, split="val")
    with pytest.raises(DatasetError, match="overwrite a file of the dataset"):
        select_queue(run, pool, 2, pool / "splits.json")
    with pytest.raises(DatasetError, match="overwrite a file of the dataset"):
        select_queue(run, pool, 2, pool / "cases" / "P0003_OD_V1" / "queue.csv")
    with pytest.raises(ValueError, match="unknown selection strategy"):
        select_queue(run, pool, 2, out, strategy="greedy")
    other = tmp_path / "other"
    shutil.copytree(pool, other)
    case = other / "cases" / "P0003_OD_V1"
    np.save(case / "oct.npy", np.zeros((8, 32, 48), dtype=np.float32))
    with pytest.raises(DatasetError, match="P0003_OD_V1.*depth differs"):
        select_queue(run, other, 2, out)
    np.save(case / "oct.npy", np.zeros((8, 40, 64), dtype=np.float32))
    with pytest.raises(DatasetError, match="P0003_OD_V1.*grid differs"):
        select_queue(run, other, 2, out)
    assert not out.exists() and not (pool / "cases" / "P0003_OD_V1" / "queue.csv").exists()
    assert (pool / "splits.json").read_text().startswith("{")


def test_cli(run: Path, pool: Path, tmp_path: Path, capsys) -> None:
    args = ["select", str(run), str(pool), "--n", "2", "--per", "patient", "--top-k", "2", "--out"]
    assert main([*args, str(tmp_path / "q.csv"), "--strategy", "diverse"]) == 0
    assert "2 of 7 unlabeled case(s) queued" in capsys.readouterr().out
    assert main([*args, str(pool / "dataset.json")]) == 2
    assert "overwrite a file of the dataset" in capsys.readouterr().err


class _Projection(torch.nn.Module):
    """A network that sees the volume's depth mean (equivariant to mirroring in the en-face plane)."""

    def __init__(self, power: int) -> None:
        super().__init__()
        self.power = power

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return volume.mean(-1) ** self.power


def test_mirrored_views_are_mirrored_back() -> None:
    ensemble = types.SimpleNamespace(
        models=[_Projection(1), _Projection(3)], device=torch.device("cpu"), fastpath=FastPath(False)
    )
    volume = torch.randn(1, 1, 6, 10, 4)
    samples = _samples(ensemble, volume, TTA_VIEWS)  # type: ignore[arg-type]
    assert samples.shape == (2 * len(TTA_VIEWS), 6, 10)
    expected = torch.sigmoid(volume.mean(-1)[0, 0]).numpy()
    assert np.allclose(samples[: len(TTA_VIEWS)], expected, atol=1e-6)  # every view of member 0, mirrored back
    assert not np.allclose(samples[len(TTA_VIEWS)], expected)


def _disc_samples(radius: float, size: int = 64) -> np.ndarray:
    """Four samples of a disc whose radius the samples disagree on by +-1 pixel."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy, xx)
    return np.stack([(r <= radius + d).astype(float) * 0.98 + 0.01 for d in (-1, 0, 0, 1)])


def test_uncertainty_does_not_just_favour_large_lesions() -> None:
    agree = np.full((3, 5, 5), 0.9)
    assert np.allclose(mutual_information(agree), 0)
    assert mutual_information(np.stack([np.ones((2, 2)) * 0.999, np.zeros((2, 2)) + 0.001])).min() > 0.6
    small, large = _disc_samples(3), _disc_samples(20)
    assert mutual_information(large).sum() > 3 * mutual_information(small).sum()  # the boundary grows with size
    spacing = (0.1, 0.1)  # the area floor: 25 pixels
    assert uncertainty_score(small, spacing) > 2 * uncertainty_score(large, spacing)  # per lesion area: it does not


def _score(cid: str, patient: str, unc: float, feat: tuple[float, ...]) -> CaseScore:
    return CaseScore(cid, patient, "OD", 0, unc, 1.0, 0.1, np.asarray(feat, dtype=np.float32))


def test_diverse_covers_the_pool_and_uncertainty_ranks_by_score() -> None:
    cluster = [_score(f"c{i}", f"p{i}", 0.9 - 0.01 * i, (1.0, 0.01 * i)) for i in range(4)]
    far = _score("far", "pf", 0.1, (-1.0, 0.0))
    labeled = [_score("lab", "pl", 0.0, (1.0, 0.0))]
    picks = rank_cases([*cluster, far], "diverse", 2, labeled=labeled)
    assert picks[0].case.case_id == "far" and picks[0].score == pytest.approx(2.0)
    assert [p.case.case_id for p in rank_cases([*cluster, far], "uncertainty", 2)] == ["c0", "c1"]
    same_patient = [_score("a1", "A", 0.9, (0, 0)), _score("a2", "A", 0.8, (0, 0)), _score("b1", "B", 0.1, (0, 0))]
    assert [p.case.case_id for p in rank_cases(same_patient, "uncertainty", 2, per="patient")] == ["a1", "b1"]
    with pytest.raises(ValueError, match="feature vectors"):
        rank_cases([CaseScore("x", "p", "OD", 0, 0.1, 0, 0)], "diverse", 1)
