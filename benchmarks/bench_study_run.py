"""What one study run costs, and where its time goes: a source tree of enface against another.

Runs planned runs of a study YAML (``enface experiment CONFIG --run-index I``, the path a study
takes) in a child process for each source tree: the current one with the current YAML, and a
baseline commit (its source exported with ``git archive``, nothing checked out) with the YAML
as it was at that commit (a fixed budget of 60 epochs before issue 25, budgets by convergence
after). Each child times, from inside,

* ``process start``: from the process's creation to the run's first step (imports, the
  study's config, plan and datasets checked);
* ``training steps``: Lightning's batch hooks (forward, backward, optimiser);
* ``data loading``: the training items built by the dataset (memory map, crop, augmentation);
* ``validation``: each validation loop (its data included);
* ``checkpoint writes``: every checkpoint file written;
* ``evaluation``: the top-k ensemble on the study's test sets;
* ``other``: the rest (Lightning's loop, logging, the run folder's records),

and the benchmark prints the shares, epochs run, CPU seconds of the child and the run's test
Dice for both trees side by side. The study's pre-training must be done (for SSL arms): the
runs are trained in a copy of the study folder per tree, whose pre-training folders are links
to the real study's, so both trees start from the same pre-trained weights.

Usage::

    .venv/bin/python benchmarks/bench_study_run.py configs/phantom-study.yaml \\
        --runs "train fpn ssl-faf_inv 5% seed 0" --baseline 33ec8d8

``--runs`` takes run labels as ``enface experiment --plan`` prints them; ``--baseline none``
profiles the current tree alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("process start", "training steps", "data loading", "validation", "checkpoint writes", "evaluation")


# --------------------------------------------------------------------------- the child: one run, timed


def _child(config: str, out: str, index: int, result_path: str) -> None:
    """Run plan index ``index`` of ``config`` (study folder ``out``) with timers; write them as JSON."""
    import lightning as L

    import enface.data.dataset as dataset_mod
    import enface.engine.fit as fit_mod
    import enface.evaluate as evaluate_mod
    from enface.study import load_study
    from enface.study.run import execute_run, plan_study

    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat", encoding="ascii") as f:
        started = float(f.read().rsplit(")", 1)[1].split()[19]) / ticks
    with open("/proc/uptime", encoding="ascii") as f:
        boot = time.time() - float(f.read().split()[0])
    timers = dict.fromkeys(PHASES, 0.0)

    def timed(phase: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[phase] += time.perf_counter() - t

        return wrapper

    class Clock(L.Callback):
        def on_train_batch_start(self, *a, **k):  # type: ignore[no-untyped-def]
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a, **k):  # type: ignore[no-untyped-def]
            timers["training steps"] += time.perf_counter() - self.t

        def on_validation_start(self, *a, **k):  # type: ignore[no-untyped-def]
            self.v = time.perf_counter()

        def on_validation_end(self, *a, **k):  # type: ignore[no-untyped-def]
            timers["validation"] += time.perf_counter() - self.v

    getitem = dataset_mod.EnfaceDataset.__getitem__

    def item(self, i):  # type: ignore[no-untyped-def]
        if self.augment is None:  # validation and evaluation items are counted in their phase
            return getitem(self, i)
        return timed("data loading", getitem)(self, i)

    dataset_mod.EnfaceDataset.__getitem__ = item  # type: ignore[method-assign]
    fit_mod.AtomicCheckpointIO.save_checkpoint = timed(  # type: ignore[method-assign]
        "checkpoint writes", fit_mod.AtomicCheckpointIO.save_checkpoint
    )
    evaluate_mod.evaluate = timed("evaluation", evaluate_mod.evaluate)
    plain_fit = fit_mod.fit

    def fit(config, resume=False, callbacks=(), progress=True, **kw):  # type: ignore[no-untyped-def]
        return plain_fit(config, resume=resume, callbacks=(*callbacks, Clock()), progress=False, **kw)

    fit_mod.fit = fit
    study = load_study(config, out=out)
    plan = plan_study(study)
    timers["process start"] = time.time() - (boot + started)
    t0 = time.perf_counter()
    status = execute_run(study, plan[index], progress=False)
    total = time.perf_counter() - t0 + timers["process start"]
    from enface.study.plan import run_folder

    folder = run_folder(study, plan[index])
    done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    dice = {}
    for ts in study.test_sets:
        summary = folder / "eval" / ts / "summary.json"
        if summary.is_file():
            dice[ts] = json.loads(summary.read_text(encoding="utf-8"))["metrics"]["dice"]["mean"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(result_path).write_text(
        json.dumps(
            {
                "status": status,
                "timers": timers,
                "wall": total,
                "cpu": usage.ru_utime + usage.ru_stime,
                "epochs": done.get("epochs_run", done.get("epochs")),
                "stopped": done.get("stopped", "max_epochs"),
                "dice": dice,
            }
        ),
        encoding="utf-8",
    )


# --------------------------------------------------------------------------- the parent


def _source_tree(rev: str, into: Path) -> Path:
    """The ``src`` folder of commit ``rev``, exported into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _study_copy(config: str, where: Path) -> Path:
    """A study folder for one tree: the real study's pre-training runs linked in, nothing else."""
    sys.path.insert(0, str(REPO / "src"))
    from enface.study import load_study
    from enface.study.plan import plan_study, run_folder

    study = load_study(config)
    copy = load_study(config, out=str(where))
    for run in plan_study(study):
        if run.stage == "pretrain":
            src, dst = run_folder(study, run), run_folder(copy, run)
            if (src / "done.json").is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src.resolve(), target_is_directory=True)
    return where


