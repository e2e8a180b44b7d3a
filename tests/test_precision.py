"""bf16 inference: where it is chosen, that every model runs in it, and that its masks agree with float32's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from enface.cli import main as cli_main
from enface.config import load_config
from enface.data.folder import load_case
from enface.data.normalize import zscore_per_bscan
from enface.engine import fastlayers, precision
from enface.engine.fastpath import FastPath, network_dtype
from enface.engine.fit import fit
from enface.engine.inference import Ensemble
from enface.errors import ConfigError
from enface.metrics import probability_agreement
from enface.models import create_model, list_models
from enface.predict import PredictOptions
from tiny_data import FAST

KWARGS = {"resensnet": {"depth": 64}, "ipnv2": {"depth": 64}}

# What bf16 may change in a mask (docs/speed.md, "bf16 inference": measured on the phantom's
# test scans and on Spectralis-sized volumes before bf16 became the default where native).
MIN_DICE = 0.995
MAX_AREA_CHANGE_MM2 = 0.01
MAX_ABS_DP = 0.05


# --------------------------------------------------------------------------- where bf16 is chosen


def test_auto_is_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.inference_dtype("auto", "cpu") == torch.float32
    assert precision.inference_dtype("bf16", "cpu") == torch.bfloat16  # forced: emulated, but asked for
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.inference_dtype("auto", "cpu") == torch.bfloat16
    assert precision.inference_dtype("32", "cpu") == torch.float32
    assert precision.inference_dtype("auto", "cpu", fast=False) == torch.float32  # the plain path: float32
    with pytest.raises(ConfigError, match="plain path"):
        precision.inference_dtype("bf16", "cpu", fast=False)
    with pytest.raises(ConfigError, match="auto, bf16, 32"):
        precision.inference_dtype("16-mixed", "cpu")


def test_native_bf16_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    precision._cpu_native_bf16.cache_clear()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    assert not precision.native_bf16("cpu")
    precision._cpu_native_bf16.cache_clear()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert precision.native_bf16("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    precision._cpu_native_bf16.cache_clear()
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    assert not precision.native_bf16("cpu")
    precision._cpu_native_bf16.cache_clear()


def test_predict_options_refuse_bf16_on_the_plain_path() -> None:
    with pytest.raises(ValueError, match="plain path"):
        PredictOptions(fast=False, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        PredictOptions(precision="fp16")
    assert PredictOptions(fast=False).precision == "auto"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("onednn", [True, False])
def test_every_model_runs_in_bf16(name: str, onednn: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """On every CPU: with oneDNN's bf16 kernels, and with torch's own where oneDNN has none (AVX2)."""
    if not onednn:
        monkeypatch.setattr(fastlayers, "_onednn_bf16", lambda: False)
    torch.manual_seed(0)
    model = create_model(name, width=0.25, **KWARGS.get(name, {})).eval()
    x = torch.randn(1, 1, 6, 200, 64)
    with torch.inference_mode():
        f32 = FastPath(True, precision="32")
        ref = torch.sigmoid(f32.logits(f32.inference_network(model), x))
        bf16 = FastPath(True, slab_mb=0.05, precision="bf16")
        net = bf16.inference_network(model)
        out = torch.sigmoid(bf16.logits(net, x))
    assert network_dtype(net) == bf16.dtype == torch.bfloat16 and network_dtype(model) == torch.float32
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.isfinite().all()
    # random weights: an untrained network's probabilities, so only a loose bound here
    assert 0 < (out - ref).abs().max().item() < 0.1


# --------------------------------------------------------------------------- the agreement


@pytest.fixture(scope="module")
def trained(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A segmentation run trained to confident masks on the tiny phantom, and its dataset."""
    root = tmp_path_factory.mktemp("precision")
    data = root / "data"
    shutil.copytree(phantom_dataset, data)
    overrides = {**FAST, "width": 0.25, "batch_size": 4, "samples_per_epoch": 32, "epochs": 6}
    cfg = load_config(None, "train", {**overrides, "dataset": str(data), "runs_dir": str(root / "runs")})
    return fit(cfg, progress=False).run_dir, data


