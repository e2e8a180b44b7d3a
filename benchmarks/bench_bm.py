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
from enface.synth.eye import EyeModel, make_grid

REGIONS: tuple[str, ...] = ("inside GA", "outside GA", "normal", "drusen", "vessels")
DRUSEN_MIN_MM = 0.01
VESSEL_MIN_PROFILE = 0.3
OUTPUT_PIXEL_UM = 850.0 / 128  # a depth sample of `enface prepare` (0.6 + 0.25 mm over 128)
CURRENT_REV = "5612664"  # the estimator before issue 22


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


def varied_eyes(seeds: list[int], shape: tuple[int, int, int]) -> list[dict]:
    """Volumes of :mod:`varied_oct` (optics, speckle and acquisition varied per eye) with their truth."""
    from varied_oct import varied_eye

    eyes = []
    for seed in seeds:
        e = varied_eye(seed, shape)
        regions = {
            "inside GA": e.ga,
            "outside GA": ~e.ga,
            "normal": ~e.ga & ~e.drusen & ~e.vessels,
            "drusen": e.drusen,
            "vessels": e.vessels,
        }
        ga_mm2 = float(e.ga.sum()) * e.spacing[0] * e.spacing[1]
        eyes.append(
            {"seed": seed, "volume": e.volume, "bm": e.bm, "spacing": e.spacing, "regions": regions, "ga_mm2": ga_mm2}
        )
        eyes[-1]["style"] = e.style
    return eyes


def summary(err_um: np.ndarray) -> dict[str, float]:
    """Mean / p95 / max of the absolute error, the signed mean (µm) and the share of A-scans off by more
    than 2 output pixels of ``enface prepare`` (0.85 mm / 128 = 6.6 µm)."""
    if err_um.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "p95": nan, "max": nan, "bias": nan, "off2": nan}
    a = np.abs(err_um)
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "bias": float(err_um.mean()),
        "off2": float((a > 2 * OUTPUT_PIXEL_UM).mean()),
    }


