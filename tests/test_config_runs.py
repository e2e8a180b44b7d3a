"""Run configs (YAML + overrides, validated early) and run folder names (built and parsed back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enface.config import load_config, parse_overrides
from enface.errors import ConfigError
from enface.engine.runs import RunKey, format_fraction, parse_run_dir, run_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    from enface.data.folder import write_dataset_info

    write_dataset_info(tmp_path / "ds", "demo", ("oct", "faf"), ("ga",), (0.1, 0.01, 0.004))
    return tmp_path / "ds"


@pytest.mark.parametrize(
    "key",
    [
        RunKey("ds", "ga", "fpn", "scratch", 0.05, 0),
        RunKey("GA-S_1", "recon-faf_inv", "lachinov", "scratch", 1.0, 3, width=0.25),
        RunKey("ds", "rpd", "ipnv2", "ssl-slo", 0.125, 12, width=0.5),
    ],
)
def test_run_dir_roundtrip(key: RunKey, tmp_path: Path) -> None:
    path = run_dir(tmp_path / "runs", key)
    root, parsed = parse_run_dir(path)
    assert parsed == key
    assert root == tmp_path / "runs"


def test_run_dir_layout_and_errors(tmp_path: Path) -> None:
    path = run_dir("runs", RunKey("ds", "ga", "fpn", "ssl-faf_inv", 0.05, 1))
    assert path == Path("runs/ds/ga/fpn/ssl-faf_inv/frac-5/seed-1")
    assert format_fraction(0.1) == "10" and format_fraction(1.0) == "100"
    with pytest.raises(ValueError, match="not a run folder"):
        parse_run_dir("runs/ds/ga/fpn/scratch/five/seed-1")
    with pytest.raises(ValueError, match="cannot be parsed"):
        run_dir("runs", RunKey("my data", "ga", "fpn"))


def test_paper_config_loads(dataset: Path) -> None:
    cfg = load_config(ROOT / "configs/paper.yaml", "pretrain", {"dataset": str(dataset)})
    assert (cfg.batch_size, cfg.target, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs) == (4, "faf_inv", 0.1, 0.9, 1e-4, 800)
    assert cfg.crop == (32, 256) and cfg.task == "reconstruct"
    cfg = load_config(ROOT / "configs/paper.yaml", "train", {"dataset": str(dataset), "fraction": 0.05})
    assert (cfg.batch_size, cfg.target, cfg.fraction, cfg.task) == (8, "ga", 0.05, "segment")


def test_overrides_win_and_are_typed(dataset: Path) -> None:
    over = parse_overrides(["epochs=3", "crop=[8, 16]", "augment=false", "devices=2"])
    cfg = load_config(None, "train", {**over, "dataset": str(dataset)})
    assert cfg.epochs == 3 and cfg.crop == (8, 16) and cfg.augment is False and cfg.devices == 2


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"fraction": 0}, "fraction"),
        ({"model": "nope"}, "unknown model"),
        ({"epochs": "many"}, "epochs"),
        ({"target": "faf"}, "mask task"),
        ({"init": "missing.ckpt"}, "not found"),
        ({"bogus": 1}, "unknown config field"),
    ],
)
def test_invalid_train_configs(dataset: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, "train", {"dataset": str(dataset), **overrides})


def test_invalid_pretrain_target_and_dataset(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reconstructs one of"):
        load_config(None, "pretrain", {"dataset": str(dataset), "target": "ga"})
    with pytest.raises(ConfigError, match="not a dataset folder"):
        load_config(None, "pretrain", {"dataset": str(tmp_path)})


def test_bad_yaml_files(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad, "train", {"dataset": str(dataset)})
    bad.write_text("training:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown top-level"):
        load_config(bad, "train", {"dataset": str(dataset)})
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml \[train\].*unknown config field 'epoch'"):
        load_config(bad, "train", {"dataset": str(dataset)})
