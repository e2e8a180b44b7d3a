"""The label-efficiency study: plan -> runs -> results table -> figures -> report.

One YAML describes the study (see ``configs/phantom-study.yaml``)::

    name: phantom-study
    dataset: data/phantom            # training dataset folder (with splits.json)
    synth: {patients: 40, seed: 0, preset: demo}   # optional: generate it when missing
    task: ga
    test_sets:                       # name -> dataset folder + split
      phantom: {dataset: data/phantom, split: test}
    models: [fpn, lachinov]
    inits: [scratch, ssl-faf_inv, ssl-slo]
    fractions: [0.05, 0.1, 0.2, 1.0]
    seeds: [0, 1, 2]
    reference: {model: fpn, init: ssl-faf_inv}
    common: {width: 0.25, crop: [16, 64]}    # RunConfig fields for every run
    pretrain: {epochs: 30}                    # ... for pre-training runs
    train: {epochs: 40}                       # ... for segmentation runs

Pre-training happens once per (model, target) and is reused by every fraction and seed.
``--plan`` lists the runs; ``--run-index I`` runs one (pre-training runs come first in the
plan, so a scheduler can run them before the rest); re-running skips finished runs and
resumes killed ones.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from enface.config import RECON_TARGETS, RunConfig, load_config, read_yaml_mapping
from enface.errors import ConfigError
from enface.data.folder import read_dataset_info
from enface.engine.checkpoint import topk_checkpoints
from enface.engine.runs import RunKey, format_fraction, run_dir
from enface.evaluate import METRICS, paired_wilcoxon, read_cases_csv, summarize
from enface.fileio import atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = [
    "StudyConfig",
    "PlannedRun",
    "load_study",
    "plan_study",
    "run_study",
    "collect_results",
    "write_report",
]

log = logging.getLogger(__name__)

_STUDY_KEYS = {
    "name", "dataset", "synth", "task", "test_sets", "models", "inits", "fractions", "seeds",
    "pretrain_seed", "reference", "common", "pretrain", "train", "top_k", "out", "overlay_cases",
}


@dataclass
class StudyConfig:
    """A label-efficiency study (see the module docstring for the YAML form)."""

    name: str
    dataset: str
    task: str = "ga"
    test_sets: dict[str, dict[str, str]] = field(default_factory=dict)
    models: tuple[str, ...] = ("fpn",)
    inits: tuple[str, ...] = ("scratch", "ssl-faf_inv")
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 1.0)
    seeds: tuple[int, ...] = (0,)
    pretrain_seed: int = 0
    reference: dict[str, str] = field(default_factory=lambda: {"model": "fpn", "init": "ssl-faf_inv"})
    common: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    top_k: int = 5
    synth: dict[str, Any] | None = None
    out: str = ""
    overlay_cases: int = 2

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"

    def validate(self) -> "StudyConfig":
        from enface.models import list_models

        if not self.name:
            raise ConfigError("study: 'name' is required")
        if not self.dataset:
            raise ConfigError("study: 'dataset' is required")
        unknown = [m for m in self.models if m not in list_models()]
        if unknown:
            raise ConfigError(f"study: unknown models {unknown}; known: {', '.join(list_models())}")
        for init in self.inits:
            if init != "scratch" and not (init.startswith("ssl-") and init[4:] in RECON_TARGETS):
                raise ConfigError(f"study: init {init!r} must be 'scratch' or one of {[f'ssl-{t}' for t in RECON_TARGETS]}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"study: fractions must lie in (0, 1], got {list(self.fractions)}")
        if not self.seeds:
            raise ConfigError("study: at least one seed is needed")
        if set(self.reference) != {"model", "init"}:
            raise ConfigError(f"study: reference must give 'model' and 'init', got {self.reference}")
        for name, ts in self.test_sets.items():
            if "dataset" not in ts:
                raise ConfigError(f"study: test set {name!r} needs a 'dataset'")
        return self


def load_study(path: str | os.PathLike, out: str | os.PathLike | None = None) -> StudyConfig:
    """Read a study YAML. Relative dataset paths are taken relative to the current folder.

    Args:
        path: the YAML file.
        out: study folder (default: the YAML's ``out`` or ``studies/<name>``).
    """
    p = Path(path)
    doc = read_yaml_mapping(p, "study file")
    extra = set(doc) - _STUDY_KEYS
    if extra:
        raise ConfigError(f"{p}: unknown study keys {sorted(extra)}; known: {sorted(_STUDY_KEYS)}")
    for key in ("models", "inits", "fractions", "seeds"):
        if key in doc:
            doc[key] = tuple(doc[key])
    doc["fractions"] = tuple(float(f) for f in doc.get("fractions", (0.05, 0.1, 0.2, 1.0)))
    doc["seeds"] = tuple(int(s) for s in doc.get("seeds", (0,)))
    try:
        study = StudyConfig(**doc)
    except TypeError as e:
        raise ConfigError(f"{p}: {e}") from None
    study.out = str(out or study.out or Path("studies") / study.name)
    if not study.test_sets:
        study.test_sets = {"test": {"dataset": study.dataset, "split": "test"}}
    return study.validate()


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study.

    Attributes:
        index: position in the plan.
        stage: ``"pretrain"`` or ``"train"``.
        model: model name.
        target: reconstruction target (pretrain) or mask task (train).
        init: ``"scratch"`` or ``"ssl-<target>"`` (train only).
        fraction: label fraction (1.0 for pretrain).
        seed: random seed.
    """

    index: int
    stage: str
    model: str
    target: str
    init: str = "scratch"
    fraction: float = 1.0
    seed: int = 0

    @property
    def label(self) -> str:
        if self.stage == "pretrain":
            return f"pretrain {self.model} -> {self.target} (seed {self.seed})"
        return f"train {self.model} {self.init} {format_fraction(self.fraction)}% seed {self.seed}"


def plan_study(study: StudyConfig) -> list[PlannedRun]:
    """All runs of a study: pre-training runs first, then segmentation runs."""
    runs: list[PlannedRun] = []
    targets = sorted({i[4:] for i in study.inits if i.startswith("ssl-")})
    for model in study.models:
        for target in targets:
            runs.append(PlannedRun(len(runs), "pretrain", model, target, seed=study.pretrain_seed))
    for model in study.models:
        for init in study.inits:
            for fraction in sorted(study.fractions):
                for seed in study.seeds:
                    runs.append(PlannedRun(len(runs), "train", model, study.task, init, fraction, seed))
    return runs


def _run_config(study: StudyConfig, run: PlannedRun, init_ckpt: str | None = None) -> RunConfig:
    overrides: dict[str, Any] = {**study.common, **(study.pretrain if run.stage == "pretrain" else study.train)}
    overrides.update(
        dataset=study.dataset,
        target=run.target,
        model=run.model,
        seed=run.seed,
        runs_dir=str(study.runs_dir),
        top_k=study.top_k,
    )
    if run.stage == "train":
        overrides.update(fraction=run.fraction, init=init_ckpt)
    return load_config(None, run.stage, overrides)


def _dataset_name(study: StudyConfig) -> str:
    return read_dataset_info(study.dataset)["name"]


def _width(study: StudyConfig, stage: str) -> float:
    section = study.pretrain if stage == "pretrain" else study.train
    return float(section.get("width", study.common.get("width", 1.0)))


def run_folder(study: StudyConfig, run: PlannedRun) -> Path:
    """The run folder of a planned run (without touching the disk beyond dataset.json)."""
    task = f"recon-{run.target}" if run.stage == "pretrain" else run.target
    key = RunKey(_dataset_name(study), task, run.model, run.init, run.fraction, run.seed, _width(study, run.stage))
    return run_dir(study.runs_dir, key)


def _pretrained_checkpoint(study: StudyConfig, model: str, target: str) -> str:
    pre = PlannedRun(-1, "pretrain", model, target, seed=study.pretrain_seed)
    folder = run_folder(study, pre)
    if not (folder / "done.json").is_file():
        raise ConfigError(
            f"pre-training {model} -> {target} has not finished ({folder}); run the pre-training "
            "indices of the plan first (they come first)"
        )
    best = topk_checkpoints(folder, 1)
    if not best:
        raise ConfigError(f"{folder}: pre-training finished but left no ranked checkpoint")
    return str(best[0])


def ensure_dataset(study: StudyConfig) -> None:
    """Generate the study's phantom datasets (training and test sets) that are missing.

    The training dataset is generated from the study's ``synth`` section, a test set from
    its own ``synth`` entry (e.g. an external phantom cohort from another seed).
    """
    from enface.synth import synthesize_dataset

    wanted = [("dataset", study.dataset, study.synth)]
    wanted += [(f"test set {name!r}", ts["dataset"], ts.get("synth")) for name, ts in study.test_sets.items()]
    for what, folder, synth in wanted:
        if (Path(folder) / "dataset.json").is_file():
            continue
        if not synth:
            raise ConfigError(f"study: {what} {folder} not found (and no 'synth' entry to generate it)")
        log.info("generating phantom %s in %s", what, folder)
        # no dataset.json: nothing there, or a generation that was killed -> (re)generate it
        synthesize_dataset(Path(folder), **{"overwrite": True, **synth})


def execute_run(study: StudyConfig, run: PlannedRun, progress: bool = True) -> str:
    """Run one planned run (resuming it when killed earlier) and, for training, evaluate it.

    Returns:
        ``"finished"``, ``"skipped"`` (already done) or ``"interrupted"``.
    """
    from enface.engine.fit import fit
    from enface.evaluate import evaluate

    init_ckpt = None
    if run.stage == "train" and run.init != "scratch":
        init_ckpt = _pretrained_checkpoint(study, run.model, run.init[4:])
    cfg = _run_config(study, run, init_ckpt)
    result = fit(cfg, resume=True, progress=progress)
    if result.status == "interrupted":
        return "interrupted"
    if run.stage == "train":
        for name, ts in study.test_sets.items():
            out = result.run_dir / "eval" / name
            if (out / "summary.json").is_file():
                continue
            evaluate(result.run_dir, split=ts.get("split", "test"), dataset=ts["dataset"], task=study.task,
                     top_k=study.top_k, out_dir=out, progress=False)
    return result.status


def run_study(
    study: StudyConfig,
    run_index: int | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Run the whole study (or one run of it) and write results, figures and report.

    Args:
        study: the study.
        run_index: run only this index of the plan (no report is written then).
        progress: show per-epoch progress bars.
        report: write tables, figures and the report after the runs.

    Returns:
        ``{"plan": [...], "statuses": {index: status}, "report": path or None}``.
    """
    ensure_dataset(study)
    plan = plan_study(study)
    study.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study.out_dir / "plan.json", [dataclasses.asdict(r) for r in plan])
    atomic_write_text(study.out_dir / "study.yaml", yaml.safe_dump(dataclasses.asdict(study), sort_keys=False))
    todo = plan if run_index is None else [plan[_check_index(run_index, plan)]]
    statuses: dict[int, str] = {}
    t0 = time.time()
    for n, run in enumerate(todo, 1):
        log.info("[run %d/%d, plan index %d] %s", n, len(todo), run.index, run.label)
        statuses[run.index] = execute_run(study, run, progress=progress)
        if statuses[run.index] == "interrupted":
            log.warning("study interrupted at plan index %d; re-run the same command to resume", run.index)
            return {"plan": plan, "statuses": statuses, "report": None}
        log.info("[run %d/%d] %s (%.0f s elapsed)", n, len(todo), statuses[run.index], time.time() - t0)
    report_path = None
    if report and run_index is None:
        results = collect_results(study, plan)
        report_path = write_report(study, plan, results)
    return {"plan": plan, "statuses": statuses, "report": report_path}


def _check_index(index: int, plan: Sequence[PlannedRun]) -> int:
    if not 0 <= index < len(plan):
        raise ConfigError(f"--run-index {index} is outside the plan (0..{len(plan) - 1})")
    return index


# --------------------------------------------------------------------------- results


def _config_label(model: str, init: str) -> str:
    return f"{model} ({init})" if init != "scratch" else f"{model} (scratch)"


def collect_results(study: StudyConfig, plan: Sequence[PlannedRun] | None = None) -> dict[str, Any]:
    """Aggregate the per-case evaluations of every finished training run.

    Per configuration (model, init, fraction) and test set, per-case values are first
    averaged over seeds; the table reports mean ± std over test cases of those, plus the
    standard deviation over seeds of the per-seed means. Wilcoxon signed-rank tests pair the
    seed-averaged per-case Dice of the reference configuration with every other
    configuration at the same fraction and test set.

    Returns:
        ``{"table": [rows], "wilcoxon": [rows], "per_case": {...}, "missing": [labels]}``.
    """
    plan = plan or plan_study(study)
    per_case: dict[tuple[str, str, str, float], dict[str, dict[str, list[float]]]] = {}
    seed_means: dict[tuple[str, str, str, float], dict[str, list[float]]] = {}
    missing: list[str] = []
    for run in plan:
        if run.stage != "train":
            continue
        folder = run_folder(study, run)
        for ts in study.test_sets:
            csv_path = folder / "eval" / ts / "cases.csv"
            if not csv_path.is_file():
                missing.append(f"{run.label} on {ts}")
                continue
            rows = [r for r in read_cases_csv(csv_path) if r["grader"] == ""]
            key = (ts, run.model, run.init, run.fraction)
            cases = per_case.setdefault(key, {})
            for r in rows:
                slot = cases.setdefault(r["case_id"], {m: [] for m in METRICS})
                for m in METRICS:
                    slot[m].append(float(r[m]))
            sm = seed_means.setdefault(key, {m: [] for m in METRICS})
            summ = summarize(rows)
            for m in METRICS:
                sm[m].append(summ[m]["mean"])
    averaged: dict[tuple, dict[str, dict[str, float]]] = {
        key: {cid: {m: float(np.mean(v[m])) if v[m] else math.nan for m in METRICS} for cid, v in cases.items()}
        for key, cases in per_case.items()
    }
    table = []
    for key in sorted(averaged, key=lambda k: (k[0], k[1], k[2], k[3])):
        ts, model, init, fraction = key
        rows = [{"case_id": c, **vals} for c, vals in averaged[key].items()]
        summ = summarize(rows)
        row: dict[str, Any] = {
            "test_set": ts, "model": model, "init": init, "fraction": fraction,
            "n_seeds": len(seed_means[key]["dice"]), "n_cases": len(rows),
        }
        for m in METRICS:
            row[f"{m}_mean"] = summ[m]["mean"]
            row[f"{m}_std"] = summ[m]["std"]
            row[f"{m}_undefined"] = summ[m]["n_undefined"]
            finite = [v for v in seed_means[key][m] if math.isfinite(v)]
            row[f"{m}_seed_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
        row["dice_per_seed"] = "/".join(f"{v:.3f}" for v in seed_means[key]["dice"])
        table.append(row)
    ref_model, ref_init = study.reference["model"], study.reference["init"]
    pairs = []  # (reference key, compared key): the reference vs every other configuration,
    for key in sorted(averaged):  # then, per model, each pre-training vs that model from scratch
        ts, model, init, fraction = key
        pairs.append(((ts, ref_model, ref_init, fraction), key))
    for key in sorted(averaged):
        ts, model, init, fraction = key
        if init != "scratch":
            pairs.append(((ts, model, "scratch", fraction), key))
    wilcoxon = []
    seen = set()
    for ref_key, key in pairs:
        if key == ref_key or ref_key not in averaged or (ref_key, key) in seen or (key, ref_key) in seen:
            continue
        seen.add((ref_key, key))
        ref = {c: v["dice"] for c, v in averaged[ref_key].items()}
        other = {c: v["dice"] for c, v in averaged[key].items()}
        res = paired_wilcoxon(ref, other)
        wilcoxon.append({
            "test_set": key[0], "fraction": key[3], "reference": _config_label(ref_key[1], ref_key[2]),
            "other": _config_label(key[1], key[2]), "n": res["n"],
            "median_dice_difference": res["median_difference"], "p_value": res["p_value"],
        })
    return {
        "table": table,
        "wilcoxon": wilcoxon,
        "per_case": {"|".join(map(str, k)): v for k, v in averaged.items()},
        "missing": missing,
    }


# --------------------------------------------------------------------------- report


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _table_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| test set | model | init | fraction | seeds | cases | Dice | Dice per seed | area diff (mm²) | HD95 (mm) |",
        "|---|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in table:
        hd95 = f"{_fmt(r['hd95_mm_mean'], 2)} ± {_fmt(r['hd95_mm_std'], 2)}"
        if r.get("hd95_mm_undefined"):
            hd95 += f" ({r['hd95_mm_undefined']} undefined)"
        lines.append(
            f"| {r['test_set']} | {r['model']} | {r['init']} | {format_fraction(r['fraction'])} % | {r['n_seeds']} | "
            f"{r['n_cases']} | {_fmt(r['dice_mean'])} ± {_fmt(r['dice_std'])} | {r['dice_per_seed']} | "
            f"{_fmt(r['area_diff_mm2_mean'])} ± {_fmt(r['area_diff_mm2_std'])} | {hd95} |"
        )
    return "\n".join(lines)


def _wilcoxon_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| test set | fraction | reference | compared | n | median ΔDice (compared − ref) | p |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['test_set']} | {format_fraction(r['fraction'])} % | {r['reference']} | {r['other']} | {r['n']} | "
            f"{_fmt(r['median_dice_difference'])} | {_fmt_p(r['p_value'])} |"
        )
    return "\n".join(lines)


def write_report(study: StudyConfig, plan: Sequence[PlannedRun], results: Mapping[str, Any]) -> Path:
    """Write ``results/`` tables, ``figures/`` and ``report.md`` + ``report.html``.

    Returns:
        Path of ``report.md``.
    """
    from enface import viz

    out = study.out_dir
    res_dir = out / "results"
    fig_dir = out / "figures"
    res_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    table, wil = results["table"], results["wilcoxon"]
    atomic_write_csv(res_dir / "table.csv", table)
    atomic_write_text(res_dir / "table.md", _table_markdown(table) + "\n")
    atomic_write_csv(res_dir / "wilcoxon.csv", wil)
    atomic_write_text(res_dir / "wilcoxon.md", _wilcoxon_markdown(wil) + "\n")
    atomic_write_json(res_dir / "per_case.json", results["per_case"])

    figures: list[tuple[str, Path]] = []
    for ts in study.test_sets:
        rows = [r for r in table if r["test_set"] == ts]
        if rows:
            p = viz.plot_metric_vs_fraction(rows, fig_dir / f"{ts}-vs-fraction.png", title=ts)
            figures.append((f"Dice and area difference vs label fraction ({ts})", p))
    overlay = _overlay_figure(study, plan, fig_dir)
    if overlay is not None:
        figures.append(("Predictions at the lowest label fraction (TP green, TN black, FP red, FN blue)", overlay))
    curves = _curves_figure(study, plan, fig_dir)
    if curves is not None:
        figures.append(("Training curves (validation metric per epoch)", curves))

    md = [f"# Study: {study.name}", ""]
    md.append(
        f"Dataset `{study.dataset}`, task `{study.task}`; models {', '.join(study.models)}; initialisations "
        f"{', '.join(study.inits)}; label fractions {', '.join(format_fraction(f) + ' %' for f in study.fractions)}; "
        f"seeds {', '.join(map(str, study.seeds))}. Top-{study.top_k} checkpoint ensembles, threshold 0.5."
    )
    md += [
        "", "## Results", "",
        "Mean ± std over test cases of per-case values averaged over seeds; 'Dice per seed' gives each "
        "seed's mean test Dice. HD95 is undefined for a case where exactly one of prediction and "
        "reference is empty in some seed (it is then infinite); such cases are counted, not averaged.",
        "", _table_markdown(table), "",
    ]
    md += [
        "## Paired Wilcoxon signed-rank tests on per-case Dice", "",
        f"The reference configuration ({_config_label(study.reference['model'], study.reference['init'])}) against "
        "every other one, then each pre-trained model against the same model from scratch; per test set and "
        "label fraction, pairing the seed-averaged Dice of each test case. Cases of one patient (eyes, "
        "visits) are not independent, so p-values are optimistic.", "", _wilcoxon_markdown(wil), "",
    ]
    if results["missing"]:
        md += ["## Missing evaluations", "", *[f"- {m}" for m in results["missing"]], ""]
    md += ["## Figures", ""]
    for title, p in figures:
        md += [f"### {title}", "", f"![{title}](figures/{p.name})", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", _html(study, md, figures))
    log.info("report written: %s (and report.html); tables in %s, figures in %s", out / "report.md", res_dir, fig_dir)
    return out / "report.md"


def _html(study: StudyConfig, md: Sequence[str], figures: Sequence[tuple[str, Path]]) -> str:
    """A self-contained HTML page: tables as <pre>-free HTML tables, figures inline (base64)."""
    body: list[str] = []
    in_table = False
    for line in md:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            continue
        if line.startswith("### "):
            title = line[4:]
            body.append(f"<h3>{html.escape(title)}</h3>")
            for t, p in figures:
                if t == title:
                    data = base64.b64encode(p.read_bytes()).decode("ascii")
                    body.append(f'<img alt="{html.escape(t)}" src="data:image/png;base64,{data}" style="max-width:100%">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study.name)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def _overlay_figure(study: StudyConfig, plan: Sequence[PlannedRun], fig_dir: Path) -> Path | None:
    """Fig. 5: predictions of every model+init at the lowest fraction (seed = first seed)."""
    from enface import viz
    from enface.data.folder import load_case

    fraction, seed = min(study.fractions), study.seeds[0]
    ts_name, ts = next(iter(study.test_sets.items()))
    panels: dict[str, dict[str, np.ndarray]] = {}
    case_ids: list[str] = []
    for run in plan:
        if run.stage != "train" or run.fraction != fraction or run.seed != seed:
            continue
        npz = run_folder(study, run) / "eval" / ts_name / "predictions.npz"
        if not npz.is_file():
            continue
        with np.load(npz) as data:
            if not case_ids:
                case_ids = sorted(data.files)[: study.overlay_cases]
            panels[_config_label(run.model, run.init)] = {c: data[c] >= 128 for c in case_ids if c in data.files}
    if not panels or not case_ids:
        return None
    cases = {c: load_case(Path(ts["dataset"]) / "cases" / c) for c in case_ids}
    return viz.plot_overlay_grid(
        panels,
        {c: case.load_mask(study.task) for c, case in cases.items()},
        fig_dir / "overlays.png",
        title=f"{ts_name}, {format_fraction(fraction)} % labels, seed {seed}",
        spacings={c: case.spacing for c, case in cases.items()},
    )


def _curves_figure(study: StudyConfig, plan: Sequence[PlannedRun], fig_dir: Path) -> Path | None:
    from enface import viz

    curves: dict[str, Path] = {}
    for run in plan:
        if run.seed != study.seeds[0] and run.stage == "train":
            continue
        if run.stage == "train" and run.fraction != min(study.fractions):
            continue
        csv_path = run_folder(study, run) / "logs" / "metrics.csv"
        if csv_path.is_file():
            curves[run.label] = csv_path
    if not curves:
        return None
    return viz.plot_training_curves(curves, fig_dir / "training-curves.png")


# --------------------------------------------------------------------------- demo

DEMO_PATIENTS = 30
"""Phantom patients of the demo dataset (about 100 scans at the ``demo`` preset, 32 x 128 x 64)."""


def demo_study(out: str | os.PathLike, seed: int = 0) -> StudyConfig:
    """The reduced study of ``enface demo``, sized for a laptop CPU (2 cores, < 15 minutes).

    FPN (width 0.25) from scratch vs pre-trained on inverted FAF, at a low label fraction and
    at 100 %, one seed, short training budgets.
    """
    out = Path(out)
    data = out / "data"
    return StudyConfig(
        name="demo",
        dataset=str(data),
        synth={"patients": DEMO_PATIENTS, "seed": seed, "preset": "demo", "task": "ga"},
        task="ga",
        test_sets={"phantom-test": {"dataset": str(data), "split": "test"}},
        models=("fpn",),
        inits=("scratch", "ssl-faf_inv"),
        fractions=(0.1, 1.0),
        seeds=(seed,),
        pretrain_seed=seed,
        reference={"model": "fpn", "init": "ssl-faf_inv"},
        common={"width": 0.25, "crop": (32, 64), "num_workers": 0, "accelerator": "cpu"},
        pretrain={"epochs": 15, "batch_size": 4},
        train={"epochs": 20, "batch_size": 8, "samples_per_epoch": 32},
        top_k=3,
        out=str(out / "study"),
    ).validate()


def headline(study: StudyConfig) -> str:
    """A few lines with the study's mean test Dice and area difference per configuration."""
    table_path = study.out_dir / "results" / "table.csv"
    if not table_path.is_file():
        return "no results yet"
    import csv

    with open(table_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = ["headline (mean over test cases):"]
    for r in rows:
        lines.append(
            f"  {r['test_set']}: {r['model']} {r['init']:<12} {format_fraction(float(r['fraction'])):>4} % labels: "
            f"Dice {float(r['dice_mean']):.3f} ± {float(r['dice_std']):.3f}, "
            f"area diff {float(r['area_diff_mm2_mean']):.3f} mm²"
        )
    return "\n".join(lines)
