"""``enface review`` through the command line: request latency, the annotation log, memory per case viewed.

Writes a ``spectralis``-preset phantom (49 x 1024 x 128 per case) with ``enface synth`` and
serves it as a user does (``enface review DATA --grader bench --no-browser``). Three parts:

1. **Kept-alive latency**, before -> after ``TCP_NODELAY`` (issue 26): on one HTTP/1.1
   connection, as a browser keeps it, the median of ``--requests`` requests of each kind the
   page makes (case info, B-scan, mask, case list) against this tree's server, and against
   the same server with its listening socket made as before the fix (protocol 0, so asyncio
   does not set ``TCP_NODELAY`` on the connections it accepts: each small response waited for
   the client's delayed ACK).
2. **The annotation log**: ``/api/cases`` and a case open with an ``annotations.jsonl`` of 0
   and of ``--log-lines`` lines (written while the server runs, as another server would
   append): the first request after the log grew (read once) and the median of the next ones.
3. **Opening cases and memory** (as before): the requests that open each case, ``--rows``
   other B-scans, the server's ``VmRSS`` after each case; baseline in the same run: the same
   B-scan read from the memory map and scaled in-process.

``--baseline-rev REV`` adds the server of an earlier commit (its ``src/`` read with ``git
archive``, run from a temporary folder with this environment's packages) to parts 1 and 2:
the true before -> after. The page's own timings come from ``tests/test_review_browser.py``
(``test-artifacts/review-timings.json``), printed at the end when present.

Run: ``python benchmarks/bench_review.py --baseline-rev 33ec8d8`` (a few minutes on 2 cores; ``--help``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "test-artifacts" / "review-timings.json"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _get(url: str) -> tuple[float, bytes]:
    """One request on a fresh connection (what ``urllib`` does): ms and body."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1000, body


def _baseline_ms(case: Path, rows: list[int]) -> float:
    from enface.review.render import bscan_image

    vol = np.load(case / "oct.npy", mmap_mode="r")
    lo, hi = np.percentile(np.asarray(vol[::8, ::8]), [0.5, 99.8])
    times = []
    for r in rows:
        t0 = time.perf_counter()
        np.ascontiguousarray(bscan_image(vol, r, (float(lo), float(hi)))).tobytes()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _serve(data: str, nodelay: bool) -> None:
    """``--serve``: this tree's server; without NODELAY, its socket as it was made before the fix."""
    from enface.review import CaseService, ReviewServer

    server = ReviewServer(CaseService(data, grader="bench"))
    if not nodelay:
        made = server.socket
        made.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # accepted sockets inherit the listener's
        server.socket = socket.socket(made.family, made.type, 0, fileno=os.dup(made.fileno()))  # protocol 0
        made.close()
    print(server.url, flush=True)
    server.serve()


