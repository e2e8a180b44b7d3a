"""``enface review`` without a browser: the token, paths, uploads, versioned saves, the log,
predictions and queues, and the saved masks read back by check, train and evaluate."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from enface.data.check import check_dataset
from enface.data.dataset import EnfaceDataset
from enface.data.folder import load_case
from enface.data.splits import select_cases
from enface.errors import DatasetError
from enface.evaluate import evaluate, read_cases_csv
from enface.io.images import read_mask
from enface.models import create_model, model_spec
from enface.predict import predict
from enface.review import CaseService
from enface.review.app import create_app
from enface.review.render import bm_depth_index, bscan_image, sub_bm_slab
from enface.review.store import Conflict

TOKEN = "t0ken-for-tests"
AUTH = {"X-Enface-Token": TOKEN}
UNLABELED = "P0006_OS_V1"  # train split, no mask
LABELED = "P0002_OD_V2"  # test split, reference and grader2 masks


@pytest.fixture
def data(phantom_dataset: Path, tmp_path: Path) -> Path:
    """A writable copy of the shared phantom."""
    return Path(shutil.copytree(phantom_dataset, tmp_path / "data"))


def _client(service: CaseService) -> TestClient:
    return TestClient(create_app(service, TOKEN, ("testserver",)))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _save(client: TestClient, case_id: str, mask: np.ndarray, base: str, **headers: str):
    return client.put(
        f"/api/cases/{case_id}/mask",
        content=mask.astype(np.uint8).tobytes(),
        headers={**AUTH, "Content-Type": "application/octet-stream", "X-Base-Version": base, **headers},
    )


def _checkpoint(path: Path, dataset: Path, seed: int) -> None:
    """A tiny FPN checkpoint with random weights (seeded)."""
    torch.manual_seed(seed)
    model = create_model("fpn", width=0.125).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    enface = {"model": model_spec(model), "task": "segment", "metric": None, "epoch": 0, "format_version": 1}
    enface["config"] = {"dataset": str(dataset), "target": "ga", "stage": "train"}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "enface": enface}, path)


@pytest.fixture(scope="module")
def run_and_predictions(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A hand-made run folder (two checkpoints) and `enface predict`'s output on the phantom."""
    root = tmp_path_factory.mktemp("review-run")
    run = root / "run"
    for seed, dice in ((1, "0.40"), (2, "0.60")):
        _checkpoint(run / "checkpoints" / f"epoch={seed}-val_dice={dice}.ckpt", phantom_dataset, seed)
    (run / "config.yaml").write_text(f"stage: train\ntarget: ga\ndataset: {phantom_dataset}\n")
    (run / "done.json").write_text("{}")
    predict(run, [phantom_dataset / "cases" / c for c in (LABELED, UNLABELED)], root / "pred", 2, progress=False)
    return run, root / "pred"


# --------------------------------------------------------------------------- the guard


def test_every_request_needs_the_token_and_writes_need_the_header(data: Path) -> None:
    client = _client(CaseService(data, grader="g"))
    assert client.get("/api/cases").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/static/review.js").status_code == 401
    assert client.get("/api/cases", params={"token": "wrong"}).status_code == 403
    assert client.get("/api/cases", headers={"X-Enface-Token": "wrong"}).status_code == 403
    page = client.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and f"/static/review.js?token={TOKEN}" in page.text
    assert f'<meta name="enface-token" content="{TOKEN}">' in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert client.get("/static/review.js", params={"token": TOKEN}).status_code == 200
    mask = np.zeros((8, 32), np.uint8)
    query_only = client.put(
        f"/api/cases/{UNLABELED}/mask",
        params={"token": TOKEN},
        content=mask.tobytes(),
        headers={"Content-Type": "application/octet-stream", "X-Base-Version": "none"},
    )
    assert query_only.status_code == 401  # a write needs the header, not only the URL's token
    assert not (data / "cases" / UNLABELED / "mask_ga.g.png").exists()
    foreign = TestClient(create_app(CaseService(data), TOKEN, ("127.0.0.1:1",)))
    assert foreign.get("/api/cases", headers=AUTH).status_code == 403  # Host is not the server's own


