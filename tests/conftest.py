"""Shared fixtures: tiny sizes everywhere, deterministic seeds, no network, no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


PHANTOM_SHAPE = (8, 32, 64)
"""Grid (H, W, D) of the shared phantom dataset."""


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom dataset folder (read-only for tests; copy it before modifying).

    Six patients on an 8 x 32 x 64 grid with GA and RPD masks (``task="both"``): labeled and
    unlabeled visits, visits without FAF, second-grader masks; ``splits.json`` included.
    """
    from enface.synth.cohort import synthesize_dataset

    out = tmp_path_factory.mktemp("phantom") / "phantom"
    return synthesize_dataset(
        out,
        patients=6,
        seed=0,
        shape=PHANTOM_SHAPE,
        task="both",
        preset="tiny",
        label_fraction=0.6,
        faf_fraction=0.7,
        grader2_fraction=0.5,
        progress=False,
    )


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The engine tests' tiny dataset (``tiny_data.make_tiny_dataset``: 8 patients, FAF and GA
    following one bright band), one per test module."""
    from tiny_data import make_tiny_dataset

    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def tiny_finished_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained two epochs on ``tiny_dataset`` (a segmentation run of GA)."""
    from enface.config import load_config
    from enface.engine.fit import fit
    from tiny_data import FAST

    overrides = {"dataset": str(tiny_dataset), "runs_dir": str(tmp_path_factory.mktemp("runs")), **FAST, "epochs": 2}
    return fit(load_config(None, "train", overrides), progress=False).run_dir
