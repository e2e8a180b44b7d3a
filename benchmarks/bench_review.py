"""``enface review`` through the command line: request latency and the server's memory per case viewed.

Writes a ``spectralis``-preset phantom (49 x 1024 x 128 per case) with ``enface synth``,
starts ``enface review DATA --grader bench --no-browser`` as a user does, and for every case
in turn requests what the page asks for when it opens a case (case info, the SLO, the
reference mask, the B-scan of the middle row), then ``--rows`` other B-scans one by one,
timing each request (HTTP round trip, loopback) and reading the server's resident memory
(``VmRSS``) after each case.

Baseline, in the same run: the same B-scan read from the memory-mapped ``oct.npy`` and
scaled to 8 bits in this process (the least the server must do per B-scan). The browser's own
timings (decode and draw included) come from ``tests/test_review_browser.py``
(``test-artifacts/review-timings.json``).

Run: ``python benchmarks/bench_review.py`` (about a minute on 2 cores; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=4, help="phantom patients (1-2 eyes, 1-3 visits each)")
    ap.add_argument("--rows", type=int, default=20, help="B-scans requested per case after the first view")
    ap.add_argument("--data", help="reuse this phantom folder (written when missing)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    data = Path(args.data or Path(tmp.name) / "phantom")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not (data / "dataset.json").is_file():
        synth = ["synth", str(data), "--preset", "spectralis", "--patients", str(args.patients), "--no-progress"]
        subprocess.run([sys.executable, "-m", "enface", *synth], check=True, env=env)
    cases = sorted(p.name for p in (data / "cases").iterdir() if p.is_dir())
    cmd = [sys.executable, "-m", "enface", "review", str(data), "--grader", "bench", "--no-browser"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        base, token = url.split("/?token=")
        q = f"?token={token}"
        _get(base + "/" + q)
        rss = [_rss_mib(server.pid)]
        first, bscans = [], []
        rng = np.random.default_rng(0)
        for cid in cases:
            c = f"{base}/api/cases/{cid}"
            t0 = time.perf_counter()
            info = json.loads(_get(c + q)[1])
            _get(f"{c}/enface/{info['layers'][0]}{q}")
            if info["masks"]["reference"] != "none":
                _get(f"{c}/mask/reference{q}")
            _get(f"{c}/bscan/{info['shape'][0] // 2}{q}")
            first.append((time.perf_counter() - t0) * 1000)
            for r in rng.integers(0, info["shape"][0], args.rows):
                bscans.append(_get(f"{c}/bscan/{int(r)}{q}")[0])
            rss.append(_rss_mib(server.pid))
        base_ms = _baseline_ms(data / "cases" / cases[0], [int(r) for r in rng.integers(0, 49, args.rows)])
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(f"{len(cases)} cases of 49 x 1024 x 128 ({data})")
    print(
        f"first view (info + en-face + mask + B-scan), ms: median {statistics.median(first):.1f}, max {max(first):.1f}"
    )
    b = statistics.median(bscans)
    print(f"B-scan over HTTP, ms: median {b:.1f}, p95 {np.percentile(bscans, 95):.1f} (n={len(bscans)})")
    print(
        f"baseline: B-scan from the memory map, scaled, in-process, ms: median {base_ms:.1f} -> HTTP {b / base_ms:.2f}x"
    )
    print("server RSS (MiB) at start, then after each case: " + ", ".join(f"{v:.0f}" for v in rss))
    print(f"growth from the first case to the last: {rss[-1] - rss[1]:+.1f} MiB over {len(cases) - 1} more cases")


if __name__ == "__main__":
    main()
