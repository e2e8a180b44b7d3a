"""bf16 vs float32 inference, side by side: do the masks agree, and how much faster is bf16?

For every scan, the same checkpoint (or a run's top-k ensemble) runs twice on the fast path,
``precision="32"`` and ``precision="bf16"`` (alternating which goes first), through
:class:`enface.predict.Predictor` as ``enface predict`` runs it. Per scan it prints the Dice
of the two masks (``p >= threshold``), the largest and the 99.9th-percentile ``|Δp|`` of the
ensemble's mean probability, the change in mask area (bf16 minus float32, mm²), the pixels
whose label flipped and the seconds per scan in each precision; then the worst case and
whether the criteria for bf16 as the default hold (Dice >= ``--min-dice`` on every scan,
``|area change|`` <= ``--max-area-mm2``). Exit status 1 when they do not.

Inputs are what ``enface predict`` takes (case folders, dataset folders, device exports);
``--split`` keeps only the cases of a split of each dataset given. Where the CPU does not
compute bf16 natively, bf16 is emulated (slow) and the times say nothing about speed.

Run: ``.venv/bin/python benchmarks/bench_precision.py RUN DATASET --split test``
(``--help`` for the options).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from enface.data.splits import select_cases
from enface.engine.precision import native_bf16
from enface.metrics import probability_agreement
from enface.predict import PredictOptions, Predictor, find_inputs

PRECISIONS = ("32", "bf16")


def _inputs(inputs: list[str], split: str | None) -> list[Path]:
    """The inputs, each dataset folder replaced by its cases of ``split``."""
    out: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if split and (path / "dataset.json").is_file():
            out += [path / "cases" / cid for cid in select_cases(path, split)]
        else:
            out.append(path)
    return out


def compare(args: argparse.Namespace) -> list[dict]:
    """One row per scan: agreement of the bf16 and float32 predictions, and their seconds."""
    predictors = {p: Predictor.load(args.model, args.top_k, args.device, fast=True, precision=p) for p in PRECISIONS}
    items = find_inputs(_inputs(args.inputs, args.split), predictors["32"], PredictOptions(fmt=args.format))
    rows = []
    for i, item in enumerate(items):
        scan = item.load()
        means, seconds = {}, {}
        for p in PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]:
            t0 = time.perf_counter()
            means[p] = predictors[p](scan.volumes).mean[0]
            seconds[p] = time.perf_counter() - t0
        agree = probability_agreement(means["bf16"], means["32"], scan.spacing, args.threshold)
        area32 = float((means["32"] >= args.threshold).sum()) * scan.spacing[0] * scan.spacing[1]
        row = {"scan": item.scan_id, "shape": "x".join(map(str, scan.volumes.shape[1:])), "area32_mm2": area32}
        row.update(agree)
        row.update({f"s_{p}": seconds[p] for p in PRECISIONS})
        rows.append(row)
        print(
            f"{row['scan']:<22} {row['shape']:>13} {area32:>9.3f} {row['dice']:>7.4f} {row['max_abs_dp']:>9.2e} "
            f"{row['p999_abs_dp']:>9.2e} {row['area_change_mm2']:>+10.4f} {row['flipped']:>5d} "
            f"{seconds['32']:>7.2f} {seconds['bf16']:>7.2f}",
            flush=True,
        )
    return rows


def _summary(rows: list[dict], args: argparse.Namespace) -> bool:
    worst_dice = min(rows, key=lambda r: r["dice"])
    worst_area = max(rows, key=lambda r: abs(r["area_change_mm2"]))
    t32, t16 = (statistics.median(r[f"s_{p}"] for r in rows) for p in PRECISIONS)
    ok = worst_dice["dice"] >= args.min_dice and abs(worst_area["area_change_mm2"]) <= args.max_area_mm2
    print(
        f"\n{len(rows)} scans; lowest Dice {worst_dice['dice']:.4f} ({worst_dice['scan']}); largest |area change| "
        f"{abs(worst_area['area_change_mm2']):.4f} mm² ({worst_area['scan']}); max |Δp| "
        f"{max(r['max_abs_dp'] for r in rows):.2e}, max 99.9th pct {max(r['p999_abs_dp'] for r in rows):.2e}; "
        f"flipped pixels {sum(r['flipped'] for r in rows)} in all"
    )
    print(f"median s/scan: float32 {t32:.2f}, bf16 {t16:.2f} ({t32 / t16:.2f}x)")
    print(f"criteria (Dice >= {args.min_dice}, |area change| <= {args.max_area_mm2} mm²): {'met' if ok else 'NOT met'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="segmentation checkpoint or run folder")
    p.add_argument("inputs", nargs="+", help="case folders, dataset folders or device exports")
    p.add_argument("--split", help="only the cases of this split of each dataset folder given")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--format", help="format of device exports (default: from the suffixes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--min-dice", type=float, default=0.995)
    p.add_argument("--max-area-mm2", type=float, default=0.01)
    p.add_argument("--csv", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    print(f"bf16 vs float32 inference on {args.device} (bf16 native: {native_bf16(args.device)})")
    print(
        f"{'scan':<22} {'H x W x D':>13} {'area mm²':>9} {'Dice':>7} {'max|Δp|':>9} {'p99.9':>9} "
        f"{'Δarea mm²':>10} {'flip':>5} {'s fp32':>7} {'s bf16':>7}"
    )
    rows = compare(args)
    if args.csv:
        with args.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0 if _summary(rows, args) else 1


if __name__ == "__main__":
    sys.exit(main())
