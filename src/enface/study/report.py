"""A study's report: ``results/`` tables, ``figures/`` and ``report.md`` + ``report.html``.

The HTML is the Markdown report rendered by Python-Markdown (tables extension), with every
figure embedded as a data URI, so the page is one self-contained file to share.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.splits import fraction_key
from enface.fileio import atomic_write_csv, atomic_write_json, atomic_write_text, path_under
from enface.study.config import StudyConfig
from enface.study.plan import PlannedRun, run_folder
from enface.study.results import config_label
from enface.study.stats import format_number as _fmt
from enface.study.stats import format_p as _fmt_p
from enface.targets import THRESHOLD, binary

__all__ = ["growth_markdown", "markdown_to_html", "table_markdown", "wilcoxon_markdown", "write_report"]

log = logging.getLogger(__name__)

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
)


def table_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The results table (one row per test set, model, init and fraction) as Markdown."""
    lines = [
        "| test set | model | init | fraction | seeds | cases | Dice | Dice per seed | area diff (mm²) | HD95 (mm) "
        "| flagged seeds | Dice, unflagged seeds |",
        "|---|---|---|---:|---:|---:|---|---|---|---|---|---:|",
    ]
    for r in table:
        hd95 = f"{_fmt(r['hd95_mm_mean'], 2)} ± {_fmt(r['hd95_mm_std'], 2)}"
        if r.get("hd95_mm_undefined"):
            hd95 += f" ({r['hd95_mm_undefined']} undefined)"
        lines.append(
            f"| {r['test_set']} | {r['model']} | {r['init']} | {fraction_key(r['fraction'])} % | {r['n_seeds']} | "
            f"{r['n_cases']} | {_fmt(r['dice_mean'])} ± {_fmt(r['dice_std'])} | {r['dice_per_seed']} | "
            f"{_fmt(r['area_diff_mm2_mean'])} ± {_fmt(r['area_diff_mm2_std'])} | {hd95} | "
            f"{r.get('flags') or '–'} | {_fmt(r.get('dice_mean_unflagged'))} |"
        )
    return "\n".join(lines)


