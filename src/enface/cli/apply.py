"""Sub-commands that apply trained models to scans: predict."""

from __future__ import annotations

import argparse
import sys

from enface.io.formats import FORMATS as PREPARE_FORMATS  # light: no numpy


# --------------------------------------------------------------------------- predict


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="one scan or a folder -> masks, probabilities, uncertainty, overlays, areas (mm²)",
        description="Apply a segmentation checkpoint, or the top-k ensemble of a run folder, to case folders, "
        "dataset folders or device exports (any format `enface prepare` reads, prepared the same way). "
        "Writes OUT/<scan id>/{mask,probability,uncertainty,overlay}.png, probability.npy, uncertainty.npy, "
        "prediction.json and OUT/summary.csv. Failing scans are listed; exit status 1 if any failed.",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="segmentation checkpoint (.ckpt) or run folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="case folder, dataset folder, export file or folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top-k", type=int, default=5, help="checkpoints of a run folder averaged (default 5)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the mask (default 0.5)")
    p.add_argument("--format", dest="fmt", choices=PREPARE_FORMATS,
                   help="format of device exports (default: from the file suffixes; octa500 must be given)")
    p.add_argument("--depth", type=int, help="depth samples of prepared exports (default: the model's training depth)")
    p.add_argument("--window-mm", metavar="ABOVE,BELOW",
                   help="depth window around Bruch's membrane in mm (default: the training dataset's)")
    p.add_argument("--bm", choices=("auto", "export", "estimate"), default="auto", help="BM for flattening (as in prepare)")
    p.add_argument("--axes", help="stored axis order of numpy/nifti volumes, e.g. DWH (default HWD)")
    p.add_argument("--spacing", metavar="SH,SW,SD", help="voxel spacing in mm when the input does not give it")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-fast", dest="fast", action="store_false",
                   help="plain inference path (each network's own forward on the whole volume, BatchNorm unfolded)")
    p.set_defaults(handler=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from enface.data.prepare import parse_numbers
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
    )
    report = predict(args.model, args.inputs, args.out, top_k=args.top_k, options=opts, progress=not args.quiet)
    if report.failed:
        print(f"enface predict: {len(report.failed)} scan(s) failed:", file=sys.stderr)
        for r in report.failed:
            print(f"  {r.scan_id} ({r.source}): {r.reason}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1
