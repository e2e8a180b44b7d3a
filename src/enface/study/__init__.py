"""The label-efficiency study: one YAML -> plan -> runs -> results -> report.

* :mod:`~enface.study.config` — the study YAML (:class:`StudyConfig`, :func:`load_study`);
* :mod:`~enface.study.plan` — the runs it needs, pre-training first, and their folders;
* :mod:`~enface.study.run` — its phantom datasets, its runs (resumable), their evaluations;
* :mod:`~enface.study.ledger` — one small record per finished run, the results that outlive a machine;
* :mod:`~enface.study.results` — tables and paired Wilcoxon tests from the ledger;
* :mod:`~enface.study.claims` — the paper's claims, each put to the data with a paired test;
* :mod:`~enface.study.report` — Markdown and HTML report with figures;
* :mod:`~enface.study.demo` — the reduced study of ``enface demo``.
"""

from enface.study.config import StudyConfig, load_study
from enface.study.demo import demo_study, headline
from enface.study.plan import PlannedRun, plan_study, run_folder
from enface.study.report import write_report
from enface.study.results import collect_results
from enface.study.run import ensure_datasets, execute_run, run_study
from enface.study.stats import paired_wilcoxon

__all__ = [
    "PlannedRun",
    "StudyConfig",
    "collect_results",
    "demo_study",
    "ensure_datasets",
    "execute_run",
    "headline",
    "load_study",
    "paired_wilcoxon",
    "plan_study",
    "run_folder",
    "run_study",
    "write_report",
]
