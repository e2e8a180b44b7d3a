"""Run configs (YAML + overrides, validated early) and run folder names (built and parsed back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enface.config import load_config, parse_overrides
from enface.data.splits import fraction_key
from enface.engine.fit import resolve_run
from enface.engine.runs import RunSpec
from enface.errors import ConfigError, RunFolderError
from enface.targets import Target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    from enface.data.folder import write_dataset_info

    write_dataset_info(tmp_path / "ds", "demo", ("oct", "faf"), ("ga",), (0.1, 0.01, 0.004))
    return tmp_path / "ds"


@pytest.mark.parametrize(
    "spec",
    [
        RunSpec("ds", Target.segment("ga"), "fpn", 1.0, "scratch", 0.05, 0),
        RunSpec("GA-S_1", Target.reconstruct("faf_inv"), "lachinov", 0.25, "scratch", 1.0, 3),
        RunSpec("ds", Target.segment("rpd"), "ipnv2", 0.5, "ssl-slo", 0.125, 12),
    ],
)
def test_run_dir_roundtrip(spec: RunSpec, tmp_path: Path) -> None:
    path = spec.folder(tmp_path / "runs")
    root, parsed = RunSpec.parse(path)
    assert parsed == spec
    assert root == tmp_path / "runs"


def test_run_dir_layout_and_errors(tmp_path: Path) -> None:
    path = RunSpec("ds", Target.segment("ga"), "fpn", 1.0, "ssl-faf_inv", 0.05, 1).folder("runs")
    assert path == Path("runs/ds/ga/fpn/ssl-faf_inv/frac-5/seed-1")
    assert fraction_key(0.1) == "10" and fraction_key(1.0) == "100"
    with pytest.raises(RunFolderError, match="not a run folder"):
        RunSpec.parse("runs/ds/ga/fpn/scratch/five/seed-1")
    with pytest.raises(ConfigError, match="not a valid name"):
        RunSpec("my data", Target.segment("ga"), "fpn")
    with pytest.raises(ConfigError, match="not a valid name"):
        RunSpec("../../etc", Target.segment("ga"), "fpn")


def test_target_spellings() -> None:
    """One value, every spelling: config name, dataset label, case file, run folder, init label."""
    inv = Target.reconstruct("faf_inv")
    assert (inv.label, inv.modality, inv.inverted, inv.filename) == ("faf_inv", "faf", True, "faf.png")
    assert (inv.folder_name, inv.init_label, inv.stage, inv.requires) == (
        "recon-faf_inv",
        "ssl-faf_inv",
        "pretrain",
        ("faf",),
    )
    ga = Target.segment("ga")
    assert (ga.label, ga.filename, ga.folder_name, ga.requires, ga.stage) == (
        "mask:ga",
        "mask_ga.png",
        "ga",
        ("mask:ga",),
        "train",
    )
    for t in (inv, ga, Target.reconstruct("slo")):
        assert Target.parse(t.label) == t and Target.from_folder_name(t.folder_name) == t
    assert Target.from_init_label("ssl-slo") == Target.reconstruct("slo") and Target.from_init_label("scratch") is None
    with pytest.raises(ConfigError):
        Target.from_init_label("ssl-ga")


def test_paper_config_loads(dataset: Path) -> None:
    cfg = load_config(ROOT / "configs/paper.yaml", "pretrain", {"dataset": str(dataset)})
    assert (cfg.batch_size, cfg.target, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs) == (
        4,
        "faf_inv",
        0.1,
        0.9,
        1e-4,
        800,
    )
    assert cfg.crop == (32, 256) and cfg.task == "reconstruct"
    cfg = load_config(ROOT / "configs/paper.yaml", "train", {"dataset": str(dataset), "fraction": 0.05})
    assert (cfg.batch_size, cfg.target, cfg.fraction, cfg.task) == (8, "ga", 0.05, "segment")
    # the paper's settings train on the fast path like every command: bf16 where native
    from enface.engine.fastpath import fast_precision
    from enface.engine.fit import resolved_precision

    assert cfg.precision == "auto" and cfg.fast and resolved_precision(cfg) == fast_precision(cfg.accelerator)


def test_a_run_config_yaml_recreates_the_run(dataset: Path, tmp_path: Path) -> None:
    import yaml

    for stage in ("pretrain", "train"):
        cfg = load_config(None, stage, {"dataset": str(dataset), "lr": 0.05, "crop": (8, 16), "seed": 3})
        path = tmp_path / f"{stage}.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # as fit writes config.yaml
        assert load_config(path, stage) == cfg
        assert load_config(path, stage, {"seed": 4}).seed == 4
    with pytest.raises(ConfigError, match="'train' run, not of a 'pretrain'"):
        load_config(tmp_path / "train.yaml", "pretrain")


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
    """Refused before anything is written: by the pure config, or where the run starts (the disk)."""
    with pytest.raises(ConfigError, match=match):
        resolve_run(load_config(None, "train", {"dataset": str(dataset), **overrides}))


def test_invalid_pretrain_target_and_dataset(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reconstruction target must be one of"):
        load_config(None, "pretrain", {"dataset": str(dataset), "target": "ga"})
    with pytest.raises(ConfigError, match="not a dataset folder"):
        resolve_run(load_config(None, "pretrain", {"dataset": str(tmp_path)}))


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


@pytest.mark.parametrize("stage", ["pretrain", "train"])
def test_each_config_option_is_declared_once_and_names_a_config_field(stage: str) -> None:
    """The CLI's config options are one declaration each: given, they override; absent, they
    leave --config and the defaults alone."""
    import dataclasses

    from enface.cli import build_parser
    from enface.config import RunConfig

    parser = build_parser()
    given = parser.parse_args([stage, "--dataset", "d", "--epochs", "3", "--no-fast"])
    assert set(given.config_fields) <= {f.name for f in dataclasses.fields(RunConfig)}
    assert {n for n in given.config_fields if hasattr(given, n)} == {"dataset", "epochs", "fast"}
    assert (given.dataset, given.epochs, given.fast) == ("d", 3, False)
    assert not hasattr(parser.parse_args([stage]), "epochs")


def test_prepare_and_predict_share_their_scan_options_and_prepare_its_defaults() -> None:
    """`enface prepare` with no option gives PrepareOptions' own defaults (their one home);
    predict declares the same scan options, defaulting depth and window to the training's."""
    from enface.cli import build_parser
    from enface.cli.data import prepare_options
    from enface.data.options import PrepareOptions

    parser = build_parser()
    assert prepare_options(parser.parse_args(["prepare", "src", "out", "--format", "vol"])) == PrepareOptions(fmt="vol")
    predict = parser.parse_args(["predict", "m.ckpt", "x", "--out", "o"])
    prepare = parser.parse_args(["prepare", "src", "out", "--format", "vol"])
    for name in ("depth", "window_mm", "bm", "axes", "spacing"):
        assert hasattr(predict, name) and hasattr(prepare, name)
    assert predict.depth is None and predict.window_mm is None and predict.bm == prepare.bm
