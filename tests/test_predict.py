"""``enface predict``: case folders, dataset folders and exports in; masks, maps, areas out."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enface.cli import main
from enface.data.folder import load_case
from enface.data.normalize import zscore_per_bscan
from enface.engine.checkpoint import load_model, topk_checkpoints
from enface.errors import CheckpointError
from enface.io.images import read_mask
from enface.predict import PredictOptions, Predictor, predict
from enface.viz import OVERLAY_MIN_SIZE
from formats_helpers import layered_volume, steep_bm_eye, write_oriented_vol
from model_helpers import CASE, ranked_run, save_checkpoint

EXPORT_SPACING = [0.2, 0.05, 0.01]


@pytest.fixture(scope="module")
def run(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with two ranked checkpoints (different weights)."""
    return ranked_run(tmp_path_factory.mktemp("run") / "run", phantom_dataset)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two un-flattened NumPy exports (stored D, W, H) with sidecars; one has an SLO."""
    src = tmp_path_factory.mktemp("export")
    for i, name in enumerate(("scanA", "scanB")):
        vol, _, _ = layered_volume((8, 32, 96), seed=i, ga=True)
        np.save(src / f"{name}.npy", vol.transpose(2, 1, 0))
        (src / f"{name}.json").write_text(json.dumps({"axes": "DWH", "spacing": EXPORT_SPACING}))
    slo = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(slo).save(src / "scanA_slo.png")
    return src


def _check_scan_outputs(folder: Path, spacing: tuple[float, float], threshold: float = 0.5) -> dict:
    for name in (
        "mask.png",
        "probability.png",
        "probability.npy",
        "uncertainty.npy",
        "uncertainty.png",
        "overlay.png",
        "prediction.json",
    ):
        assert (folder / name).is_file(), folder / name
    prob = np.load(folder / "probability.npy")
    std = np.load(folder / "uncertainty.npy")
    assert prob.dtype == np.float32 and prob.ndim == 2 and std.shape == prob.shape
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and std.min() >= 0.0
    raw = np.asarray(Image.open(folder / "mask.png"))
    assert set(np.unique(raw).tolist()) <= {0, 255}
    mask = read_mask(folder / "mask.png")
    np.testing.assert_array_equal(mask, prob >= threshold)
    p16 = np.asarray(Image.open(folder / "probability.png"))
    assert p16.shape == prob.shape and p16.max() <= 65535
    np.testing.assert_allclose(p16 / 65535.0, prob, atol=1e-4)
    info = json.loads((folder / "prediction.json").read_text())
    assert info["n_pixels"] == int(mask.sum())
    assert info["area_mm2"] == pytest.approx(mask.sum() * spacing[0] * spacing[1])
    overlay = Image.open(folder / "overlay.png")
    assert overlay.mode == "RGB"
    return {"prob": prob, "std": std, "mask": mask, "info": info, "overlay": overlay}


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {r["scan_id"]: r for r in csv.DictReader(f)}


def test_case_folder_and_numpy_export(run: Path, phantom_dataset: Path, export_dir: Path, tmp_path: Path) -> None:
    case_dir = phantom_dataset / "cases" / CASE
    # float32, as the plain forward the member areas are checked against below (these hand-made
    # members' logits are centred on 0, so bf16 rounding would move pixels across the threshold)
    report = predict(run, [case_dir, export_dir], tmp_path / "out", options=PredictOptions(precision="32"))
    assert report.ok and [r.scan_id for r in report.results] == [CASE, "scanA", "scanB"]

    case = load_case(case_dir)
    c = _check_scan_outputs(tmp_path / "out" / CASE, case.spacing[:2])
    assert 0 < c["mask"].sum() < c["mask"].size  # centred logits: a real partial mask
    assert c["std"].max() > 1e-4  # two different checkpoints disagree somewhere
    assert c["info"]["shape"] == list(case.oct_shape())
    # what enface progression needs: the visit and each member's own area at the threshold
    info = c["info"]
    assert (info["patient_id"], info["eye"], info["visit"]) == (case.patient_id, case.meta.eye, case.meta.visit)
    px = case.spacing[0] * case.spacing[1]
    members = [load_model(p)[0] for p in topk_checkpoints(run)]
    x = torch.from_numpy(zscore_per_bscan(np.asarray(case.load_oct(), np.float32)))[None, None]
    with torch.no_grad():
        expected = sorted(float((torch.sigmoid(m(x)) >= 0.5).sum()) * px for m in members)
    assert sorted(info["member_areas_mm2"]) == pytest.approx(expected)
    sh, sw = case.spacing[:2]
    # the case has an SLO: projection and SLO panels side by side, rows repeated for square pixels
    h_sq = 8 * round(sh / sw)  # B-scan rows repeated for square pixels, then enlarged
    f = -(-OVERLAY_MIN_SIZE // max(h_sq, 32))
    assert c["overlay"].size == (2 * 32 * f + 4, h_sq * f)

    a = _check_scan_outputs(tmp_path / "out" / "scanA", EXPORT_SPACING[:2])
    b = _check_scan_outputs(tmp_path / "out" / "scanB", EXPORT_SPACING[:2])
    # the export was flattened and resampled to the training depth of the phantom dataset (64)
    assert a["info"]["shape"] == [8, 32, 64] and a["info"]["spacing"][:2] == EXPORT_SPACING[:2]
    assert a["overlay"].size[0] > b["overlay"].size[0]  # scanA has an SLO panel, scanB not

    rows = _summary(tmp_path / "out")
    assert [r["status"] for r in rows.values()] == ["ok"] * 3
    for sid, res in zip(rows, report.results):
        assert float(rows[sid]["area_mm2"]) == pytest.approx(res.area_mm2, rel=1e-5)
        assert int(rows[sid]["n_pixels"]) == res.n_pixels
    inside = c["std"][c["mask"].astype(bool)].mean()
    assert float(rows[CASE]["mean_uncertainty_in_mask"]) == pytest.approx(inside, rel=1e-4)


def test_dataset_folder_with_one_checkpoint(run: Path, phantom_dataset: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    shutil.copytree(
        phantom_dataset,
        small,
        ignore=lambda d, names: [
            n
            for n in names
            if n.startswith("P0003") or n.startswith("P0004") or n.startswith("P0005") or n.startswith("P0006")
        ],
    )
    ids = sorted(p.name for p in (small / "cases").iterdir())
    ckpt = next((run / "checkpoints").glob("epoch=2*.ckpt"))
    report = predict(ckpt, [small], tmp_path / "out")
    assert report.ok and [r.scan_id for r in report.results] == ids and len(ids) >= 3
    for sid in ids:
        out = _check_scan_outputs(tmp_path / "out" / sid, load_case(small / "cases" / sid).spacing[:2])
        assert out["std"].max() == 0.0  # a single checkpoint has no spread
    assert report.results[0].area_mm2 == pytest.approx(report.results[0].n_pixels * 0.75 * 0.1875)


def test_bad_inputs_are_reported_and_the_rest_still_run(
    run: Path, phantom_dataset: Path, export_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(bad / "flat.npy", np.zeros((8, 32), np.float32))  # 2D: not a volume
    (bad / "flat.json").write_text(json.dumps({"spacing": EXPORT_SPACING}))
    picture = tmp_path / "picture.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(picture)
    inputs = [bad, tmp_path / "missing", picture, phantom_dataset / "cases" / CASE]
    report = predict(run, inputs, tmp_path / "out", options=PredictOptions(fmt=None))
    assert not report.ok
    status = {r.scan_id: (r.status, r.reason) for r in report.results}
    assert status[CASE][0] == "ok" and (tmp_path / "out" / CASE / "mask.png").is_file()
    assert status["corrupt"][0] == "failed" and "unreadable" in status["corrupt"][1]
    assert status["flat"][0] == "failed" and "3D" in status["flat"][1]
    assert status["missing"] == ("failed", "input not found")
    assert "not an OCT volume" in status["picture"][1]
    rows = _summary(tmp_path / "out")
    assert {k: v["status"] for k, v in rows.items()} == {k: s for k, (s, _) in status.items()}
    assert rows["missing"]["reason"] == "input not found" and rows["missing"]["area_mm2"] == ""
    assert not (tmp_path / "out" / "corrupt").exists()


def test_fixed_depth_model(phantom_dataset: Path, export_dir: Path, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "resens.ckpt", phantom_dataset, seed=0, name="resensnet", depth=32)
    predictor = Predictor.load(ckpt)
    assert predictor.fixed_depth == 32 and predictor.flatten.depth == 32  # the network's depth wins
    report = predict(predictor, [phantom_dataset / "cases" / CASE, export_dir / "scanB.npy"], tmp_path / "out")
    status = {r.scan_id: r for r in report.results}
    assert status["scanB"].status == "ok"  # the export is prepared at depth 32
    assert status[CASE].status == "failed" and "depth mismatch" in status[CASE].reason
    with pytest.raises(ValueError, match="only accepts depth 32"):
        Predictor.load(ckpt, depth=64)


def test_training_preparation_is_read(run: Path, tmp_path: Path) -> None:
    ds = tmp_path / "prepared"
    ds.mkdir()
    (ds / "dataset.json").write_text(
        json.dumps(
            {
                "name": "x",
                "modalities": ["oct"],
                "tasks": ["ga"],
                "preparation": {"depth": 96, "above_mm": 0.5, "below_mm": 0.2},
            }
        )
    )
    ckpt = tmp_path / "c.ckpt"
    obj = torch.load(next((run / "checkpoints").glob("*.ckpt")), weights_only=False)
    obj["enface"]["config"]["dataset"] = str(ds)
    torch.save(obj, ckpt)
    f = Predictor.load(ckpt).flatten
    assert (f.depth, f.above_mm, f.below_mm) == (96, 0.5, 0.2)
    f = Predictor.load(ckpt, depth=80, window_mm=(0.4, 0.1)).flatten
    assert (f.depth, f.above_mm, f.below_mm) == (80, 0.4, 0.1)


def test_reconstruction_checkpoint_is_refused(phantom_dataset: Path, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "rec.ckpt", phantom_dataset, seed=0, task="reconstruct")
    with pytest.raises(CheckpointError, match="reconstruct checkpoint .*segmentation model"):
        Predictor.load(ckpt)


def test_cli_exit_codes(run: Path, phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    case_dir = str(phantom_dataset / "cases" / CASE)
    out = tmp_path / "out"
    assert main(["predict", str(run), case_dir, "--out", str(out), "--top-k", "1"]) == 0
    text = capsys.readouterr().out
    assert "predicted 1 of 1" in text and str(out) in text
    assert main(["predict", str(run), case_dir, str(tmp_path / "nope"), "--out", str(out), "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert "nope" in captured.err and "input not found" in captured.err
    rec = save_checkpoint(tmp_path / "rec.ckpt", phantom_dataset, seed=0, task="reconstruct")
    assert main(["predict", str(rec), case_dir, "--out", str(out)]) == 2
    assert "segmentation model" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-run"), case_dir, "--out", str(out)]) == 2


def test_vol_exports_stored_bottom_up_or_top_down_predict_the_same(run: Path, tmp_path: Path) -> None:
    # the same eye stored three ways, each with its <stem>_bm.npy in the file's order
    eye = steep_bm_eye(seed=7)
    results = {}
    for bscans, ascans in (("bottom-up", "left-right"), ("top-down", "left-right"), ("bottom-up", "right-left")):
        src = tmp_path / f"{bscans}-{ascans}"
        src.mkdir()
        write_oriented_vol(src, "eye", eye, bscans, ascans)
        report = predict(run, [src], tmp_path / "out" / src.name, options=PredictOptions(bm="export"))
        assert report.ok, report.results[0].reason
        results[(bscans, ascans)] = _check_scan_outputs(tmp_path / "out" / src.name / "eye", (0.34, 0.08))
    ref = results[("top-down", "left-right")]
    for (bscans, ascans), r in results.items():
        np.testing.assert_allclose(r["prob"], ref["prob"], atol=1e-5)  # the SLO-oriented grid, whatever the storage
        assert r["info"]["grid"]["flipped_bscans"] == (bscans == "bottom-up")
        assert r["info"]["grid"]["flipped_ascans"] == (ascans == "right-left")
    # a BM on the wrong B-scans predicts something else: the comparison above can fail
    src = tmp_path / "wrong-bm"
    src.mkdir()
    write_oriented_vol(src, "eye", eye, "bottom-up", "left-right")
    np.save(src / "eye_bm.npy", eye["bm"])  # grid order, not the file's
    predict(run, [src], tmp_path / "out" / "wrong", options=PredictOptions(bm="export"))
    wrong = np.load(tmp_path / "out" / "wrong" / "eye" / "probability.npy")
    assert np.abs(wrong - ref["prob"]).max() > 1e-3
