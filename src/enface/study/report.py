"""A study's report: ``results/`` tables, ``figures/`` and ``report.md`` + ``report.html``.

Everything in it comes from the study's ledger (:mod:`enface.study.ledger`) and, for the
overlay figure's images and reference masks, its phantom datasets: no run folder is read, so
a study trained by several machines is reported on any of them. The HTML is the Markdown
report rendered by Python-Markdown (tables extension), with every figure embedded as a data
URI, so the page is one self-contained file to share.
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
from enface.study.ledger import unpack_mask
from enface.study.plan import PlannedRun
from enface.study.results import ACTIVE_COLUMNS, config_label
from enface.study.stats import format_number as _fmt
from enface.study.stats import format_p as _fmt_p
from enface.targets import THRESHOLD

__all__ = [
    "active_markdown",
    "growth_markdown",
    "markdown_to_html",
    "table_markdown",
    "wilcoxon_markdown",
    "write_report",
]

log = logging.getLogger(__name__)

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
)


def table_markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The results table (one row per test set, model, init and fraction) as Markdown."""
    lines = [
        "| test set | model | init | fraction | seeds | cases | Dice | Dice per seed | area diff (mm²) | HD95 (mm) "
        "| flagged seeds | Dice, unflagged seeds | epochs run | stopped |",
        "|---|---|---|---:|---:|---:|---|---|---|---|---|---:|---|---|",
    ]
    for r in table:
        hd95 = f"{_fmt(r['hd95_mm_mean'], 2)} ± {_fmt(r['hd95_mm_std'], 2)}"
        if r.get("hd95_mm_undefined"):
            hd95 += f" ({r['hd95_mm_undefined']} undefined)"
        lines.append(
            f"| {r['test_set']} | {r['model']} | {r['init']} | {fraction_key(r['fraction'])} % | {r['n_seeds']} | "
            f"{r['n_cases']} | {_fmt(r['dice_mean'])} ± {_fmt(r['dice_std'])} | {r['dice_per_seed']} | "
            f"{_fmt(r['area_diff_mm2_mean'])} ± {_fmt(r['area_diff_mm2_std'])} | {hd95} | "
            f"{r.get('flags') or '–'} | {_fmt(r.get('dice_mean_unflagged'))} | {r['epochs_run']} | {r['stopped']} |"
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
    from enface.study.convergence import FULL_FRACTION, RISE_TOLERANCE, STALL_LOSS_DROP, STALL_TOLERANCE

    flagged = [r for r in table if r.get("flags")]
    md = [
        "## Convergence",
        "",
        f"Every training run is checked: *still rising* when its mean validation Dice over the last quarter of its "
        f"epochs exceeds that of the quarter before by more than {RISE_TOLERANCE}; *stalled* when its patience "
        f"stopped it while its validation Dice had stayed within {STALL_TOLERANCE} of its first value and its "
        f"training loss had fallen by more than {STALL_LOSS_DROP:.0%} (it was still learning: its result measures "
        "the stopping rule, not its initialisation); *collapsed (empty)* on a test set "
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


def _overlay_figure(study: StudyConfig, records: Sequence[Mapping[str, Any]], fig_dir: Path) -> Path | None:
    """Fig. 5: predictions of every model+init at the lowest fraction (first seed, first test
    set), from the masks the ledger records keep of a few test cases."""
    from enface import viz
    from enface.data.folder import load_case

    ts_name, ts = next(iter(study.test_sets.items()))
    panels: dict[str, dict[str, np.ndarray]] = {}
    for rec in records:
        overlay = (rec["evaluations"].get(ts_name) or {}).get("overlay")
        if rec["run"]["stage"] == "train" and overlay:
            panels[config_label(rec["run"]["model"], rec["run"]["init"])] = {
                c: unpack_mask(m) for c, m in overlay.items()
            }
    case_ids = sorted({c for p in panels.values() for c in p})
    if not panels:
        return None
    cases = {c: load_case(Path(ts["dataset"]) / "cases" / c) for c in case_ids}
    images = {
        c: {m.upper(): case.load_image(m) for m in ("slo", "faf") if case.has_image(m)} for c, case in cases.items()
    }
    fraction = min(study.fractions)
    return viz.plot_overlay_grid(
        panels,
        {c: case.load_mask(study.task) for c, case in cases.items()},
        fig_dir / "overlays.png",
        title=f"{ts_name}, {fraction_key(fraction)} % labels, seed {study.seeds[0]}",
        spacings={c: case.spacing for c, case in cases.items()},
        images=images,
    )


def _curves_figure(study: StudyConfig, records: Sequence[Mapping[str, Any]], fig_dir: Path) -> Path | None:
    """Validation metric per epoch: the pre-trainings and the lowest fraction's runs (first seed)."""
    from enface import viz

    curves: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        run = rec["run"]
        if run["stage"] == "pretrain" or (
            run["stage"] == "train" and run["seed"] == study.seeds[0] and run["fraction"] == min(study.fractions)
        ):
            curves[run["label"]] = rec["history"]
    return viz.plot_training_curves(curves, fig_dir / "training-curves.png") if curves else None


def _figures(study: StudyConfig, results: Mapping[str, Any], fig_dir: Path) -> list[tuple[str, Path]]:
    from enface import viz

    figures: list[tuple[str, Path]] = []
    table, records = results["table"], results["records"]
    for ts in study.test_sets:
        rows = [r for r in table if r["test_set"] == ts]
        if rows:
            p = viz.plot_metric_vs_fraction(rows, path_under(fig_dir, f"{ts}-vs-fraction.png"), title=ts)
            figures.append((f"Dice and area difference vs label fraction ({ts})", p))
    overlay = _overlay_figure(study, records, fig_dir) if study.fractions else None  # none: an active-only study
    if overlay is not None:
        figures.append(("Predictions at the lowest label fraction (TP green, TN black, FP red, FN blue)", overlay))
    curves = _curves_figure(study, records, fig_dir)
    if curves is not None:
        figures.append(("Training curves (validation metric per epoch)", curves))
    return figures


def _arms_text(study: StudyConfig) -> str:
    return "; ".join(
        f"{a.model} ({', '.join(a.inits)}) at {', '.join(fraction_key(f) + ' %' for f in a.fractions)}"
        for a in study.arm_list
    )


def _budget_text(study: StudyConfig) -> str:
    train = study.train
    if train.get("patience") is None:
        return f"Every segmentation run trains {train.get('epochs', 'the default number of')} epochs."
    return (
        f"Budgets by convergence, the same rule for every run: a run stops when its validation Dice has not "
        f"improved by {train.get('min_delta', 0)} for {train['patience']} validations, after at least "
        f"{train.get('min_epochs', 1)} epochs, and after {train.get('epochs')} epochs at the latest."
    )


def _cost_markdown(results: Mapping[str, Any]) -> list[str]:
    cost = results["cost"]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cost["per_stage_cpu_hours"].items()))
    line = f"The {len(results['records'])} recorded runs took {cost['cpu_hours']:.2f} CPU-hours ({stages})"
    todo = len(results["missing"])
    return [line + (f"; {todo} planned runs have no record yet." if todo else "."), ""]


