"""Sub-commands about data and models: models, import-weights, synth, show, prepare, check, split."""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

from enface.data.options import BM_CHOICES, DEFAULT_BM, FlattenParams, PrepareOptions  # light: no SciPy
from enface.io.formats import list_formats

_PREPARE_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(PrepareOptions) if f.default is not dataclasses.MISSING
}
"""PrepareOptions' defaults: what `enface prepare` shows in --help and uses when an option is not given."""


def parse_numbers(text: str, n: int, what: str) -> tuple[float, ...]:
    """``"a,b,c"`` -> ``n`` floats (CLI helper).

    Raises:
        ValueError: not ``n`` numbers, naming the option ``what``.
    """
    words = {2: "two", 3: "three"}.get(n, str(n))
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise ValueError(f"{what} must be {words} numbers separated by commas, got {text!r}")
    return vals


def add_scan_options(p: argparse.ArgumentParser, depth_from_training: bool) -> None:
    """The options of how scans are read and flattened, one declaration for ``prepare`` and
    ``predict``: ``--depth``, ``--window-mm``, ``--bm``, ``--axes``, ``--spacing``.

    Args:
        p: the sub-command's parser.
        depth_from_training: ``predict``: depth and window default to the model's training
            data (``None`` here); ``prepare``: to :class:`~enface.data.options.FlattenParams`.
    """
    flat = FlattenParams()
    if depth_from_training:
        depth, window = None, None
        depth_help = "depth samples of prepared exports (default: the model's training depth)"
        window_help = "depth window around Bruch's membrane in mm (default: the training dataset's)"
    else:
        depth, window = flat.depth, f"{flat.above_mm:g},{flat.below_mm:g}"
        depth_help = f"output depth samples (default {depth})"
        window_help = f"depth window kept around Bruch's membrane in mm (default {window})"
    p.add_argument("--depth", type=int, default=depth, help=depth_help)
    p.add_argument("--window-mm", default=window, metavar="ABOVE,BELOW", help=window_help)
    p.add_argument(
        "--bm",
        choices=BM_CHOICES,
        default=DEFAULT_BM,
        help="BM for flattening: the export's when present (auto), only the export's, or always estimated "
        f"(default {DEFAULT_BM})",
    )
    p.add_argument("--axes", help="stored axis order of numpy/nifti volumes, e.g. HWD or DWH (default HWD)")
    p.add_argument("--spacing", metavar="SH,SW,SD", help="voxel spacing in mm when the input does not give it")