def bscan_offsets(err_um: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Mean signed error outside GA of each B-scan (NaN where a B-scan is all GA), ``(H,)`` µm."""
    n = outside.sum(axis=1)
    s = np.where(outside, err_um, 0.0).sum(axis=1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def evaluate(estimator: Callable[..., np.ndarray], eyes: list[dict]) -> tuple[dict, list[dict], float]:
    """Errors of one estimator: pooled per region, per eye (with its per-B-scan offsets), seconds per volume."""
    pooled: dict[str, list[np.ndarray]] = {r: [] for r in REGIONS}
    per_eye = []
    t0 = time.perf_counter()
    for eye in eyes:
        est = estimator(eye["volume"], eye["spacing"])
        err = (np.asarray(est, np.float64) - eye["bm"]) * eye["spacing"][2] * 1000.0
        for r in REGIONS:
            pooled[r].append(err[eye["regions"][r]])
        row = {r: summary(err[eye["regions"][r]]) for r in ("inside GA", "outside GA", "normal", "drusen")}
        off = bscan_offsets(err, eye["regions"]["outside GA"])
        off = off[np.isfinite(off)]
        row["offset_sd"] = float(off.std()) if off.size else float("nan")
        row["offset_range"] = (float(off.min()), float(off.max())) if off.size else (float("nan"),) * 2
        per_eye.append(row)
    seconds = (time.perf_counter() - t0) / max(1, len(eyes))
    return {r: summary(np.concatenate(pooled[r])) for r in REGIONS}, per_eye, seconds


def _print_table(results: dict[str, tuple[dict, list[dict], float]]) -> None:
    print(
        f"{'estimator':<14} {'region':<11} {'A-scans':>8} {'mean µm':>8} {'p95 µm':>7} {'max µm':>7} "
        f"{'bias µm':>8} {'> 2 px':>7}"
    )
    for name, (pooled, _, _) in results.items():
        for r in REGIONS:
            s = pooled[r]
            print(
                f"{name:<14} {r:<11} {s['n']:>8d} {s['mean']:>8.1f} {s['p95']:>7.1f} {s['max']:>7.1f} "
                f"{s['bias']:>8.1f} {100 * s['off2']:>6.1f}%"
            )
    print()
    print(f"{'estimator':<14} per-B-scan mean offset outside GA: SD within an eye (median / worst eye), range")
    for name, (_, per_eye, _) in results.items():
        sds = np.array([e["offset_sd"] for e in per_eye])
        lo = min(e["offset_range"][0] for e in per_eye)
        hi = max(e["offset_range"][1] for e in per_eye)
        worst = max(per_eye, key=lambda e: e["offset_range"][1] - e["offset_range"][0])
        print(
            f"{name:<14} SD {np.nanmedian(sds):.1f} / {np.nanmax(sds):.1f} µm; all eyes {lo:+.1f} .. {hi:+.1f} µm; "
            f"widest eye {worst['offset_range'][0]:+.1f} .. {worst['offset_range'][1]:+.1f} µm"
        )
    print("seconds per volume: " + ", ".join(f"{name} {sec:.2f}" for name, (_, _, sec) in results.items()))


def _print_per_eye(results: dict[str, tuple[dict, list[dict], float]], eyes: list[dict]) -> None:
    names = list(results)
    print()
    print("per eye: mean |error| outside GA / inside GA (µm), per-B-scan offset SD (µm)")
    print(f"{'seed':>4} {'GA mm²':>7} {'looks':>5} {'EZ/RPE':>6} {'cc/RPE':>6} " + " ".join(f"{n:>20}" for n in names))
    for i, eye in enumerate(eyes):
        st = eye.get("style", {})
        cells = []
        for n in names:
            row = results[n][1][i]
            cells.append(
                f"{row['outside GA']['mean']:>5.1f} / {row['inside GA']['mean']:>5.1f} {row['offset_sd']:>5.1f}"
            )
        extra = (
            f"{st.get('looks', ''):>5} {st.get('ez', float('nan')):>6.2f} {st.get('cc', float('nan')):>6.2f}"
            if st
            else f"{'':>5} {'':>6} {'':>6}"
        )
        print(f"{eye['seed']:>4} {eye['ga_mm2']:>7.2f} {extra} " + " ".join(f"{c:>20}" for c in cells))


def _estimators(revs: list[str]) -> dict[str, Callable[..., np.ndarray]]:
    from _git_baseline import load_module_at

    out: dict[str, Callable[..., np.ndarray]] = {}
    for rev in revs:
        path = "src/enface/data/bm.py" if rev == CURRENT_REV else "src/enface/data/preprocess.py"
        try:
            out[f"{'old' if rev != CURRENT_REV else 'issue-11'} {rev[:7]}"] = load_module_at(
                rev, path, f"enface_bm_{rev}"
            ).estimate_bm
        except RuntimeError as e:
            print(f"baseline {rev} skipped: {e}", file=sys.stderr)
    out["new"] = estimate_bm
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("varied", "phantom"), default="varied", help="test volumes (default varied)")
    p.add_argument("--eyes", type=int, default=12, help="number of eyes (seeds first-eye .. first-eye + n - 1)")
    p.add_argument("--first-eye", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--day", type=int, default=730, help="phantom: visit day (GA grows with it)")
    p.add_argument("--shape", type=int, nargs=3, default=(25, 256, 496), metavar=("H", "W", "D"))
    p.add_argument("--preset", default="spectralis", help="phantom: preset (physical extent)")
    p.add_argument("--looks", type=float, default=0.0, help="phantom: extra speckle, gamma noise of this many looks")
    p.add_argument(
        "--baseline-revs",
        default=f"93867eb,{CURRENT_REV}",
        help="git revisions of earlier estimators, comma-separated ('' for none)",
    )
    p.add_argument("--per-eye", action="store_true", help="print a line per eye")
    args = p.parse_args(argv)

    estimators = _estimators([r for r in args.baseline_revs.split(",") if r])
    seeds = list(range(args.first_eye, args.first_eye + args.eyes))
    if args.data == "varied":
        eyes = varied_eyes(seeds, tuple(args.shape))
        looks = sorted({e["style"]["looks"] for e in eyes})
        print(
            f"{len(eyes)} varied eyes (benchmarks/varied_oct.py, seeds {seeds[0]}-{seeds[-1]}), "
            f"{args.shape[0]} x {args.shape[1]} x {args.shape[2]}, speckle looks {looks}, "
            f"GA {min(e['ga_mm2'] for e in eyes):.1f}-{max(e['ga_mm2'] for e in eyes):.1f} mm²"
        )
    else:
        eyes = phantom_eyes(seeds, args.day, tuple(args.shape), args.preset, args.looks)
        sd_um = eyes[0]["spacing"][2] * 1000
        print(
            f"{len(eyes)} raw phantom eyes, {args.shape[0]} x {args.shape[1]} x {args.shape[2]}, depth spacing "
            f"{sd_um:.2f} µm, day {args.day}, GA {min(e['ga_mm2'] for e in eyes):.1f}-"
            f"{max(e['ga_mm2'] for e in eyes):.1f} mm², extra speckle: {args.looks or 'none'}"
        )
    results = {name: evaluate(fn, eyes) for name, fn in estimators.items()}
    _print_table(results)
    if args.per_eye:
        _print_per_eye(results, eyes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
