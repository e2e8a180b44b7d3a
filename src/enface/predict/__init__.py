"""``enface predict``: a segmentation model (or a run's top-k ensemble) applied to new scans.

Inputs may be mixed freely: case folders of a dataset (used as stored), dataset folders
(every case), device exports of any registered format (prepared exactly as ``enface
prepare`` does, with the depth and window of the model's training data). Every volume is
z-scored per B-scan and passed through every member of the ensemble; the members' mean
probability is the prediction, their standard deviation the uncertainty. Each scan's
``<out>/<scan id>/`` and ``<out>/summary.csv`` are described in
:mod:`enface.data.predictions`. Only segmentation checkpoints are accepted.

* :mod:`enface.predict.options` — :class:`PredictOptions`;
* :mod:`enface.predict.inputs` — the inputs expanded into scans, each loaded for the network;
* :mod:`enface.predict.run` — the batch, the report;
* :mod:`enface.predict.scan` — each scan: loaded, predicted, its outputs written, its result;
* :mod:`enface.predict.pipeline` — the scans in one process (overlapping) or in workers;
* :mod:`enface.predict.output` — the ``--out`` folder: placement, lock, earlier outputs.
"""

from enface.data.predictions import SUMMARY_COLUMNS
from enface.engine.predictor import Predictor
from enface.predict.inputs import PredictInput, PreparedScan, find_inputs
from enface.predict.options import PredictOptions
from enface.predict.run import PredictReport, ScanResult, predict

__all__ = [
    "SUMMARY_COLUMNS",
    "PredictInput",
    "PredictOptions",
    "PredictReport",
    "Predictor",
    "PreparedScan",
    "ScanResult",
    "find_inputs",
    "predict",
]
