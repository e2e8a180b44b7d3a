"""Which scans to label next: per-case scores from a run's ensemble, strategies, labeling queues.

* :mod:`~enface.select.scoring` — the ensemble (top-k checkpoints x mirrored views) on each
  scan: mutual information, an uncertainty score that does not just favour large lesions,
  predicted area and its spread, feature vectors;
* :mod:`~enface.select.strategies` — ``random``, ``uncertainty``, ``diverse`` (k-center);
* :mod:`~enface.select.queue` — ``enface select``: the queue CSV of a dataset's unlabeled cases.

The active-learning simulation of the study (:mod:`enface.study.active`) uses the same
scores and strategies.
"""

from enface.select.queue import QUEUE_COLUMNS, QueueResult, check_queue_path, select_queue
from enface.select.scoring import (
    AREA_FLOOR_MM2,
    TTA_VIEWS,
    CaseScore,
    mutual_information,
    score_cases,
    uncertainty_score,
)
from enface.select.strategies import PER, STRATEGIES, Pick, rank_cases

__all__ = [
    "AREA_FLOOR_MM2",
    "PER",
    "QUEUE_COLUMNS",
    "STRATEGIES",
    "TTA_VIEWS",
    "CaseScore",
    "Pick",
    "QueueResult",
    "check_queue_path",
    "mutual_information",
    "rank_cases",
    "score_cases",
    "select_queue",
    "uncertainty_score",
]