def _claims_markdown(results: Mapping[str, Any]) -> list[str]:
    from enface.study.claims import ALPHA, claim_rows, claim_summary

    rows = claim_rows(results["per_case"])
    if not rows:
        return []
    md = [
        "## The paper's claims",
        "",
        "Each claim as paired Wilcoxon signed-rank tests on the seed-averaged per-case Dice (two-sided): "
        f"*yes* where the claimed side is higher with p < {ALPHA}, *no* where the other side is, *not shown* "
        "otherwise. Higher is the side the signed ranks favour (W⁺ > W⁻), which the means can contradict "
        "when a few cases differ a lot. For the last claim the paired values are each case's SSL − scratch gain.",
        "",
        "| claim | test set | comparison | n | mean (reference) | mean (claimed higher) | median Δ | p | answer |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['claim']} | {r['test_set']} | {r['comparison']} | {r['n']} | {_fmt(r['mean_reference'])} | "
            f"{_fmt(r['mean_other'])} | {_fmt(r['median_difference'])} | {_fmt_p(r['p_value'])} | {r['answer']} |"
        )
    md += ["", "In short, per claim:", ""]
    for c in claim_summary(rows):
        counts = ", ".join(f"{answer} {len(c[answer])}" for answer in ("yes", "no", "not shown") if c[answer])
        md.append(f"* **{c['claim']}** ({c['n']} comparisons: {counts})")
        for answer in ("yes", "no"):
            if c[answer]:
                md.append(f"  * {answer}: " + "; ".join(c[answer]))
    return [*md, ""]


