"""``enface demo``: a phantom dataset and a reduced study, sized for a laptop CPU."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from enface.data.splits import fraction_key
from enface.study.config import StudyConfig

__all__ = ["DEMO_PATIENTS", "demo_study", "headline"]

DEMO_PATIENTS = 30
"""Phantom patients of the demo dataset (about 100 scans at the ``demo`` preset, 32 x 128 x 64)."""


def demo_study(out: str | os.PathLike, seed: int = 0) -> StudyConfig:
    """The reduced study of ``enface demo``.

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
    with open(table_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = ["headline (mean over test cases):"]
    for r in rows:
        lines.append(
            f"  {r['test_set']}: {r['model']} {r['init']:<12} {fraction_key(float(r['fraction'])):>4} % labels: "
            f"Dice {float(r['dice_mean']):.3f} ± {float(r['dice_std']):.3f}, "
            f"area diff {float(r['area_diff_mm2_mean']):.3f} mm²"
        )
    return "\n".join(lines)
