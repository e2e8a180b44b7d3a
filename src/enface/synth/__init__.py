"""The phantom generator: OCT volumes with co-registered SLO, FAF and GA/RPD labels.

No public OCT data can be downloaded everywhere, so ``enface synth`` writes a dataset
folder of phantom eyes that exercises the whole pipeline on a laptop. Lesion evidence is
carried by the OCT in 3D (GA: RPE/EZ loss, outer-retina thinning, choroidal
hypertransmission; RPD: hyperreflective mounds above the RPE); FAF shows GA clearly but
with confounders; SLO shows it weakly; labels are en-face masks on the OCT grid, graded
along the B-scans.

Modules: :mod:`~enface.synth.presets` (device-like grids), :mod:`~enface.synth.canvas`
(en-face geometry), :mod:`~enface.synth.vessels`, :mod:`~enface.synth.lesions`,
:mod:`~enface.synth.anatomy` and :mod:`~enface.synth.oct` (the volume),
:mod:`~enface.synth.fundus` (SLO/FAF), :mod:`~enface.synth.eye` (one eye over visits),
:mod:`~enface.synth.cohort` (patients, visits and the dataset writer).
"""

from __future__ import annotations

import importlib
from typing import Any

from enface.synth.presets import PRESETS, Preset, get_preset

# the generator (numpy/scipy) is imported on first use, so that building the CLI parser,
# which lists the presets, stays cheap
_LAZY = {
    "TASKS": "enface.synth.eye",
    "PhantomCase": "enface.synth.eye",
    "EyeModel": "enface.synth.eye",
    "make_grid": "enface.synth.eye",
    "generate_case": "enface.synth.eye",
    "CohortCase": "enface.synth.cohort",
    "plan_cohort": "enface.synth.cohort",
    "synthesize_dataset": "enface.synth.cohort",
}

__all__ = [
    "PRESETS",
    "TASKS",
    "CohortCase",
    "EyeModel",
    "PhantomCase",
    "Preset",
    "generate_case",
    "get_preset",
    "make_grid",
    "plan_cohort",
    "synthesize_dataset",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