@pytest.mark.parametrize(
    "path",
    [
        "/api/cases/..",
        "/api/cases/%2e%2e",
        "/api/cases/..%2Fdataset.json",
        "/api/cases/%2e%2e%2f%2e%2e%2fetc%2fpasswd/bscan/0",
        "/api/cases/..%252F..%252Fdataset.json",
        "/api/cases/P0001_OD_V1%2F..%2F..%2Fsplits.json",
        "/api/cases/%2Fetc%2Fpasswd",
        "/api/cases/..%5C..%5Cdataset.json",
        "/api/cases/P0001_OD_V1/enface/..%2F..%2Fmeta",
        "/api/cases/P0001_OD_V1/mask/..%2Fmask_ga",
        "/static/..%2F__init__.py",
        "/static/%2e%2e/app.py",
    ],
)
def test_traversal_gets_no_file(data: Path, path: str) -> None:
    client = _client(CaseService(data, grader="g"))
    r = client.get(path, headers=AUTH)
    assert r.status_code in (403, 404)
    assert b"patient" not in r.content and b"root:" not in r.content and b"import" not in r.content


def test_symlinks_out_of_the_dataset_are_refused(data: Path, tmp_path: Path) -> None:
    outside = Path(shutil.copytree(data / "cases" / LABELED, tmp_path / "outside" / "evil"))
    (data / "cases" / "evil").symlink_to(outside, target_is_directory=True)
    (data / "cases" / UNLABELED / "slo.png").unlink()
    (data / "cases" / UNLABELED / "slo.png").symlink_to(outside / "slo.png")
    service = CaseService(data, grader="g")
    assert "evil" not in service.ids
    client = _client(service)
    assert client.get("/api/cases/evil", headers=AUTH).status_code == 404
    assert client.get("/api/cases/evil/bscan/0", headers=AUTH).status_code == 404
    assert client.get(f"/api/cases/{UNLABELED}/enface/slo", headers=AUTH).status_code in (403, 404)


# --------------------------------------------------------------------------- saving


def test_save_writes_only_the_graders_mask_and_the_log(data: Path) -> None:
    before = _tree(data)
    client = _client(CaseService(data, grader="g"))
    mask = np.zeros((8, 32), np.uint8)
    mask[2:5, 10:20] = 1
    r = _save(client, LABELED, mask, "none", **{"X-Started-From": "empty", "X-Seconds": "12.5"})
    assert r.status_code == 200, r.text
    after = _tree(data)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {f"cases/{LABELED}/mask_ga.g.png", "annotations.jsonl"}
    png = Image.open(data / "cases" / LABELED / "mask_ga.g.png")
    assert png.mode == "L" and png.size == (32, 8)
    assert set(np.unique(np.asarray(png)).tolist()) == {0, 255}
    assert np.array_equal(read_mask(data / "cases" / LABELED / "mask_ga.g.png"), mask)
    entry = json.loads((data / "annotations.jsonl").read_text().splitlines()[-1])
    sh, sw, _ = load_case(data / "cases" / LABELED).spacing
    assert entry["event"] == "save" and entry["case_id"] == LABELED and entry["grader"] == "g"
    assert entry["pixels_changed"] == 30 and entry["started_from"] == "empty" and entry["seconds"] == 12.5
    assert entry["area_mm2"] == pytest.approx(30 * sh * sw) and entry["version"] == r.json()["version"]
    assert entry["time"].endswith("+00:00")
    info = client.get(f"/api/cases/{LABELED}", headers=AUTH).json()
    assert info["masks"]["grader"] == r.json()["version"]
    served = client.get(f"/api/cases/{LABELED}/mask/grader", headers=AUTH).content
    assert np.array_equal(np.frombuffer(served, np.uint8).reshape(8, 32), mask)


def test_a_stale_save_is_a_conflict_and_the_file_stays_whole(data: Path) -> None:
    client = _client(CaseService(data, grader="g"))
    first, second = np.zeros((8, 32), np.uint8), np.ones((8, 32), np.uint8)
    first[0, :5] = 1
    v1 = _save(client, UNLABELED, first, "none").json()["version"]
    stale = _save(client, UNLABELED, second, "none")  # the other tab still believes there is no file
    assert stale.status_code == 409 and stale.json()["current"] == v1
    assert np.array_equal(read_mask(data / "cases" / UNLABELED / "mask_ga.g.png"), first)
    assert _save(client, UNLABELED, second, v1).status_code == 200  # saving over what it has now seen
    log = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    assert [e["pixels_changed"] for e in log] == [5, 8 * 32 - 5]


