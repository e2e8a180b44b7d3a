"""Statistics of the phantom (``enface synth``): how hard, varied and imperfect it is.

Renders a cohort the way ``enface synth`` plans it (patients, eyes, visits, labeled visits)
at both difficulties, the ``easy`` one as the baseline, and prints:

* the GA area of the labeled cases (histogram and percentiles), the fraction of labeled
  cases without GA, lesion counts (foci per case, sizes of single foci);
* inter-grader agreement (reference vs second grader, every labeled case graded twice here):
  Dice overall and by reference area, area difference with Bland–Altman limits, small foci
  one grader marked and the other did not;
* contrast of GA and of each mimic against the background, per modality (OCT below BM, OCT
  RPE band, FAF, SLO);
* counts of each phenomenon (eyes without GA, multifocal, foveal sparing, iRORA, pigment
  clumps, hypertransmission patches, frames averaged, weak signal, defocused SLO, motion).

Usage::

    flock /tmp/enface-cpu.lock .venv/bin/python benchmarks/phantom_stats.py --patients 40 --seed 1

Numbers to compare with published data are in ``docs/phantom.md``.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import numpy as np
from scipy import ndimage

from enface.synth.cohort import plan_cohort
from enface.synth.eye import EyeModel, make_grid

AREA_BINS = (0.0, 0.25, 1.0, 2.5, 5.0, 10.0, 20.0, np.inf)
SIZE_GROUPS = (("< 1 mm²", 0.0, 1.0), ("1-5 mm²", 1.0, 5.0), ("> 5 mm²", 5.0, np.inf))
REGIONS = ("ga", "irora", "pigment", "hypertransmission", "drusen", "vessel", "fovea", "junction")
FEATURES = ("oct_below_bm", "oct_rpe", "faf", "slo")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def _features(case: Any) -> dict[str, np.ndarray]:
    """Per-pixel ``(H, W)`` features of one flattened scan."""
    bm = int(np.floor(case.bm[0, 0]))
    below = max(2, int(round(0.2 / case.spacing[2])))
    return {
        "oct_below_bm": case.oct[..., bm + 1 : bm + 1 + below].mean(-1),
        "oct_rpe": case.oct[..., bm - 1 : bm + 1].mean(-1),
        "faf": case.faf,
        "slo": case.slo,
    }


def _regions(case: Any, grid: Any) -> dict[str, np.ndarray]:
    """Boolean ``(H, W)`` regions of one scan: GA (truth) and each mimic outside it."""
    r = case.regions
    ga = (r["ga_truth"] if r else case.masks["ga"]) >= 0.5
    near_ga = ndimage.binary_dilation(ga, iterations=2)
    fy, fx = case.info["fovea_mm"]
    dist = np.hypot(grid.rows_mm()[:, None] - fy, grid.cols_mm()[None, :] - fx)
    out = {"ga": ga, "fovea": (dist < 0.35) & ~near_ga}
    if r:
        out.update(
            irora=(r["irora"] > 0.2) & ~near_ga,
            pigment=(r["pigment"] > 0.3) & ~near_ga,
            hypertransmission=(r["hypertransmission"] > 0.08) & ~near_ga,
            vessel=(r["vessel"] > 0.5) & ~near_ga,
            junction=(r["junction"] > 0.3) & ~ga,
        )
    if case.drusen is not None:
        out["drusen"] = (case.drusen > 0.02) & ~near_ga
    anything = np.logical_or.reduce([v for v in out.values()])
    out["background"] = ~ndimage.binary_dilation(anything, iterations=1) & (dist > 0.6)
    return out


def collect(patients: int, seed: int, preset: str, difficulty: str) -> dict[str, Any]:
    """Render the labeled cases of a planned cohort and gather what the report prints."""
    grid = make_grid(None, None, preset)
    sh, sw, _ = grid.spacing
    plan = [c for c in plan_cohort(patients, seed) if c.labeled]
    rows, contrasts = [], collections.defaultdict(list)
    eyes: dict[int, EyeModel] = {}
    qualities: list[dict[str, Any]] = []
    for c in plan:
        model = eyes.setdefault(c.eye_seed, EyeModel(c.eye_seed, grid, task="ga", eye=c.eye, difficulty=difficulty))
        case = model.render(day=c.day)
        g1, g2 = case.masks["ga"].astype(bool), case.masks["ga.grader2"].astype(bool)
        lab1, n1 = ndimage.label(g1)
        lab2, _ = ndimage.label(g2)
        foci = [float((lab1 == k).sum()) * sh * sw for k in range(1, n1 + 1)]
        # small foci of either grader that the other did not mark at all
        small_missed = small_total = 0
        for lab, other in ((lab1, g2), (lab2, g1)):
            for k in range(1, int(lab.max()) + 1):
                comp = lab == k
                if comp.sum() * sh * sw < 0.25:
                    small_total += 1
                    small_missed += int(not (comp & other).any())
        rows.append(
            dict(
                area=float(g1.sum()) * sh * sw,
                area2=float(g2.sum()) * sh * sw,
                dice=_dice(g1, g2),
                foci=foci,
                small_missed=small_missed,
                small_total=small_total,
            )
        )
        feats, regions = _features(case), _regions(case, grid)
        bg = regions["background"]
        for name in REGIONS:
            m = regions.get(name)
            if m is None or m.sum() < 3 or bg.sum() < 20:
                continue
            for f in FEATURES:
                contrasts[(name, f)].append(float(feats[f][m].mean() / max(feats[f][bg].mean(), 1e-6) - 1.0))
        if "quality" in case.info:
            qualities.append(case.info["quality"])
    counts: collections.Counter[str] = collections.Counter()
    for model in eyes.values():
        counts["eyes"] += 1
        ga = model.ga
        counts["eyes without GA"] += int(ga is None)
        if ga is not None and hasattr(ga, "foci"):
            counts["multifocal eyes (GA)"] += int(len(ga.foci) > 1)
            counts["foveal sparing (GA)"] += int(ga.spares_fovea)
        if model.mimics is not None:
            for k, v in model.mimics.counts.items():
                counts[k] += v
    for q in qualities:
        counts[f"frames={q['frames']}"] += 1
        counts["weak signal (< 0.6)"] += int(q["signal"] < 0.6)
        counts["defocused SLO"] += int(q["slo_defocused"])
    motion = [q["motion_rms_mm"] for q in qualities]
    return dict(rows=rows, contrasts=contrasts, counts=counts, motion=motion, cases=len(plan))


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = np.asarray(values)
    return f"{v.mean():.3f} (median {np.median(v):.3f}, n={len(v)})"


def report(name: str, s: dict[str, Any]) -> list[str]:
    rows = s["rows"]
    areas = np.array([r["area"] for r in rows])
    with_ga = [r for r in rows if r["area"] > 0 or r["area2"] > 0]
    lines = [f"== {name}: {s['cases']} labeled cases"]
    lines.append(f"labeled cases without GA (empty reference): {np.mean(areas == 0):.1%}")
    pos = areas[areas > 0]
    if pos.size:
        pct = np.percentile(pos, [5, 10, 25, 50, 75, 90, 95])
        lines.append(
            "GA area of cases with GA, percentiles 5/10/25/50/75/90/95 (mm²): " + " / ".join(f"{p:.2f}" for p in pct)
        )
    hist, _ = np.histogram(areas[areas > 0], bins=AREA_BINS)
    lines.append(
        "area histogram (mm²): "
        + ", ".join(f"[{a:g}, {b:g}): {n}" for a, b, n in zip(AREA_BINS[:-1], AREA_BINS[1:], hist))
    )
    foci = [f for r in rows for f in r["foci"]]
    n_foci = [len(r["foci"]) for r in rows if r["foci"]]
    if foci:
        fp = np.percentile(foci, [10, 50, 90])
        lines.append(
            f"foci (connected components of the reference): {len(foci)}; per case with GA mean {np.mean(n_foci):.2f}, "
            f"cases with > 1: {np.mean(np.array(n_foci) > 1):.1%}; focus area 10/50/90 %: "
            + " / ".join(f"{p:.3f}" for p in fp)
            + " mm²"
        )
    lines.append(f"inter-grader Dice, cases with GA in either: {_fmt([r['dice'] for r in with_ga])}")
    for label, lo, hi in SIZE_GROUPS:
        group = [r for r in with_ga if lo <= max(r["area"], r["area2"]) < hi]
        diffs = np.array([r["area2"] - r["area"] for r in group])
        ba = f"bias {diffs.mean():+.3f}, 95 % LoA ±{1.96 * diffs.std(ddof=1):.3f}" if len(group) > 1 else "n/a"
        lines.append(
            f"  {label:<9} Dice {_fmt([r['dice'] for r in group])}; |area diff| "
            f"{np.mean(np.abs(diffs)) if len(group) else float('nan'):.3f} mm², {ba}"
        )
    missed = sum(r["small_missed"] for r in rows)
    total = sum(r["small_total"] for r in rows)
    lines.append(f"foci < 0.25 mm² marked by one grader only: {missed}/{total} ({missed / max(total, 1):.1%})")
    lines.append("contrast vs background (region mean / background mean - 1), mean over cases:")
    lines.append("  " + f"{'region':<18}" + "".join(f"{f:>14}" for f in FEATURES))
    for reg in REGIONS:
        vals = [s["contrasts"].get((reg, f), []) for f in FEATURES]
        if not any(vals):
            continue
        cells = "".join(f"{np.mean(v):>+14.3f}" if v else f"{'n/a':>14}" for v in vals)
        lines.append(f"  {reg:<18}{cells}   (n={len(vals[0])})")
    counts = s["counts"]
    lines.append("phenomena: " + ", ".join(f"{k}: {counts[k]}" for k in sorted(counts)))
    if s["motion"]:
        lines.append(f"motion between B-scans, rms per scan (mm): {_fmt(s['motion'])}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", default="demo")
    args = ap.parse_args()
    for difficulty in ("realistic", "easy"):
        t0 = time.perf_counter()
        stats = collect(args.patients, args.seed, args.preset, difficulty)
        print(
            "\n".join(report(f"{difficulty} (preset {args.preset}, seed {args.seed}, {args.patients} patients)", stats))
        )
        print(f"({time.perf_counter() - t0:.0f} s)\n")


if __name__ == "__main__":
    main()
