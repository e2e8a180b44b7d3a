"""The ``enface`` command line: one entry point with sub-commands.

Thin by design: each sub-command parses its arguments and calls the library. Library
errors that concern the user's input (:class:`ValueError`, :class:`FileNotFoundError`,
:class:`enface.data.folder.DatasetError`) are printed as one clear line with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

log = logging.getLogger("enface")

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- models


def _add_models(sub: argparse._SubParsersAction) -> None:
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


# --------------------------------------------------------------------------- prepare / check


PREPARE_FORMATS = ("vol", "xml", "e2e", "octa500", "nifti", "numpy")  # = enface.data.prepare.FORMATS


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="convert device exports / other formats into a dataset folder",
        description="Read every scan of SRC, flatten it along Bruch's membrane, resample depth, "
        "bring SLO/FAF/masks onto the en-face grid and write one case per scan into OUT. "
        "Finished cases are skipped on a re-run; failing scans are listed at the end.",
    )
    p.add_argument("src", help="source folder (or one file)")
    p.add_argument("out", help="dataset folder to write")
    p.add_argument("--format", dest="fmt", required=True, choices=PREPARE_FORMATS, help="input format")
    p.add_argument("--name", help="dataset name (default: the OUT folder name)")
    p.add_argument("--depth", type=int, default=128, help="output depth samples (default 128)")
    p.add_argument("--window-mm", default="0.6,0.25", metavar="ABOVE,BELOW",
                   help="depth window kept around Bruch's membrane in mm (default 0.6,0.25)")
    p.add_argument("--bm", choices=("auto", "export", "estimate"), default="auto",
                   help="BM for flattening: the export's when present (auto), only the export's, or always estimated")
    p.add_argument("--axes", help="stored axis order of numpy/nifti volumes, e.g. HWD or DWH (default HWD)")
    p.add_argument("--spacing", metavar="SH,SW,SD", help="voxel spacing in mm when the input does not give it")
    p.add_argument("--octa", action="store_true", help="octa500: add OCTA as a second input channel (octa.npy)")
    p.add_argument("--tasks", metavar="T1,T2", help="keep only these mask tasks (octa500: e.g. largevessel,faz)")
    p.add_argument("--no-register-faf", action="store_true",
                   help="do not register FAF to SLO (assume it covers the SLO's field)")
    p.add_argument("--faf-model", choices=("rigid", "similarity", "affine"), default="affine",
                   help="FAF-to-SLO registration model (default affine)")
    p.add_argument("--faf-min-quality", type=float, default=0.3,
                   help="drop FAF whose registration quality is below this (default 0.3)")
    p.add_argument("--patient-regex", metavar="REGEX",
                   help="regex with a group (?P<patient>...) applied to file names when the input gives no patient id")
    p.add_argument("--eye", default="OD", choices=("OD", "OS"), help="eye when the input does not say (default OD)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    p.add_argument("--ratios", default="0.6,0.1,0.3", metavar="TR,VA,TE", help="train/val/test ratios (default 0.6,0.1,0.3)")
    p.add_argument("--overwrite", action="store_true", help="re-prepare cases that already exist")
    p.add_argument("--resplit", action="store_true", help="rewrite splits.json even when it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from enface.data.prepare import PrepareOptions, parse_numbers, prepare_dataset
    from enface.data.preprocess import FlattenParams

    above, below = parse_numbers(args.window_mm, 2, "--window-mm")
    opts = PrepareOptions(
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
    report = prepare_dataset(args.src, args.out, opts, progress=not args.no_progress and not args.quiet)
    print(report.summary())
    return 0 if report.ok else 1


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a dataset folder and print a report",
                       description="Check dataset.json, splits.json (no patient in two splits) and every case: "
                       "files present and readable, shapes consistent, finite voxels, binary masks. "
                       "Exit status 1 when problems are found.")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--quick", action="store_true", help="skip reading every voxel (no NaN/inf check)")
    p.set_defaults(handler=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from enface.data.check import check_dataset

    report = check_dataset(args.dataset, deep=not args.quick)
    print(report.format())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- split


def _add_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="patient-wise train/val/test splits and label fractions (splits.json)")
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the label fractions (default 0)")
    p.add_argument("--ratios", type=float, nargs=3, default=(0.6, 0.1, 0.3), metavar=("TRAIN", "VAL", "TEST"),
                   help="patient fractions of train/val/test when a split is made (default 0.6 0.1 0.3)")
    p.add_argument("--fractions", type=float, nargs="+", default=(0.05, 0.1, 0.2, 1.0), metavar="F",
                   help="label fractions in (0, 1] (default 0.05 0.1 0.2 1.0)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to make label fractions for (default: all with masks)")
    p.add_argument("--redo", action="store_true", help="re-split train/val/test even if splits.json has an assignment")
    p.set_defaults(handler=_cmd_split)


def _cmd_split(args: argparse.Namespace) -> int:
    from enface.data.folder import list_cases
    from enface.data.splits import SPLITS, split_dataset

    out = split_dataset(args.dataset, seed=args.seed, ratios=args.ratios, fractions=args.fractions,
                        tasks=args.tasks, redo=args.redo)
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


# --------------------------------------------------------------------------- pretrain / train


def _add_run_options(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", help="YAML config (sections common/pretrain/train; see configs/paper.yaml)")
    p.add_argument("--dataset", help="dataset folder")
    if stage == "pretrain":
        p.add_argument("--target", choices=("slo", "faf", "faf_inv"), help="2D modality to reconstruct (default faf_inv)")
    else:
        p.add_argument("--task", dest="target", help="mask task to segment, e.g. ga")
        p.add_argument("--init", help="checkpoint to initialise from (e.g. a pre-training run's best)")
        p.add_argument("--fraction", type=float, help="label fraction of the training patients, in (0, 1]")
    p.add_argument("--model", help="registered model name (see `enface models`)")
    p.add_argument("--width", type=float, help="channel multiplier")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--runs-dir", help="root of the run folders (default runs)")
    p.add_argument("--accelerator", help="Lightning accelerator: auto, cpu, gpu, ...")
    p.add_argument("--devices", help="Lightning devices: 1, 2, auto, ...")
    p.add_argument("--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ...")
    p.add_argument("--precision", help="Lightning precision: 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config field")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_fit, stage=stage)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    _add_run_options(sub.add_parser("pretrain", help="self-supervised reconstruction pre-training (OCT -> SLO/FAF)"), "pretrain")


def _add_train(sub: argparse._SubParsersAction) -> None:
    _add_run_options(sub.add_parser("train", help="segmentation training, from scratch or from a checkpoint"), "train")


def _cmd_fit(args: argparse.Namespace) -> int:
    from enface.config import load_config, parse_overrides
    from enface.engine.fit import fit

    overrides = parse_overrides(args.set)
    for name in ("dataset", "target", "init", "fraction", "model", "width", "seed", "epochs", "batch_size",
                 "runs_dir", "accelerator", "devices", "strategy", "precision", "num_nodes", "compile"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    config = load_config(args.config, args.stage, overrides)
    from enface.engine.module import NonFiniteLossError

    try:
        result = fit(config, resume=args.resume, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"enface {args.stage}: stopped: {e}", file=sys.stderr)
        return 3
    best = f"{result.best[0][1]:.4f}" if result.best else "n/a"
    print(f"{args.stage} {result.status}: best {result.metric} {best} after {result.epochs} epochs")
    print(f"run folder: {result.run_dir}")
    if result.best:
        print(f"best checkpoint: {result.best[0][0]}")
    return 0 if result.status in ("finished", "skipped") else 1


# --------------------------------------------------------------------------- synth / show


def _add_synth(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--shape", type=int, nargs=3, metavar=("H", "W", "D"),
                   help="grid: B-scans, A-scans, depth (default: the preset's; spacing scales with it)")
    p.add_argument("--task", choices=("ga", "rpd", "both"), default="ga", help="lesions and masks (default ga)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="demo", help="acquisition preset (default demo)")
    p.add_argument("--label-fraction", type=float, default=0.7, help="share of labeled visits (default 0.7)")
    p.add_argument("--faf-fraction", type=float, default=0.85, help="share of visits with FAF (default 0.85)")
    p.add_argument("--grader2-fraction", type=float, default=0.3,
                   help="share of labeled visits with a second grader's masks (default 0.3)")
    p.add_argument("--name", help="dataset name (default phantom-<preset>-<task>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from enface.synth import synthesize_dataset

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
        name=args.name,
        overwrite=args.overwrite,
        progress=not args.no_progress and not args.quiet,
    )
    return 0


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="figure of one case: B-scan with mask, mask, SLO with B-scan position, FAF",
    )
    p.add_argument("case_dir", help="case folder (<dataset>/cases/<case_id>)")
    p.add_argument("--out", required=True, help="image to write (.png, .pdf or .svg)")
    p.add_argument("--bscan", type=int, help="B-scan index (default: the one crossing the most labeled pixels)")
    p.add_argument("--task", help="mask to show (default: the case's first)")
    p.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    from enface.viz import show_case

    print(f"figure: {show_case(args.case_dir, args.out, bscan=args.bscan, task=args.task)}")
    return 0


# --------------------------------------------------------------------------- evaluate


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-k ensemble of a run on a split: per-case CSV + summary")
    p.add_argument("run", help="segmentation run folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--dataset", help="evaluate on another dataset folder (default: the run's)")
    p.add_argument("--task", help="mask task (default: the run's)")
    p.add_argument("--top-k", type=int, default=5, help="checkpoints averaged (default 5)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--out", help="output folder (default <run>/eval/<dataset>-<split>)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from enface.evaluate import evaluate

    res = evaluate(args.run, split=args.split, dataset=args.dataset, task=args.task, top_k=args.top_k,
                   threshold=args.threshold, out_dir=args.out, device=args.device)
    m = res.summary["metrics"]
    print(f"{res.summary['n_cases']} cases, {len(res.summary['checkpoints'])} checkpoints averaged")
    for name in ("dice", "area_diff_mm2", "hd95_mm"):
        extra = f" ({m[name]['n_undefined']} undefined)" if m[name]["n_undefined"] else ""
        print(f"  {name:<14} mean {m[name]['mean']:.4f}  std {m[name]['std']:.4f}  median {m[name]['median']:.4f}{extra}")
    print(f"per-case table: {res.out_dir / 'cases.csv'}")
    print(f"summary: {res.out_dir / 'summary.json'}")
    return 0


# --------------------------------------------------------------------------- experiment / demo


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="the label-efficiency study from one YAML (resumable)")
    p.add_argument("study", help="study YAML (see configs/phantom-study.yaml)")
    p.add_argument("--out", help="study folder (default: the YAML's 'out' or studies/<name>)")
    p.add_argument("--plan", action="store_true", help="list the runs and exit")
    p.add_argument("--run-index", type=int, help="run only this index of the plan (e.g. a SLURM array task)")
    p.add_argument("--report-only", action="store_true", help="only (re)write tables, figures and report")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    p.set_defaults(handler=_cmd_experiment)


def _print_plan(study, plan) -> None:  # noqa: ANN001
    from enface.experiment import run_folder

    n_pre = sum(r.stage == "pretrain" for r in plan)
    print(f"study {study.name}: {len(plan)} runs ({n_pre} pre-training, {len(plan) - n_pre} segmentation)")
    for r in plan:
        folder = run_folder(study, r)
        state = "done" if (folder / "done.json").is_file() else "started" if folder.is_dir() else "todo"
        print(f"  [{r.index:3d}] {state:<7} {r.label}")


def _cmd_experiment(args: argparse.Namespace) -> int:
    from enface.experiment import collect_results, ensure_dataset, load_study, plan_study, run_study, write_report

    study = load_study(args.study, out=args.out)
    if args.plan or args.report_only:
        ensure_dataset(study)
        plan = plan_study(study)
        if args.plan:
            _print_plan(study, plan)
            return 0
        print(f"report: {write_report(study, plan, collect_results(study, plan))}")
        return 0
    result = run_study(study, run_index=args.run_index, progress=not args.no_progress)
    if result["report"]:
        print(f"report: {result['report']} (HTML: {result['report'].with_suffix('.html')})")
    return 0 if all(s != "interrupted" for s in result["statuses"].values()) else 1


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="phantom data + a reduced label-efficiency study, on a laptop CPU")
    p.add_argument("--out", default="demo", help="demo folder (default demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from enface.experiment import demo_study, headline, run_study

    study = demo_study(args.out, seed=args.seed)
    print(f"enface demo: phantom dataset + study '{study.name}' in {args.out}/ "
          f"(FPN from scratch vs pre-trained on inverted FAF; label fractions "
          f"{', '.join(f'{100 * f:g} %' for f in study.fractions)})")
    result = run_study(study, progress=not args.no_progress)
    print(headline(study))
    if result["report"]:
        print(f"report: {result['report']} (HTML: {result['report'].with_suffix('.html')})")
    return 0


# --------------------------------------------------------------------------- predict


def _add_predict(sub: argparse._SubParsersAction) -> None:
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
    )
    report = predict(args.model, args.inputs, args.out, top_k=args.top_k, options=opts, progress=not args.quiet)
    if report.failed:
        print(f"enface predict: {len(report.failed)} scan(s) failed:", file=sys.stderr)
        for r in report.failed:
            print(f"  {r.scan_id} ({r.source}): {r.reason}", file=sys.stderr)
    print(report.summary())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- progression


def _add_progression(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--min-focus-mm2", type=float, default=None,
                   help="smallest connected component counted as a focus, mm² (default 0.05)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=_cmd_progression)


def _cmd_progression(args: argparse.Namespace) -> int:
    from enface.progression import MIN_FOCUS_MM2
    from enface.progression_io import run_progression

    res = run_progression(args.dataset, args.out, predictions=args.predictions, grader=args.grader, task=args.task,
                          min_focus_mm2=MIN_FOCUS_MM2 if args.min_focus_mm2 is None else args.min_focus_mm2,
                          split=args.split)
    c = res.cohort
    g, s = c["growth_mm2_per_year"], c["sqrt_growth_mm_per_year"]
    print(f"{c['visits']} visits of {c['eyes']} eyes ({c['eyes_with_rate']} with a rate; {c['skipped']} left out)")
    print(f"  growth        {g['mean']:.3f} ± {g['sd']:.3f} mm²/year")
    print(f"  √area growth  {s['mean']:.3f} ± {s['sd']:.3f} mm/year")
    if c["agreement"]:
        for rate, unit in (("sqrt_growth_mm_per_year", "mm/year"), ("growth_mm2_per_year", "mm²/year")):
            a = c["agreement"][rate]
            print(f"  agreement {rate}: bias {a['bias']:.3f} {unit}, LoA [{a['loa_low']:.3f}, {a['loa_high']:.3f}], "
                  f"ICC(A,1) {a['icc']:.3f} ({a['n']} eyes)")
    for note in c["notes"]:
        print(f"  note: {note}")
    print(f"report: {res.out / 'report.html'}")
    return 0


# --------------------------------------------------------------------------- parser

# Each entry adds one sub-command to the parser; keep them in the order of DESIGN.md.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
    _add_synth,
    _add_show,
    _add_prepare,
    _add_check,
    _add_split,
    _add_pretrain,
    _add_train,
    _add_evaluate,
    _add_experiment,
    _add_demo,
    _add_predict,
    _add_progression,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``enface`` argument parser with every sub-command."""
    from enface import __version__

    parser = argparse.ArgumentParser(
        prog="enface",
        description="Label-efficient 3D->2D segmentation of retinal OCT (FPN + inter-modal SSL).",
    )
    parser.add_argument("--version", action="version", version=f"enface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


_TRAINING_COMMANDS = frozenset({"pretrain", "train", "evaluate", "experiment", "demo", "predict"})


def _quiet_third_party(command: str | None, verbose: bool) -> None:
    """Route Lightning's messages through our logging, without its start-up banners.

    Lightning sets its loggers' levels and adds its own handler when imported, so for the
    commands that use it, it is imported here first and then adjusted.
    """
    import warnings

    if command not in _TRAINING_COMMANDS:
        return
    import lightning  # noqa: F401  (its import configures the loggers we adjust)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()  # messages propagate to our handler: printed once
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``enface`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    _quiet_third_party(args.command, args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    from enface.data.folder import DatasetError

    try:
        return int(args.handler(args) or 0)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"enface {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"enface {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