# --------------------------------------------------------------------------- models


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--out-channels", type=int, default=1)
    p.set_defaults(handler=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from enface.models import count_parameters, create_model, list_models

    print(f"{'model':<12} {'parameters':>12}   (width {args.width:g}, 1 in, {args.out_channels} out)")
    for name in list_models():
        n = count_parameters(create_model(name, out_channels=args.out_channels, width=args.width))
        print(f"{name:<12} {n:>12,}")
    return 0


def add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-weights", help="a checkpoint of the paper's public code -> an enface checkpoint")
    p.add_argument("source", metavar="SRC", help="checkpoint or state dict saved by j-morano/multimodal-ssl-fpn")
    p.add_argument("out", metavar="OUT", help="enface checkpoint to write (usable with --init, predict, evaluate)")
    p.add_argument("--model", required=True, choices=("fpn", "resensnet", "lachinov"))
    p.add_argument("--task", choices=("segment", "reconstruct"), default="segment", help="what it was trained for")
    p.add_argument("--target", help="its mask task (segment) or reconstructed modality: slo, faf, faf_inv")
    p.set_defaults(handler=_cmd_import_weights)


def _cmd_import_weights(args: argparse.Namespace) -> int:
    from enface.engine.paper_weights import import_paper_weights

    print(f"imported {import_paper_weights(args.source, args.out, args.model, args.task, args.target).summary()}")
    return 0


# --------------------------------------------------------------------------- prepare / check


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="convert device exports / other formats into a dataset folder",
        description="Read every scan of SRC, flatten it along Bruch's membrane, resample depth, "
        "bring SLO/FAF/masks onto the en-face grid and write one case per scan into OUT. "
        "Finished cases are skipped on a re-run; failing scans are listed at the end.",
    )
    p.add_argument("src", help="source folder (or one file)")
    p.add_argument("out", help="dataset folder to write")
    p.add_argument("--format", dest="fmt", required=True, choices=list_formats(), help="input format")
    p.add_argument("--name", help="dataset name (default: the OUT folder name)")
    add_scan_options(p, depth_from_training=False)
    p.add_argument("--octa", action="store_true", help="octa500: add OCTA as a second input channel (octa.npy)")
    p.add_argument("--tasks", metavar="T1,T2", help="keep only these mask tasks (octa500: e.g. largevessel,faz)")
    p.add_argument(
        "--no-register-faf", action="store_true", help="do not register FAF to SLO (assume it covers the SLO's field)"
    )
    d = _PREPARE_DEFAULTS
    p.add_argument(
        "--faf-model",
        choices=("rigid", "similarity", "affine"),
        default=d["faf_model"],
        help=f"FAF-to-SLO registration model (default {d['faf_model']})",
    )
    p.add_argument(
        "--faf-min-quality",
        type=float,
        default=d["faf_min_quality"],
        help=f"drop FAF whose registration quality is below this (default {d['faf_min_quality']})",
    )
    p.add_argument(
        "--patient-regex",
        metavar="REGEX",
        help="regex with a group (?P<patient>...) applied to file names when the input gives no patient id",
    )
    p.add_argument(
        "--eye",
        default=d["default_eye"],
        choices=("OD", "OS"),
        help=f"eye when the input does not say (default {d['default_eye']})",
    )
    p.add_argument("--seed", type=int, default=d["seed"], help=f"seed of the patient split (default {d['seed']})")
    ratios = ",".join(f"{r:g}" for r in d["ratios"])
    p.add_argument("--ratios", default=ratios, metavar="TR,VA,TE", help=f"train/val/test ratios (default {ratios})")
    p.add_argument("--overwrite", action="store_true", help="re-prepare cases that already exist")
    p.add_argument("--resplit", action="store_true", help="rewrite splits.json even when it exists")
    p.add_argument(
        "--workers", type=int, default=1, help="scans prepared at once, one process each (default 1; same output)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_prepare)


def prepare_options(args: argparse.Namespace) -> PrepareOptions:
    """The :class:`~enface.data.options.PrepareOptions` of parsed ``enface prepare`` arguments."""

    above, below = parse_numbers(args.window_mm, 2, "--window-mm")
    return PrepareOptions(
        fmt=args.fmt,
        flatten=FlattenParams(above_mm=above, below_mm=below, depth=args.depth),
        bm=args.bm,
        axes=args.axes,
        spacing=parse_numbers(args.spacing, 3, "--spacing") if args.spacing else None,  # type: ignore[arg-type]
        octa=args.octa,
        tasks=tuple(t for t in args.tasks.split(",") if t) if args.tasks else None,
        register_faf=not args.no_register_faf,
        faf_model=args.faf_model,
        faf_min_quality=args.faf_min_quality,
        patient_regex=args.patient_regex,
        default_eye=args.eye,
        name=args.name,
        seed=args.seed,
        ratios=parse_numbers(args.ratios, 3, "--ratios"),  # type: ignore[arg-type]
        overwrite=args.overwrite,
        resplit=args.resplit,
    )


def _cmd_prepare(args: argparse.Namespace) -> int:
    from enface.data.prepare import prepare_dataset

    opts = prepare_options(args)
    progress = not args.no_progress and not args.quiet
    report = prepare_dataset(args.src, args.out, opts, progress=progress, workers=args.workers)
    print(report.summary())
    return 0 if report.ok else 1


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate a dataset folder and print a report",
        description="Check dataset.json, splits.json (no patient in two splits) and every case: "
        "files present and readable, shapes consistent, finite voxels, binary masks. "
        "Exit status 1 when problems are found.",
    )
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--quick", action="store_true", help="skip reading every voxel (no NaN/inf check)")
    p.set_defaults(handler=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from enface.data.check import check_dataset

    report = check_dataset(args.dataset, deep=not args.quick)
    print(report.format())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- split


def add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="patient-wise train/val/test splits and label fractions (splits.json)")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the label fractions (default 0)")
    p.add_argument(
        "--ratios",
        type=float,
        nargs=3,
        default=(0.6, 0.1, 0.3),
        metavar=("TRAIN", "VAL", "TEST"),
        help="patient fractions of train/val/test when a split is made (default 0.6 0.1 0.3)",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=(0.05, 0.1, 0.2, 1.0),
        metavar="F",
        help="label fractions in (0, 1] (default 0.05 0.1 0.2 1.0)",
    )
    p.add_argument(
        "--tasks", nargs="+", metavar="TASK", help="tasks to make label fractions for (default: all with masks)"
    )
    p.add_argument("--redo", action="store_true", help="re-split train/val/test even if splits.json has an assignment")
    p.set_defaults(handler=_cmd_split)