@contextmanager
def _server(cmd: list[str], env: dict[str, str]) -> Iterator[tuple[str, str, int]]:
    """A server process: ``(base URL, token, pid)``; stopped with SIGTERM."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        if "/?token=" not in url:
            raise RuntimeError(f"{' '.join(cmd)}: no URL printed")
        base, token = url.split("/?token=")
        yield base, token, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _kept_alive(base: str, token: str, path: str, n: int) -> list[float]:
    """ms of ``n`` GETs of ``path`` (``{i}`` in it: 0, 1, ...) on one kept-alive connection.

    The first request opens the connection; callers that want kept-alive requests only drop it.
    """
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            conn.request("GET", path.format(i=i % 49), headers={"X-Enface-Token": token})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status}")
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return times


def _write_log(data: Path, cases: list[str], lines: int) -> None:
    """``lines`` save and review entries of three graders, as ``enface review`` writes them."""
    rng = np.random.default_rng(1)
    graders, out = ("bench", "anna", "ben"), []
    for k in range(lines):
        entry = {"time": "2026-01-01T00:00:00+00:00", "case_id": cases[k % len(cases)], "grader": graders[k % 3]}
        if k % 4:
            area = round(float(rng.uniform(0, 20)), 6)
            entry |= {"event": "save", "task": "ga", "seconds": 12.3, "pixels_changed": int(rng.integers(1, 9000))}
            entry |= {"started_from": "saved", "area_mm2": area, "version": f"{k:016x}"}
        else:
            entry |= {"event": "review", "task": "ga", "decision": "accept", "predicted_area_mm2": 1.5}
        out.append(json.dumps(entry, separators=(", ", ": ")) + "\n")
    (data / "annotations.jsonl").write_text("".join(out))


def _servers(data: Path, env: dict[str, str], baseline: Path | None) -> list[tuple[str, list[str], dict[str, str]]]:
    review = [sys.executable, "-m", "enface", "review", str(data), "--grader", "bench", "--no-browser"]
    serve = [sys.executable, __file__, "--serve", str(data)]
    found = [
        ("this tree (TCP_NODELAY)", review, env),
        ("this tree, protocol-0 socket (no NODELAY)", [*serve, "--no-nodelay"], env),
    ]
    if baseline is not None:
        found.append(("baseline rev", review, {**env, "PYTHONPATH": str(baseline)}))
    return found


def _latency(base: str, token: str, paths: dict[str, str], n: int) -> list[float]:
    """Median ms per kind of request, each on its own kept-alive connection (the opening request dropped)."""
    return [statistics.median(_kept_alive(base, token, path, n + 1)[1:]) for path in paths.values()]


def _log_row(base: str, token: str, data: Path, cases: list[str], args: argparse.Namespace) -> list[float]:
    """``/api/cases`` without a log; after ``--log-lines`` lines: the first, then the median, and a case open."""
    n = args.requests
    row = [statistics.median(_kept_alive(base, token, "/api/cases", n + 1)[1:])]
    _write_log(data, cases, args.log_lines)
    times = _kept_alive(base, token, "/api/cases", n + 1)  # the first reads the log (and opens the connection)
    row += [times[0], statistics.median(times[1:])]
    return row + [statistics.median(_kept_alive(base, token, f"/api/cases/{cases[0]}", n + 1)[1:])]


def _latency_and_log(data: Path, cases: list[str], env: dict[str, str], args: argparse.Namespace) -> None:
    cid = next(c for c in cases if (data / "cases" / c / "mask_ga.png").is_file())  # a case with a reference
    kinds = {
        "case info": f"/api/cases/{cid}",
        "B-scan": f"/api/cases/{cid}/bscan/{{i}}",
        "mask": f"/api/cases/{cid}/mask/reference",
        "case list": "/api/cases",
    }
    baseline = _baseline_src(args.baseline_rev) if args.baseline_rev else None
    latency, log_rows = [], []
    for name, cmd, server_env in _servers(data, env, baseline):
        (data / "annotations.jsonl").unlink(missing_ok=True)
        with _server(cmd, server_env) as (base, token, _):
            latency.append((name, _latency(base, token, kinds, args.requests)))
            if "protocol-0" not in name:
                log_rows.append((name, _log_row(base, token, data, cases, args)))
    (data / "annotations.jsonl").unlink(missing_ok=True)
    print(f"\n1. kept-alive latency, ms: median of {args.requests} requests on one connection ({cid}, 49 x 1024 x 128)")
    print(f"   {'server':44s}" + "".join(f"{k:>11s}" for k in kinds))
    for name, medians in latency:
        print(f"   {name:44s}" + "".join(f"{m:11.1f}" for m in medians))
    print(f"\n2. the annotation log, ms (median of {args.requests} on one kept-alive connection, but 'first')")
    head = ["/api/cases, no log", f"first, {args.log_lines:,} lines", "/api/cases then", "case open then"]
    print(f"   {'server':44s}" + "".join(f"{h:>22s}" for h in head))
    for name, row in log_rows:
        print(f"   {name:44s}" + "".join(f"{v:22.1f}" for v in row))


def _baseline_src(rev: str) -> Path:
    """``src/`` of commit ``rev``, in a temporary folder (removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="enface-baseline-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, True)
    return folder / "src"


def _cases_and_memory(data: Path, cases: list[str], env: dict[str, str], rows: int) -> None:
    """Part 3: what opening each case takes over HTTP (fresh connections, as before), B-scans, memory."""
    cmd = [sys.executable, "-m", "enface", "review", str(data), "--grader", "bench", "--no-browser"]
    rng = np.random.default_rng(0)
    with _server(cmd, env) as (base, token, pid):
        q = f"?token={token}"
        _get(base + "/" + q)
        rss = [_rss_mib(pid)]
        first, bscans = [], []
        for cid in cases:
            c = f"{base}/api/cases/{cid}"
            t0 = time.perf_counter()
            info = json.loads(_get(c + q)[1])
            _get(f"{c}/enface/{info['layers'][0]}{q}")
            if info["masks"]["reference"] != "none":
                _get(f"{c}/mask/reference{q}")
            _get(f"{c}/bscan/{info['shape'][0] // 2}{q}")
            first.append((time.perf_counter() - t0) * 1000)
            bscans += [_get(f"{c}/bscan/{int(r)}{q}")[0] for r in rng.integers(0, info["shape"][0], rows)]
            rss.append(_rss_mib(pid))
    base_ms = _baseline_ms(data / "cases" / cases[0], [int(r) for r in rng.integers(0, 49, rows)])
    b = statistics.median(bscans)
    print(f"\n3. opening {len(cases)} cases of 49 x 1024 x 128, fresh connection per request (urllib)")
    med = statistics.median(first)
    print(f"   first view (info + en-face + mask + B-scan), ms: median {med:.1f}, max {max(first):.1f}")
    print(f"   B-scan over HTTP, ms: median {b:.1f}, p95 {np.percentile(bscans, 95):.1f} (n={len(bscans)})")
    print(f"   baseline: that B-scan from the memory map, in-process, ms: median {base_ms:.1f} ({b / base_ms:.1f}x)")
    print("   server RSS (MiB) at start, then after each case: " + ", ".join(f"{v:.0f}" for v in rss))
    print(f"   growth from the first case to the last: {rss[-1] - rss[1]:+.1f} MiB over {len(cases) - 1} more cases")


def _page_timings() -> None:
    if not TIMINGS.is_file():
        print(f"\n(no {TIMINGS.relative_to(ROOT)}: run tests/test_review_browser.py for the page's own timings)")
        return
    t = json.loads(TIMINGS.read_text())
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(TIMINGS.stat().st_mtime))
    print(f"\nthe page's own timings (headless Chromium, {TIMINGS.relative_to(ROOT)} of {when}):")
    first, opened = t["first_view_ms_from_navigation"], t["case_open_ms"]
    print(f"   first view {first:.0f} ms from navigation, case open {opened:.0f} ms")
    fetched = t.get("bscan_fetched_ms") or {}
    median = fetched.get("median", float("nan"))
    print(f"   moving to a B-scan not yet fetched: median {median:.1f} ms (n={fetched.get('n')})")
    for kind, v in (t.get("api_request_ms") or {}).items():
        print(f"   request {kind}: median {v['median']:.1f} ms (n={v['n']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=4, help="phantom patients (1-2 eyes, 1-3 visits each)")
    ap.add_argument("--rows", type=int, default=20, help="B-scans requested per case in part 3")
    ap.add_argument("--requests", type=int, default=50, help="requests per measurement on a kept-alive connection")
    ap.add_argument("--log-lines", type=int, default=50_000, help="lines of the annotation log in part 2")
    ap.add_argument("--baseline-rev", metavar="REV", help="also measure the server of this earlier commit")
    ap.add_argument("--data", help="reuse this phantom folder (written when missing)")
    ap.add_argument("--serve", metavar="DATA", help=argparse.SUPPRESS)
    ap.add_argument("--no-nodelay", dest="nodelay", action="store_false", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve, args.nodelay)
        return
    tmp = tempfile.TemporaryDirectory()
    data = Path(args.data or Path(tmp.name) / "phantom")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not (data / "dataset.json").is_file():
        synth = ["synth", str(data), "--preset", "spectralis", "--patients", str(args.patients), "--no-progress"]
        subprocess.run([sys.executable, "-m", "enface", *synth], check=True, env=env)
    (data / "annotations.jsonl").unlink(missing_ok=True)
    cases = sorted(p.name for p in (data / "cases").iterdir() if p.is_dir())
    print(f"{len(cases)} cases of 49 x 1024 x 128 ({data}); client and servers on this machine, loopback")
    _latency_and_log(data, cases, env, args)
    _cases_and_memory(data, cases, env, args.rows)
    _page_timings()


if __name__ == "__main__":
    main()