def test_two_clients_saving_at_once_never_tear_the_file(data: Path) -> None:
    service = CaseService(data, grader="g")
    case = service.case(UNLABELED)
    masks = [np.full((8, 32), i % 2, np.uint8) for i in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(masks))

    def save(mask: np.ndarray) -> None:
        barrier.wait()
        try:
            service.store.save(case.path, mask, "none", case.spacing[:2])
            outcomes.append("saved")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=save, args=(m,)) for m in masks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["saved"]
    on_disk = read_mask(case.path / "mask_ga.g.png")
    assert on_disk.min() == on_disk.max()  # one whole mask, not a mix
    assert len((data / "annotations.jsonl").read_text().splitlines()) == 1
    assert [p.name for p in case.path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (bytes(8 * 32), "image/png", 415),
        (bytes(8 * 32 - 1), "application/octet-stream", 400),
        (bytes([2]) * (8 * 32), "application/octet-stream", 400),
        (bytes(8 * 32 * 50), "application/octet-stream", 413),
    ],
)
def test_bad_uploads_are_refused_with_a_message(data: Path, body: bytes, content_type: str, status: int) -> None:
    client = _client(CaseService(data, grader="g"))
    r = client.put(
        f"/api/cases/{UNLABELED}/mask",
        content=body,
        headers={**AUTH, "Content-Type": content_type, "X-Base-Version": "none"},
    )
    assert r.status_code == status and r.json()["error"]
    assert not (data / "cases" / UNLABELED / "mask_ga.g.png").exists()
    assert not (data / "annotations.jsonl").exists()


def test_without_grader_nothing_can_be_written(data: Path) -> None:
    client = _client(CaseService(data))
    r = _save(client, UNLABELED, np.zeros((8, 32), np.uint8), "none")
    assert r.status_code == 403 and "--grader" in r.json()["error"]
    assert list(data.glob("cases/*/mask_ga.None.png")) == [] and not (data / "annotations.jsonl").exists()
    with pytest.raises(ValueError, match="grader name"):
        CaseService(data, grader="../x")


# --------------------------------------------------------------------------- read back by check, train, evaluate


def test_saved_and_promoted_masks_are_read_by_check_train_and_evaluate(data: Path, run_and_predictions) -> None:
    run, _ = run_and_predictions
    client = _client(CaseService(data, grader="g"))
    drawn = np.zeros((8, 32), np.uint8)
    drawn[1:7, 4:12] = 1
    for case_id in (LABELED, UNLABELED):
        assert _save(client, case_id, drawn, "none").status_code == 200
    report = check_dataset(data)
    assert report.ok and report.stats["grader_masks"]["ga.g"] == 2
    assert not [w for w in report.warnings if "mask_ga.g" in w[0]]
    assert load_case(data / "cases" / LABELED).graders("ga") == [None, "g", "grader2"]

    rows = read_cases_csv(evaluate(run, split="test", dataset=data, top_k=1, progress=False).out_dir / "cases.csv")
    mine = [r for r in rows if r["grader"] == "g"]
    sh, sw, _ = load_case(data / "cases" / LABELED).spacing
    assert [r["case_id"] for r in mine] == [LABELED]
    assert mine[0]["area_true_mm2"] == pytest.approx(drawn.sum() * sh * sw, rel=1e-5)

    assert UNLABELED not in select_cases(data, "train", requires=("oct", "mask:ga"))  # a grader's mask is not a label
    version = client.get(f"/api/cases/{UNLABELED}", headers=AUTH).json()["masks"]["grader"]
    r = client.post(f"/api/cases/{UNLABELED}/promote", json={"version": version}, headers=AUTH)
    assert r.status_code == 200 and r.json()["promoted"] == "mask_ga.png"
    ids = select_cases(data, "train", requires=("oct", "mask:ga"))
    assert UNLABELED in ids
    sample = EnfaceDataset(data, [UNLABELED], "mask:ga", augment=None)[0]
    assert np.array_equal(np.asarray(sample["target"])[0], drawn)
    again = client.post(f"/api/cases/{LABELED}/promote", json={"version": "x"}, headers=AUTH)
    assert again.status_code == 403 and "never replaced" in again.json()["error"]
    assert check_dataset(data).ok


