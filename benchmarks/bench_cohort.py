"""A cohort end to end: ``enface predict`` on a folder of Spectralis exports, scans per hour.

Writes ``--scans`` Heidelberg ``.vol`` exports of the Spectralis macular cube (49 x 1024 x 496,
raw phantom eyes with an SLO each, BM not exported so that it is estimated; the generator of
``bench_prepare.py``), then runs the command a reading centre runs,
``enface predict MODEL EXPORTS --out OUT --timings``, as a subprocess, once per setting, one
after the other:

* **1 worker, no overlap** (``--no-overlap``): each scan read, prepared, predicted and written
  before the next one is read — the baseline;
* **1 worker** (the default): the next scan read and prepared in a background thread while
  the current one runs through the ensemble;
* **N workers** (``--workers N``): N processes, each with its own copy of the model.

For each it prints the wall seconds, seconds per scan, scans per hour and the speed-up over
the baseline, and the share of each stage (reading the file, BM estimate, flattening, the
en-face images, inference, writing: ``timings.csv``, summed over the scans; stages that ran
side by side overlap, so the shares are of the work, not of the wall time). Every setting's
masks are compared with the baseline's (they must agree; float sums in another thread count
may move a probability in its last digits).

The model is ``--model`` (a checkpoint or run folder), else an FPN of ``--width`` with random
weights written once (the speed does not depend on the weights; its masks mean nothing).

Run: ``.venv/bin/python benchmarks/bench_cohort.py --scans 6 --exports /tmp/cohort-exports``
(``--help`` for sizes and settings). The exports take ``scans x ~100 MB``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_prepare import write_exports
from enface.models import create_model, model_spec

STAGES = ("read", "bm", "flatten", "enface", "inference", "write")


def random_checkpoint(path: Path, width: float) -> Path:
    """An FPN segmentation checkpoint of ``width`` with random weights (for timing only)."""
    torch.manual_seed(0)
    model = create_model("fpn", width=width).eval()
    info = {"model": model_spec(model), "task": "segment", "metric": None, "epoch": 0, "format_version": 1}
    info["config"] = {"target": "ga"}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "enface": info}, path)
    return path


def run_predict(model: Path, src: Path, out: Path, flags: list[str], depth: int) -> float:
    """Wall seconds of ``enface predict MODEL SRC --out OUT --timings ...`` (the CLI, a subprocess)."""
    enface = Path(sys.executable).with_name("enface")
    cmd = [str(enface), "-q", "predict", str(model), str(src), "--out", str(out), "--timings", "--depth", str(depth)]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd + flags)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def stage_seconds(out: Path) -> dict[str, float]:
    """Seconds per stage summed over the scans of ``out/timings.csv``."""
    with (out / "timings.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return {s: sum(float(r[s] or 0) for r in rows) for s in STAGES}


def masks(out: Path) -> dict[str, np.ndarray]:
    return {p.parent.name: np.asarray(Image.open(p)) > 0 for p in sorted(out.glob("*/mask.png"))}


def _settings(workers: list[int]) -> list[tuple[str, list[str]]]:
    out = [("1 worker, no overlap", ["--workers", "1", "--no-overlap"]), ("1 worker", ["--workers", "1"])]
    return out + [(f"{n} workers", ["--workers", str(n)]) for n in workers if n > 1]


def _report(name: str, seconds: float, base: float, n: int, stages: dict[str, float]) -> None:
    total = sum(stages.values()) or 1.0
    shares = "  ".join(f"{s} {100 * v / total:4.1f}%" for s, v in stages.items())
    rate = f"{seconds:>8.1f} {seconds / n:>7.2f} {3600 * n / seconds:>10.0f} {base / seconds:>7.2f}x"
    print(f"{name:<22} {rate}  {shares}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scans", type=int, default=6, help="number of exports (default 6)")
    p.add_argument("--shape", type=int, nargs=3, default=(49, 1024, 496), metavar=("H", "W", "D"))
    p.add_argument("--slo", type=int, default=768, help="SLO size in pixels (default 768)")
    p.add_argument("--workers", default="2", help="worker counts besides 1, comma-separated (default 2)")
    p.add_argument("--model", type=Path, help="checkpoint or run folder (default: a random FPN of --width)")
    p.add_argument("--width", type=float, default=1.0, help="width of the random FPN (default 1)")
    p.add_argument("--depth", type=int, default=128, help="depth the exports are resampled to (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exports", type=Path, help="write the exports here, or re-use them when present")
    p.add_argument("--tmp", type=Path, help="folder for the outputs (default: a temporary folder)")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        src = args.exports or root / "exports"
        t0 = time.perf_counter()
        if not (src.is_dir() and len(list(src.glob("*.vol"))) == args.scans):
            write_exports(src, args.scans, tuple(args.shape), args.slo, args.seed)
        model = args.model or random_checkpoint(root / "fpn.ckpt", args.width)
        h, w, d = args.shape
        print(
            f"{args.scans} .vol exports {h} x {w} x {d} (written in {time.perf_counter() - t0:.0f} s); model {model}; "
            f"{os.cpu_count()} CPUs"
        )
        print(f"{'setting':<22} {'seconds':>8} {'s/scan':>7} {'scans/hour':>10} {'speed-up':>8}  share of each stage")
        base, reference, same = 0.0, None, True
        for i, (name, flags) in enumerate(_settings(workers)):
            out = root / f"out{i}"
            seconds = run_predict(model, src, out, flags, args.depth)
            base = base or seconds
            _report(name, seconds, base, args.scans, stage_seconds(out))
            got = masks(out)
            reference = reference or got
            differ = sum(int((got[k] != reference[k]).sum()) for k in reference if k in got)
            same = same and got.keys() == reference.keys() and differ == 0
            if differ:
                print(f"{'':<22} masks differ from the baseline's in {differ} pixels")
        print(f"masks identical across settings: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
