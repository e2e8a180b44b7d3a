"""How ``enface predict`` goes through its scans: overlap, worker processes, stage timings."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.data.predictions import TIMINGS_FILE
from enface.predict import PredictOptions, predict
from enface.predict.scan import STAGES
from formats_helpers import layered_volume
from model_helpers import ranked_run

EXPORT_SPACING = [0.2, 0.05, 0.01]


@pytest.fixture(scope="module")
def run(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with two ranked checkpoints."""
    return ranked_run(tmp_path_factory.mktemp("run") / "run", phantom_dataset)


@pytest.fixture(scope="module")
def inputs(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three cases, two NumPy exports (flattened along an estimated BM) and a missing input."""
    src = tmp_path_factory.mktemp("exports")
    for i in range(2):
        vol, _, _ = layered_volume((8, 32, 96), seed=i, ga=True)
        np.save(src / f"scan{i}.npy", vol.transpose(2, 1, 0))
        (src / f"scan{i}.json").write_text(json.dumps({"axes": "DWH", "spacing": EXPORT_SPACING}))
    cases = sorted(p for p in (phantom_dataset / "cases").iterdir() if (p / "oct.npy").is_file())[:3]
    return [*cases, src, src / "missing.npy"]


def _outputs(out: Path) -> dict[str, tuple[np.ndarray, str]]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as f:
        rows = {r["scan_id"]: r for r in csv.DictReader(f)}
    return {
        sid: (np.load(out / sid / "probability.npy") if r["status"] == "ok" else np.zeros(0), r["status"])
        for sid, r in rows.items()
    }


@pytest.mark.slow
def test_overlap_and_workers_write_what_one_scan_after_the_other_writes(
    run: Path, inputs: list[Path], tmp_path: Path
) -> None:
    outputs = {}
    for name, workers, overlap in (("sequential", 1, False), ("overlap", 1, True), ("workers", 2, True)):
        options = PredictOptions(precision="32", workers=workers, overlap=overlap)
        report = predict(run, inputs, tmp_path / name, top_k=2, options=options, progress=False)
        ids = [r.scan_id for r in report.results]
        assert len(ids) == 6 and ids[3:5] == ["scan0", "scan1"]  # input order, whatever finished first
        assert [r.status for r in report.results] == ["ok"] * 5 + ["failed"]
        assert "input not found" in report.results[5].reason  # a failing input travels to the workers too
        outputs[name] = _outputs(tmp_path / name)
    ref = outputs["sequential"]
    for name in ("overlap", "workers"):
        assert outputs[name].keys() == ref.keys()
        for sid, (prob, status) in outputs[name].items():
            assert status == ref[sid][1]
            np.testing.assert_allclose(prob, ref[sid][0], atol=1e-5, err_msg=f"{name}: {sid}")


def test_timings_name_each_stage_of_each_scan(run: Path, inputs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["-q", "predict", str(run), str(inputs[0]), str(inputs[3]), "--out", str(out), "--timings", "--top-k", "1"]
    assert main(args) == 0
    assert "stages (" in capsys.readouterr().out
    with (out / TIMINGS_FILE).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = {r["scan_id"]: r for r in reader}
    assert reader.fieldnames == ["scan_id", "status", *STAGES, "total"]
    case, export = rows[inputs[0].name], rows["scan0"]
    assert case["bm"] == case["flatten"] == ""  # a case folder is read as stored
    for stage in STAGES:
        assert float(export[stage]) >= 0.0  # an export goes through every stage
    for row in (case, export):
        timed = [float(row[s]) for s in STAGES if row[s]]
        assert float(row["read"]) > 0 and float(row["inference"]) > 0 and float(row["write"]) > 0
        assert float(row["total"]) == pytest.approx(sum(timed), abs=1e-3)
    assert not (tmp_path / "plain" / TIMINGS_FILE).exists()
    predict(run, [inputs[0]], tmp_path / "plain", top_k=1, progress=False)
    assert not (tmp_path / "plain" / TIMINGS_FILE).exists()  # only when asked for


def test_workers_are_checked() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        PredictOptions(workers=0)
    assert main(["predict", "m", "x", "--out", "o", "--workers", "0"]) == 2


def test_overlap_loads_the_next_scan_in_the_background() -> None:
    from enface.predict.inputs import PredictInput
    from enface.predict.pipeline import _loads

    threads: list[str] = []

    def load() -> str:
        threads.append(threading.current_thread().name)
        return "scan"

    items = [PredictInput(f"s{i}", "src", load) for i in range(3)]  # type: ignore[arg-type]
    assert [get() for get in _loads(items, overlap=True)] == ["scan"] * 3
    assert len(threads) == 3 and all(t.startswith("enface-load") for t in threads)
    threads.clear()
    assert [get() for get in _loads(items, overlap=False)] == ["scan"] * 3
    assert threads == [threading.current_thread().name] * 3
