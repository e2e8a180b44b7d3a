"""Evaluation: a run's top-k ensemble on a split, per-case tables and summaries.

The paper averages the probabilities of the top-5 checkpoints (by validation Dice) of a
run to reduce inference variability, then thresholds at 0.5
(:class:`enface.engine.inference.Ensemble`). Per case we report Dice, absolute area
difference in mm² and HD95 in mm (MONAI, anisotropic en-face spacing), for every grader
that annotated the case, plus the agreement between graders.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from enface.config import FAST_DEFAULT, INFERENCE_PRECISION_DEFAULT
from enface.data.dataset import EnfaceDataset
from enface.data.folder import Case, is_dataset, load_case, mask_filename, read_dataset_info
from enface.data.splits import select_cases
from enface.engine.inference import Ensemble, depth_note, read_run_config, training_preparation
from enface.errors import DatasetError
from enface.fileio import atomic_write, atomic_write_csv, atomic_write_json, path_under, writable_folder
from enface.metrics import abs_area_difference, area_mm2, dice_score, hd95_mm
from enface.targets import THRESHOLD, Target, binary

if TYPE_CHECKING:
    from enface.data.dataset import EnfaceDataset

__all__ = ["CASE_COLUMNS", "METRICS", "EvalResult", "evaluate", "read_cases_csv", "summarize"]

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("dice", "area_diff_mm2", "hd95_mm")
"""Per-case metrics written to ``cases.csv``."""

CASE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "grader",
    "dice",
    "area_pred_mm2",
    "area_true_mm2",
    "area_diff_mm2",
    "hd95_mm",
)
"""Columns of ``cases.csv``: one row per (case, grader); the primary grader is ``""``."""


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        rows: one dict per (case, grader) with the columns of ``cases.csv``.
        summary: the content of ``summary.json``.
        out_dir: where ``cases.csv``, ``summary.json`` and ``predictions.npz`` were written.
        probabilities: ``{case_id: (H, W) float32}`` ensemble probabilities.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Mean, std, median (and counts) per metric over ``rows``; non-finite values are counted apart.

    HD95 is infinite where exactly one of prediction and reference is empty; those cases are
    reported in ``n_undefined`` rather than silently averaged.
    """
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        raw = [r[m] for r in rows if r.get(m) not in (None, "")]
        vals = _finite(float(v) for v in raw)
        out[m] = {
            "mean": float(vals.mean()) if vals.size else math.nan,
            "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0 if vals.size else math.nan,
            "median": float(np.median(vals)) if vals.size else math.nan,
            "n": int(vals.size),
            "n_undefined": int(len(raw) - vals.size),
        }
    return out


def read_cases_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``cases.csv`` written by :func:`evaluate` (metrics as floats)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for m in METRICS + ("area_pred_mm2", "area_true_mm2"):
            if m in r and r[m] != "":
                r[m] = float(r[m])
    return rows


def _run_dataset(run: Path, cfg: Mapping[str, Any], dataset: str | os.PathLike | None) -> Path:
    """The dataset to evaluate on: the given one, else the run's (relative paths: from the run's config)."""
    if dataset is not None:
        return Path(dataset)
    stored = Path(str(cfg.get("dataset") or ""))
    if stored.is_absolute() or is_dataset(stored):
        return stored
    raise DatasetError(
        f"{run / 'config.yaml'}: the run's dataset {str(stored)!r} is a relative path that does not lead to "
        f"a dataset from here ({Path.cwd()}); give --dataset"
    )


