"""Sub-commands of the label-efficiency study: experiment, demo."""

from __future__ import annotations

import argparse

# --------------------------------------------------------------------------- experiment / demo


def add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="the label-efficiency study from one YAML (resumable)")
    p.add_argument("study", help="study YAML (see configs/phantom-study.yaml)")
    p.add_argument("--out", help="study folder (default: the YAML's 'out' or studies/<name>)")
    p.add_argument("--plan", action="store_true", help="list the runs and exit")
    p.add_argument("--run-index", type=int, help="run only this index of the plan (e.g. a SLURM array task)")
    p.add_argument("--report-only", action="store_true", help="only (re)write tables, figures and report")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    _add_no_fast(p)
    p.set_defaults(handler=_cmd_experiment)


def _add_no_fast(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-fast",
        dest="fast",
        action="store_false",
        help="plain path for every run and evaluation (eager float32; same run folders)",
    )


def _plain(study, fast: bool):
    """The study with ``fast: false`` in its common run settings when ``fast`` is False."""
    import dataclasses

    return study if fast else dataclasses.replace(study, common={**study.common, "fast": False})


def _print_plan(study, plan) -> None:
    from enface.study.ledger import ledger_records
    from enface.study.plan import run_folder, run_label

    n_pre = sum(r.stage == "pretrain" for r in plan)
    recorded = ledger_records(study, plan)
    print(f"study {study.name}: {len(plan)} runs ({n_pre} pre-training, {len(plan) - n_pre} segmentation)")
    print(f"ledger: {study.ledger_dir}")
    for r in plan:
        folder = run_folder(study, r)
        state = (
            "recorded"
            if r.index in recorded
            else "trained"
            if (folder / "done.json").is_file()
            else "started"
            if folder.is_dir()
            else "todo"
        )
        print(f"  [{r.index:3d}] {state:<8} {run_label(study, r)}")
    print(f"{len(plan)} runs: {len(recorded)} recorded, {len(plan) - len(recorded)} to run")


def _cmd_experiment(args: argparse.Namespace) -> int:
    from enface.study import collect_results, ensure_datasets, load_study, plan_study, run_study, write_report

    study = _plain(load_study(args.study, out=args.out), args.fast)
    if args.plan or args.report_only:
        ensure_datasets(study)
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


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="phantom data + a reduced label-efficiency study, on a laptop CPU")
    p.add_argument("--out", default="demo", help="demo folder (default demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _add_no_fast(p)
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from enface.study import demo_study, headline, run_study

    study = _plain(demo_study(args.out, seed=args.seed), args.fast)
    print(
        f"enface demo: phantom dataset + study '{study.name}' in {args.out}/ "
        f"(FPN from scratch vs pre-trained on inverted FAF; label fractions "
        f"{', '.join(f'{100 * f:g} %' for f in study.fractions)})"
    )
    result = run_study(study, progress=not args.no_progress)
    print(headline(study))
    if result["report"]:
        print(f"report: {result['report']} (HTML: {result['report'].with_suffix('.html')})")
    return 0