# --------------------------------------------------------------------------- predictions and queues


def test_predictions_are_shown_reviewed_and_exported(data: Path, run_and_predictions) -> None:
    _, pred = run_and_predictions
    client = _client(CaseService(data, grader="g", predictions=pred))
    info = client.get(f"/api/cases/{LABELED}", headers=AUTH).json()
    stored = json.loads((pred / LABELED / "prediction.json").read_text())
    assert info["prediction"]["area_mm2"] == pytest.approx(stored["area_mm2"])
    assert info["prediction"]["area_sd_mm2"] == pytest.approx(float(np.std(stored["member_areas_mm2"])))
    assert {"probability", "uncertainty", "sub_bm", "mean", "slo", "faf"} <= set(info["layers"])
    png = client.get(f"/api/cases/{LABELED}/enface/probability", headers=AUTH).content
    shown = np.asarray(Image.open(io.BytesIO(png)))
    assert np.abs(shown.astype(float) - np.load(pred / LABELED / "probability.npy") * 255).max() <= 0.51
    served = client.get(f"/api/cases/{LABELED}/mask/prediction", headers=AUTH).content
    assert np.array_equal(np.frombuffer(served, np.uint8).reshape(8, 32), read_mask(pred / LABELED / "mask.png"))
    assert client.get("/api/cases/P0001_OD_V1/mask/prediction", headers=AUTH).status_code == 404

    for decision in ("reject", "accept"):
        assert client.post(f"/api/cases/{LABELED}/review", json={"decision": decision}, headers=AUTH).status_code == 200
    assert client.post(f"/api/cases/{LABELED}/review", json={"decision": "maybe"}, headers=AUTH).status_code == 400
    assert client.post("/api/cases/P0001_OD_V1/review", json={"decision": "accept"}, headers=AUTH).status_code == 404
    listed = {c["case_id"]: c for c in client.get("/api/cases", headers=AUTH).json()}
    assert listed[LABELED]["decision"] == "accept" and listed[LABELED]["reviewed"]
    rows = list(csv.DictReader(io.StringIO(client.get("/api/reviews.csv", headers=AUTH).text)))
    assert [(r["case_id"], r["grader"], r["decision"]) for r in rows] == [(LABELED, "g", "accept")]
    assert float(rows[0]["predicted_area_mm2"]) == pytest.approx(stored["area_mm2"])


def test_predictions_of_another_task_or_dataset_are_refused(data: Path, run_and_predictions, tmp_path: Path) -> None:
    _, pred = run_and_predictions
    with pytest.raises(DatasetError, match="task 'ga', not of 'rpd'"):
        CaseService(data, task="rpd", predictions=pred)
    other = tmp_path / "other"
    shutil.copytree(pred / LABELED, other / "someone_else")
    with pytest.raises(DatasetError, match="no prediction of a case of this dataset"):
        CaseService(data, predictions=other)


def test_queue_orders_the_case_list(data: Path, tmp_path: Path) -> None:
    queue = tmp_path / "queue.csv"
    columns = "rank,case_id,patient_id,eye,visit,score,predicted_area_mm2,area_sd_mm2,strategy\n"
    queue.write_text(columns + f"2,{LABELED},P0002,OD,0,0.2,1.0,0.1,bald\n1,{UNLABELED},P0006,OS,0,0.9,,,bald\n")
    listed = CaseService(data, queue=queue).case_list()
    assert [c["case_id"] for c in listed[:2]] == [UNLABELED, LABELED]
    assert listed[0]["rank"] == 1 and listed[0]["score"] == pytest.approx(0.9) and listed[0]["strategy"] == "bald"
    assert len(listed) == len(list((data / "cases").iterdir())) and "rank" not in listed[2]
    queue.write_text(columns + "1,NOPE,P9,OD,0,1,,,x\n")
    with pytest.raises(DatasetError, match="not in the dataset: NOPE"):
        CaseService(data, queue=queue)
    queue.write_text("id,score\nx,1\n")
    with pytest.raises(DatasetError, match="no 'case_id' column"):
        CaseService(data, queue=queue)


