"""``enface review`` against a hostile user: the holes of issue 26, each with a test that failed before its fix.

The token never travels in a cookie; nothing is read or written through a symbolic link out
of the dataset (the annotation log, ``meta.json``, a case file); bad headers, deeply nested
JSON, a missing precondition and bad ``--port`` / ``--host`` values get a clear error and
write nothing; a client that goes away mid-upload, or a SIGTERM, ends in one line, not a
traceback; responses on a kept-alive connection are not held back by Nagle's algorithm.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO

import numpy as np
import pytest
from starlette.testclient import TestClient

from enface.cli import main
from enface.errors import DatasetError
from enface.review import CaseService, ReviewServer
from enface.review.app import create_app

TOKEN = "t0ken-for-tests"
AUTH = {"X-Enface-Token": TOKEN}
CASE = "P0006_OS_V1"  # unlabeled, 8 x 32
OTHER = "P0002_OD_V2"
EMPTY = np.zeros((8, 32), np.uint8)


@pytest.fixture
def data(phantom_dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(phantom_dataset, tmp_path / "data"))


def _client(service: CaseService) -> TestClient:
    """A client that sees a server error as a 500, as a browser does (not as an exception)."""
    return TestClient(create_app(service, TOKEN, ("testserver",)), raise_server_exceptions=False)


def _put(client: TestClient, case_id: str, mask: np.ndarray = EMPTY, **headers: str):
    return client.put(
        f"/api/cases/{case_id}/mask",
        content=mask.astype(np.uint8).tobytes(),
        headers={**AUTH, "Content-Type": "application/octet-stream", **headers},
    )


def _written(data: Path, case_id: str = CASE) -> list[str]:
    """What a refused request must not have created: the grader's mask and the log."""
    found = [f"cases/{case_id}/mask_ga.g.png"] if (data / "cases" / case_id / "mask_ga.g.png").exists() else []
    return found + (["annotations.jsonl"] if os.path.lexists(data / "annotations.jsonl") else [])


# --------------------------------------------------------------------------- 1: the token and cookies


def test_the_token_never_travels_in_a_cookie(data: Path) -> None:
    client = _client(CaseService(data, grader="g"))
    page = client.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and TOKEN in page.text
    assert "set-cookie" not in page.headers and not client.cookies
    assert client.get("/api/cases").status_code == 401  # nothing remembered the token for the page
    client.cookies.set("enface_review_token", TOKEN)
    assert client.get("/api/cases").status_code == 401  # a cookie with the token is no credential either
    assert client.get("/api/cases", headers=AUTH).status_code == 200


# --------------------------------------------------------------------------- 2, 3, 11: symbolic links


