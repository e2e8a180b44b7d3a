"""Training beside another busy process: OpenMP threads that spin vs threads that sleep.

On a 2-core machine, torch's two OpenMP threads meet at a barrier after every operation.
When another busy process holds one core, one of the two threads is often descheduled; with
libgomp's default wait policy the other spins through its time slice at the barrier, and a
training run crawls. ``import enface`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set
it), so waiting threads sleep. This benchmark runs the same ``enface pretrain`` through the CLI
(tiny phantom, demo preset, FPN width 0.25) in four settings, one after the other:

* alone, and beside a competitor (a one-thread torch training loop, like a study run),
* with ``OMP_WAIT_POLICY=PASSIVE`` (enface's default) and with libgomp's default policy
  (``OMP_WAIT_POLICY=`` empty: enface keeps a value the user set, and libgomp ignores an
  empty one),

and prints the wall seconds of each with the ratios. Run it alone on the machine::

    .venv/bin/python benchmarks/bench_sharing.py --epochs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMPETITOR = """
import time, torch
from enface.models import create_model
net = create_model("fpn", 1, 1, 0.25)
x = torch.randn(8, 1, 32, 64, 64)
while True:
    net(x).sum().backward()
"""


def _pretrain(dataset: Path, runs: Path, epochs: int, policy: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    cmd = [str(BIN / "enface"), "-q", "pretrain", "--dataset", str(dataset), "--runs-dir", str(runs)]
    cmd += ["--width", "0.25", "--epochs", str(epochs), "--set", "crop=[32,64]", "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3, help="pre-training epochs per measurement")
    ap.add_argument("--patients", type=int, default=6, help="phantom patients")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data")
        subprocess.run(
            [str(BIN / "enface"), "-q", "synth", str(data), "--patients", str(args.patients), "--preset", "demo"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times: dict[tuple[str, str], float] = {}
        for beside in ("alone", "beside a torch process"):
            competitor = None
            if beside != "alone":
                env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
                time.sleep(2)
            try:
                for policy in ("PASSIVE", ""):
                    runs = Path(tmp, f"runs-{len(times)}")
                    times[(beside, policy)] = _pretrain(data, runs, args.epochs, policy)
                    label = policy or "(libgomp default)"
                    print(f"{beside:24s} OMP_WAIT_POLICY={label:18s} {times[(beside, policy)]:7.1f} s")
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
        for beside in ("alone", "beside a torch process"):
            ratio = times[(beside, "")] / times[(beside, "PASSIVE")]
            print(f"{beside}: libgomp default / PASSIVE = {ratio:.2f}x")
        shared = times[("beside a torch process", "PASSIVE")] / times[("alone", "PASSIVE")]
        print(f"PASSIVE beside / alone = {shared:.2f}x")


if __name__ == "__main__":
    main()
