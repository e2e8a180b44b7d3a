"""Budgets set by convergence: the plateau rule, done.json's record, and a killed run resumed exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from enface.config import load_config
from enface.engine.fit import fit
from enface.engine.history import history_values
from enface.engine.stopping import PlateauStop, replay
from enface.errors import ConfigError, RunFolderError
from model_helpers import KillAt
from tiny_data import FAST
from tiny_data import make_tiny_dataset as _make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("stopping") / "tiny")


class _Trainer(SimpleNamespace):
    """What PlateauStop reads of a Lightning trainer."""

    def __init__(self) -> None:
        super().__init__(callback_metrics={}, current_epoch=0, should_stop=False, sanity_checking=False)
        self.strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)


def _epochs_until_stop(values: list[float], **kw) -> int | None:
    """Feed one validation value per epoch; the epoch after which the rule stops (None: never)."""
    stop, trainer = PlateauStop("val_dice", **kw), _Trainer()
    for epoch, v in enumerate(values):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val_dice": torch.tensor(v)}
        stop.on_validation_epoch_end(trainer, None)
        stop.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            return epoch
    return None


@pytest.mark.parametrize(
    ("values", "kw", "stopped_after"),
    [
        ([0.5, 0.6, 0.7, 0.8], {"patience": 1}, None),  # improving every time
        ([0.5, 0.6, 0.6, 0.6], {"patience": 2}, 3),  # two validations without a gain
        ([0.5, 0.5, 0.5, 0.5], {"patience": 2}, None),  # never moved from its first value: not started yet
        ([0.5, 0.5, 0.5, 0.4, 0.4], {"patience": 2}, 4),  # it moved (down): now the counter runs
        # the FPN pre-trained on SLO at 5 %: empty masks (Dice 0.400) for 10 epochs, then it learns
        ([0.4] * 10 + [0.4058, 0.4446, 0.9355, 0.9133, 0.93, 0.93], {"patience": 3, "min_epochs": 10}, 15),
        ([0.5, 0.501, 0.502, 0.503], {"patience": 2, "min_delta": 0.002}, 2),  # gains below min_delta do not count
        ([0.5, 0.501, 0.503, 0.503, 0.503], {"patience": 2, "min_delta": 0.002}, 4),  # 0.503 > 0.5 + 0.002 resets
        ([0.5, 0.4, 0.4, 0.4, 0.4], {"patience": 1, "min_epochs": 4}, 3),  # not before min_epochs
        ([0.5, float("nan"), float("nan")], {"patience": 2}, 2),  # a non-finite value is no gain
    ],
)
def test_plateau_rule(values: list[float], kw: dict, stopped_after: int | None) -> None:
    assert _epochs_until_stop(values, **kw) == stopped_after


def test_the_counter_state_survives_a_checkpoint() -> None:
    stop = PlateauStop("val_dice", patience=3)
    for epoch, v in enumerate([0.4, 0.4, 0.5, 0.5]):
        stop.update(v, epoch)
    again = PlateauStop("val_dice", patience=3)
    again.load_state_dict(stop.state_dict())
    assert (again.first, again.moved, again.best, again.wait) == (0.4, True, 0.5, 1)
    old = {"best": 0.4, "wait": 1, "stopped_epoch": None}  # written before the rule waited for a start
    again.load_state_dict(old)
    assert again.moved and again.first == 0.4


def test_an_epoch_without_validation_counts_nothing() -> None:
    stop, trainer = PlateauStop("val_dice", patience=1), _Trainer()
    trainer.callback_metrics = {"val_dice": torch.tensor(0.5)}
    for epoch in range(4):  # the stale value of a validation long past is not read again
        trainer.current_epoch = epoch
        if epoch == 0:
            stop.on_validation_epoch_end(trainer, None)
        stop.on_train_epoch_end(trainer, None)
    assert stop.wait == 0 and not trainer.should_stop


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"min_delta": 0.01}, "min_delta"),
        ({"min_epochs": 3}, "min_epochs"),
        ({"patience": 0}, "patience"),
        ({"patience": 2, "min_delta": -0.1}, "min_delta"),
        ({"patience": 2, "min_epochs": 9, "epochs": 5}, "min_epochs"),
    ],
)
def test_bad_stopping_settings_are_refused(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"config field '{field}'"):
        load_config(None, "train", {"dataset": "d", **overrides}).validate()


def _config(dataset: Path, runs: Path, **kw):
    return load_config(None, "train", {"dataset": str(dataset), "runs_dir": str(runs), **FAST, **kw})


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_run_with_patience_stops_early_and_records_how(dataset: Path, tmp_path: Path) -> None:
    result = fit(_config(dataset, tmp_path, epochs=8, patience=1, min_delta=1.0, min_epochs=2), progress=False)
    done = json.loads((result.run_dir / "done.json").read_text())
    assert result.stopped == done["stopped"] == "plateau"
    # no gain of 1.0 Dice ever counts: it stops one validation after its Dice first moves
    history = _history(result.run_dir)
    rule = PlateauStop("val_dice", patience=1, min_delta=1.0, min_epochs=2)
    expected = next(e + 1 for e, row in enumerate(history) if rule.update(float(row["val_dice"]), e))
    assert result.epochs == done["epochs_run"] == len(history) == expected < 8
    assert done["layout"] == "contiguous" and done["threads"] == torch.get_num_threads()
    assert done["cpu_seconds"] > 0 and done["seconds"] > 0
    fixed = fit(_config(dataset, tmp_path / "fixed", epochs=2), progress=False)
    assert fixed.stopped == json.loads((fixed.run_dir / "done.json").read_text())["stopped"] == "max_epochs"


def test_a_killed_run_resumes_its_counter_and_its_numbers(dataset: Path, tmp_path: Path) -> None:
    settings = {"epochs": 12, "patience": 2, "min_delta": 0.5}
    whole = fit(_config(dataset, tmp_path / "whole", **settings), progress=False)
    assert whole.stopped == "plateau" and whole.epochs < 12, "pick settings under which the tiny run plateaus"
    cfg = _config(dataset, tmp_path / "killed", **settings)
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(cfg, callbacks=[KillAt(at=2)], progress=False)
    resumed = fit(cfg, resume=True, progress=False)
    assert (resumed.stopped, resumed.epochs) == (whole.stopped, whole.epochs)
    assert _history(resumed.run_dir) == _history(whole.run_dir)  # the same numbers, epoch by epoch
    assert [v for _, v in resumed.best] == [v for _, v in whole.best]


def test_a_run_killed_after_it_stopped_stops_again_at_once(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, tmp_path, epochs=8, patience=1, min_delta=1.0, min_epochs=2)
    first = fit(cfg, progress=False)
    (first.run_dir / "done.json").unlink()  # killed between the last checkpoint and done.json
    again = fit(cfg, resume=True, progress=False)
    assert (again.stopped, again.epochs) == ("plateau", first.epochs)


def test_a_run_finished_under_another_rule_is_not_reused(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """The rule is not part of a run's identity: a finished folder is reused only where the
    current rule, replayed on its history, stops it where it stopped."""
    cfg = _config(dataset, tmp_path, epochs=6, patience=1, min_delta=1.0, min_epochs=2)
    with monkeypatch.context() as m:  # an older rule: stop after the first validation
        m.setattr(PlateauStop, "update", lambda self, value, epoch: True)
        old = fit(cfg, progress=False)
    assert (old.stopped, old.epochs) == ("plateau", 1)
    with pytest.raises(RunFolderError, match=r"ran 1 epochs \(plateau\), but the current plateau rule"):
        fit(cfg, resume=True, progress=False)
    # a folder the current rule agrees with is reused as it is
    agreeing = _config(dataset, tmp_path / "current", epochs=6, patience=1, min_delta=1.0, min_epochs=2)
    current, again = fit(agreeing, progress=False), fit(agreeing, progress=False)
    assert again.status == "skipped" and (again.stopped, again.epochs) == (current.stopped, current.epochs)


def test_replay_counts_no_epoch_without_validation() -> None:
    history = [(0, 0.5), (1, None), (2, 0.6), (3, None), (4, 0.6), (5, 0.6)]
    assert replay(PlateauStop("val_dice", patience=2), history) == 6
    assert replay(PlateauStop("val_dice", patience=3), history) is None


def _committed_records() -> list[dict]:
    """Every record in the ledgers of the repository's study configs, read (and checked against
    its config) the way ``enface experiment`` reads them."""
    from enface.study import load_study
    from enface.study.ledger import ledger_records
    from enface.study.run import plan_study

    records: list[dict] = []
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        try:
            study = load_study(path)
        except ConfigError:  # a run config (configs/paper.yaml), not a study
            continue
        records += ledger_records(study, plan_study(study)).values()
    return records


def test_every_committed_record_stopped_where_the_rule_says() -> None:
    """A study's ledger holds runs trained by earlier code: each must have stopped where the
    current plateau rule, applied to its own validation history, stops it (or not before)."""
    checked = 0
    for record in _committed_records():
        identity, outcome = record["identity"], record["outcome"]
        if identity.get("patience") is None:
            continue
        metric = outcome["metric"]
        rule = PlateauStop(metric, identity["patience"], identity["min_delta"], identity["min_epochs"])
        stop = replay(rule, history_values(record["history"], metric))
        expected = outcome["epochs_run"] if outcome["stopped"] == "plateau" else None
        assert stop == expected, (
            f"{record['run']['label']}: the rule stops it after {stop}, it ran {outcome['epochs_run']}"
        )
        checked += 1
    assert checked >= 1
