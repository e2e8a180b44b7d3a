"""Plain path vs fast path (vs the paper's code), per model: training step and full-volume inference.

For every model, four measurements, each in its own fresh Python process (so that its peak
resident memory is its own, and no allocator or oneDNN cache is shared):

* **train / plain** — ``EnfaceModule(fast=False)``: eager float32, contiguous tensors; one
  SGD step (lr 0.1, momentum 0.9, weight decay 1e-4) with Dice + BCE on a random crop
  (default batch 1 x 32 B-scans x 256 A-scans x 128 depth, the paper's crop);
* **train / fast** — ``EnfaceModule(fast=True)`` with what ``enface train`` adds on the fast
  path: the fast layers, the layout its first batch measures faster, bf16 autocast where the
  hardware has native bf16 (else float32), glibc reusing freed memory
  (``tune_allocator("training")``); ``--fast32`` adds the same in float32;
* **infer / plain** — the network's own forward, ``torch.inference_mode``, on one whole
  volume (default 49 x 1024 x 128), then the sigmoid;
* **infer / fast32** — ``FastPath(precision="32").logits`` on the network of its
  ``inference_network`` (:mod:`enface.engine.fastpath`): BatchNorm folded, channels-last,
  oneDNN convolutions and the fast layers, float32, the model's slab stages over slabs of
  A-scans, ``tune_allocator("inference")`` (the fast path before bf16 inference);
* **infer / fast** — the same with the default precision: bf16 where the hardware computes it
  natively (what ``evaluate`` / ``predict`` run).

Each row also gives the network's FLOPs (convolutions and matrix products, counted by
``torch.utils.flop_counter`` on the plain network on the meta device: multiply and add
count two; the forward pass for inference, forward and backward for a training step) and the
GFLOP/s reached; the header gives the machine's peak per precision, derived from the
instruction set, cores and clock and measured with a large matrix product
(``benchmarks/_machine.py``).

With ``REF_CODE=<folder>`` naming an export of the paper's public repository
(github.com/j-morano/multimodal-ssl-fpn; read from there, never copied into enface), its
``FPN`` is measured the same way as a third column of the FPN rows: a training step through
its wrapper (input in its axis order, sigmoid inside, BCE + Dice on probabilities) and
inference on the largest volume it accepts (B-scans rounded down to a multiple of 16: 48 for
49, as its validation resizes them).

Times are medians over ``--repeats`` (after one warm-up step / a warm-up forward on a
narrower volume); memory is the process's peak RSS (``ru_maxrss``) and, in brackets, its growth
over the RSS before the first step (the model, the input and torch's own ~300 MiB excluded).
With ``--device cuda``: times with synchronisation, memory as ``torch.cuda.max_memory_allocated``.
With ``--cpu-time`` (and ``--threads 1``): the process's CPU seconds instead of wall seconds,
for a first look on a machine shared with other work (which stretches wall times of
multi-threaded kernels several-fold); not what a user waits.

Run: ``python benchmarks/bench_speed.py`` (all models, ~15 minutes on 2 cores);
``--quick`` for a small smoke run; ``--help`` for sizes, models, threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ("fpn", "resensnet", "lachinov", "ipn", "ipnv2")
DEFAULT_WIDTH = {"fpn": 1.0, "resensnet": 1.0, "lachinov": 1.0, "ipn": 0.25, "ipnv2": 0.25}
"""IPN and IPN-V2 convolve 64 channels in 3D at full resolution: at width 1 one step takes minutes."""


# --------------------------------------------------------------------------- the worker (one process per job)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _paper_fpn(ref: str):
    """The paper code's FPN wrapper class (its modules parse sys.argv when imported)."""
    sys.path.insert(0, ref)
    argv, sys.argv = sys.argv, ["train.py", "--dataset", "bench", "--model", "FPN"]
    try:
        from models.fusion_nets import FPN  # type: ignore[import-not-found]
    finally:
        sys.argv = argv
    return FPN


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from enface.engine.module import EnfaceModule

    dev, path = job["device"], job["path"]
    n, (h, w), d = job["batch"], job["crop"], job["depth"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, h, w, d, generator=g).to(dev)
    target = (torch.rand(n, 1, h, w, generator=g) > 0.7).float().to(dev)
    bf16 = False
    if path == "paper":
        net = _paper_fpn(job["ref"])().to(dev).train()
        x = x.permute(0, 1, 2, 4, 3).contiguous()  # the paper code's axis order

        def loss_of() -> torch.Tensor:
            prob = net({"image": x})["prediction"][:, :, :, 0]  # (N, 1, H, 1, W) -> (N, 1, H, W)
            inter = (prob * target).sum((2, 3))
            dice = 1 - (2 * inter + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
            return F.binary_cross_entropy(prob, target) + dice.mean()

        params = net.parameters()
    else:
        module = EnfaceModule(job["model"], width=job["width"], model_kwargs=job["kwargs"], fast=path != "plain").to(
            dev
        )
        fastpath = module.fastpath  # what `enface train` asks of it
        fastpath.tune_process("training", dev)
        torch.backends.cudnn.benchmark = bool(fastpath.cudnn_benchmark(dev == "cuda", deterministic=False))
        bf16 = path == "fast" and fastpath.precision("auto", "gpu" if dev == "cuda" else "cpu") == "bf16-mixed"
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            fastpath.settle_layout(module.model, x)  # what the first batch of `enface train` does

        def loss_of() -> torch.Tensor:
            return module.loss(module(x), target)

        params = module.parameters()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        loss.backward()
        opt.step()
        _sync(dev)

    return _timed(step, job, extra={"bf16": bf16})


def _infer_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from enface.engine.fastpath import FastPath
    from enface.models import create_model

    dev, path = job["device"], job["path"]
    h, w, d = job["volume"]
    g = torch.Generator().manual_seed(0)
    bf16 = False
    if path == "paper":
        h = max(16, h // 16 * 16)  # the paper code resizes B-scans to a multiple of 16
        paper = _paper_fpn(job["ref"])().to(dev).eval()

        def forward(v: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return paper({"image": v.permute(0, 1, 2, 4, 3).contiguous()})["prediction"][:, :, :, 0]
    else:
        model = create_model(job["model"], width=job["width"], **job["kwargs"]).to(dev).eval()
        fastpath = FastPath(path != "plain", precision="32" if path == "fast32" else "auto")
        fastpath.tune_process("inference", dev)  # as the Ensemble of evaluate / predict does
        net = fastpath.inference_network(model)
        bf16 = fastpath.dtype == torch.bfloat16

        def forward(v: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return torch.sigmoid(fastpath.logits(net, v))

    x = torch.randn(1, 1, h, w, d, generator=g).to(dev)
    rss0 = _rss_mib()
    forward(x[:, :, :, : max(16, w // 4)])  # warm-up on a narrower volume
    _sync(dev)

    def run() -> None:
        prob = forward(x)
        _sync(dev)
        assert prob.shape[-2:] in ((h, w), (w, h)), prob.shape

    return _timed(run, job, warm_up=False, rss0=rss0, extra={"bf16": bf16})


def _flops_job(job: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of the network's training step or inference, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from enface.models import create_model

    train = job["stage"] == "train"
    n, (h, w), d = (job["batch"], job["crop"], job["depth"]) if train else (1, job["volume"][:2], job["depth"])
    with torch.device("meta"):
        if job["path"] == "paper":
            h = h if train else max(16, h // 16 * 16)
            paper = _paper_fpn(job["ref"])()

            def net(v: torch.Tensor) -> torch.Tensor:
                return paper({"image": v.permute(0, 1, 2, 4, 3)})["prediction"]
        else:
            net = create_model(job["model"], width=job["width"], **job["kwargs"])
        x = torch.randn(n, 1, h, w, d)
    with FlopCounterMode(display=False) as counter:
        if train:
            net(x).float().sum().backward()
        else:
            with torch.no_grad():
                net(x)
    return {"gflop": counter.get_total_flops() / 1e9}


def _timed(
    fn, job: dict[str, Any], warm_up: bool = True, extra: dict | None = None, rss0: float | None = None
) -> dict[str, Any]:
    import torch

    rss0 = _rss_mib() if rss0 is None else rss0
    if warm_up:
        fn()
    if job["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(job["repeats"]):
        clock = time.process_time if job.get("cpu_time") else time.perf_counter
        t0 = clock()
        fn()
        times.append(clock() - t0)
    out = {
        "median_s": statistics.median(times),
        "times": times,
        "rss_mib": _rss_mib(),
        "rss0_mib": rss0,
        **(extra or {}),
    }
    if job["device"] == "cuda":
        out["gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _worker(job: dict[str, Any]) -> None:
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    if job.get("flops"):
        result = _flops_job(job)
    else:
        result = _train_job(job) if job["stage"] == "train" else _infer_job(job)
    print("RESULT " + json.dumps(result))


# --------------------------------------------------------------------------- the driver


def _run(job: dict[str, Any], timeout: float) -> dict[str, Any] | str:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--job", json.dumps(job)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]


def _jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    ref = os.environ.get("REF_CODE")
    jobs = []
    for model in args.models:
        width = args.width if args.width is not None else (0.25 if args.quick else DEFAULT_WIDTH[model])
        kwargs = {"depth": args.depth} if model in ("resensnet", "ipnv2") else {}
        base = dict(
            model=model,
            width=width,
            kwargs=kwargs,
            device=args.device,
            threads=args.threads,
            cpu_time=args.cpu_time,
            batch=args.batch,
            crop=list(args.crop),
            depth=args.depth,
            volume=[*args.volume[:2], args.depth],
        )
        paths = (["paper"] if ref and model == "fpn" and width == 1.0 else []) + ["plain"]
        for stage in args.stages:
            repeats = args.repeats if stage == "train" else args.infer_repeats
            fast = ["fast32", "fast"] if stage == "infer" or args.fast32 else ["fast"]
            jobs += [dict(base, stage=stage, path=p, repeats=repeats, ref=ref) for p in paths + fast]
    return jobs


def _row(job: dict[str, Any], res: dict[str, Any] | str, results: dict, gflop: float | None) -> str:
    key = (job["model"], job["stage"])
    label = f"{job['model']} (w {job['width']:g})"
    if isinstance(res, str):
        return f"{label:<18} {job['stage']:<6} {job['path']:<6} {'failed: ' + res}"
    mem = (
        f"{res['gpu_mib']:>8.0f} GPU"
        if "gpu_mib" in res
        else f"{res['rss_mib']:>7.0f} (+{res['rss_mib'] - res['rss0_mib']:.0f})"
    )
    ratios = []
    for ref_path in ("plain", "fast32", "paper"):
        base = results.get((*key, ref_path))
        if isinstance(base, dict) and ref_path != job["path"] and (ref_path != "fast32" or job["path"] == "fast"):
            ratios.append(f"{base['median_s'] / res['median_s']:.2f}x vs {ref_path}")
    bf16 = " bf16" if res.get("bf16") else ""
    rate = f"{gflop:>7.0f} {gflop / res['median_s']:>7.1f}" if gflop else f"{'':>7} {'':>7}"
    return (
        f"{label:<18} {job['stage']:<6} {job['path'] + bf16:<11} {res['median_s']:>9.2f} {mem:>17} {rate}  "
        f"{', '.join(ratios)}"
    )


def _print_machine(args: argparse.Namespace) -> None:
    """The CPU and its peak GFLOP/s per precision: derived, and measured by a matrix product."""
    if args.device != "cpu":
        return
    import torch

    from _machine import cpu_description, derived_peak, measured_peak

    if args.threads:
        torch.set_num_threads(args.threads)
    peak, gemm = derived_peak(args.threads or None), measured_peak(cpu_time=args.cpu_time)
    print(f"CPU: {cpu_description()}")
    print(f"peak GFLOP/s derived: float32 {peak['fp32_gflops']:.0f}, bf16 {peak['bf16_gflops']:.0f} ({peak['how']})")
    print(
        f"peak GFLOP/s measured ({torch.get_num_threads()} threads): 2048² matrix product float32 "
        f"{gemm['fp32_gflops']:.0f}, bf16 {gemm['bf16_gflops']:.0f}; oneDNN 1x1 convolution float32 "
        f"{gemm['fp32_conv_gflops']:.0f}, bf16 {gemm['bf16_conv_gflops']:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--stages", nargs="+", default=["train", "infer"], choices=("train", "infer"))
    p.add_argument("--width", type=float, help="channel width of every model (default: 1; IPN and IPN-V2 0.25)")
    p.add_argument("--batch", type=int, default=1, help="training batch size (default 1)")
    p.add_argument("--crop", type=int, nargs=2, default=(32, 256), metavar=("H", "W"), help="training crop")
    p.add_argument("--volume", type=int, nargs=2, default=(49, 1024), metavar=("H", "W"), help="inference volume")
    p.add_argument("--depth", type=int, default=128, help="depth D of crops and volumes (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed training steps (default 3)")
    p.add_argument("--infer-repeats", type=int, default=2, help="timed whole-volume forwards (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, i.e. the cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the process's CPU seconds instead of wall seconds: on a machine shared with other work, "
        "with --threads 1, less disturbed by it (not what a user waits)",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    p.add_argument(
        "--fast32",
        action="store_true",
        help="also time the fast training step in float32 (fast32: no bf16 autocast; "
        "inference always has its fast32 row)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, width 0.25, one repeat")
    args = p.parse_args(argv)
    if args.job:
        _worker(json.loads(args.job))
        return 0
    if args.quick:
        args.crop, args.volume, args.repeats, args.infer_repeats = (16, 128), (13, 256), 1, 1
    jobs = _jobs(args)
    print(
        f"enface speed benchmark: device {args.device}, threads {args.threads or 'default'}, "
        f"{'CPU' if args.cpu_time else 'wall'} seconds, train batch "
        f"{args.batch} x {args.crop[0]} x {args.crop[1]} x {args.depth}, volume {args.volume[0]} x {args.volume[1]} "
        f"x {args.depth}; paper code: {os.environ.get('REF_CODE') or 'not measured (set REF_CODE)'}"
    )
    _print_machine(args)
    print(
        f"{'model':<18} {'stage':<6} {'path':<11} {'median s':>9} {'peak MiB (+growth)':>17} {'GFLOP':>7} "
        f"{'GFLOP/s':>7}  speed-up"
    )
    results: dict[tuple[str, str, str], Any] = {}
    flops: dict[tuple[str, str, bool], float | None] = {}
    t0 = time.time()
    for job in jobs:
        fkey = (job["model"], job["stage"], job["path"] == "paper")
        if fkey not in flops:
            counted = _run(dict(job, flops=True), args.timeout)
            flops[fkey] = counted["gflop"] if isinstance(counted, dict) else None
        res = _run(job, args.timeout)
        results[(job["model"], job["stage"], job["path"])] = res
        print(_row(job, res, results, flops[fkey]), flush=True)
    print(f"({len(jobs)} measurements in {time.time() - t0:.0f} s)")
    return 0 if all(isinstance(r, dict) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
