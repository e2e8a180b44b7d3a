"""Evaluation: top-k checkpoint ensembling, per-case tables, summaries, paired tests.

The paper averages the probabilities of the top-5 checkpoints (by validation Dice) of a
run to reduce inference variability, then thresholds at 0.5. Per case we report Dice,
absolute area difference in mm² and HD95 in mm (MONAI, anisotropic en-face spacing), for
every grader that annotated the case.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import yaml

from enface.data.folder import load_case, read_dataset_info
from enface.errors import DatasetError
from enface.engine.checkpoint import load_model, topk_checkpoints
from enface.errors import CheckpointError
from enface.fileio import atomic_write, atomic_write_csv, atomic_write_json
from enface.metrics import abs_area_difference, area_mm2, dice_score, hd95_mm

__all__ = [
    "Ensemble",
    "EvalResult",
    "evaluate",
    "summarize",
    "paired_wilcoxon",
    "read_cases_csv",
    "METRICS",
]

log = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("dice", "area_diff_mm2", "hd95_mm")
"""Per-case metrics written to ``cases.csv``."""


class Ensemble:
    """Average the sigmoid probabilities of several checkpoints of the same task.

    Args:
        checkpoints: checkpoint files (each rebuilt from its own description).
        device: torch device for inference.

    Call with a normalised volume ``(1, C_in, H, W, D)``; returns ``(mean, std)`` of the
    member probabilities, each ``(C_out, H, W)`` float32 numpy arrays.
    """

    def __init__(self, checkpoints: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> None:
        if not checkpoints:
            raise CheckpointError("no checkpoints to ensemble")
        self.device = torch.device(device)
        self.paths = [Path(p) for p in checkpoints]
        self.models = []
        self.infos = []
        for p in self.paths:
            model, info = load_model(p)
            self.models.append(model.to(self.device))
            self.infos.append(info)
        names = {i["model"]["name"] for i in self.infos}
        if len(names) > 1:
            log.info("ensembling different architectures: %s", sorted(names))

    @classmethod
    def from_run(cls, run: str | os.PathLike, top_k: int = 5, device: str | torch.device = "cpu") -> "Ensemble":
        """The top-k checkpoints of a run folder (falls back to ``last.ckpt`` when none is ranked)."""
        paths = topk_checkpoints(run, top_k)
        if not paths:
            last = Path(run) / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise CheckpointError(f"{run}: no checkpoints found")
            paths = [last]
        return cls(paths, device)

    @property
    def task(self) -> str | None:
        return self.infos[0].get("task")

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.infos[0].get("config") or {})

    @property
    def channels(self) -> tuple[str, ...]:
        """Input channels the members were trained on (``("oct",)`` for older checkpoints)."""
        return tuple(self.config.get("channels") or ("oct",))

    @torch.no_grad()
    def __call__(self, volume: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = volume.to(self.device, torch.float32)
        probs = torch.stack([torch.sigmoid(m(x).float())[0] for m in self.models])
        return probs.mean(0).cpu().numpy(), probs.std(0, unbiased=False).cpu().numpy()


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        rows: one dict per (case, grader) with the columns of ``cases.csv``.
        summary: the content of ``summary.json``.
        out_dir: where ``cases.csv``, ``summary.json`` and ``predictions.npz`` were written.
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


def _run_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    if not path.is_file():
        raise DatasetError(f"{run}: not a run folder (no config.yaml)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def evaluate(
    run: str | os.PathLike,
    split: str = "test",
    dataset: str | os.PathLike | None = None,
    task: str | None = None,
    top_k: int = 5,
    threshold: float = 0.5,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    save_probabilities: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Evaluate the top-k ensemble of a segmentation run on a split of a dataset.

    Args:
        run: run folder (its ``config.yaml`` names the dataset and task).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        dataset: evaluate on another dataset folder (an external test set); default the
            run's own dataset.
        task: mask task (default the run's).
        top_k: checkpoints averaged.
        threshold: probability threshold of the binary prediction.
        out_dir: output folder (default ``<run>/eval/<dataset name>-<split>``).
        device: torch device.
        save_probabilities: also write ``predictions.npz`` (probabilities as uint8).
        progress: log one line per case.

    Returns:
        An :class:`EvalResult`; files ``cases.csv`` and ``summary.json`` are written atomically.
    """
    from enface.data.dataset import EnfaceDataset
    from enface.data.splits import select_cases

    run = Path(run)
    cfg = _run_config(run)
    if cfg.get("stage") != "train":
        raise DatasetError(f"{run}: evaluate needs a segmentation run (this one is {cfg.get('stage')!r})")
    dataset = Path(dataset or cfg["dataset"])
    task = task or cfg["target"]
    info = read_dataset_info(dataset)
    ids = select_cases(dataset, split, requires=(f"mask:{task}",))
    if not ids:
        raise DatasetError(f"{dataset}: no cases with a {task!r} mask in split {split!r}")
    ensemble = Ensemble.from_run(run, top_k, device)
    out = Path(out_dir) if out_dir else run / "eval" / f"{info['name']}-{split}"
    ds = EnfaceDataset(dataset, ids, None, augment=None, channels=ensemble.channels)
    rows: list[dict[str, Any]] = []
    inter_grader: list[dict[str, Any]] = []
    probs: dict[str, np.ndarray] = {}
    for i, cid in enumerate(ids):
        item = ds[i]
        mean, _ = ensemble(item["volume"][None])
        prob = mean[0]
        pred = prob >= threshold
        case = load_case(dataset / "cases" / cid)
        graders = case.graders(task)
        refs = {g: case.load_mask(task, g) for g in graders}
        for g in graders[1:]:  # agreement of each extra grader with the primary one
            inter_grader.append({
                "dice": dice_score(refs[g], refs[None]),
                "area_diff_mm2": abs_area_difference(refs[g], refs[None], case.spacing),
                "hd95_mm": hd95_mm(refs[g], refs[None], case.spacing),
            })
        for grader in graders:
            ref = refs[grader]
            rows.append(
                {
                    "case_id": cid,
                    "patient_id": case.patient_id,
                    "grader": grader or "",
                    "dice": dice_score(pred, ref),
                    "area_pred_mm2": area_mm2(pred, case.spacing),
                    "area_true_mm2": area_mm2(ref, case.spacing),
                    "area_diff_mm2": abs_area_difference(pred, ref, case.spacing),
                    "hd95_mm": hd95_mm(pred, ref, case.spacing),
                }
            )
        probs[cid] = prob
        if progress:
            r = rows[-len(graders)]
            log.info("[%d/%d] %s: Dice %.3f, area diff %.3f mm²", i + 1, len(ids), cid, r["dice"], r["area_diff_mm2"])
    primary = [r for r in rows if r["grader"] == ""]
    extra_graders = sorted({r["grader"] for r in rows if r["grader"]})
    summary = {
        "run": str(run),
        "dataset": str(dataset),
        "dataset_name": info["name"],
        "split": split,
        "task": task,
        "threshold": threshold,
        "checkpoints": [str(p) for p in ensemble.paths],
        "n_cases": len(primary),
        "metrics": summarize(primary),
        "graders": {g: summarize([r for r in rows if r["grader"] == g]) for g in extra_graders},
        "inter_grader": summarize(inter_grader) if inter_grader else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    columns = ["case_id", "patient_id", "grader", "dice", "area_pred_mm2", "area_true_mm2", "area_diff_mm2", "hd95_mm"]
    atomic_write_csv(out / "cases.csv", rows, columns)
    atomic_write_json(out / "summary.json", summary)
    if save_probabilities:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.round(v * 255).astype(np.uint8) for k, v in probs.items()})
        atomic_write(out / "predictions.npz", lambda f: f.write(buf.getvalue()))
    m = summary["metrics"]
    log.info(
        "evaluated %d cases of %s/%s: Dice %.3f ± %.3f, area diff %.3f ± %.3f mm²; results in %s",
        len(primary), info["name"], split, m["dice"]["mean"], m["dice"]["std"],
        m["area_diff_mm2"]["mean"], m["area_diff_mm2"]["std"], out,
    )
    return EvalResult(rows, summary, out, probs)


def paired_wilcoxon(
    reference: Mapping[str, float], other: Mapping[str, float], alternative: str = "two-sided"
) -> dict[str, float]:
    """Wilcoxon signed-rank test on per-case values paired by case id.

    Args:
        reference: ``{case_id: value}`` of the reference configuration.
        other: ``{case_id: value}`` of the compared configuration.
        alternative: passed to :func:`scipy.stats.wilcoxon`.

    Returns:
        ``{"n", "statistic", "p_value", "median_difference"}`` (``other - reference``);
        p is NaN when fewer than 2 paired cases differ.
    """
    from scipy.stats import wilcoxon

    common = sorted(set(reference) & set(other))
    a = np.array([reference[c] for c in common], dtype=float)
    b = np.array([other[c] for c in common], dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    diff = b - a
    result = {"n": int(a.size), "statistic": math.nan, "p_value": math.nan, "median_difference": float(np.median(diff)) if diff.size else math.nan}
    if np.count_nonzero(diff) >= 2:
        res = wilcoxon(b, a, alternative=alternative)
        result["statistic"] = float(res.statistic)
        result["p_value"] = float(res.pvalue)
    return result
