"""A tiny dataset whose FAF and GA mask both follow a bright band in the volume (engine tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from enface.data.folder import CaseMeta, write_case, write_dataset_info
from enface.data.splits import split_dataset

SHAPE = (8, 32, 64)
FAST = {"width": 0.125, "crop": (8, 32), "batch_size": 2, "num_workers": 0, "accelerator": "cpu", "top_k": 2}


def make_tiny_dataset(root: Path, patients: int = 8, seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Path:
    """Tiny cases whose FAF and mask both depend on a bright band in the volume."""
    rng = np.random.default_rng(seed)
    h, w, _ = shape
    for p in range(patients):
        vol = rng.normal(1.0, 0.1, shape).astype(np.float32)
        mask = np.zeros((h, w), np.uint8)
        c = rng.integers(4, w - 12)
        mask[:, c : c + 8] = 1
        vol[:, c : c + 8, 30:40] += 2.0
        faf = np.clip(0.6 - 0.4 * mask + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)
        meta = CaseMeta(case_id=f"P{p:02d}_OD_v0", patient_id=f"P{p:02d}", spacing=(0.2, 0.02, 0.004))
        write_case(root, meta, vol, images={"faf": faf}, masks={"ga": mask})
    write_dataset_info(root, "tiny", ("oct", "faf"), ("ga",), (0.2, 0.02, 0.004))
    split_dataset(root, seed=0)
    return root


def disc_dataset(root: Path, visits: dict[tuple[str, str], list[tuple[int, int]]] | None = None) -> Path:
    """A dataset of square 'lesions': one case per (day, half-width in pixels) of each eye."""
    visits = visits or {("P1", "OD"): [(0, 3), (365, 5)]}
    rng = np.random.default_rng(0)
    for (patient, eye), rows in visits.items():
        for i, (day, r) in enumerate(rows):
            mask = np.zeros((24, 24), np.uint8)
            mask[12 - r : 12 + r, 12 - r : 12 + r] = 1
            meta = CaseMeta(f"{patient}_{eye}_V{i + 1}", patient, eye, day, (0.05, 0.05, 0.01))
            write_case(root, meta, rng.random((24, 24, 4), np.float32), masks={"ga": mask})
    write_dataset_info(root, "discs", ["oct"], ["ga"], (0.05, 0.05, 0.01))
    return root
