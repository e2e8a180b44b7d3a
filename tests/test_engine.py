"""Training engine end to end on a tiny dataset: pre-train, fine-tune, resume, NaN stop, DDP, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from enface.cli import main
from enface.config import load_config
from enface.data.folder import CaseMeta, write_case, write_dataset_info
from enface.data.splits import split_dataset
from enface.engine.checkpoint import load_model, read_checkpoint, topk_checkpoints
from enface.engine.fit import fit, resolve_run
from enface.errors import NonFiniteLossError
from model_helpers import KillAt
from tiny_data import FAST, SHAPE
from tiny_data import make_tiny_dataset as _make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("engine") / "tiny")


def _config(dataset: Path, runs: Path, stage: str, **kw):
    return load_config(None, stage, {"dataset": str(dataset), "runs_dir": str(runs), **FAST, **kw})


def test_pretrain_then_finetune(dataset: Path, tmp_path: Path) -> None:
    pre = fit(_config(dataset, tmp_path, "pretrain", epochs=2, target="faf_inv"), progress=False)
    assert pre.status == "finished" and pre.metric == "val_ssim"
    assert pre.run_dir == tmp_path / "tiny/recon-faf_inv/fpn-w0.125/scratch/frac-100/seed-0"
    best = topk_checkpoints(pre.run_dir)
    assert 1 <= len(best) <= 2 and (pre.run_dir / "checkpoints/last.ckpt").is_file()
    info = read_checkpoint(best[0])["enface"]
    assert info["model"]["name"] == "fpn" and info["config"]["target"] == "faf_inv"
    assert info["metric"]["name"] == "val_ssim" and np.isfinite(info["metric"]["value"])
    model, _ = load_model(best[0])
    assert model(torch.zeros(1, 1, *SHAPE)).shape == (1, 1, 8, 32)

    ft = fit(_config(dataset, tmp_path, "train", epochs=1, init=str(best[0]), fraction=0.2), progress=False)
    assert ft.run_dir == tmp_path / "tiny/ga/fpn-w0.125/ssl-faf_inv/frac-20/seed-0"
    transfer = json.loads((ft.run_dir / "transfer.json").read_text())
    assert transfer["not_loaded"] == [] and transfer["loaded"] == len(model.state_dict())
    done = json.loads((ft.run_dir / "done.json").read_text())
    assert done["epochs"] == 1 and len(done["train_cases"]) == 1  # 20 % of 5 training patients
    assert done["world_size"] == 1
    assert (ft.run_dir / "logs/metrics.csv").is_file() and (ft.run_dir / "config.yaml").is_file()
    # a finished run is skipped, an existing unfinished one needs --resume
    assert (
        fit(_config(dataset, tmp_path, "train", epochs=1, init=str(best[0]), fraction=0.2), progress=False).status
        == "skipped"
    )


def test_resume_after_kill_keeps_topk_and_finishes(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, tmp_path, "train", epochs=4, top_k=2)
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(cfg, callbacks=[KillAt(at=2)], progress=False)
    folder = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"
    last = folder / "checkpoints/last.ckpt"
    assert read_checkpoint(last)["epoch"] == 1  # epochs 0 and 1 done, nothing more lost
    before = {p.name for p in topk_checkpoints(folder)}
    assert len(before) == 2 and not (folder / "done.json").exists()
    with pytest.raises(ValueError, match="--resume"):
        fit(cfg, progress=False)
    result = fit(cfg, resume=True, progress=False)
    assert result.status == "finished" and result.epochs == 4
    after = topk_checkpoints(folder)
    assert len(after) == 2
    values = [v for _, v in result.best]
    assert values == sorted(values, reverse=True) and len(values) == 2
    assert {Path(p).name for p, _ in result.best} == {p.name for p in after}
    assert read_checkpoint(last)["epoch"] == 3


def test_nan_loss_stops_with_clear_error_and_keeps_last_good(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from enface.losses import DiceBCELoss

    cfg = _config(dataset, tmp_path, "train", epochs=3)
    original = DiceBCELoss.forward
    calls = {"n": 0}

    def flaky(self, input, target):
        calls["n"] += 1
        loss = original(self, input, target)
        return loss * float("nan") if calls["n"] > 3 else loss  # 3 steps per epoch: epoch 1 fails

    monkeypatch.setattr(DiceBCELoss, "forward", flaky)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at epoch 1"):
        fit(cfg, progress=False)
    last = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0/checkpoints/last.ckpt"
    ck = read_checkpoint(last)
    assert ck["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_cli_pretrain_and_train(dataset: Path, tmp_path: Path, capsys) -> None:
    common = [
        "--dataset",
        str(dataset),
        "--runs-dir",
        str(tmp_path),
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--accelerator",
        "cpu",
        "--no-progress",
        "--set",
        "crop=[8,32]",
        "num_workers=0",
    ]
    assert main(["pretrain", "--config", "configs/paper.yaml", "--target", "slo", *common]) == 2  # no SLO here
    assert "no training cases" in capsys.readouterr().err
    assert main(["pretrain", "--config", "configs/paper.yaml", "--target", "faf", *common]) == 0
    out = capsys.readouterr().out
    ckpt = out.split("best checkpoint: ")[1].strip()
    assert main(["train", "--config", "configs/paper.yaml", "--task", "ga", "--init", ckpt, *common]) == 0
    assert "ga/fpn-w0.125/ssl-faf/frac-100/seed-0" in capsys.readouterr().out
    assert main(["train", "--task", "ga", "--fraction", "2", *common]) == 2
    assert "fraction" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_one_epoch(dataset: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "enface",
        "train",
        "--dataset",
        str(dataset),
        "--task",
        "ga",
        "--runs-dir",
        str(tmp_path),
        "--width",
        "0.125",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--no-progress",
        "--set",
        "crop=[8,32]",
        "num_workers=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "tiny/ga/fpn-w0.125/scratch/frac-100/seed-0"
    done = json.loads((run / "done.json").read_text())
    assert done["epochs"] == 1 and done["world_size"] == 2
    # one layout for all ranks, whatever the rule would say
    info = read_checkpoint(run / "checkpoints" / "last.ckpt")["enface"]
    assert info["layout"] == "channels-last" and info["layout_choice"] == "skipped: 2 training processes"


def test_two_channel_dataset_trains_and_evaluates(tmp_path: Path) -> None:
    """OCT + OCTA (as `enface prepare --octa` writes them) become a 2-channel input."""
    from enface.evaluate import evaluate

    root = tmp_path / "octa"
    rng = np.random.default_rng(1)
    h, w, _ = SHAPE
    for p in range(5):
        vol = rng.normal(1.0, 0.1, SHAPE).astype(np.float32)
        mask = np.zeros((h, w), np.uint8)
        mask[:, 10:16] = 1
        octa = vol + 2.0 * mask[..., None]
        meta = CaseMeta(case_id=f"P{p}", patient_id=f"P{p}", spacing=(0.2, 0.02, 0.004))
        write_case(root, meta, vol, masks={"ga": mask}, volumes={"octa": octa})
    write_dataset_info(root, "octa", ("oct",), ("ga",), (0.2, 0.02, 0.004), channels=["oct", "octa"])
    split_dataset(root, seed=0)
    cfg = _config(root, tmp_path / "runs", "train", epochs=1)
    assert resolve_run(cfg).config.channels == ("oct", "octa")  # from dataset.json
    result = fit(cfg, progress=False)
    _, info = load_model(topk_checkpoints(result.run_dir)[0])
    assert info["model"]["in_channels"] == 2 and info["config"]["channels"] == ["oct", "octa"]
    res = evaluate(result.run_dir, split="all", progress=False)
    assert res.summary["n_cases"] == 5


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    """bf16 autocast trains on the CPU.

    The crop is 16 x 64 so that the deepest FPN level is not 2 x 2: PyTorch 2.13's CPU bf16
    conv3d weight gradient returns garbage for (3,1,1) kernels on 2 x 2 maps (checked with a
    bare ``F.conv3d``), which the NaN guard then stops. Real crops (32 x 256) are far larger.
    """
    dataset = _make_dataset(tmp_path / "bf16", patients=5, shape=(16, 64, 64))
    cfg = _config(dataset, tmp_path, "train", epochs=1, precision="bf16-mixed", crop=(16, 64))
    result = fit(cfg, progress=False)
    assert result.status == "finished"
    values = [v for _, v in result.best]
    assert values and all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.slow
def test_torch_compile_run_checkpoints_load_and_transfer(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile (off by default on CPU) trains, and its checkpoints rebuild and transfer.

    What enface must handle is the wrapper (``OptimizedModule``, ``_orig_mod.`` keys), the same
    for every backend; the test compiles with the ``eager`` backend, as inductor's C++ code
    generation alone took 212 s of a 2-core CI machine.
    """
    from enface.engine.transfer import transfer_weights
    from enface.models import create_model

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **{"backend": "eager", **kw}))

    result = fit(_config(dataset, tmp_path, "train", epochs=1, compile=True), progress=False)
    best = topk_checkpoints(result.run_dir)[0]
    assert any("_orig_mod." in k for k in read_checkpoint(best)["state_dict"])
    model, _ = load_model(best)
    assert model(torch.zeros(1, 1, *SHAPE)).shape == (1, 1, 8, 32)
    report = transfer_weights(create_model("fpn", width=0.125), best)
    assert report.not_loaded == []


