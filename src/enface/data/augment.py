"""Training augmentation in the en-face plane, drawn once and applied to volume and target.

The paper's settings (``data/data_config.py`` of its public code): a random crop of 32
B-scans x 256 A-scans, a 180 degree rotation in the en-face plane with probability 0.5,
mirroring of the B-scan axis and of the A-scan axis, each with probability 0.5, then on the
volume only: an additive offset drawn per channel from N(0, 0.2) (the reference code's
"noise" has shape ``(C, 1, 1, 1)``, i.e. one value per channel broadcast over the volume),
a contrast factor from U(0.9, 1.1) and an intensity shift from U(-0.2, 0.2), applied in that
order: ``(x + noise) * contrast + shift``.

Unlike the reference code, a crop larger than the volume is clipped to the volume and
nothing is ever resampled (models pad).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["AugmentConfig", "AugmentParams", "apply_geometry", "apply_intensity", "augment_pair", "draw_params"]


def _pair(value: Sequence[Any], name: str) -> tuple[Any, Any]:
    t = tuple(value)
    if len(t) != 2:
        raise ValueError(f"AugmentConfig.{name} must have two values, got {value!r}")
    return t[0], t[1]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (defaults: the paper's).

    Attributes:
        crop: ``(h, w)`` crop size in B-scans x A-scans; ``None`` keeps that axis whole.
            Clipped to the volume when larger.
        rotate180: allow a 180 degree rotation in the en-face plane.
        flip: allow mirroring along H and along W (drawn independently).
        p_rotate180: probability of the rotation.
        p_flip: probability of each of the two mirrorings.
        noise_std: standard deviation of the per-channel additive offset (volume only).
        contrast: range of the multiplicative contrast factor (volume only).
        shift: range of the additive intensity shift (volume only).
    """

    crop: tuple[int | None, int | None] = (32, 256)
    rotate180: bool = True
    flip: bool = True
    p_rotate180: float = 0.5
    p_flip: float = 0.5
    noise_std: float = 0.2
    contrast: tuple[float, float] = (0.9, 1.1)
    shift: tuple[float, float] = (-0.2, 0.2)

    def __post_init__(self) -> None:
        # accept lists (YAML) and store tuples
        crop = _pair(self.crop, "crop")
        for c in crop:
            if c is not None and (not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c < 1):
                raise ValueError(f"AugmentConfig.crop must hold positive integers or None, got {self.crop!r}")
        object.__setattr__(self, "crop", tuple(None if c is None else int(c) for c in crop))
        for name in ("contrast", "shift"):
            lo, hi = (float(v) for v in _pair(getattr(self, name), name))
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise ValueError(
                    f"AugmentConfig.{name} must be a finite range (low <= high), got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, (lo, hi))
        for name in ("p_rotate180", "p_flip"):
            p = float(getattr(self, name))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must lie in [0, 1], got {p}")
        if not (np.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"AugmentConfig.noise_std must be >= 0, got {self.noise_std}")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> AugmentConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown augmentation setting(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(obj))


@dataclass(frozen=True)
class AugmentParams:
    """One random draw of the augmentation.

    Attributes:
        crop_h: slice of B-scans kept.
        crop_w: slice of A-scans kept.
        rotate180: the 180 degree rotation was drawn.
        flip_h: the mirroring along H was drawn.
        flip_w: the mirroring along W was drawn.
        noise: ``(C,)`` per-channel additive offsets.
        contrast: contrast factor.
        shift: intensity shift.
    """

    crop_h: slice
    crop_w: slice
    rotate180: bool
    flip_h: bool
    flip_w: bool
    noise: np.ndarray = field(repr=False)
    contrast: float
    shift: float

    @property
    def net_flip_h(self) -> bool:
        """Whether H ends up reversed (a 180 degree rotation reverses H and W)."""
        return self.rotate180 != self.flip_h

    @property
    def net_flip_w(self) -> bool:
        """Whether W ends up reversed."""
        return self.rotate180 != self.flip_w


def draw_params(hw: tuple[int, int], channels: int, config: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one augmentation for an en-face grid of size ``hw``.

    The draws happen in a fixed order (crop start H, crop start W, rotation, flip H,
    flip W, noise, contrast, shift), whatever is enabled, so a given generator state
    always yields the same crop.

    Args:
        hw: ``(H, W)`` of the volume.
        channels: number of volume channels ``C`` (one noise value each).
        config: the settings.
        rng: the generator every random number comes from.
    """
    slices = []
    for n, c in zip(hw, config.crop):
        size = n if c is None else min(c, n)
        start = int(rng.integers(0, n - size + 1))
        slices.append(slice(start, start + size))
    u = rng.random(3)
    noise = rng.normal(0.0, 1.0, size=channels) * config.noise_std
    contrast = float(rng.uniform(*config.contrast))
    shift = float(rng.uniform(*config.shift))
    return AugmentParams(
        crop_h=slices[0],
        crop_w=slices[1],
        rotate180=bool(config.rotate180 and u[0] < config.p_rotate180),
        flip_h=bool(config.flip and u[1] < config.p_flip),
        flip_w=bool(config.flip and u[2] < config.p_flip),
        noise=noise,
        contrast=contrast,
        shift=shift,
    )


def apply_geometry(array: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Crop, rotate and mirror ``(C, H, W, ...)``; returns a view (negative strides possible).

    Works on a memory map without reading it: only the crop is read when the view is used.
    """
    view = array[:, params.crop_h, params.crop_w]
    if params.net_flip_h:
        view = view[:, ::-1]
    if params.net_flip_w:
        view = view[:, :, ::-1]
    return view


def apply_intensity(volume: np.ndarray, params: AugmentParams) -> np.ndarray:
    """``(volume + noise[c]) * contrast + shift`` for ``(C, H, W, D)``, as a new float array."""
    dtype = volume.dtype if np.issubdtype(volume.dtype, np.floating) else np.dtype(np.float32)
    offset = (params.noise.astype(np.float64) * params.contrast + params.shift).astype(dtype)
    out = np.multiply(volume, dtype.type(params.contrast), dtype=dtype)
    out += offset.reshape((-1,) + (1,) * (volume.ndim - 1))
    return out


def augment_pair(
    volume: np.ndarray, target: np.ndarray | None, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply one random draw identically to a volume and its en-face target.

    Args:
        volume: ``(C, H, W, D)`` (already normalised when intensities matter).
        target: ``(C', H, W)`` en-face target, or ``None``.
        config: the settings.
        rng: source of every random number.

    Returns:
        ``(volume, target)``: ``(C, h, w, D)`` float and ``(C', h, w)`` (same dtype as
        given), contiguous, with ``h, w`` the crop clipped to ``(H, W)``.

    Raises:
        ValueError: wrong number of dimensions or target grid different from the volume's.
    """
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, H, W, D), got shape {volume.shape}")
    if target is not None and (target.ndim != 3 or target.shape[1:] != volume.shape[1:3]):
        raise ValueError(
            f"target must be (C, H, W) on the volume's en-face grid {volume.shape[1:3]}, got shape {target.shape}"
        )
    params = draw_params(volume.shape[1:3], volume.shape[0], config, rng)
    out_volume = apply_intensity(apply_geometry(volume, params), params)
    out_target = None if target is None else np.ascontiguousarray(apply_geometry(target, params))
    return out_volume, out_target
