"""Augmentation: one draw, applied identically to volume and target; clipped crops; probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from enface.data.augment import AugmentConfig, apply_geometry, augment_pair, draw_params

NO_INTENSITY = dict(noise_std=0.0, contrast=(1.0, 1.0), shift=(0.0, 0.0))


def _coords(h: int, w: int, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A volume and a target that both encode the en-face coordinate as 1000 * h + w."""
    code = (1000 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.float64)
    volume = np.repeat(code[None, :, :, None], d, axis=3)
    return volume, code[None].copy()


def test_same_draw_applied_to_volume_and_target() -> None:
    volume, target = _coords(20, 30)
    cfg = AugmentConfig(crop=(8, 12), **NO_INTENSITY)
    rng = np.random.default_rng(0)
    seen_flips = set()
    for _ in range(40):
        v, t = augment_pair(volume, target, cfg, rng)
        assert v.shape == (1, 8, 12, 3) and t.shape == (1, 8, 12)
        for d in range(3):
            np.testing.assert_array_equal(v[0, :, :, d], t[0])
        # the crop is a contiguous block, possibly reversed along H and/or W
        rows, cols = t[0] // 1000, t[0] % 1000
        assert np.all(np.abs(np.diff(rows, axis=0)) == 1) and np.all(np.abs(np.diff(cols, axis=1)) == 1)
        seen_flips.add((bool(rows[1, 0] < rows[0, 0]), bool(cols[0, 1] < cols[0, 0])))
    assert seen_flips == {(False, False), (False, True), (True, False), (True, True)}


def test_intensity_only_on_volume_and_affine() -> None:
    volume, target = _coords(10, 10)
    rng = np.random.default_rng(1)
    params = draw_params((10, 10), 1, AugmentConfig(crop=(None, None)), np.random.default_rng(1))
    v, t = augment_pair(volume, target, AugmentConfig(crop=(None, None)), rng)
    geo = apply_geometry(volume, params)
    np.testing.assert_allclose(v, (geo + params.noise[0]) * params.contrast + params.shift)
    np.testing.assert_array_equal(t, apply_geometry(target, params))
    assert 0.9 <= params.contrast <= 1.1 and -0.2 <= params.shift <= 0.2


def test_crop_clipped_to_small_volume() -> None:
    volume, target = _coords(5, 7)
    v, t = augment_pair(volume, target, AugmentConfig(), np.random.default_rng(0))
    assert v.shape == (1, 5, 7, 3) and t.shape == (1, 5, 7)
    v, t = augment_pair(volume, target, AugmentConfig(crop=(3, None)), np.random.default_rng(0))
    assert v.shape == (1, 3, 7, 3) and t.shape == (1, 3, 7)
    # crops cover every start position over many draws
    starts = {
        draw_params((5, 7), 1, AugmentConfig(crop=(3, 4)), np.random.default_rng(s)).crop_h.start for s in range(200)
    }
    assert starts == {0, 1, 2}


def test_probabilities_over_many_draws() -> None:
    rng = np.random.default_rng(123)
    n = 4000
    draws = [draw_params((40, 40), 2, AugmentConfig(), rng) for _ in range(n)]
    for name in ("rotate180", "flip_h", "flip_w"):
        freq = np.mean([getattr(p, name) for p in draws])
        assert abs(freq - 0.5) < 0.04, (name, freq)
    noise = np.stack([p.noise for p in draws])
    assert noise.shape == (n, 2) and abs(noise.std() - 0.2) < 0.01
    none = [draw_params((40, 40), 1, AugmentConfig(rotate180=False, flip=False), rng) for _ in range(500)]
    assert not any(p.rotate180 or p.flip_h or p.flip_w for p in none)
    always = AugmentConfig(crop=(None, None), p_rotate180=1.0, flip=False, **NO_INTENSITY)
    volume, target = _coords(6, 9)
    v, t = augment_pair(volume, target, always, rng)
    np.testing.assert_array_equal(t, np.rot90(target, k=2, axes=(1, 2)))
    np.testing.assert_array_equal(v, np.rot90(volume, k=2, axes=(1, 2)))


def test_deterministic_for_fixed_rng() -> None:
    volume = np.random.default_rng(0).normal(size=(1, 16, 24, 4))
    target = (volume[..., 0] > 0).astype(np.float32)
    cfg = AugmentConfig(crop=(8, 8))
    a = augment_pair(volume, target, cfg, np.random.default_rng(7))
    b = augment_pair(volume, target, cfg, np.random.default_rng(7))
    c = augment_pair(volume, target, cfg, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[1].dtype == np.float32 and a[0].flags.c_contiguous and a[1].flags.c_contiguous


def test_target_optional_and_shape_errors() -> None:
    volume, target = _coords(6, 6)
    v, t = augment_pair(volume, None, AugmentConfig(crop=(4, 4)), np.random.default_rng(0))
    assert v.shape == (1, 4, 4, 3) and t is None
    with pytest.raises(ValueError, match="en-face grid"):
        augment_pair(volume, target[:, :5], AugmentConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(C, H, W, D\)"):
        augment_pair(volume[0], target, AugmentConfig(), np.random.default_rng(0))


def test_config_validation_and_from_dict() -> None:
    cfg = AugmentConfig.from_dict({"crop": [16, None], "contrast": [0.8, 1.2]})
    assert cfg.crop == (16, None) and cfg.contrast == (0.8, 1.2)
    assert AugmentConfig() == AugmentConfig(crop=(32, 256), noise_std=0.2, contrast=(0.9, 1.1), shift=(-0.2, 0.2))
    for bad in ({"crop": (0, 4)}, {"crop": (4,)}, {"p_flip": 1.5}, {"contrast": (1.2, 0.8)}, {"noise_std": -1.0}):
        with pytest.raises(ValueError, match="AugmentConfig"):
            AugmentConfig(**bad)
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig.from_dict({"rotate": True})
