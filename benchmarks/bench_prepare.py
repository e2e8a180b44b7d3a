"""`enface prepare` at a lab's scale: scans per hour with 1 and 2 worker processes.

Writes ``--scans`` Heidelberg ``.vol`` exports of the Spectralis macular cube
(``--shape``, default 49 x 1024 x 496: B-scans, A-scans, depth samples; 6.68 x 6.68 mm,
3.9 µm depth spacing) from raw (un-flattened) phantom eyes, each with its SLO in the export
(``--slo`` pixels square) and a FAF beside it as ``<stem>_faf.png``, moved off the SLO by a
random similarity transform (so that every scan is registered). The BM is not exported:
``prepare`` estimates it, as it must for most real exports.

Then it runs the command users run, ``enface prepare SRC OUT --format vol --workers N``, as
a subprocess for each ``--workers`` value, one after the other (alone on the machine: two
at once on 2 cores slow each other), and prints the seconds, seconds per scan, scans per
hour and the speed-up over 1 worker, and whether every output file is byte-identical
between the worker counts (it must be).

Run: ``.venv/bin/python benchmarks/bench_prepare.py`` (``--help`` for sizes and counts).
The exports take ``scans x ~100 MB`` in ``--tmp`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from enface.data.register import warp_image
from enface.synth.eye import EyeModel, make_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_faf_quality import _similarity  # a similarity about the image centre, (x, y) pixels
from formats_helpers import write_vol  # the tests' writer of device-like .vol files

FIELD_MM = 6.68  # the Spectralis macular cube (preset "spectralis")


def write_exports(folder: Path, n_scans: int, shape: tuple[int, int, int], slo_px: int, seed: int) -> None:
    """``n_scans`` ``.vol`` exports with a ``<stem>_faf.png`` each (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    oct_grid = make_grid(shape, None, "spectralis")
    img_grid = make_grid((slo_px, slo_px, 16), None, "spectralis")
    n, w, d = shape
    for i in range(n_scans):
        eye = EyeModel(seed + i, oct_grid, task="ga")
        case = eye.render(day=365, flattened=False)
        vol = case.oct / max(float(np.percentile(case.oct, 99.5)), 1e-6)
        display = np.clip(vol, 0, 1) ** 0.35  # (n, w, d) -> B-scans (n, depth, A-scans)
        bscans = np.ascontiguousarray(display.transpose(0, 2, 1), dtype=np.float32)
        images = EyeModel(seed + i, img_grid, task="ga").render(day=365)
        slo = (np.clip(images.slo, 0, 1) * 255).astype(np.uint8)
        move = _similarity((slo_px, slo_px), rng.uniform(-8, 8), tuple(rng.uniform(-0.05, 0.05, 2) * slo_px), 1.0)
        faf = np.nan_to_num(warp_image(images.faf, move, (slo_px, slo_px), cval=0.0))
        ys = np.linspace(0.0, FIELD_MM, n)
        starts = np.stack([np.zeros(n), ys], 1)
        ends = np.stack([np.full(n, FIELD_MM), ys], 1)
        write_vol(
            folder / f"eye{i:02d}.vol",
            bscans,
            slo,
            starts,
            ends,
            scale_x=FIELD_MM / w,
            distance=FIELD_MM / max(n - 1, 1),
            scale_y=1.92 / d,
            slo_scale=(FIELD_MM / slo_px, FIELD_MM / slo_px),
            patient_id=f"P{i:03d}",
            laterality="OD" if i % 2 else "OS",
        )
        Image.fromarray((np.clip(faf, 0, 1) * 255).astype(np.uint8)).save(folder / f"eye{i:02d}_faf.png")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def run_prepare(src: Path, out: Path, workers: int) -> float:
    """Seconds of ``enface prepare SRC OUT --format vol --workers N`` (the CLI, a subprocess)."""
    enface = Path(sys.executable).with_name("enface")
    cmd = [str(enface), "prepare", str(src), str(out), "--format", "vol", "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scans", type=int, default=4, help="number of exports (default 4)")
    p.add_argument("--shape", type=int, nargs=3, default=(49, 1024, 496), metavar=("H", "W", "D"))
    p.add_argument("--slo", type=int, default=768, help="SLO / FAF size in pixels (default 768)")
    p.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated (default 1,2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", type=Path, default=None, help="folder for the exports and outputs")
    p.add_argument("--exports", type=Path, default=None, help="write the exports here, or re-use them when present")
    p.add_argument("--write-only", action="store_true", help="write the exports (--exports) and stop")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        src = args.exports or root / "exports"
        if not (src.is_dir() and len(list(src.glob("*.vol"))) == args.scans):
            write_exports(src, args.scans, tuple(args.shape), args.slo, args.seed)
        if args.write_only:
            return 0
        h, w, d = args.shape
        print(
            f"{args.scans} .vol exports {h} x {w} x {d} with a {args.slo} px SLO and a FAF each, "
            f"written in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs"
        )
        print(f"{'workers':>7} {'seconds':>8} {'s/scan':>7} {'scans/hour':>10} {'speed-up':>8}")
        seconds: dict[int, float] = {}
        digests: dict[int, dict[str, str]] = {}
        for n in workers:
            out = root / f"w{n}" / "dataset"  # the same folder name: dataset.json names it
            seconds[n] = run_prepare(src, out, n)
            digests[n] = _digest(out)
            s = seconds[n]
            print(
                f"{n:>7} {s:>8.1f} {s / args.scans:>7.1f} {3600 * args.scans / s:>10.0f} "
                f"{seconds[workers[0]] / s:>7.2f}x"
            )
        same = all(digests[n] == digests[workers[0]] for n in workers)
        n_files = len(digests[workers[0]])
        n_faf = sum(1 for k in digests[workers[0]] if k.endswith("/faf.png"))
        print(f"outputs byte-identical across worker counts: {same} ({n_files} files each; FAF kept in {n_faf} cases)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
