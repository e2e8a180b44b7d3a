"""Full-volume inference: enface's pad-and-crop vs the paper code's resize-to-fit, side by side.

For one prepared Spectralis-sized volume (default 49 x 1024 x 128) and the FPN at width 1,
times the whole path from the stored volume to an en-face probability map on the scan's
own grid:

* **paper-code approach** (re-implemented from what the public code of Morano et al. does at
  validation/test time): z-score every B-scan, resize the whole volume with skimage
  (order 1) to multiples of 16 in every axis (49 -> 48 B-scans), run the network, then
  resize the prediction back to the scan's grid (order 0) so that it can be compared with
  the mask of the scan. One B-scan of evidence is interpolated away.
* **enface**: z-score every B-scan, run the network, which pads internally to the multiples
  it needs (49 -> 52 B-scans, replicate) and crops its output back: no resampling at all;
  on the plain path (the network's own float32 forward), and on the fast path
  (:class:`enface.engine.fastpath.FastPath`, as ``predict`` runs it) in float32 (``fast32``)
  and in the default precision (bf16 where the hardware computes it natively: ``fast``).

Each pipeline runs in its own fresh process (spawned) so that its peak resident memory
(``ru_maxrss``) can be reported too. Run: ``.venv/bin/python benchmarks/bench_inference.py``
(``--help`` for sizes, width, repeats and threads).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import numpy as np

PIPELINES = ("paper", "enface", "fast32", "fast")


def _paper_code(volume: np.ndarray, model, multiple: int = 16) -> np.ndarray:
    import torch
    from skimage.transform import resize

    from enface.data.normalize import zscore_per_bscan

    x = zscore_per_bscan(volume.astype(np.float32))
    fit = tuple(max(multiple, (s // multiple) * multiple) for s in x.shape)
    if fit != x.shape:
        x = resize(x, fit, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.from_numpy(x)[None, None]))[0, 0].numpy()
    if prob.shape != volume.shape[:2]:
        prob = resize(prob, volume.shape[:2], order=0, anti_aliasing=False, preserve_range=True)
    return prob


def _enface(volume: np.ndarray, model) -> np.ndarray:
    import torch

    from enface.data.normalize import zscore_per_bscan

    x = zscore_per_bscan(volume.astype(np.float32))
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x)[None, None]))[0, 0].numpy()


def _fast(precision: str):
    """enface's pipeline on the fast path in ``precision``: a function of (volume, model)."""
    import torch

    from enface.data.normalize import zscore_per_bscan
    from enface.engine.fastpath import FastPath

    fastpath, nets = FastPath(True, precision=precision), {}
    fastpath.tune_process("inference", "cpu")

    def run(volume: np.ndarray, model) -> np.ndarray:
        if id(model) not in nets:
            nets[id(model)] = fastpath.inference_network(model)
        net = nets[id(model)]
        x = torch.from_numpy(zscore_per_bscan(volume.astype(np.float32)))[None, None]
        with torch.inference_mode():
            return torch.sigmoid(fastpath.logits(net, x))[0, 0].numpy()

    return run


def _worker(which: str, shape: tuple[int, int, int], width: float, repeats: int, threads: int, queue) -> None:
    import torch

    from enface.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
    model = create_model("fpn", width=width).eval()
    fn = {"paper": _paper_code, "enface": _enface}.get(which) or _fast("32" if which == "fast32" else "auto")
    fn(volume, model)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        prob = fn(volume, model)
        times.append(time.perf_counter() - t0)
    assert prob.shape == shape[:2]
    queue.put((which, float(np.median(times)), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=(49, 1024, 128), metavar=("H", "W", "D"))
    p.add_argument("--width", type=float, default=1.0, help="FPN width (default 1: the paper's network)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    results = {}
    for which in PIPELINES:
        q = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(which, tuple(args.shape), args.width, args.repeats, args.threads, q))
        proc.start()
        name, seconds, rss = q.get()
        proc.join()
        results[name] = (seconds, rss)
    h, w, d = args.shape
    print(
        f"full-volume inference, FPN width {args.width:g}, volume {h} x {w} x {d}, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print(f"{'pipeline':<42} {'s/volume':>9} {'peak RSS (MiB)':>15} {'speed-up':>9}")
    print("(fast path: the network of the first call is kept, as an ensemble keeps it)")
    base = results["paper"][0]
    labels = {
        "paper": f"paper-code approach (resize to {max(16, h // 16 * 16)} B-scans)",
        "enface": f"enface (pad to {-(-h // 4) * 4} B-scans, crop back)",
        "fast32": "enface, fast path, float32",
        "fast": "enface, fast path (bf16 where native)",
    }
    for name in PIPELINES:
        s, rss = results[name]
        print(f"{labels[name]:<42} {s:>9.2f} {rss:>15.0f} {base / s:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