def test_init_weights_that_do_not_load_as_checked_stop_the_run_before_anything_is_written(
    dataset: Path, tmp_path: Path
) -> None:
    """The check that the transferred weights load as resolve_run found is an error, not an
    ``assert`` (gone under ``python -O``), and it comes before the folder is written."""
    import dataclasses

    from enface.engine.fit import _build_module, _start_folder
    from enface.engine.transfer import TransferReport
    from enface.errors import CheckpointError

    run = resolve_run(_config(dataset, tmp_path, "train", epochs=1))
    module = _build_module(run.config)
    weights = module.network.state_dict()
    first = next(iter(weights))
    report = TransferReport(loaded=[k for k in weights if k != first], skipped=[], source="init.ckpt")
    run = dataclasses.replace(
        run, config=dataclasses.replace(run.config, init="init.ckpt"), init_weights=weights, transfer=report
    )
    with pytest.raises(CheckpointError, match="do not load as checked"):
        _start_folder(run, module)
    assert not (run.folder / "config.yaml").exists() and not (run.folder / "identity.json").exists()


def test_a_study_evaluates_where_it_trained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A study that trains on a GPU evaluates there too (evaluate's own default is the CPU)."""
    from enface.engine import fit as fit_module
    from enface.engine.fit import FitResult, run_device
    from enface.study import run as study_run
    from enface.study.config import load_study
    from enface.study.plan import plan_study

    assert run_device(load_config(None, "train", {"dataset": "d", "accelerator": "gpu"})) == "cuda"
    assert run_device(load_config(None, "train", {"dataset": "d", "accelerator": "cpu"})) == "cpu"
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text(
        "name: s\ndataset: data/none\ntask: ga\nmodels: [fpn]\ninits: [scratch]\nfractions: [1.0]\nseeds: [0]\n"
        "test_sets: {t: {dataset: data/none, split: test}}\nreference: {model: fpn, init: scratch}\n"
        "common: {accelerator: gpu}\n"
    )
    study = load_study(study_yaml, out=tmp_path / "out")
    run = next(r for r in plan_study(study) if r.stage == "train")
    devices = []
    monkeypatch.setattr(fit_module, "fit", lambda config, **kw: FitResult(tmp_path, "finished", [], "val_dice", 1))
    monkeypatch.setattr("enface.evaluate.evaluate", lambda *a, **kw: devices.append(kw["device"]))
    monkeypatch.setattr(study_run, "_evaluation_record", lambda *a: {"cases": []})  # nothing was evaluated
    records = []
    monkeypatch.setattr(study_run, "write_record", lambda *a: records.append(a))
    assert study_run.execute_run(study, run, progress=False) == "finished"
    assert devices == ["cuda"] and len(records) == 1


def test_validation_dice_counts_a_probability_at_the_threshold_as_lesion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: training's validation Dice took ``probability > 0.5`` while evaluate, predict and
    select take ``>= 0.5``; a pixel at exactly 0.5 was background in one and lesion in the others."""
    from enface.engine.module import EnfaceModule

    module = EnfaceModule("fpn", width=0.125, fast=False)
    monkeypatch.setattr(module, "forward", lambda v: torch.zeros(v.shape[0], 1, v.shape[2], v.shape[3]))  # p = 0.5
    logged: dict[str, float] = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    module.validation_step({"volume": torch.zeros(1, 1, 4, 8, 16), "target": torch.ones(1, 1, 4, 8)}, 0)
    assert logged["val_dice"] == 1.0


def test_training_off_a_terminal_prints_one_line_per_epoch_and_no_bar(
    dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """Standard output that is no terminal (``make demo > demo.log``) gets one line per epoch with
    the losses and the validation metric, never a bar's carriage-return redraws."""
    result = fit(_config(dataset, tmp_path, "train", epochs=2), progress=True)
    out = capfd.readouterr().out
    assert result.status == "finished" and "\r" not in out
    lines = out.splitlines()
    assert [line.split(": epoch ")[1].split()[0] for line in lines] == ["1/2", "2/2"]
    assert all(line.startswith("train fpn-w0.125 scratch 100% seed 0: ") for line in lines)
    assert all("train_loss " in line and "val_dice " in line and line.endswith(" s)") for line in lines)
