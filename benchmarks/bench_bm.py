"""Bruch's-membrane (BM) estimation accuracy on the un-flattened phantom, inside vs outside GA.

The phantom's raw (un-flattened) scans carry the true BM (``generate_case(...,
flattened=False)``): a curved, tilted, undulating surface with per-B-scan axial jitter, under
large GA lesions (the eyes are taken two years after their first visit, so the lesions have
grown), drusen (the RPE lifted off BM by up to 80 µm) and retinal vessels that shadow
everything below them. Each volume is 25 x 256 x 496 (Spectralis-like, 3.9 µm depth
spacing) by default.

For each estimator the absolute error |estimate - truth| (µm) is summarised per region:

* **inside GA**: A-scans of the GA label (RPE loss);
* **outside GA**: every other A-scan;
* **normal**: outside GA, off drusen and off large vessels;
* **drusen**: outside GA where drusen lift the RPE more than 10 µm;
* **vessels**: outside GA, under a retinal vessel (its shadow).

as mean, 95th percentile and maximum over the A-scans of all eyes, with the signed mean
(bias; negative = estimate above the true BM, towards the vitreous). The ratio of the
inside-GA error to the outside-GA error (and to the normal-retina error) is the target of
issue 11 (within 1.5x).

The old estimator is the ``estimate_bm`` of ``--baseline-rev`` (default ``93867eb``, before
issue 11), read from git and run side by side on the same volumes.

Run: ``.venv/bin/python benchmarks/bench_bm.py`` (``--help`` for eyes, sizes and noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from enface.data.preprocess import estimate_bm
from enface.synth import EyeModel, make_grid

REGIONS: tuple[str, ...] = ("inside GA", "outside GA", "normal", "drusen", "vessels")
DRUSEN_MIN_MM = 0.01
VESSEL_MIN_PROFILE = 0.3


def phantom_eyes(seeds: list[int], day: int, shape: tuple[int, int, int], preset: str, looks: float) -> list[dict]:
    """Raw phantom scans with their true BM and region masks.

    Args:
        seeds: eye seeds.
        day: visit day (lesions grow with it).
        shape: ``(H, W, D)``.
        preset: phantom preset (sets the physical extent).
        looks: extra multiplicative speckle (gamma, this many looks); 0 for none.

    Returns:
        One dict per eye: ``volume``, ``bm`` (truth, voxels), ``spacing``, ``regions``
        (name -> ``(H, W)`` bool), ``ga_mm2``.
    """
    grid = make_grid(shape, None, preset)
    eyes = []
    for seed in seeds:
        model = EyeModel(seed, grid, task="ga")
        case = model.render(day=day, flattened=False)
        volume = case.oct
        if looks > 0:
            rng = np.random.default_rng([seed, 11])
            volume = volume * (rng.standard_gamma(looks, volume.shape).astype(np.float32) / np.float32(looks))
        ga = case.masks["ga"] > 0
        drusen = (case.drusen > DRUSEN_MIN_MM) & ~ga
        vessels = (model.canvas.to_grid(model.vessels.profile, grid) > VESSEL_MIN_PROFILE) & ~ga
        regions = {
            "inside GA": ga,
            "outside GA": ~ga,
            "normal": ~ga & ~drusen & ~vessels,
            "drusen": drusen,
            "vessels": vessels,
        }
        eyes.append(
            {
                "seed": seed,
                "volume": volume,
                "bm": case.bm,
                "spacing": case.spacing,
                "regions": regions,
                "ga_mm2": case.info.get("ga_area_mm2", 0.0),
            }
        )
    return eyes


def summary(err_um: np.ndarray) -> dict[str, float]:
    """Mean / p95 / max of the absolute error and the signed mean (µm)."""
    if err_um.size == 0:
        return {"n": 0, "mean": float("nan"), "p95": float("nan"), "max": float("nan"), "bias": float("nan")}
    a = np.abs(err_um)
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "bias": float(err_um.mean()),
    }


def evaluate(estimator: Callable[..., np.ndarray], eyes: list[dict]) -> tuple[dict, list[dict], float]:
    """Errors of one estimator: pooled per region, per eye, and seconds per volume."""
    pooled: dict[str, list[np.ndarray]] = {r: [] for r in REGIONS}
    per_eye = []
    t0 = time.perf_counter()
    for eye in eyes:
        est = estimator(eye["volume"], eye["spacing"])
        err = (np.asarray(est, np.float64) - eye["bm"]) * eye["spacing"][2] * 1000.0
        for r in REGIONS:
            pooled[r].append(err[eye["regions"][r]])
        per_eye.append({r: summary(err[eye["regions"][r]]) for r in ("inside GA", "normal", "drusen")})
    seconds = (time.perf_counter() - t0) / max(1, len(eyes))
    return {r: summary(np.concatenate(pooled[r])) for r in REGIONS}, per_eye, seconds


def _print_table(results: dict[str, tuple[dict, list[dict], float]]) -> None:
    print(f"{'estimator':<12} {'region':<11} {'A-scans':>8} {'mean µm':>8} {'p95 µm':>7} {'max µm':>7} {'bias µm':>8}")
    for name, (pooled, _, _) in results.items():
        for r in REGIONS:
            s = pooled[r]
            print(
                f"{name:<12} {r:<11} {s['n']:>8d} {s['mean']:>8.1f} {s['p95']:>7.1f} {s['max']:>7.1f} {s['bias']:>8.1f}"
            )
    print()
    print(f"{'estimator':<12} {'inside GA / ...':<16} {'mean':>6} {'p95':>6} {'max':>6}")
    for name, (pooled, _, _sec) in results.items():
        ins = pooled["inside GA"]
        for ref_name in ("outside GA", "normal"):
            ref = pooled[ref_name]
            print(
                f"{name:<12} {ref_name:<16} {ins['mean'] / ref['mean']:>5.2f}x {ins['p95'] / ref['p95']:>5.2f}x "
                f"{ins['max'] / ref['max']:>5.2f}x"
            )
    print("seconds per volume: " + ", ".join(f"{name} {sec:.2f}" for name, (_, _, sec) in results.items()))


def _print_per_eye(results: dict[str, tuple[dict, list[dict], float]], eyes: list[dict]) -> None:
    names = list(results)
    print()
    head = " ".join(f"{n + ' GA mean/p95/max':>24}" for n in names)
    print(f"{'seed':>4} {'GA mm²':>7} {head}")
    for i, eye in enumerate(eyes):
        cells = []
        for n in names:
            s = results[n][1][i]["inside GA"]
            cells.append(f"{s['mean']:>8.1f} {s['p95']:>6.1f} {s['max']:>6.1f}   ")
        print(f"{eye['seed']:>4} {eye['ga_mm2']:>7.2f} {' '.join(c.rjust(24) for c in cells)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eyes", type=int, default=10, help="number of phantom eyes (seeds 0..n-1)")
    p.add_argument("--day", type=int, default=730, help="visit day (GA grows with it)")
    p.add_argument("--shape", type=int, nargs=3, default=(25, 256, 496), metavar=("H", "W", "D"))
    p.add_argument("--preset", default="spectralis", help="phantom preset (physical extent)")
    p.add_argument("--looks", type=float, default=0.0, help="extra speckle: gamma noise of this many looks")
    p.add_argument("--baseline-rev", default="93867eb", help="git revision of the old estimator ('' to skip)")
    args = p.parse_args(argv)

    estimators: dict[str, Callable[..., np.ndarray]] = {}
    if args.baseline_rev:
        from _git_baseline import load_module_at

        try:
            old = load_module_at(args.baseline_rev, "src/enface/data/preprocess.py", "enface_old_preprocess")
            estimators[f"old {args.baseline_rev[:7]}"] = old.estimate_bm
        except RuntimeError as e:
            print(f"baseline skipped: {e}", file=sys.stderr)
    estimators["new"] = estimate_bm
    eyes = phantom_eyes(list(range(args.eyes)), args.day, tuple(args.shape), args.preset, args.looks)
    sd_um = eyes[0]["spacing"][2] * 1000
    print(
        f"{len(eyes)} raw phantom eyes, {args.shape[0]} x {args.shape[1]} x {args.shape[2]}, depth spacing "
        f"{sd_um:.2f} µm, day {args.day}, GA {min(e['ga_mm2'] for e in eyes):.1f}-"
        f"{max(e['ga_mm2'] for e in eyes):.1f} mm², extra speckle: {args.looks or 'none'}"
    )
    results = {name: evaluate(fn, eyes) for name, fn in estimators.items()}
    _print_table(results)
    _print_per_eye(results, eyes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
