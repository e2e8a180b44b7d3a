"""GA growth rates of ``enface progression --reference`` on a phantom, checked two ways.

1. Against an independent computation straight from the files: pixel count of each
   ``mask_ga.png`` (PIL) × the spacing of its ``meta.json``, √area fitted over
   ``visit / 365.25`` with ``numpy.polyfit`` per eye.
2. Against the phantom generator's own √area growth rate of each eye (the least-squares
   slope of its true lesion's √area over the same visits; :class:`enface.synth.eye.EyeModel`
   rebuilt from the ``eye_seed`` in ``meta.json``): the difference is what the masks'
   quantisation on the en-face grid costs (and, on the realistic phantom, the graders).

Run::

    enface synth ph --patients 20 --seed 0 --preset demo
    enface progression ph --reference --out prog-ref
    .venv/bin/python benchmarks/progression_phantom.py ph prog-ref
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="phantom dataset folder (enface synth, task ga)")
    parser.add_argument("out", type=Path, help="output folder of `enface progression DATASET --reference`")
    args = parser.parse_args()

    per_eye: dict[tuple[str, str], list[tuple[int, float, int]]] = {}
    for case in sorted((args.dataset / "cases").iterdir()):
        if not (case / "mask_ga.png").is_file():
            continue
        meta = json.loads((case / "meta.json").read_text())
        pixels = int((np.asarray(Image.open(case / "mask_ga.png")) > 0).sum())
        area = pixels * meta["spacing"][0] * meta["spacing"][1]
        per_eye.setdefault((meta["patient_id"], meta["eye"]), []).append(
            (meta["visit"], area, meta["extra"]["eye_seed"])
        )
    independent = {
        k: float(np.polyfit(np.array([d for d, _, _ in v]) / 365.25, np.sqrt([a for _, a, _ in v]), 1)[0])
        for k, v in per_eye.items()
        if len(v) > 1
    }
    with (args.out / "eyes.csv").open(newline="") as f:
        enface = {
            (r["patient_id"], r["eye"]): float(r["sqrt_growth_mm_per_year"])
            for r in csv.DictReader(f)
            if r["sqrt_growth_mm_per_year"]
        }
    if set(enface) != set(independent):
        raise SystemExit(f"eyes with a rate differ: {sorted(set(enface) ^ set(independent))}")
    diff = np.array([enface[k] - independent[k] for k in independent])
    print(f"{len(independent)} eyes with a rate; max |enface - independent| = {np.abs(diff).max():.2e} mm/year")

    from enface.synth.eye import EyeModel, make_grid

    gen = json.loads((args.dataset / "dataset.json").read_text())["generator"]
    grid = make_grid(tuple(gen["shape"]), None, gen["preset"])
    difficulty = gen.get("difficulty", "easy")  # datasets written before issue 18 are the easy phantom
    truth = {}
    for k in independent:
        model = EyeModel(per_eye[k][0][2], grid, task="ga", eye=k[1], difficulty=difficulty)
        days = np.array(sorted({v[0] for v in per_eye[k]}), dtype=float)
        roots = [np.sqrt(model.ga.area(d)) if model.ga is not None else 0.0 for d in days]
        truth[k] = float(np.polyfit(days / 365.25, roots, 1)[0])  # the true area's √-growth over these visits
    err = np.array([enface[k] - truth[k] for k in independent])
    print(
        f"generator's rates {np.mean(list(truth.values())):.3f} ± {np.std(list(truth.values()), ddof=1):.3f} mm/year; "
        f"enface {np.mean(list(enface.values())):.3f} ± {np.std(list(enface.values()), ddof=1):.3f}; "
        f"difference {err.mean():+.4f} ± {err.std(ddof=1):.4f} (max |.| {np.abs(err).max():.4f}) mm/year"
    )


if __name__ == "__main__":
    main()
