"""End to end through the command line, as a user runs it: ``enface train`` and ``enface predict``.

* **training step** of ``enface train --model fpn --width 1 --batch-size 1 --set crop=[32,256]``
  on ``spectralis``-preset phantom volumes (49 x 1024 x 128): the difference of the wall times
  of two runs that differ only in ``samples_per_epoch`` (start-up, validation and checkpoint
  writes cancel), divided by the difference in steps; plain path (``--no-fast``) and fast
  path (the default), interleaved, median over ``--repeats``;
* **prediction** with ``enface predict CKPT CASE...`` (one checkpoint): seconds per volume
  as the difference of the wall times of predicting ``k`` and 1 volumes, divided by
  ``k - 1``, and the peak RSS of the process that predicts one volume; plain
  (``--no-fast``), fast in float32 (``--precision 32``) and fast as by default (bf16 where
  the hardware computes it natively);
* with ``REF_CODE=<export of github.com/j-morano/multimodal-ssl-fpn>``, the paper code's FPN
  measured by ``bench_speed.py`` (a training step through its wrapper; inference on 48
  B-scans, the most it takes of 49), for the ratios the issue asks for.

The phantom dataset is written once (``enface synth --preset spectralis``) to ``--data``.
Run: ``python benchmarks/bench_cli.py`` (about 10 minutes on 2 cores; ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _timed(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd``; its wall time, CPU times and peak RSS (its own, via wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode(errors='replace')[-2000:]}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}


def _enface(*args: str) -> list[str]:
    return [sys.executable, "-m", "enface", "-q", *args]


def _dataset(folder: Path, patients: int) -> Path:
    if not (folder / "dataset.json").is_file():
        print(f"writing the phantom dataset ({patients} patients, spectralis preset) to {folder} ...", flush=True)
        subprocess.run(
            _enface(
                "synth",
                str(folder),
                "--preset",
                "spectralis",
                "--patients",
                str(patients),
                "--no-progress",
                "--overwrite",
            ),
            check=True,
            env=_env(),
        )
    return folder


def _train(data: Path, runs: Path, samples: int, fast: bool) -> dict[str, float]:
    shutil.rmtree(runs, ignore_errors=True)
    args = [
        "train",
        "--dataset",
        str(data),
        "--model",
        "fpn",
        "--width",
        "1",
        "--batch-size",
        "1",
        "--epochs",
        "1",
        "--runs-dir",
        str(runs),
        "--no-progress",
        "--set",
        "crop=[32,256]",
        f"samples_per_epoch={samples}",
    ]
    return _timed(_enface(*args, *([] if fast else ["--no-fast"])))


def train_steps(data: Path, tmp: Path, steps: tuple[int, int], repeats: int) -> dict[str, Any]:
    """Per-step seconds of plain and fast ``enface train``, interleaved."""
    per_step: dict[str, list[float]] = {"plain": [], "fast": []}
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "fast": []}
    for _ in range(repeats):
        walls = {}
        for samples in steps:
            for mode in ("plain", "fast"):
                res = _train(data, tmp / f"runs-{mode}", samples, mode == "fast")
                walls[(mode, samples)] = res["wall"]
                runs[mode].append(res)
        for mode in per_step:
            per_step[mode].append((walls[(mode, steps[1])] - walls[(mode, steps[0])]) / (steps[1] - steps[0]))
    return {mode: {"step_s": statistics.median(v), "all": v, "runs": runs[mode]} for mode, v in per_step.items()}


def predict_volumes(data: Path, tmp: Path, ckpt: Path, k: int, repeats: int) -> dict[str, Any]:
    """Per-volume seconds and peak RSS of plain, fast32 and fast ``enface predict``."""
    cases = sorted(p for p in (data / "cases").iterdir() if (p / "oct.npy").is_file())[:k]
    out: dict[str, Any] = {}
    flags = {"plain": ["--no-fast"], "fast32": ["--precision", "32"], "fast": []}
    for mode, flag in flags.items():
        one, many = [], []
        for _ in range(repeats):
            one.append(
                _timed(_enface("predict", str(ckpt), str(cases[0]), "--out", str(tmp / "pred1"), "--overwrite", *flag))
            )
            many.append(
                _timed(
                    _enface("predict", str(ckpt), *map(str, cases), "--out", str(tmp / "predk"), "--overwrite", *flag)
                )
            )
        per_volume = [(b["wall"] - a["wall"]) / (len(cases) - 1) for a, b in zip(one, many)]
        out[mode] = {
            "volume_s": statistics.median(per_volume),
            "rss_mib": max(r["rss_mib"] for r in one + many),
            "one_volume_wall": statistics.median(r["wall"] for r in one),
        }
    return out


def paper_code(ref: str) -> dict[str, Any]:
    """The paper code's FPN: a training step and inference, via bench_speed.py's worker."""
    res = {}
    for stage in ("train", "infer"):
        job = dict(
            model="fpn",
            width=1.0,
            kwargs={},
            device="cpu",
            threads=0,
            batch=1,
            crop=[32, 256],
            depth=128,
            volume=[49, 1024, 128],
            stage=stage,
            path="paper",
            repeats=3 if stage == "train" else 2,
            ref=ref,
        )
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_speed.py"), "--job", json.dumps(job)],
            capture_output=True,
            text=True,
            env=_env(),
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        res[stage] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-500:]}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        default=str(Path(tempfile.gettempdir()) / "enface-bench-spectralis"),
        help="phantom dataset folder (written once if missing)",
    )
    p.add_argument("--patients", type=int, default=6)
    p.add_argument(
        "--steps",
        type=int,
        nargs=2,
        default=(1, 5),
        metavar=("S1", "S2"),
        help="samples_per_epoch of the two training runs (default 1 5)",
    )
    p.add_argument("--volumes", type=int, default=3, help="volumes of the longer predict run (default 3)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args(argv)
    data = _dataset(Path(args.data), args.patients)
    ref = os.environ.get("REF_CODE")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="enface-bench-cli-") as tmp_name:
        tmp = Path(tmp_name)
        train = None if args.skip_train else train_steps(data, tmp, tuple(args.steps), args.repeats)
        if train is None:  # still need a checkpoint to predict with
            _train(data, tmp / "runs-fast", 1, True)
        ckpt = next((tmp / "runs-fast").rglob("last.ckpt"))
        pred = predict_volumes(data, tmp, ckpt, args.volumes, args.repeats)
    paper = paper_code(ref) if ref else None
    _report(train, pred, paper, args)
    print(f"({time.time() - t0:.0f} s)")
    return 0


def _report(train: dict | None, pred: dict, paper: dict | None, args: argparse.Namespace) -> None:
    print(f"\nenface CLI, FPN width 1, spectralis phantoms (49 x 1024 x 128), median of {args.repeats}")
    if train:
        print(f"training step (batch 1, crop 32 x 256; runs of {args.steps[0]} and {args.steps[1]} steps):")
        for mode in ("plain", "fast"):
            r = train[mode]
            cpu = statistics.median(x["user"] + x["sys"] for x in r["runs"])
            sys_t = statistics.median(x["sys"] for x in r["runs"])
            print(
                f"  {mode:<6} {r['step_s']:6.2f} s/step  (each: {', '.join(f'{v:.2f}' for v in r['all'])}; "
                f"per run median CPU {cpu:.0f} s of which kernel {sys_t:.0f} s; "
                f"peak RSS {max(x['rss_mib'] for x in r['runs']):.0f} MiB)"
            )
        print(f"  fast vs plain: {train['plain']['step_s'] / train['fast']['step_s']:.2f}x")
        if paper and "median_s" in paper["train"]:
            s = paper["train"]["median_s"]
            print(
                f"  paper code (its FPN, a bare training step): {s:.2f} s/step"
                f" -> fast {s / train['fast']['step_s']:.2f}x, "
                f"plain {s / train['plain']['step_s']:.2f}x"
            )
    print(f"enface predict (one checkpoint; 1 vs {args.volumes} volumes):")
    for mode in ("plain", "fast32", "fast"):
        r = pred[mode]
        print(
            f"  {mode:<6} {r['volume_s']:6.2f} s/volume, peak RSS {r['rss_mib']:.0f} MiB "
            f"(one volume, start to end: {r['one_volume_wall']:.1f} s)"
        )
    print(
        f"  fast vs plain: {pred['plain']['volume_s'] / pred['fast']['volume_s']:.2f}x, memory "
        f"{pred['fast']['rss_mib'] / pred['plain']['rss_mib']:.2f}x; fast vs fast32 "
        f"{pred['fast32']['volume_s'] / pred['fast']['volume_s']:.2f}x"
    )
    if paper and "median_s" in paper["infer"]:
        s, m = paper["infer"]["median_s"], paper["infer"]["rss_mib"]
        print(
            f"  paper code (its FPN on 48 B-scans): {s:.2f} s/volume, peak RSS {m:.0f} MiB -> fast "
            f"{s / pred['fast']['volume_s']:.2f}x the speed, {pred['fast']['rss_mib'] / m:.2f}x the memory"
        )


if __name__ == "__main__":
    sys.exit(main())
