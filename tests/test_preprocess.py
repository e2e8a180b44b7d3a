"""BM estimation, flattening, depth resampling and en-face sampling."""

from __future__ import annotations

import numpy as np
import pytest

from enface.data.preprocess import (
    FlattenParams,
    enface_points,
    estimate_bm,
    fill_bm,
    flatten_volume,
    resample_depth,
    sample_enface,
    sample_enface_mask,
)
from enface.io.base import positions_from_box
from formats_helpers import layered_volume


def _crossings(flat: np.ndarray) -> np.ndarray:
    """Sub-sample depth where each A-scan of a bright-above / dark-below volume crosses 0.5."""
    above = flat >= 0.5
    k = np.argmin(above, axis=-1)  # first sample below 0.5
    v0 = np.take_along_axis(flat, (k - 1)[..., None], -1)[..., 0]
    v1 = np.take_along_axis(flat, k[..., None], -1)[..., 0]
    return k - 1 + (v0 - 0.5) / (v0 - v1)


@pytest.mark.parametrize("depth", [40, 20])
def test_flatten_puts_bm_at_a_fixed_depth(depth: int) -> None:
    rng = np.random.default_rng(0)
    h, w, d = 4, 9, 80
    bm = 30 + 10 * rng.random((h, w))  # sub-voxel BM positions
    z = np.arange(d)[None, None, :]
    vol = 1.0 / (1.0 + np.exp((z - bm[..., None]) / 0.6))  # bright above BM, dark below
    params = FlattenParams(above_mm=0.2, below_mm=0.2, depth=depth)  # 40 voxels at sd = 0.01
    flat = flatten_volume(vol, bm, sd=0.01, params=params)
    assert flat.shape == (h, w, depth) and flat.dtype == np.float32
    cross = _crossings(flat)
    np.testing.assert_allclose(cross, params.bm_index, atol=0.15)
    assert params.output_spacing() == pytest.approx(0.4 / depth)


def test_flatten_pads_outside_the_volume() -> None:
    vol = np.ones((2, 3, 20), np.float32)
    flat = flatten_volume(vol, np.full((2, 3), 2.0), sd=0.01, params=FlattenParams(0.1, 0.05, 15), fill=-1.0)
    assert (flat[..., :5] == -1).all()  # 10 voxels above BM requested, only 2.5 exist
    assert np.allclose(flat[..., 10:], 1.0)


def test_flatten_rejects_bad_bm() -> None:
    vol = np.zeros((2, 3, 20), np.float32)
    with pytest.raises(ValueError, match="NaN"):
        flatten_volume(vol, np.array([[1, np.nan, 2], [1, 2, 3]], float), sd=0.01)
    with pytest.raises(ValueError, match="does not match"):
        flatten_volume(vol, np.zeros((3, 2)), sd=0.01)


def test_estimate_bm_with_ga_shadows_and_speckle() -> None:
    vol, bm, ga = layered_volume((12, 96, 128), seed=3, ga=True, shadows=True)
    est = estimate_bm(vol, (0.1, 0.02, 0.005))
    err = np.abs(est - bm)
    assert err.mean() < 1.0
    assert err.max() < 3.0
    assert ga.any() and err[ga].max() < 3.0


@pytest.mark.parametrize("seed", [3, 4])
def test_estimate_bm_holds_in_ga_over_drusen_lumens_and_shadows(seed: int) -> None:
    # GA with a bright choroid whose vessels (dark lumens 4-12 voxels under BM) give strong
    # bright-to-dark edges; drusen lift the RPE up to 8 voxels; vessel shadows
    vol, bm, ga = layered_volume((12, 96, 128), seed=seed, ga=True, lumens=True, drusen=True, shadows=True)
    err = np.abs(estimate_bm(vol, (0.1, 0.02, 0.005)) - bm)
    assert ga.any() and err[ga].mean() < 1.0 and err[ga].max() < 2.0, f"GA {err[ga].mean():.2f}/{err[ga].max():.2f}"
    assert err[~ga].max() < 2.0, f"outside GA max {err[~ga].max():.2f}"


@pytest.mark.parametrize("width", [192, 191])
def test_estimate_bm_on_dense_ascans_groups_them_and_keeps_the_grid(width: int) -> None:
    """A-scans 6 µm apart (a Spectralis cube's density) are searched in pairs; the surface
    comes back on every A-scan (an odd count too), as close to BM as at full density."""
    from enface.data import bm as bm_module

    vol, bm, ga = layered_volume((12, width, 128), seed=3, ga=True, shadows=True)
    spacing = (0.1, 0.006, 0.005)
    assert round(bm_module._ASCAN_MM / spacing[1]) == 2  # grouped
    est = estimate_bm(vol, spacing)
    assert est.shape == bm.shape and est.dtype == np.float32
    err = np.abs(est - bm)
    assert err.mean() < 1.0 and err.max() < 3.0, f"mean {err.mean():.2f}, max {err.max():.2f} voxels"
    assert ga.any() and err[ga].max() < 3.0


