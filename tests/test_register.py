"""FAF -> SLO registration: known affine recovered, garbage pairs flagged by a low quality."""

from __future__ import annotations

import numpy as np
import pytest

from enface.data.register import apply_matrix, informative_mask, register_images, registration_quality, warp_image
from formats_helpers import vessel_pair


def _affine(
    shape: tuple[int, int], angle_deg: float, scale: float, shear: float, shift: tuple[float, float]
) -> np.ndarray:
    h, w = shape
    c = np.array([w / 2, h / 2])
    a = np.deg2rad(angle_deg)
    lin = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1, shear], [0, 1]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + np.asarray(shift) - lin @ c
    return m


def _grid(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    xs, ys = np.meshgrid(np.linspace(0.15 * w, 0.85 * w, 5), np.linspace(0.15 * h, 0.85 * h, 5))
    return np.stack([xs, ys], -1).reshape(-1, 2)


def _distorted(faf: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The FAF seen through ``t`` (SLO pixel -> FAF pixel): moving -> fixed is ``inv(t)``."""
    return np.nan_to_num(warp_image(faf, t, faf.shape, cval=0.0))


def test_known_affine_is_recovered() -> None:
    slo, faf = vessel_pair(0, (128, 128))
    t = _affine(slo.shape, angle_deg=6.0, scale=1.06, shear=0.03, shift=(7.0, -5.0))
    reg = register_images(slo, _distorted(faf, t), model="affine")
    pts = _grid(slo.shape)
    err = np.linalg.norm(apply_matrix(reg.matrix, pts) - apply_matrix(np.linalg.inv(t), pts), axis=1)
    assert err.max() < 1.0, f"max error {err.max():.2f} px"
    assert reg.quality > 0.3  # kept at the default threshold of enface prepare


def test_rigid_model_and_different_image_sizes() -> None:
    slo, faf = vessel_pair(1, (128, 128))
    t = _affine(slo.shape, angle_deg=-4.0, scale=1.0, shear=0.0, shift=(-6.0, 3.0))
    moving = _distorted(faf, t)
    from skimage.transform import resize

    big = resize(moving, (192, 192), order=1, anti_aliasing=False)  # FAF at 1.5x the resolution
    reg = register_images(slo, big, model="rigid")
    # moving (big) -> fixed = inv(t) o (scale 1/1.5 with pixel-centre convention)
    f = 128 / 192
    down = np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1]])
    truth = np.linalg.inv(t) @ down
    pts_big = (_grid(slo.shape) + 0.5) / f - 0.5
    err = np.linalg.norm(apply_matrix(reg.matrix, pts_big) - apply_matrix(truth, pts_big), axis=1)
    assert err.max() < 1.5, f"max error {err.max():.2f} px"


def test_phantom_pair_is_registered_consistently() -> None:
    """On the phantom, FAF carries a small software misregistration of its own, so the
    recovered transform of the warped FAF must equal that of the unwarped one composed
    with the known warp."""
    from enface.synth.eye import generate_case

    # an in-focus pair (the realistic phantom defocuses some SLOs, which registration may fail on)
    case = generate_case(2, shape=(128, 128, 32), task="ga", difficulty="easy")
    base = register_images(case.slo, case.faf)
    t = _affine(case.slo.shape, angle_deg=5.0, scale=1.05, shear=0.02, shift=(5.0, -4.0))
    reg = register_images(case.slo, _distorted(case.faf, t))
    pts = _grid(case.slo.shape)
    # the phantom's own residual misregistration is small
    assert np.abs(apply_matrix(base.matrix, pts) - pts).max() < 4.0
    expected = base.matrix @ np.linalg.inv(t)
    err = np.linalg.norm(apply_matrix(reg.matrix, pts) - apply_matrix(expected, pts), axis=1)
    assert err.max() < 1.5, f"max error {err.max():.2f} px"
    assert reg.quality > 0.3 and base.quality > 0.3


@pytest.mark.parametrize("kind", ["noise", "other_eye"])
def test_garbage_pair_gets_a_low_quality(kind: str) -> None:
    slo, _ = vessel_pair(0, (128, 128))
    if kind == "noise":
        moving = np.random.default_rng(5).random(slo.shape).astype(np.float32)
    else:
        from enface.synth.eye import generate_case

        moving = generate_case(9, shape=(128, 128, 32), task="ga").faf
    reg = register_images(slo, moving)
    assert reg.quality < 0.3


def test_informative_mask_excludes_large_dark_areas() -> None:
    img = np.full((64, 64), 0.6, np.float32)
    img[20:40, 20:40] = 0.05  # atrophy-like dark patch
    img[:, 50] = 0.2  # a thin vessel stays informative
    mask = informative_mask(img)
    assert not mask[30, 30] and mask[5, 5] and mask[5, 50]


def test_warp_image_round_trip() -> None:
    from scipy import ndimage

    img = ndimage.gaussian_filter(np.random.default_rng(0).random((40, 50)), 2.0).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    m = _affine(img.shape, 3.0, 1.0, 0.0, (2.0, 1.0))
    fwd = warp_image(img, m, img.shape)
    # out[y, x] = img(m^-1 (x, y))
    x, y = 27, 19
    src = apply_matrix(np.linalg.inv(m), np.array([x, y], float))
    expected = ndimage.map_coordinates(img, [[src[1]], [src[0]]], order=1)[0]
    assert fwd[y, x] == pytest.approx(float(expected), abs=1e-5)
    back = warp_image(np.nan_to_num(fwd), np.linalg.inv(m), img.shape)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back[inner] - img[inner]).max() < 0.05


def test_bad_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="2D"):
        register_images(np.zeros((8, 8)), np.zeros((32, 32)))
    bad = np.zeros((32, 32))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        register_images(np.zeros((32, 32)), bad)
    with pytest.raises(ValueError, match="model"):
        register_images(np.zeros((32, 32)), np.zeros((32, 32)), model="projective")  # type: ignore[arg-type]


def _translation(dx: float, dy: float) -> np.ndarray:
    m = np.eye(3)
    m[:2, 2] = dx, dy
    return m


def test_quality_rejects_wrong_transforms_of_a_right_pair() -> None:
    slo, faf = vessel_pair(2, (128, 128))
    right = registration_quality(slo, faf, np.eye(3))
    assert right.quality >= 0.3 and right.details["distinctiveness"] > 6
    for wrong in (_translation(4.0, -3.0), _translation(-9.0, 6.0), _affine(slo.shape, 5.0, 1.0, 0.0, (0.0, 0.0))):
        reg = registration_quality(slo, faf, wrong)
        # the NCC of a slightly wrong transform is still sizeable; its distinctiveness is not
        assert reg.quality < 0.3, f"wrong transform scored {reg.quality:.2f} (ncc {reg.ncc:.2f})"


def test_a_poor_faf_registered_right_is_kept() -> None:
    """A blurred, low-contrast, noisy FAF: right registration, low NCC, quality above 0.3."""
    from scipy import ndimage

    slo, faf = vessel_pair(4, (128, 128))
    poor = ndimage.gaussian_filter(faf, 1.2)
    poor = np.clip(0.5 * poor + 0.25 * np.median(poor) + np.random.default_rng(1).normal(0, 0.06, poor.shape), 0, 1)
    t = _affine(slo.shape, angle_deg=4.0, scale=1.0, shear=0.0, shift=(5.0, -3.0))
    reg = register_images(slo, _distorted(poor.astype(np.float32), t), model="rigid")
    pts = _grid(slo.shape)
    err = np.linalg.norm(apply_matrix(reg.matrix, pts) - apply_matrix(np.linalg.inv(t), pts), axis=1)
    assert err.max() < 2.0, f"max error {err.max():.2f} px"
    assert reg.quality >= 0.3, f"right registration scored {reg.quality:.2f} (ncc {reg.ncc:.2f})"