def _index_of(config: str, label: str) -> int:
    from enface.study import load_study
    from enface.study.plan import plan_study, run_label

    study = load_study(config)
    for run in plan_study(study):
        if run_label(study, run) == label:
            return run.index
    raise SystemExit(f"no run labeled {label!r} in {config} (see enface experiment {config} --plan)")


def _config_at(rev: str, config: str, into: Path) -> str:
    """The study YAML ``config`` as it was at commit ``rev``, written into ``into``."""
    rel = Path(config).resolve().relative_to(REPO)
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{rel}"], check=True, capture_output=True, text=True
    ).stdout
    path = into / f"baseline-{rel.name}"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _measure(src: Path, config: str, out: Path, index: int) -> dict:
    result = out / "result.json"
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--child", config, str(out), str(index), str(result)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return json.loads(result.read_text(encoding="utf-8"))


def _print(label: str, tree: str, r: dict) -> None:
    shares = "  ".join(f"{p} {100 * r['timers'][p] / r['wall']:.0f} %" for p in PHASES)
    other = r["wall"] - sum(r["timers"].values())
    dice = ", ".join(f"{ts} {d:.3f}" for ts, d in r["dice"].items())
    print(
        f"{tree:<9} {label}: {r['wall']:.0f} s wall, {r['cpu']:.0f} CPU-s, {r['epochs']} epochs ({r['stopped']}); "
        f"Dice {dice}\n          {shares}  other {100 * other / r['wall']:.0f} %",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="study YAML (its pre-training must be done for SSL arms)")
    ap.add_argument("--runs", nargs="+", required=True, help="run labels as `enface experiment --plan` prints them")
    ap.add_argument("--baseline", default="33ec8d8", help="commit to compare with, or 'none'")
    ap.add_argument("--keep", help="keep the study copies in this folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-study-run-"))
    work.mkdir(parents=True, exist_ok=True)
    trees = {"current": (REPO / "src", args.config)}
    if args.baseline != "none":
        (work / "baseline-src").mkdir(exist_ok=True)
        src = _source_tree(args.baseline, work / "baseline-src")
        trees = {"baseline": (src, _config_at(args.baseline, args.config, work)), **trees}
    results: dict[str, list[dict]] = {t: [] for t in trees}
    for label in args.runs:
        for tree, (src, config) in trees.items():
            folder = work / tree
            if not folder.exists():
                _study_copy(config, folder)
            results[tree].append(_measure(src, config, folder, _index_of(config, label)))
            _print(label, tree, results[tree][-1])
    print("\ntotals (mean per run):")
    for tree, rs in results.items():
        cpu, dice = sum(r["cpu"] for r in rs) / len(rs), [d for r in rs for d in r["dice"].values()]
        print(f"  {tree:<9} {cpu:.0f} CPU-s, test Dice {sum(dice) / max(1, len(dice)):.3f} over {len(rs)} run(s)")
    if len(trees) == 2:
        base, cur = (sum(r["cpu"] for r in results[t]) for t in trees)
        print(f"  baseline / current: {base / cur:.2f}x")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
