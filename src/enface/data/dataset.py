"""Torch dataset over a dataset folder: memory-mapped volumes, per-B-scan z-score on the fly.

A training sample reads only its crop of the memory-mapped volume and normalises it with the
statistics of the *whole* B-scans it comes from, exactly as if the full volume had been
z-scored first (the paper's order) and then cropped. Those statistics (two numbers per
B-scan) are computed once per case, on first use, and kept in a small table shared by the
DataLoader workers; they are a pure function of the file, so ``__getitem__`` stays
stateless: its output depends only on the index, ``seed`` and torch's RNG state.

Crop, rotation, mirroring and the intensity augmentation of :mod:`enface.data.augment` are
fused with the normalisation into one affine map per B-scan applied to a strided view of
the memory map: two passes over the crop's voxels, no whole-volume copy, no resampling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from enface.data.augment import AugmentConfig, AugmentParams, apply_geometry, draw_params
from enface.data.folder import Case, load_case
from enface.data.normalize import EPS, bscan_stats
from enface.errors import DatasetError
from enface.targets import Target

__all__ = ["EnfaceDataset"]

log = logging.getLogger(__name__)


class EnfaceDataset(Dataset):
    """Cases of a dataset folder as ``(volume, en-face target)`` samples.

    Args:
        root: dataset folder.
        case_ids: cases to serve, in this order (e.g. from
            :func:`enface.data.splits.select_cases`).
        target: what each item carries as ``target``: a :class:`~enface.targets.Target`
            or its dataset label (``"mask:<task>"``: binary {0, 1}; ``"slo"``, ``"faf"``,
            ``"faf_inv"`` = ``1 - faf``), or None (inference: no target).
        augment: training augmentation (random crop, rotation, mirroring, intensity);
            ``None`` serves the full en-face grid, unaugmented, never resampled.
        seed: mixed into every sample's random generator.
        channels: input volumes stacked as channels: ``"oct"`` (``oct.npy``) and extra
            volumes stored beside it (e.g. ``"octa"`` -> ``octa.npy``, written by
            ``enface prepare --octa``). Each channel is z-scored per B-scan on its own.

    Each item is a dict:
        ``volume``: float32 ``(C, h, w, D)``, z-scored per B-scan (then intensity-augmented
        when training, with one noise draw per channel); ``target``: float32 ``(1, h, w)`` (absent without a target);
        ``case_id``: str; ``spacing``: float32 ``(3,)`` ``(sh, sw, sd)`` in mm.

    With ``augment``, every random number of an item comes from
    ``np.random.default_rng([seed, r])`` with ``r`` drawn from torch's RNG inside
    ``__getitem__``: ``torch.manual_seed`` makes a run reproducible, and the DataLoader's
    per-worker seeding keeps workers independent.

    Raises:
        DatasetError: a case or a file it needs is missing, or its volume is unreadable
            (on construction); a target not on the volume's en-face grid (on access).
        ValueError: unknown target.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        case_ids: Sequence[str],
        target: Target | str | None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        channels: Sequence[str] = ("oct",),
    ) -> None:
        self.root = Path(root)
        self.channels = tuple(channels)
        if not self.channels:
            raise ValueError("at least one input channel is needed")
        self.target: Target | None = Target.parse(target) if isinstance(target, str) else target
        self.augment = augment
        self.seed = int(seed)
        self.case_ids = [str(c) for c in case_ids]
        self.cases: list[Case] = []
        shapes: list[tuple[int, int, int]] = []
        fname = None if self.target is None else self.target.filename
        for cid in self.case_ids:
            folder = self.root / "cases" / cid
            if not folder.is_dir():
                raise DatasetError(f"case {cid}: folder {folder} not found")
            case = load_case(folder)
            if self.target is not None and fname is not None and not (folder / fname).is_file():
                raise DatasetError(f"case {cid}: target {self.target.label!r} needs {folder / fname}, which is missing")
            shape = case.oct_shape()
            for name in (c for c in self.channels if c != "oct"):
                if not case.has_volume(name):
                    raise DatasetError(
                        f"case {cid}: input channel {name!r} needs {folder / (name + '.npy')}, which is missing"
                    )
                other = case.load_volume(name, mmap=True).shape
                if other != shape:
                    raise DatasetError(f"case {cid}: {name}.npy has shape {other}, expected the OCT shape {shape}")
            shapes.append(tuple(int(s) for s in shape))  # type: ignore[arg-type]
            self.cases.append(case)
        self.shapes = shapes
        # per-B-scan, per-channel (mean, std) table, NaN until computed; shared with workers
        self._offsets = np.concatenate([[0], np.cumsum([s[0] for s in shapes], dtype=np.int64)])
        self._stats = torch.full((int(self._offsets[-1]), len(self.channels), 2), float("nan"), dtype=torch.float64)
        try:
            self._stats.share_memory_()
        except (RuntimeError, OSError) as e:  # pragma: no cover - platform without shared memory
            log.warning("statistics table not shared between workers (%s); each worker computes its own", e)

    def __len__(self) -> int:
        return len(self.cases)

    def item_rng(self) -> np.random.Generator:
        """The generator of one item: seeded from ``seed`` and one draw of torch's RNG."""
        return np.random.default_rng([self.seed, int(torch.randint(2**62, ()))])

    # ------------------------------------------------------------------ loading

    def _volume(self, i: int, channel: int = 0) -> np.ndarray:
        case = self.cases[i]
        name = self.channels[channel]
        vol = case.load_oct(mmap=True) if name == "oct" else case.load_volume(name, mmap=True)
        if tuple(vol.shape) != self.shapes[i]:
            raise DatasetError(f"case {case.case_id}: {name}.npy changed shape from {self.shapes[i]} to {vol.shape}")
        return vol

    def bscan_stats(self, i: int, volume: np.ndarray | None = None, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` ``(H,)`` float64 of case ``i``'s B-scans of one channel (computed once, then cached)."""
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        cached = self._stats[lo:hi, channel].numpy()
        if not np.isnan(cached).any():
            return cached[:, 0].copy(), cached[:, 1].copy()
        mean, std = bscan_stats(self._volume(i, channel) if volume is None else volume)
        # mean and std are written entry by entry; a reader uses them only once none is NaN
        self._stats[lo:hi, channel] = torch.from_numpy(np.stack([mean, std], axis=1))
        return mean, std

    def _target(self, i: int, hw: tuple[int, int]) -> np.ndarray | None:
        case, target = self.cases[i], self.target
        if target is None:
            return None
        if target.kind == "segment":
            t = case.load_mask(target.name).astype(np.float32)
        else:
            t = case.load_image(target.modality)  # type: ignore[arg-type]
            if target.inverted:
                t = 1.0 - t
        if t.shape != hw:
            raise DatasetError(
                f"case {case.case_id}: {target.filename} (target {target.label!r}) has shape {t.shape}, "
                f"expected the volume's en-face grid {hw}"
            )
        return t.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ items

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.cases):
            raise IndexError(f"index {i} out of range for {len(self.cases)} cases")
        case = self.cases[i]
        h, w, _ = self.shapes[i]
        target = self._target(i, (h, w))
        params = (
            None if self.augment is None else draw_params((h, w), len(self.channels), self.augment, self.item_rng())
        )
        outs = []
        for c in range(len(self.channels)):
            vol = self._volume(i, c)
            if params is None:
                full = np.asarray(vol)
                mean, std = self.bscan_stats(i, full, channel=c)
                outs.append(_affine_per_bscan(full, 1.0 / np.maximum(std, EPS), -mean / np.maximum(std, EPS)))
            else:
                mean, std = self.bscan_stats(i, channel=c)
                view = apply_geometry(vol[None], params)[0]
                scale, offset = _fused_coefficients(mean, std, params, channel=c)
                outs.append(_affine_per_bscan(view, scale, offset))
        if params is not None and target is not None:
            target = np.ascontiguousarray(apply_geometry(target[None], params)[0])
        item: dict[str, Any] = {
            "volume": torch.from_numpy(outs[0][None] if len(outs) == 1 else np.stack(outs)),
            "case_id": case.case_id,
            "spacing": torch.tensor(case.spacing, dtype=torch.float32),
        }
        if target is not None:
            item["target"] = torch.from_numpy(target[None])
        return item


def _fused_coefficients(
    mean: np.ndarray, std: np.ndarray, params: AugmentParams, channel: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-B-scan ``(scale, offset)`` of z-score followed by ``(z + noise) * contrast + shift``.

    Returned in the order of the cropped (and possibly reversed) B-scans.
    """
    inv = 1.0 / np.maximum(std[params.crop_h], EPS)
    m = mean[params.crop_h]
    if params.net_flip_h:
        inv, m = inv[::-1], m[::-1]
    c = params.contrast
    scale = inv * c
    offset = (params.noise[channel] - m * inv) * c + params.shift
    return scale, offset


def _affine_per_bscan(volume: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``volume * scale[h] + offset[h]`` for ``(H, W, D)`` as a new contiguous float32 array."""
    out = np.empty(volume.shape, dtype=np.float32)
    np.multiply(volume, scale.astype(np.float32)[:, None, None], out=out, dtype=np.float32)
    out += offset.astype(np.float32)[:, None, None]
    return out