def _report_markdown(study: StudyConfig, results: Mapping[str, Any], figures: Sequence[tuple[str, Path]]) -> str:
    ref = config_label(study.reference["model"], study.reference["init"])
    md = [
        f"# Study: {study.name}",
        "",
        f"Dataset `{study.dataset}`, task `{study.task}`; {_arms_text(study)}; seeds "
        f"{', '.join(map(str, study.seeds))}. Top-{study.top_k} checkpoint ensembles, threshold {THRESHOLD:g}. "
        f"{_budget_text(study)}",
        "",
        *_cost_markdown(results),
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
        *_claims_markdown(results),
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
        md += ["## Runs without a record yet", "", *[f"- {m}" for m in results["missing"]], ""]
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
    from enface.study.claims import claim_rows

    claims = claim_rows(results["per_case"])
    if claims:
        atomic_write_csv(res_dir / "claims.csv", claims)
    md = _report_markdown(study, results, _figures(study, results, fig_dir))
    if results.get("active"):
        md += "\n" + _write_active_report(study, results["active"], res_dir, fig_dir)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", markdown_to_html(md, study.name, out))
    log.info("report written: %s (and report.html); tables in %s, figures in %s", out / "report.md", res_dir, fig_dir)
    return out / "report.md"


# --------------------------------------------------------------------------- active learning


def active_markdown(results: Mapping[str, Any]) -> str:
    """The active-learning tables as Markdown (results, paired tests, selection diagnostics)."""
    lines = [
        "| test set | strategy | round | patients | seeds | cases | Dice | Dice per seed | area diff (mm²) | "
        "flagged | epochs run | stopped |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|---|---|",
    ]
    for r in results["table"]:
        lines.append(
            f"| {r['test_set']} | {r['strategy']} | {r['round']} | {r['n_patients']} | {r['n_seeds']} | "
            f"{r['n_cases']} | {_fmt(r['dice_mean'])} ± {_fmt(r['dice_std'])} | {r['dice_per_seed']} | "
            f"{_fmt(r['area_diff_mm2_mean'])} ± {_fmt(r['area_diff_mm2_std'])} | {r['flags'] or '–'} | "
            f"{r['epochs_run']} | {r['stopped']} |"
        )
    lines += [
        "",
        "| test set | round | patients | strategy | n | median ΔDice vs random | p | median Δarea diff (mm²) | p |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["wilcoxon"]:
        lines.append(
            f"| {r['test_set']} | {r['round']} | {r['n_patients']} | {r['strategy']} | {r['n']} | "
            f"{_fmt(r['median_dice_difference'])} | {_fmt_p(r['p_dice'])} | "
            f"{_fmt(r['median_area_diff_mm2_difference'])} | {_fmt_p(r['p_area_diff_mm2'])} |"
        )
    lines += [
        "",
        "| strategy | round | seeds | picked area (mm²) | pool area (mm²) | picked oracle Dice | pool oracle Dice | "
        "Spearman ρ(score, 1 − Dice) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["selection"]:
        lines.append(
            f"| {r['strategy']} | {r['round']} | {r['n_seeds']} | {_fmt(r.get('picked_area_mm2'))} | "
            f"{_fmt(r.get('pool_area_mm2'))} | {_fmt(r.get('picked_oracle_dice'))} | "
            f"{_fmt(r.get('pool_oracle_dice'))} | {_fmt(r.get('spearman_uncertainty_error'), 2)} |"
        )
    return "\n".join(lines)


def _labels_saved(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per test set and strategy: the fewest labeled patients that reach random's final Dice,
    against the fewest with which random itself first reached it (its curve need not rise
    round by round, so its last round is not what it needed)."""
    out = []
    for ts in sorted({r["test_set"] for r in rows}):
        mine = [r for r in rows if r["test_set"] == ts]
        random_rows = sorted((r for r in mine if r["strategy"] == "random"), key=lambda r: r["round"])
        if not random_rows:
            continue
        final = random_rows[-1]
        own = next(r["n_patients"] for r in random_rows if r["dice_mean"] >= final["dice_mean"])
        for strategy in sorted({r["strategy"] for r in mine} - {"random"}):
            reach = [
                r["n_patients"]
                for r in sorted((r for r in mine if r["strategy"] == strategy), key=lambda r: r["round"])
                if r["dice_mean"] >= final["dice_mean"]
            ]
            saved = f"{own - reach[0]} patients saved" if reach else "never reached"
            out.append(
                f"- {ts}, {strategy}: random's final Dice {_fmt(final['dice_mean'])} ({final['n_patients']} "
                f"patients; random first reached it with {own}) first reached with {reach[0] if reach else '–'} "
                f"patients: {saved}"
            )
    return out


def _write_active_report(study: StudyConfig, results: Mapping[str, Any], res_dir: Path, fig_dir: Path) -> str:
    """Write the active-learning tables and figures; return the report's Markdown section."""
    from enface import viz

    atomic_write_csv(res_dir / "active.csv", results["table"], ACTIVE_COLUMNS)
    atomic_write_csv(res_dir / "active-wilcoxon.csv", results["wilcoxon"])
    atomic_write_csv(res_dir / "active-selection.csv", results["selection"])
    tables = active_markdown(results)
    atomic_write_text(res_dir / "active.md", tables + "\n")
    active = study.active_config
    assert active is not None
    md = [
        "## Active learning",
        "",
        f"{active.model} from `{active.init}`, "
        f"{active.start_patients} starting patients (drawn per seed) + {active.patients_per_round} per round for "
        f"{active.rounds} rounds; strategies {', '.join(active.strategies)}; seeds "
        f"{', '.join(map(str, study.seeds))}. Each round trains from the init with the study's training settings "
        "and is evaluated with its top-k ensemble; the pool is scored by the round before "
        f"(top-{study.top_k} checkpoints{' x 4 mirrored views' if active.tta else ''}). Values are per-case values "
        "averaged over seeds (mean ± std over test cases); paired Wilcoxon tests against `random` at each round. "
        "The last table describes what each strategy picked (oracle masks, for diagnosis only).",
        "",
        tables,
        "",
        "Labeled patients each strategy needs to reach the random curve's final Dice:",
        "",
        *_labels_saved(results["table"]),
        "",
    ]
    for ts in study.test_sets:
        rows = [r for r in results["table"] if r["test_set"] == ts]
        if rows:
            p = viz.plot_active_learning(rows, path_under(fig_dir, f"{ts}-active-learning.png"), title=ts)
            md += [f"### Dice and area difference vs labeled patients ({ts})", "", f"![{ts}](figures/{p.name})", ""]
    return "\n".join(md)
