"""Sub-commands that apply trained models and read their outputs: predict, progression."""

from __future__ import annotations

import argparse
import sys

from enface.cli.data import add_scan_options, parse_numbers
from enface.config import INFERENCE_PRECISION_DEFAULT, INFERENCE_PRECISIONS
from enface.io.formats import list_formats
from enface.targets import THRESHOLD

# --------------------------------------------------------------------------- predict


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="one scan or a folder -> masks, probabilities, uncertainty, overlays, areas (mm²)",
        description="Apply a segmentation checkpoint, or the top-k ensemble of a run folder, to case folders, "
        "dataset folders or device exports (any format `enface prepare` reads, prepared the same way). "
        "Writes OUT/<scan id>/{mask,probability,uncertainty,overlay}.png, probability.npy, uncertainty.npy, "
        "prediction.json and OUT/summary.csv. Failing scans are listed; exit status 1 if any failed. "
        "OUT may hold an earlier run's predictions: summary.csv keeps their rows, and a scan already there "
        "is refused unless --overwrite. OUT may not lie inside an input dataset or folder of exports; one "
        "predict at a time writes it.",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="segmentation checkpoint (.ckpt) or run folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="case folder, dataset folder, export file or folder")
    p.add_argument("--out", required=True, help="output folder (created once the model and inputs are usable)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of scans an earlier run wrote into OUT (their summary.csv rows too; "
        "the other rows are kept)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write each DICOM scan's mask as a DICOM Segmentation (seg.dcm) on an en-face image of the "
        "scan (enface.dcm), into the scan's study (docs/predict.md)",
    )
    p.add_argument("--top-k", type=int, default=5, help="checkpoints of a run folder averaged (default 5)")
    p.add_argument(
        "--threshold", type=float, default=THRESHOLD, help=f"probability threshold of the mask (default {THRESHOLD:g})"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        choices=list_formats(),
        help="format of device exports (default: from the file suffixes; octa500 must be given)",
    )
    add_scan_options(p, depth_from_training=True)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<index> or mps (default cpu)")
    p.add_argument(
        "--no-fast",
        dest="fast",
        action="store_false",
        help="plain inference path (each network's own forward on the whole volume, BatchNorm unfolded)",
    )
    add_precision(p)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes predicting scans at once, each with its own copy of the model and its share of the cores "
        "(default 1: one process, which reads and prepares the next scan while the current one is predicted)",
    )
    p.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="with one worker, read and prepare each scan only once the one before is written",
    )
    p.add_argument(
        "--timings",
        action="store_true",
        help="write OUT/timings.csv (seconds of each scan's stages: read, bm, flatten, enface, inference, write) "
        "and print the share of each stage",
    )
    p.set_defaults(handler=_cmd_predict)


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` of the commands that run inference (predict, evaluate)."""
    p.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default=INFERENCE_PRECISION_DEFAULT,
        help="what the fast path computes in: auto = bf16 where the hardware computes it natively (AVX512-BF16 "
        "or AMX CPUs, bf16 GPUs), else float32; bf16 or 32 force either (default auto; see docs/speed.md)",
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    from enface.predict import PredictOptions, predict

    opts = PredictOptions(
        fmt=args.fmt,
        threshold=args.threshold,
        depth=args.depth,
        window_mm=parse_numbers(args.window_mm, 2, "--window-mm") if args.window_mm else None,  # type: ignore[arg-type]
        bm=args.bm,
        axes=args.axes,
        spacing=parse_numbers(args.spacing, 3, "--spacing") if args.spacing else None,  # type: ignore[arg-type]
        device=args.device,
        fast=args.fast,
        precision=args.precision,
        dicom_seg=args.dicom_seg,
        workers=args.workers,
        overlap=args.overlap,
        timings=args.timings,
    )
    report = predict(
        args.model,
        args.inputs,
        args.out,
        top_k=args.top_k,
        options=opts,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    if report.failed:
        print(f"enface predict: {len(report.failed)} scan(s) failed:", file=sys.stderr)
        for r in report.failed:
            print(f"  {r.scan_id} ({r.source}): {r.reason}", file=sys.stderr)
    print(report.summary())
    stages = report.stage_seconds() if args.timings else {}
    if stages:  # none when no scan was predicted
        total = sum(stages.values()) or 1.0
        shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in stages.items())
        print(f"stages ({total:.1f} s over the scans predicted): {shares}")
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- progression


def add_progression(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "progression",
        help="masks over visits -> GA area, lesion features and growth rates per eye",
        description="Per visit: area (mm²), √area, foci, perimeter, circularity; per eye: growth of the area "
        "(mm²/year) and of √area (mm/year) by least squares over the visits (95 %% interval from 3 visits); "
        "per cohort: mean ± SD. From the dataset's reference masks (--reference) or from a folder of "
        "`enface predict` (--predictions), then with the rates' agreement against the reference masks. "
        "Writes OUT/{visits,eyes,skipped}.csv, cohort.json, sqrt_area.png, report.html "
        "(+ agreement.csv, bland_altman.png, reference_*.csv).",
    )
    p.add_argument("dataset", help="dataset folder (reference masks; case meta of predicted scans)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", metavar="DIR", help="output folder of `enface predict`")
    src.add_argument("--reference", action="store_true", help="use the dataset's reference masks")
    p.add_argument("--grader", help="reference masks of this extra grader (mask_<task>.<grader>.png)")
    p.add_argument("--task", help="mask task (default: the predictions' task, else the dataset's only task)")
    p.add_argument("--split", choices=("train", "val", "test"), help="only the patients of this split (splits.json)")
    p.add_argument(
        "--min-focus-mm2",
        type=float,
        default=None,
        help="smallest connected component counted as a focus, mm² (default 0.05)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=_cmd_progression)


def _cmd_progression(args: argparse.Namespace) -> int:
    from enface.progression import MIN_FOCUS_MM2
    from enface.progression.run import run_progression
    from enface.progression.stats import mean_sd_text

    res = run_progression(
        args.dataset,
        args.out,
        predictions=args.predictions,
        grader=args.grader,
        task=args.task,
        min_focus_mm2=MIN_FOCUS_MM2 if args.min_focus_mm2 is None else args.min_focus_mm2,
        split=args.split,
    )
    c = res.cohort
    g, s = c["growth_mm2_per_year"], c["sqrt_growth_mm_per_year"]
    print(f"{c['visits']} visits of {c['eyes']} eyes ({c['eyes_with_rate']} with a rate; {c['skipped']} left out)")
    print(f"  growth        {mean_sd_text(g, 'mm²/year')}")
    print(f"  √area growth  {mean_sd_text(s, 'mm/year')}")
    if c["agreement"]:
        for rate, unit in (("sqrt_growth_mm_per_year", "mm/year"), ("growth_mm2_per_year", "mm²/year")):
            a = c["agreement"][rate]
            print(
                f"  agreement {rate}: bias {a['bias']:.3f} {unit}, LoA [{a['loa_low']:.3f}, {a['loa_high']:.3f}], "
                f"ICC(A,1) {a['icc']:.3f} ({a['n']} eyes)"
            )
    for note in c["notes"]:
        print(f"  note: {note}")
    print(f"report: {res.out / 'report.html'}")
    return 0
