"""Data-pipeline speed: enface's loader vs the paper code's approach, side by side.

Writes one random case (default 49 x 1024 x 128 float32, a binary mask) as a dataset folder
in a temporary directory, then times, per sample, in this one process:

* **train, paper-code approach** (re-implemented here from what the public code of Morano et
  al. does per sample): load the whole volume with ``np.load`` (no memory map), z-score it
  over every B-scan of the whole volume, take a random relative crop of 32 x 256, resize
  the crop to 32 x 256 when it is not (skimage), rotate by 180 degrees and mirror H and W at
  random (copies), add the per-channel noise, contrast and shift, convert to a tensor.
* **train, enface** (:class:`enface.data.dataset.EnfaceDataset` with the default
  augmentation): reads only the crop of the memory map and applies normalisation and
  augmentation as one fused per-B-scan affine map. Timed with the per-case B-scan
  statistics already cached (the steady state of training), and cold (a new dataset per
  sample, so the statistics are computed from the whole volume every time: the cost of a
  case's first sample in a run).
* **validation**: the paper code z-scores the whole volume and resizes it to multiples of 16
  (49 -> 48 B-scans) with skimage; enface z-scores the full grid and does not resample
  (timed cold and with cached statistics).

Run: ``.venv/bin/python benchmarks/bench_data.py`` (``--help`` for sizes and repeats).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from enface.data.augment import AugmentConfig
from enface.data.dataset import EnfaceDataset
from enface.data.folder import CaseMeta, write_case
from enface.io.images import read_mask

# --------------------------------------------------------------------------- baseline


class PaperCodeLoader:
    """The per-sample work of the paper's public data pipeline, re-implemented.

    Layout here is enface's ``(C, H, W, D)``; the reference code keeps depth in the middle,
    which changes nothing in the amount of work.
    """

    def __init__(self, case_dir: Path, crop: tuple[int, int] = (32, 256), seed: int = 0) -> None:
        self.case_dir = case_dir
        self.crop = crop
        self.rng = random.Random(seed)
        self.nprng = np.random.default_rng(seed)

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        image = np.load(self.case_dir / "oct.npy")[None]  # whole volume into memory
        mask = read_mask(self.case_dir / "mask_ga.png").astype(np.float64)[None]
        return image, mask

    @staticmethod
    def _zscore(image: np.ndarray) -> np.ndarray:
        mean = image.mean(axis=(2, 3), keepdims=True)
        std = image.std(axis=(2, 3), keepdims=True)
        return (image - mean) / std

    @staticmethod
    def _resize(image: np.ndarray, mask: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        from skimage.transform import resize

        if image.shape[1:3] != hw:
            image = resize(
                image, (image.shape[0], *hw, image.shape[3]), order=1, anti_aliasing=False, preserve_range=True
            )
        if mask.shape[1:3] != hw:
            mask = resize(mask, (mask.shape[0], *hw), order=0, anti_aliasing=False, preserve_range=True)
        return image, mask

    def train_sample(self) -> dict[str, torch.Tensor]:
        image, mask = self._load()
        image = self._zscore(image)
        h, w = image.shape[1:3]
        ch, cw = self.crop
        # relative random crop (start drawn on the reference key, applied to every key)
        h0 = 0 if ch > h else self.rng.randint(0, h - ch)
        w0 = 0 if cw > w else self.rng.randint(0, w - cw)
        image = image[:, h0 : h0 + ch, w0 : w0 + cw]
        mask = mask[:, h0 : h0 + ch, w0 : w0 + cw]
        image, mask = self._resize(image, mask, (ch, cw))
        if self.rng.random() > 0.5:  # 180 degree rotation in the en-face plane
            image = np.rot90(image, k=2, axes=(1, 2))
            mask = np.rot90(mask, k=2, axes=(1, 2))
        p = self.nprng.random(4)
        index = [slice(None)] * 4
        for axis in (1, 2):
            if p[axis] < 0.5:
                index[axis] = slice(None, None, -1)
        image = image[tuple(index)].copy()
        mask = mask[tuple(index[:3])].copy()
        image = image + self.nprng.normal(0.0, 0.2, size=(image.shape[0], 1, 1, 1))
        image = image * self.rng.uniform(0.9, 1.1)
        image = image + self.rng.uniform(-0.2, 0.2)
        return {"image": torch.from_numpy(image).float(), "mask": torch.from_numpy(mask).float()}

    def val_sample(self) -> dict[str, torch.Tensor]:
        image, mask = self._load()
        image = self._zscore(image)
        h, w = image.shape[1:3]
        hw = (max(16, (h // 16) * 16), max(16, (w // 16) * 16))
        image, mask = self._resize(image, mask, hw)
        return {"image": torch.from_numpy(image).float(), "mask": torch.from_numpy(mask).float()}


# --------------------------------------------------------------------------- timing


def _time(fn: Callable[[], object], n: int, warmup: int = 1) -> float:
    """Median seconds per call over ``n`` calls (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(49, 1024, 128), metavar=("H", "W", "D"))
    ap.add_argument("--n-train", type=int, default=200, help="timed training samples (enface, cached)")
    ap.add_argument("--n-baseline", type=int, default=30, help="timed training samples (paper approach, enface cold)")
    ap.add_argument("--n-val", type=int, default=5, help="timed validation volumes per pipeline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    shape = tuple(args.shape)

    with tempfile.TemporaryDirectory(prefix="enface-bench-") as tmp:
        rng = np.random.default_rng(args.seed)
        vol = rng.random(shape, dtype=np.float32)
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        mask = ((yy - shape[0] / 2) ** 2 / (shape[0] / 4) ** 2 + (xx - shape[1] / 2) ** 2 / (shape[1] / 4) ** 2) < 1
        case_dir = write_case(tmp, CaseMeta("bench", "p0", spacing=(0.12, 0.006, 0.004)), vol, masks={"ga": mask})
        del vol

        base = PaperCodeLoader(case_dir, seed=args.seed)
        ds = EnfaceDataset(tmp, ["bench"], "mask:ga", augment=AugmentConfig(), seed=args.seed)
        ds_val = EnfaceDataset(tmp, ["bench"], "mask:ga", augment=None)
        # sanity: both produce the same shapes for training
        a, b = base.train_sample(), ds[0]
        assert tuple(a["image"].shape) == tuple(b["volume"].shape), (a["image"].shape, b["volume"].shape)

        def cold(augment: AugmentConfig | None) -> Callable[[], object]:
            return lambda: EnfaceDataset(tmp, ["bench"], "mask:ga", augment=augment, seed=args.seed)[0]

        rows = [
            ("train", "paper-code approach", _time(base.train_sample, args.n_baseline)),
            ("train", "enface, stats cached", _time(lambda: ds[0], args.n_train, warmup=3)),
            ("train", "enface, cold (stats each sample)", _time(cold(AugmentConfig()), args.n_baseline)),
            ("val", "paper-code approach (resize)", _time(base.val_sample, args.n_val)),
            ("val", "enface, no resize, stats cached", _time(lambda: ds_val[0], args.n_val)),
            ("val", "enface, no resize, cold", _time(cold(None), args.n_val)),
        ]

    ref = {"train": rows[0][2], "val": rows[3][2]}
    print(f"volume {shape[0]} x {shape[1]} x {shape[2]} float32, crop 32 x 256, 1 process, torch threads 1")
    print(f"{'path':<6} {'pipeline':<34} {'ms/sample':>10} {'samples/s':>10} {'speed-up':>9}")
    for kind, name, t in rows:
        print(f"{kind:<6} {name:<34} {t * 1e3:>10.2f} {1.0 / t:>10.1f} {ref[kind] / t:>8.1f}x")
    speedup = ref["train"] / rows[1][2]
    verdict = "met" if speedup >= 5 else "NOT met"
    print(f"training throughput target (>= 5x the paper-code approach): {verdict} ({speedup:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
