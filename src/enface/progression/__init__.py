"""GA progression: lesion masks over visits -> areas, lesion features, growth rates per eye.

* :mod:`~enface.progression.core` — per-visit lesion features (area, sqrt area, foci,
  perimeter, circularity), per-eye least-squares growth rates, cohort summary, agreement of
  two read-outs; on in-memory masks, no files;
* :mod:`~enface.progression.stats` — the statistics (rate fit with interval, Bland-Altman,
  ICC(A,1));
* :mod:`~enface.progression.sources` — reading visits from reference masks or predictions;
* :mod:`~enface.progression.run` — ``enface progression``: tables, figures and the report;
* :mod:`~enface.progression.figures` — the figures and the HTML report.
"""

from enface.progression.core import (
    DAYS_PER_YEAR,
    EYE_COLUMNS,
    MIN_FOCUS_MM2,
    VISIT_COLUMNS,
    EyeRates,
    LesionFeatures,
    Skipped,
    Visit,
    VisitSet,
    check_visits,
    cohort_summary,
    crofton_perimeter,
    eye_rates,
    lesion_features,
    rate_agreement,
)
from enface.progression.run import ProgressionResult, prediction_visits, reference_visits, run_progression

__all__ = [
    "DAYS_PER_YEAR",
    "EYE_COLUMNS",
    "MIN_FOCUS_MM2",
    "VISIT_COLUMNS",
    "EyeRates",
    "LesionFeatures",
    "ProgressionResult",
    "Skipped",
    "Visit",
    "VisitSet",
    "check_visits",
    "cohort_summary",
    "crofton_perimeter",
    "eye_rates",
    "lesion_features",
    "prediction_visits",
    "rate_agreement",
    "reference_visits",
    "run_progression",
]