def test_a_log_that_links_out_of_the_dataset_is_never_written(data: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text("not the dataset's\n")
    client = _client(CaseService(data, grader="g"))
    (data / "annotations.jsonl").symlink_to(outside)  # after the start: the check at start-up is not enough
    r = _put(client, CASE, **{"X-Base-Version": "none"})
    assert r.status_code == 403 and "annotations.jsonl" in r.json()["error"]
    assert outside.read_text() == "not the dataset's\n"
    assert not (data / "cases" / CASE / "mask_ga.g.png").exists()
    assert client.get("/api/cases", headers=AUTH).status_code == 403  # nor read from outside
    with pytest.raises(DatasetError, match="annotations.jsonl"):
        CaseService(data, grader="g")  # and refused when the server starts
    assert outside.read_text() == "not the dataset's\n"


def test_a_meta_json_that_links_out_of_the_dataset_is_not_read(data: Path, tmp_path: Path) -> None:
    meta = json.loads((data / "cases" / CASE / "meta.json").read_text())
    outside = tmp_path / "meta.json"
    outside.write_text(json.dumps({**meta, "patient_id": "SECRET-FROM-OUTSIDE"}))
    (data / "cases" / CASE / "meta.json").unlink()
    (data / "cases" / CASE / "meta.json").symlink_to(outside)
    client = _client(CaseService(data, grader="g"))
    r = client.get(f"/api/cases/{CASE}", headers=AUTH)
    assert r.status_code in (403, 404) and b"SECRET" not in r.content
    assert "meta.json" in r.json()["error"]
    assert client.get(f"/api/cases/{CASE}/bscan/0", headers=AUTH).status_code in (403, 404)


def test_a_case_with_one_file_linking_out_opens_and_names_the_file(data: Path, tmp_path: Path) -> None:
    shutil.copy(data / "cases" / CASE / "slo.png", tmp_path / "slo.png")
    (data / "cases" / CASE / "slo.png").unlink()
    (data / "cases" / CASE / "slo.png").symlink_to(tmp_path / "slo.png")
    client = _client(CaseService(data, grader="g"))
    r = client.get(f"/api/cases/{CASE}", headers=AUTH)
    assert r.status_code == 200, r.text
    info = r.json()
    assert "slo" not in info["layers"] and "mean" in info["layers"]
    assert [f"cases/{CASE}/slo.png" in note for note in info["refused"]] == [True]
    slo = client.get(f"/api/cases/{CASE}/enface/slo", headers=AUTH)
    assert slo.status_code in (403, 404) and "slo.png" in slo.json()["error"]
    shutil.copy(data / "cases" / OTHER / "oct.npy", tmp_path / "oct.npy")
    (data / "cases" / OTHER / "oct.npy").unlink()
    (data / "cases" / OTHER / "oct.npy").symlink_to(tmp_path / "oct.npy")
    r = client.get(f"/api/cases/{OTHER}", headers=AUTH)
    assert r.status_code == 403 and f"cases/{OTHER}/oct.npy" in r.json()["error"]


# --------------------------------------------------------------------------- 4, 5, 9: bad requests


def test_a_bad_started_from_header_is_a_400_and_writes_nothing(data: Path) -> None:
    client = _client(CaseService(data, grader="g"))
    r = _put(client, CASE, **{"X-Base-Version": "none", "X-Started-From": "somewhere"})
    assert r.status_code == 400 and "X-Started-From" in r.json()["error"]
    assert _written(data) == []


@pytest.mark.parametrize("route", ["review", "promote"])
def test_deeply_nested_json_is_a_400(data: Path, route: str) -> None:
    client = _client(CaseService(data, grader="g"))
    body = '{"decision": ' + "[" * 30_000 + "]" * 30_000 + "}"
    r = client.post(f"/api/cases/{CASE}/{route}", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert _written(data) == []


def test_a_save_without_base_version_is_a_428_and_creates_nothing(data: Path) -> None:
    client = _client(CaseService(data, grader="g"))
    r = _put(client, CASE)
    assert r.status_code == 428 and "X-Base-Version" in r.json()["error"]
    assert _written(data) == []
    # a refused save creates no log either: a mask made elsewhere, a page that saw none
    (data / "cases" / CASE / "mask_ga.g.png").write_bytes((data / "cases" / OTHER / "mask_ga.png").read_bytes())
    r = _put(client, CASE, **{"X-Base-Version": "none"})
    assert r.status_code == 409 and r.json()["current"] != "none"
    assert not (data / "annotations.jsonl").exists()


# --------------------------------------------------------------------------- 6, 10, 11: the command's arguments


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_one_line_and_exit_2(data: Path, port: str, capsys) -> None:
    assert main(["review", str(data), "--no-browser", "--port", port]) == 2
    err = capsys.readouterr().err
    assert "--port" in err and "0..65535" in err and "Traceback" not in err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "0"])
def test_a_wildcard_host_is_refused_with_what_to_do(data: Path, host: str) -> None:
    with pytest.raises(ValueError, match="every interface") as e:  # the command prints it as one line, exit 2
        ReviewServer(CaseService(data), host=host)
    assert "name the interface" in str(e.value) and "--port" not in str(e.value)


def test_a_host_of_another_machine_blames_the_host(data: Path) -> None:
    with pytest.raises(ValueError, match="8.8.8.8 is not an address of this machine") as e:
        ReviewServer(CaseService(data), host="8.8.8.8")
    assert "--port" not in str(e.value)
    busy = ReviewServer(CaseService(data))
    try:
        with pytest.raises(ValueError, match="in use; choose another --port"):
            ReviewServer(CaseService(data), port=busy.port)
    finally:
        busy.socket.close()