def _cmd_split(args: argparse.Namespace) -> int:
    from enface.data.folder import list_cases
    from enface.data.splits import SPLITS, split_dataset

    out = split_dataset(
        args.dataset, seed=args.seed, ratios=args.ratios, fractions=args.fractions, tasks=args.tasks, redo=args.redo
    )
    n_cases = {k: 0 for k in SPLITS}
    where = {pid: k for k in SPLITS for pid in out[k]}
    for case in list_cases(args.dataset):
        if case.patient_id in where:
            n_cases[where[case.patient_id]] += 1
    print(f"{'split':<8} {'patients':>9} {'cases':>7}")
    for k in SPLITS:
        print(f"{k:<8} {len(out[k]):>9} {n_cases[k]:>7}")
    for task, table in out["fractions"].items():
        counts = ", ".join(f"{key}%: {len(pids)}" for key, pids in table.items())
        print(f"label fractions of {task!r} (labeled training patients): {counts}")
    print(f"wrote {args.dataset}/splits.json (seed {out['seed']})")
    return 0


# --------------------------------------------------------------------------- synth / show


def add_synth(sub: argparse._SubParsersAction) -> None:
    from enface.synth.presets import PRESETS

    p = sub.add_parser(
        "synth",
        help="write a phantom dataset (OCT + SLO + FAF + GA/RPD masks; no download)",
        description="Write a dataset folder of phantom eyes: patients with one or two eyes, 1-3 "
        "visits each (lesions grow), some visits unlabeled, some without FAF. Presets: "
        + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()),
    )
    p.add_argument("out", help="dataset folder to write (absent or empty)")
    p.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("H", "W", "D"),
        help="grid: B-scans, A-scans, depth (default: the preset's; spacing scales with it)",
    )
    p.add_argument("--task", choices=("ga", "rpd", "both"), default="ga", help="lesions and masks (default ga)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="demo", help="acquisition preset (default demo)")
    p.add_argument("--label-fraction", type=float, default=0.7, help="share of labeled visits (default 0.7)")
    p.add_argument("--faf-fraction", type=float, default=0.85, help="share of visits with FAF (default 0.85)")
    p.add_argument(
        "--grader2-fraction",
        type=float,
        default=0.3,
        help="share of labeled visits with a second grader's masks (default 0.3)",
    )
    p.add_argument(
        "--difficulty",
        choices=("realistic", "easy"),
        default="realistic",
        help="realistic (default: GA from tiny to large or none, mimics, graders who disagree, clinical "
        "image quality; see docs/phantom.md) or easy (unit tests)",
    )
    p.add_argument("--name", help="dataset name (default phantom-<preset>-<task>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from enface.synth.cohort import synthesize_dataset

    # the library logs the summary line (cases, labeled, FAF, where, how long)
    synthesize_dataset(
        args.out,
        patients=args.patients,
        seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
        task=args.task,
        preset=args.preset,
        label_fraction=args.label_fraction,
        faf_fraction=args.faf_fraction,
        grader2_fraction=args.grader2_fraction,
        difficulty=args.difficulty,
        name=args.name,
        overwrite=args.overwrite,
        progress=not args.no_progress and not args.quiet,
    )
    return 0


def add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="figure of one case: B-scan with mask, mask, SLO with B-scan position, FAF")
    p.add_argument("case_dir", help="case folder (<dataset>/cases/<case_id>)")
    p.add_argument("--out", required=True, help="image to write (.png, .pdf or .svg)")
    p.add_argument("--bscan", type=int, help="B-scan index (default: the one crossing the most labeled pixels)")
    p.add_argument("--task", help="mask to show (default: the case's first)")
    p.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    from enface.viz import show_case

    print(f"figure: {show_case(args.case_dir, args.out, bscan=args.bscan, task=args.task)}")
    return 0