# --------------------------------------------------------------------------- pixels


def test_bscans_and_projections_follow_the_volume(data: Path) -> None:
    service = CaseService(data)
    case = service.case(LABELED)
    vol = np.load(case.path / "oct.npy")
    img = np.frombuffer(service.bscan_bytes(LABELED, 3), np.uint8).reshape(vol.shape[2], vol.shape[1])
    assert np.array_equal(img, bscan_image(vol, 3, service.maps(case).display_range))
    assert np.corrcoef(img.ravel().astype(float), vol[3].T.ravel())[0, 1] > 0.9
    mean = np.asarray(Image.open(io.BytesIO(service.enface_png(LABELED, "mean"))))
    assert np.corrcoef(mean.ravel().astype(float), vol.mean(axis=-1).ravel())[0, 1] > 0.95
    slab = service.maps(case).slab
    assert slab is not None and slab[0] > bm_depth_index(case.meta.extra, vol.shape[2])
    sub = np.asarray(Image.open(io.BytesIO(service.enface_png(LABELED, "sub_bm"))))
    assert np.corrcoef(sub.ravel().astype(float), vol[..., slab[0] : slab[1]].mean(-1).ravel())[0, 1] > 0.95
    assert bm_depth_index({"flatten": {"bm_index": 40.2}}, 128) == 40.2
    assert bm_depth_index({}, 128) == pytest.approx(128 * 0.6 / 0.85 - 0.5)
    assert sub_bm_slab(89.5, 128, 0.015) == (90, 117) and sub_bm_slab(126.5, 128, 0.015) is None
    with pytest.raises(Exception, match="B-scans 0..7"):
        service.bscan_bytes(LABELED, 8)


def test_memory_holds_only_the_last_few_cases(data: Path) -> None:
    service = CaseService(data)
    for case_id in service.ids:
        service.enface_png(case_id, "mean")
    assert len(service._maps) == 4


def test_the_command_prints_the_url_and_stops_on_ctrl_c(data: Path) -> None:
    import signal
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "enface", "review", str(data), "--grader", "g", "--no-browser", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"enface review" in r.read()
        base = url.split("/?token=")[0]
        for path in ("/api/cases", "/api/cases/..%2F..%2Fdataset.json"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 401
        token = url.split("token=")[1]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/api/cases/..%2F..%2Fdataset.json?token={token}", timeout=10)
        assert e.value.code == 404 and b"phantom" not in e.value.read()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "stopped; nothing saved" in err


def test_other_hosts_are_warned_about_and_bad_arguments_refused(
    data: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    import logging

    from enface.cli import main
    from enface.review import ReviewServer

    with caplog.at_level(logging.WARNING, logger="enface.review.server"):
        server = ReviewServer(CaseService(data), host="127.0.0.2")
    try:
        assert server.url.startswith(f"http://127.0.0.2:{server.port}/?token=")
        assert "other machines can reach this page" in caplog.text
        with pytest.raises(ValueError, match="choose another --port"):
            ReviewServer(CaseService(data), host="127.0.0.2", port=server.port)
    finally:
        server.socket.close()
    assert main(["review", str(data), "--grader", "../x", "--no-browser"]) == 2
    assert "grader name '../x'" in capsys.readouterr().err
    assert main(["review", str(data / "cases"), "--no-browser"]) == 2
    assert "dataset.json" in capsys.readouterr().err


def test_a_broken_case_is_reported_and_the_others_still_served(data: Path) -> None:
    (data / "cases" / UNLABELED / "meta.json").write_text("{not json")
    oct_file = data / "cases" / LABELED / "oct.npy"
    oct_file.write_bytes(oct_file.read_bytes()[:200])
    client = _client(CaseService(data, grader="g"))
    r = client.get(f"/api/cases/{UNLABELED}", headers=AUTH)
    assert r.status_code == 404 and "meta.json" in r.json()["error"]
    r = client.get(f"/api/cases/{LABELED}/bscan/0", headers=AUTH)
    assert r.status_code == 422 and "oct.npy" in r.json()["error"]
    assert client.get("/api/cases/P0001_OD_V1", headers=AUTH).json()["shape"] == [8, 32, 64]