@pytest.mark.slow
def test_bf16_masks_agree_with_float32(trained: tuple[Path, Path]) -> None:
    """The criteria bf16 inference met before it became the default where native: Dice >= 0.995
    between the bf16 and float32 masks (pooled over the tiny cases), area change per case at
    most 0.01 mm² or one pixel."""
    run, data = trained
    ensembles = {p: Ensemble.from_run(run, 2, precision=p) for p in ("32", "bf16")}
    assert (ensembles["32"].precision, ensembles["bf16"].precision) == ("32", "bf16")
    cases = sorted(p for p in (data / "cases").iterdir() if (p / "oct.npy").is_file())
    rows, overlap, total, pixel_mm2 = [], 0, 0, 0.0
    for case_dir in cases:
        case = load_case(case_dir)
        pixel_mm2 = max(pixel_mm2, float(np.prod(case.spacing[:2])))
        x = torch.from_numpy(zscore_per_bscan(np.load(case_dir / "oct.npy").astype(np.float32)))[None, None]
        probs = {p: e.run(x).mean[0] for p, e in ensembles.items()}
        rows.append(probability_agreement(probs["bf16"], probs["32"], case.spacing))
        masks = {p: v >= 0.5 for p, v in probs.items()}
        overlap += int((masks["bf16"] & masks["32"]).sum())
        total += int(masks["bf16"].sum() + masks["32"].sum())
    assert total > 0, "the trained run predicts no lesion at all: nothing to compare"
    # the tiny phantom's lesions can be 3-80 pixels, where one flipped pixel costs a case's Dice
    # more than 0.005 (a run trained in float32 on a CPU without bf16 is less confident there):
    # the Dice bound holds for the masks of all cases pooled, the area bound for every case
    assert 2 * overlap / total >= MIN_DICE, rows
    # 0.01 mm² is a pixel of a Spectralis grid, and a tiny-phantom pixel is 0.14 mm²: at most
    # the larger of the two per case
    assert max(abs(r["area_change_mm2"]) for r in rows) <= max(MAX_AREA_CHANGE_MM2, pixel_mm2 + 1e-9), rows
    assert 0 < max(r["max_abs_dp"] for r in rows) <= MAX_ABS_DP, rows  # bf16 really ran, and stayed close


def test_probability_agreement_counts_what_differs() -> None:
    ref = np.array([[0.9, 0.2], [0.6, 0.1]], dtype=np.float32)
    probs = np.array([[0.9, 0.2], [0.4, 0.1]], dtype=np.float32)
    out = probability_agreement(probs, ref, (0.5, 0.1))
    assert out["flipped"] == 1 and out["dice"] == pytest.approx(2 / 3)
    assert out["area_change_mm2"] == pytest.approx(-0.05) and out["max_abs_dp"] == pytest.approx(0.2)
    assert probability_agreement(ref * 0, ref * 0, (1, 1))["dice"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        probability_agreement(ref, ref[:1], (1, 1))


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_predict_and_evaluate_take_precision(trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, data = trained
    case = next(p for p in sorted((data / "cases").iterdir()) if (p / "oct.npy").is_file())
    for prec in ("32", "bf16"):
        out = tmp_path / f"pred-{prec}"
        assert cli_main(["-q", "predict", str(run), str(case), "--out", str(out), "--precision", prec]) == 0
        assert json.loads((out / case.name / "prediction.json").read_text())["precision"] == prec
    assert (
        cli_main(
            ["-q", "predict", str(run), str(case), "--out", str(tmp_path / "p"), "--no-fast", "--precision", "bf16"]
        )
        == 2
    )
    assert "plain path" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert (
        cli_main(["-q", "evaluate", str(run), "--split", "test", "--out", str(tmp_path / "ev"), "--precision", "32"])
        == 0
    )
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["precision"] == "32"