def wilcoxon_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The paired Wilcoxon tests as Markdown."""
    lines = [
        "| test set | fraction | reference | compared | n | median ΔDice (compared − ref) | p |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['test_set']} | {fraction_key(r['fraction'])} % | {r['reference']} | {r['other']} | {r['n']} | "
            f"{_fmt(r['median_dice_difference'])} | {_fmt_p(r['p_value'])} |"
        )
    return "\n".join(lines)


def growth_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The growth-rate agreement table (seed means) as Markdown."""
    lines = [
        "| test set | model | init | fraction | seeds | eyes | √area bias (mm/yr) [95 % LoA] | ICC | "
        "area bias (mm²/yr) [95 % LoA] | ICC |",
        "|---|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for r in rows:
        cells = [
            f"{_fmt(r[f'{k}_bias'])} [{_fmt(r[f'{k}_loa_low'])}, {_fmt(r[f'{k}_loa_high'])}] | {_fmt(r[f'{k}_icc'])}"
            for k in ("sqrt", "area")
        ]
        lines.append(
            f"| {r['test_set']} | {r['model']} | {r['init']} | {fraction_key(r['fraction'])} % | "
            f"{r['n_seeds']} | {r['eyes']} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


def _convergence_markdown(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's convergence section: how runs were checked, which were flagged."""
    from enface.study.convergence import FULL_FRACTION, RISE_TOLERANCE

    flagged = [r for r in table if r.get("flags")]
    md = [
        "## Convergence",
        "",
        f"Every training run is checked: *still rising* when its mean validation Dice over the last quarter of its "
        f"epochs exceeds that of the quarter before by more than {RISE_TOLERANCE}; *collapsed (empty)* on a test set "
        "when it predicts nothing on at least half of the test cases with a lesion; *collapsed (full)* when it marks "
        f"over {FULL_FRACTION:.0%} of the scan on at least half of the test cases. Flagged seeds stay in the means "
        "above; the last column gives the mean over the other seeds.",
        "",
    ]
    if not flagged:
        return [*md, "No run was flagged.", ""]
    md += [
        f"- {r['test_set']}, {config_label(r['model'], r['init'])}, {fraction_key(r['fraction'])} %: {r['flags']}"
        for r in flagged
    ]
    return [*md, ""]


def markdown_to_html(markdown_text: str, title: str, base: Path) -> str:
    """A self-contained HTML page: Markdown rendered, local PNG images embedded as data URIs.

    Args:
        markdown_text: the report in Markdown; images as ``![alt](relative/path.png)``.
        title: the page title.
        base: the folder image paths are relative to.
    """
    import re

    import markdown

    def embed(m: re.Match[str]) -> str:
        path = base / m.group(2)
        if not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{m.group(1)}](data:image/png;base64,{data})"

    inlined = re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", embed, markdown_text)
    body = markdown.markdown(inlined, extensions=["tables"], output_format="html")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )


def _overlay_cases(dataset: Path, case_ids: Sequence[str], task: str, n: int) -> list[str]:
    """``n`` cases to show: spread from the smallest to the largest reference lesion (cases
    without one only when too few have one)."""
    from enface.data.folder import load_case

    areas = {c: int(load_case(dataset / "cases" / c).load_mask(task).sum()) for c in case_ids}
    with_lesion = sorted((a, c) for c, a in areas.items() if a > 0)
    if len(with_lesion) < n:
        return [c for _, c in with_lesion] + [c for c in case_ids if areas[c] == 0][: n - len(with_lesion)]
    picks = np.linspace(0, len(with_lesion) - 1, n).round().astype(int)
    return [with_lesion[i][1] for i in sorted(set(picks.tolist()))]


def _overlay_figure(study: StudyConfig, plan: Sequence[PlannedRun], fig_dir: Path) -> Path | None:
    """Fig. 5: predictions of every model+init at the lowest fraction (first seed, first test set)."""
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
                case_ids = _overlay_cases(Path(ts["dataset"]), sorted(data.files), study.task, study.overlay_cases)
            panels[config_label(run.model, run.init)] = {c: binary(data[c] / 255) for c in case_ids if c in data.files}
    if not panels or not case_ids:
        return None
    cases = {c: load_case(Path(ts["dataset"]) / "cases" / c) for c in case_ids}
    images = {
        c: {m.upper(): case.load_image(m) for m in ("slo", "faf") if case.has_image(m)} for c, case in cases.items()
    }
    return viz.plot_overlay_grid(
        panels,
        {c: case.load_mask(study.task) for c, case in cases.items()},
        fig_dir / "overlays.png",
        title=f"{ts_name}, {fraction_key(fraction)} % labels, seed {seed}",
        spacings={c: case.spacing for c, case in cases.items()},
        images=images,
    )


def _curves_figure(study: StudyConfig, plan: Sequence[PlannedRun], fig_dir: Path) -> Path | None:
    """Validation metric per epoch: the pre-trainings and the lowest fraction's runs (first seed)."""
    from enface import viz

    curves: dict[str, Path] = {}
    for run in plan:
        if run.stage == "train" and (run.seed != study.seeds[0] or run.fraction != min(study.fractions)):
            continue
        folder = run_folder(study, run)
        if (folder / "logs" / "metrics.csv").is_file():
            curves[str(folder.relative_to(study.runs_dir))] = folder / "logs" / "metrics.csv"
    return viz.plot_training_curves(curves, fig_dir / "training-curves.png") if curves else None


def _figures(
    study: StudyConfig, plan: Sequence[PlannedRun], table: Sequence[Mapping[str, Any]], fig_dir: Path
) -> list[tuple[str, Path]]:
    from enface import viz

    figures: list[tuple[str, Path]] = []
    for ts in study.test_sets:
        rows = [r for r in table if r["test_set"] == ts]
        if rows:
            p = viz.plot_metric_vs_fraction(rows, path_under(fig_dir, f"{ts}-vs-fraction.png"), title=ts)
            figures.append((f"Dice and area difference vs label fraction ({ts})", p))
    overlay = _overlay_figure(study, plan, fig_dir) if study.fractions else None  # none: an active-only study
    if overlay is not None:
        figures.append(("Predictions at the lowest label fraction (TP green, TN black, FP red, FN blue)", overlay))
    curves = _curves_figure(study, plan, fig_dir)
    if curves is not None:
        figures.append(("Training curves (validation metric per epoch)", curves))
    return figures


def _report_markdown(study: StudyConfig, results: Mapping[str, Any], figures: Sequence[tuple[str, Path]]) -> str:
    ref = config_label(study.reference["model"], study.reference["init"])
    md = [
        f"# Study: {study.name}",
        "",
        f"Dataset `{study.dataset}`, task `{study.task}`; models {', '.join(study.models)}; initialisations "
        f"{', '.join(study.inits)}; label fractions {', '.join(fraction_key(f) + ' %' for f in study.fractions)}; "
        f"seeds {', '.join(map(str, study.seeds))}. Top-{study.top_k} checkpoint ensembles, threshold {THRESHOLD:g}.",
        "",
        "## Results",
        "",
        "Mean ± std over test cases of per-case values averaged over seeds; 'Dice per seed' gives each "
        "seed's mean test Dice. HD95 is undefined for a case where exactly one of prediction and "
        "reference is empty in some seed (it is then infinite); such cases are counted, not averaged.",
        "",
        table_markdown(results["table"]),
        "",
        *_convergence_markdown(results["table"]),
        "## Paired Wilcoxon signed-rank tests on per-case Dice",
        "",
        f"The reference configuration ({ref}) against every other one, then each pre-trained model against "
        "the same model from scratch; per test set and label fraction, pairing the seed-averaged Dice of each "
        "test case. Cases of one patient (eyes, visits) are not independent, so p-values are optimistic.",
        "",
        wilcoxon_markdown(results["wilcoxon"]),
        "",
    ]
    if results.get("growth"):
        md += [
            "## GA growth rates: predictions against the reference",
            "",
            "Per eye of the test cases with at least two labeled visits, the growth rates of the predicted masks "
            "against those of the reference masks on the same visits (least squares over the visits; "
            "`enface progression`): Bland–Altman bias (predicted − reference) with 95 % limits of agreement, "
            "and ICC(A,1); each the mean over seeds.",
            "",
            growth_markdown(results["growth"]),
            "",
        ]
    if results["missing"]:
        md += ["## Missing evaluations", "", *[f"- {m}" for m in results["missing"]], ""]
    md += ["## Figures", ""]
    for title, p in figures:
        md += [f"### {title}", "", f"![{title}](figures/{p.name})", ""]
    return "\n".join(md)


def write_report(study: StudyConfig, plan: Sequence[PlannedRun], results: Mapping[str, Any]) -> Path:
    """Write ``results/`` tables, ``figures/`` and ``report.md`` + ``report.html``.

    Returns:
        Path of ``report.md``.
    """
    out = study.out_dir
    res_dir, fig_dir = out / "results", out / "figures"
    table, wil = results["table"], results["wilcoxon"]
    atomic_write_csv(res_dir / "table.csv", table)
    atomic_write_text(res_dir / "table.md", table_markdown(table) + "\n")
    atomic_write_csv(res_dir / "wilcoxon.csv", wil)
    atomic_write_text(res_dir / "wilcoxon.md", wilcoxon_markdown(wil) + "\n")
    atomic_write_json(res_dir / "per_case.json", results["per_case"])
    if results.get("growth"):
        from enface.study.growth import GROWTH_COLUMNS

        atomic_write_csv(res_dir / "growth.csv", results["growth"], GROWTH_COLUMNS)
        atomic_write_text(res_dir / "growth.md", growth_markdown(results["growth"]) + "\n")
    md = _report_markdown(study, results, _figures(study, plan, table, fig_dir))
    if results.get("active"):
        from enface.study.active_results import write_active_report

        md += "\n" + write_active_report(study, results["active"], res_dir, fig_dir)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", markdown_to_html(md, study.name, out))
    log.info("report written: %s (and report.html); tables in %s, figures in %s", out / "report.md", res_dir, fig_dir)
    return out / "report.md"