def test_estimate_bm_over_drusen_stays_on_bm() -> None:
    vol, bm, _ = layered_volume((12, 96, 128), seed=3, drusen=True)
    flat_vol, _, _ = layered_volume((12, 96, 128), seed=3)
    lifted = np.abs(vol - flat_vol).max(axis=-1) > 0.1  # A-scans whose RPE a druse lifts
    err = np.abs(estimate_bm(vol, (0.1, 0.02, 0.005)) - bm)
    assert lifted.sum() > 50 and err[lifted].max() < 2.0, f"over drusen max {err[lifted].max():.2f} voxels"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimate_bm_on_the_unflattened_phantom(seed: int) -> None:
    from enface.synth.eye import generate_case

    case = generate_case(seed, shape=(32, 128, 64), task="ga", flattened=False)
    ga = case.masks["ga"] > 0
    est = estimate_bm(case.oct, case.spacing)
    err = np.abs(est - case.bm)
    assert np.ptp(case.bm) > 10  # the phantom's BM is really curved
    assert err.mean() < 1.0, f"mean error {err.mean():.2f} px"
    assert err.max() < 5.0, f"max error {err.max():.2f} px"
    assert ga.sum() > 20 and err[ga].mean() < 1.5, f"GA mean error {err[ga].mean():.2f} px"


def test_estimate_bm_then_flatten_makes_the_phantom_flat() -> None:
    from enface.synth.eye import generate_case

    case = generate_case(4, shape=(16, 96, 96), task="ga", flattened=False)
    params = FlattenParams(above_mm=0.5, below_mm=0.3, depth=32)
    flat = flatten_volume(case.oct, estimate_bm(case.oct, case.spacing), case.spacing[2], params)
    truth = flatten_volume(case.oct, case.bm, case.spacing[2], params)
    # the mean depth profiles agree: the RPE band lands in the same output samples
    assert np.corrcoef(flat.mean(axis=(0, 1)), truth.mean(axis=(0, 1)))[0, 1] > 0.98


def test_fill_bm() -> None:
    bm = np.full((5, 8), 40.0)
    bm[2, 3:6] = np.nan
    out = fill_bm(bm)
    assert np.isfinite(out).all() and np.allclose(out, 40.0)
    with pytest.raises(ValueError):
        fill_bm(np.full((2, 2), np.nan))


def test_resample_depth() -> None:
    vol = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (2, 3, 1))
    out = resample_depth(vol, 16)
    assert out.shape == (2, 3, 16)
    assert np.all(np.diff(out[0, 0]) > 0)
    np.testing.assert_allclose(out[0, 0, 8], vol[0, 0, 33] * 0.5 + vol[0, 0, 34] * 0.5, atol=0.02)


def test_sample_enface_identity_and_box() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((6, 10)).astype(np.float32)
    pts = enface_points(positions_from_box((0, 0, 9, 5), (6, 10)), 10)
    out, outside = sample_enface(img, pts)
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert outside == 0.0
    # a grid half outside the image
    pts = enface_points(positions_from_box((5, 0, 14, 5), (6, 10)), 10)
    out, outside = sample_enface(img, pts, antialias=False)
    assert outside == pytest.approx(0.5)
    np.testing.assert_allclose(out[:, :5], img[:, 5:], atol=1e-6)


def test_sample_mask_keeps_area() -> None:
    mask = np.zeros((120, 120), np.uint8)
    mask[30:90, 24:72] = 1
    pts = enface_points(positions_from_box((2.5, 2.5, 117.5, 117.5), (20, 20)), 20)
    small = sample_enface_mask(mask, pts)
    assert set(np.unique(small)) == {0, 1}
    assert small.sum() * 36 == pytest.approx(mask.sum(), rel=0.1)


@pytest.mark.parametrize(("depth", "half"), [(40, 3), (7, 3), (6, 3), (64, 2), (248, 3)])
def test_bm_edge_response_is_the_difference_of_the_window_means(depth: int, half: int) -> None:
    from enface.data.bm import _edge_response

    s = np.random.default_rng(depth).random((3, 5, depth), dtype=np.float32)
    expected = np.zeros(s.shape)
    for z in range(half, depth - half):  # the definition, one depth at a time, in float64
        expected[..., z] = s[..., z - half : z].mean(-1, dtype=np.float64) - s[..., z : z + half].mean(
            -1, dtype=np.float64
        )
    got = _edge_response(s, half)
    assert got.dtype == np.float32 and got.shape == s.shape
    # float32 running sums over a whole A-scan of samples in [0, 1): a few units of its last place
    np.testing.assert_allclose(got, expected, rtol=0, atol=4e-5)
    assert not got[..., :half].any() and not got[..., depth - half :].any()


@pytest.mark.parametrize("shift", [0.0, 2.0, -3.0, 1.4])
def test_bm_axial_motion_finds_a_shift_between_bscans(shift: float) -> None:
    """Each B-scan after the first is the first moved down by ``shift`` samples more than the one
    before; the offsets found are that motion (centred), to a tenth of a sample."""
    from scipy import ndimage

    from enface.data.bm import _axial_motion, _edge_response

    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter1d(rng.random((16, 96)), 1.5, axis=-1).astype(np.float32)
    h = 5
    s = np.stack([ndimage.shift(base, (0, i * shift), order=3, mode="nearest") for i in range(h)])
    e = _edge_response(s, 3)
    offsets = _axial_motion(e, sdw=0.008)
    expected = np.arange(h) * shift
    np.testing.assert_allclose(offsets, expected - expected.mean(), atol=0.1)