class _Lines:
    """The lines a process writes to a pipe, read by a thread (a wait never blocks past its timeout)."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in pipe], daemon=True).start()

    def until(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.seen) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.lines.get(timeout=0.1))
        return "".join(self.seen)


def test_a_client_gone_mid_upload_is_one_line_and_sigterm_prints_the_summary(data: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "enface", "review", str(data), "--grader", "g", "--no-browser"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err = _Lines(proc.stderr)  # type: ignore[arg-type]
    try:
        url = urllib.parse.urlsplit(proc.stdout.readline().strip())  # type: ignore[union-attr]
        token = urllib.parse.parse_qs(url.query)["token"][0]
        with socket.create_connection((url.hostname, url.port), timeout=10) as s:
            head = (
                f"PUT /api/cases/{CASE}/mask HTTP/1.1\r\nHost: {url.netloc}\r\nX-Enface-Token: {token}\r\n"
                "X-Base-Version: none\r\nContent-Type: application/octet-stream\r\nContent-Length: 256\r\n\r\n"
            )
            s.sendall(head.encode() + bytes(100))  # 100 of 256 bytes, then the client is gone
        gone = err.until("went away")
        assert "went away" in gone and "Traceback" not in gone and "Exception in ASGI" not in gone
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    summary = err.until("stopped;", timeout=5)
    assert proc.returncode == 0 and "stopped; nothing saved" in summary, summary
    assert "Traceback" not in summary and _written(data) == []


# --------------------------------------------------------------------------- 7: TCP_NODELAY


def test_kept_alive_requests_are_not_held_back_by_nagle(data: Path) -> None:
    server = ReviewServer(CaseService(data)).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        times = []
        for _ in range(12):
            t0 = time.perf_counter()
            conn.request("GET", f"/api/cases/{CASE}", headers=AUTH | {"X-Enface-Token": server.token})
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            times.append(time.perf_counter() - t0)
        conn.close()
    finally:
        server.stop()
    assert statistics.median(times[1:]) < 0.030  # the delayed ACK held each response ~40 ms
    assert server.socket.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY on accepted sockets only then


# --------------------------------------------------------------------------- 8: the log is read once


def _line(case_id: str, event: str = "save", grader: str = "g", **extra: object) -> str:
    return json.dumps({"event": event, "case_id": case_id, "grader": grader, "task": "ga", **extra}) + "\n"


def test_the_log_is_read_once_then_only_what_was_appended(data: Path) -> None:
    log = data / "annotations.jsonl"
    log.write_text("".join(_line(CASE if i % 2 else OTHER, version=str(i)) for i in range(2000)))
    service = CaseService(data, grader="g")
    assert service.log.lines_read == 2000  # read when the server starts, not by its first request
    client = _client(service)
    listed = {c["case_id"]: c for c in client.get("/api/cases", headers=AUTH).json()}
    assert listed[CASE]["reviewed"] and listed[OTHER]["reviewed"] and not listed["P0001_OD_V1"]["reviewed"]
    assert service.log.lines_read == 2000
    for _ in range(5):
        client.get("/api/cases", headers=AUTH)
        client.get(f"/api/cases/{CASE}", headers=AUTH)
    assert service.log.lines_read == 2000  # not re-read per request
    with log.open("a") as f:  # another server on the same dataset decides, in two writes
        f.write(_line("P0001_OD_V1", "review", decision="reject")[:30])
        f.flush()
        assert client.get("/api/cases", headers=AUTH).status_code == 200  # half a line: not taken yet
        f.write(_line("P0001_OD_V1", "review", decision="reject")[30:] + "not json\n")
    listed = {c["case_id"]: c for c in client.get("/api/cases", headers=AUTH).json()}
    assert listed["P0001_OD_V1"]["decision"] == "reject" and service.log.lines_read == 2002
    log.write_text(_line(CASE, "review", decision="accept"))  # rewritten (shorter): read again from the start
    listed = {c["case_id"]: c for c in client.get("/api/cases", headers=AUTH).json()}
    assert listed[CASE]["decision"] == "accept" and not listed[OTHER]["reviewed"]
    assert not listed["P0001_OD_V1"]["reviewed"]