def _case_rows(case: Case, task: str, pred: np.ndarray) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``cases.csv`` for one case (one per grader), and inter-grader agreement rows."""
    graders = case.graders(task)
    refs = {g: case.load_mask(task, g) for g in graders}
    for g, ref in refs.items():
        if ref.shape != pred.shape:
            raise DatasetError(
                f"case {case.case_id}: {mask_filename(task, g)} has shape {ref.shape}, the prediction {pred.shape} "
                "(the volume's en-face grid)"
            )
    sp = case.spacing
    agreement = [
        {
            "dice": dice_score(refs[g], refs[None]),
            "area_diff_mm2": abs_area_difference(refs[g], refs[None], sp),
            "hd95_mm": hd95_mm(refs[g], refs[None], sp),
        }
        for g in graders[1:]
    ]
    rows = [
        {
            "case_id": case.case_id,
            "patient_id": case.patient_id,
            "grader": g or "",
            "dice": dice_score(pred, ref),
            "area_pred_mm2": area_mm2(pred, sp),
            "area_true_mm2": area_mm2(ref, sp),
            "area_diff_mm2": abs_area_difference(pred, ref, sp),
            "hd95_mm": hd95_mm(pred, ref, sp),
        }
        for g, ref in refs.items()
    ]
    return rows, agreement


def _write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    probs: Mapping[str, np.ndarray],
    save_probabilities: bool,
) -> None:
    atomic_write_csv(out / "cases.csv", rows, CASE_COLUMNS)
    atomic_write_json(out / "summary.json", summary)
    if save_probabilities:
        buf = io.BytesIO()
        arrays: dict[str, Any] = {k: np.round(v * 255).astype(np.uint8) for k, v in probs.items()}
        np.savez_compressed(buf, **arrays)
        atomic_write(out / "predictions.npz", lambda f: f.write(buf.getvalue()))


def _summary(rows: list[dict[str, Any]], agreement: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    primary = [r for r in rows if r["grader"] == ""]
    extra_graders = sorted({r["grader"] for r in rows if r["grader"]})
    return {
        **fields,
        "n_cases": len(primary),
        "metrics": summarize(primary),
        "graders": {g: summarize([r for r in rows if r["grader"] == g]) for g in extra_graders},
        "inter_grader": summarize(agreement) if agreement else None,
    }


def evaluate(
    run: str | os.PathLike,
    split: str = "test",
    dataset: str | os.PathLike | None = None,
    task: str | None = None,
    top_k: int = 5,
    threshold: float = THRESHOLD,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    save_probabilities: bool = True,
    progress: bool = True,
    fast: bool = FAST_DEFAULT,
    precision: str = INFERENCE_PRECISION_DEFAULT,
) -> EvalResult:
    """Evaluate the top-k ensemble of a segmentation run on a split of a dataset.

    Args:
        run: run folder (its ``config.yaml`` names the dataset and task).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        dataset: evaluate on another dataset folder (an external test set); default the
            run's own dataset.
        task: mask task (default the run's).
        top_k: checkpoints averaged (>= 1).
        threshold: probability threshold of the binary prediction, in (0, 1).
        out_dir: output folder (default ``<run>/eval/<dataset name>-<split>``).
        device: torch device.
        save_probabilities: also write ``predictions.npz`` (probabilities as uint8).
        progress: log one line per case.
        fast: run the ensemble on the fast inference path (same probabilities to float32
            rounding; see :mod:`enface.engine.inference`).
        precision: what the fast path computes in: ``"auto"`` (bf16 where the hardware
            computes it natively), ``"bf16"`` or ``"32"``; written to ``summary.json``.

    Returns:
        An :class:`EvalResult`; files ``cases.csv`` and ``summary.json`` are written atomically.

    Raises:
        DatasetError: not a segmentation run folder, no cases, or a case that does not fit.
        ValueError: ``top_k`` < 1 or ``threshold`` outside (0, 1).
        ConfigError: an unknown precision, or bf16 on the plain path.
    """

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    run = Path(run)
    cfg = read_run_config(run)
    if cfg.get("stage") != "train":
        raise DatasetError(f"{run}: evaluate needs a segmentation run (this one is {cfg.get('stage')!r})")
    root = _run_dataset(run, cfg, dataset)
    target = Target.segment(task or str(cfg["target"]))
    info = read_dataset_info(root)
    name = str(info["name"])
    ids = select_cases(root, split, requires=target.requires)
    if not ids:
        raise DatasetError(f"{root}: no cases with a {target.name!r} mask in split {split!r}")
    out = writable_folder(Path(out_dir) if out_dir else path_under(run, "eval", f"{name}-{split}"))
    ensemble = Ensemble.from_run(run, top_k, device, fast=fast, precision=precision)
    ds = EnfaceDataset(root, ids, None, augment=None, channels=ensemble.channels)
    rows, agreement, probs = _evaluate_cases(ensemble, ds, target.name, threshold, progress)
    summary = _summary(
        rows,
        agreement,
        run=str(run),
        dataset=str(root.resolve()),
        dataset_name=name,
        split=split,
        task=target.name,
        threshold=threshold,
        checkpoints=[str(p) for p in ensemble.paths],
        precision=ensemble.precision,
    )
    _write_outputs(out, rows, summary, probs, save_probabilities)
    log.info("evaluated %s; results in %s", _headline(summary), out)
    return EvalResult(rows, summary, out, probs)


def _evaluate_cases(
    ensemble: Ensemble, ds: EnfaceDataset, task: str, threshold: float, progress: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-case rows, grader-agreement rows and mean probabilities ``(H, W)`` of every case of ``ds``."""
    rows: list[dict[str, Any]] = []
    agreement: list[dict[str, Any]] = []
    probs: dict[str, np.ndarray] = {}
    training_depth = training_preparation(ensemble.config)[0]
    noted: set[int] = set()
    for i, cid in enumerate(ds.case_ids):
        volume = ds[i]["volume"]
        ensemble.check_input(volume, where=f"case {cid}")
        depth = int(volume.shape[-1])
        note = depth_note(depth, training_depth)
        if note and depth not in noted:  # once per depth, not once per case
            noted.add(depth)
            log.warning("%s (the first case of depth %d: %s)", note, depth, cid)
        prob = ensemble.run(volume[None]).mean[0]
        case_rows, case_agreement = _case_rows(load_case(ds.root / "cases" / cid), task, binary(prob, threshold))
        rows += case_rows
        agreement += case_agreement
        probs[cid] = prob
        if progress:
            first = case_rows[0]
            log.info(
                "[%d/%d] %s: Dice %.3f, area diff %.3f mm²", i + 1, len(ds), cid, first["dice"], first["area_diff_mm2"]
            )
    return rows, agreement, probs


def _headline(summary: Mapping[str, Any]) -> str:
    """``"<n> cases of <dataset>/<split>: Dice <mean> ± <sd>, area diff <mean> ± <sd> mm²"``."""
    m = summary["metrics"]
    return (
        f"{summary['n_cases']} cases of {summary['dataset_name']}/{summary['split']}: "
        f"Dice {m['dice']['mean']:.3f} ± {m['dice']['std']:.3f}, "
        f"area diff {m['area_diff_mm2']['mean']:.3f} ± {m['area_diff_mm2']['std']:.3f} mm²"
    )
