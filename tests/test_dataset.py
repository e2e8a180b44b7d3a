"""Per-B-scan z-score and the torch Dataset over a dataset folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from enface.data.augment import AugmentConfig, augment_pair
from enface.data.dataset import EnfaceDataset
from enface.data.folder import CaseMeta, load_case, write_case
from enface.data.normalize import bscan_stats, zscore_per_bscan
from enface.errors import DatasetError
from enface.fileio import atomic_save_png

SHAPE = (12, 40, 16)


# --------------------------------------------------------------------------- normalize


def _reference_zscore(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    m = v.mean(axis=(-2, -1), keepdims=True)
    s = v.std(axis=(-2, -1), keepdims=True)
    return (v - m) / s


def test_zscore_numpy_and_torch_match_reference() -> None:
    rng = np.random.default_rng(0)
    vol = (rng.normal(size=(2, 5, 7, 9)) * np.arange(1, 6)[None, :, None, None] + 40).astype(np.float32)
    ref = _reference_zscore(vol)
    out = zscore_per_bscan(vol)
    assert isinstance(out, np.ndarray) and out.shape == vol.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    t = zscore_per_bscan(torch.from_numpy(vol))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == vol.shape
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-5)
    # each B-scan (index along H) gets mean 0 and std 1 over (W, D)
    np.testing.assert_allclose(out.mean(axis=(-2, -1)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(-2, -1)), 1, atol=1e-4)
    # integers become float32; float64 stays float64
    assert zscore_per_bscan(vol.astype(np.uint16)).dtype == np.float32
    v64 = vol.astype(np.float64)
    assert zscore_per_bscan(v64).dtype == np.float64
    np.testing.assert_array_equal(v64, vol.astype(np.float64))  # input left untouched


def test_zscore_constant_bscan_no_nan() -> None:
    vol = np.random.default_rng(1).random((4, 6, 5)).astype(np.float32)
    vol[2] = 7.0
    for out in (zscore_per_bscan(vol), zscore_per_bscan(torch.from_numpy(vol)).numpy()):
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[2], 0)
        np.testing.assert_allclose(out[0].std(), 1, atol=1e-4)


def test_bscan_stats_chunked_on_memmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import enface.data.normalize as norm

    monkeypatch.setattr(norm, "_CHUNK_VOXELS", 50)  # force many chunks
    vol = np.random.default_rng(2).random((9, 6, 5)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    mean, std = bscan_stats(np.load(tmp_path / "v.npy", mmap_mode="r"))
    np.testing.assert_allclose(mean, vol.astype(np.float64).mean(axis=(1, 2)))
    np.testing.assert_allclose(std, vol.astype(np.float64).std(axis=(1, 2)))
    with pytest.raises(ValueError, match="H, W, D"):
        bscan_stats(vol[0])


# --------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    for i in range(3):
        # B-scans with very different offsets and scales: only a per-B-scan z-score fixes them
        vol = rng.random(SHAPE) * np.linspace(1, 50, SHAPE[0])[:, None, None] + 100 * i
        write_case(
            root,
            CaseMeta(f"c{i}", f"P{i}", spacing=(0.12, 0.011, 0.004)),
            (vol * 100).astype(np.uint16) if i == 2 else vol.astype(np.float32),
            images={"slo": rng.random(SHAPE[:2]), "faf": rng.random(SHAPE[:2])},
            masks={"ga": rng.random(SHAPE[:2]) > 0.7},
        )
    write_case(root, CaseMeta("nofaf", "P9"), rng.random(SHAPE).astype(np.float32))
    return root


IDS = ["c0", "c1", "c2"]


def test_full_grid_shapes_dtypes_zscored(root: Path) -> None:
    ds = EnfaceDataset(root, IDS, "mask:ga")
    assert len(ds) == 3
    for i, cid in enumerate(IDS):
        item = ds[i]
        assert item["case_id"] == cid
        assert item["volume"].shape == (1, *SHAPE) and item["volume"].dtype == torch.float32
        assert item["target"].shape == (1, *SHAPE[:2]) and item["target"].dtype == torch.float32
        assert set(torch.unique(item["target"]).tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(item["spacing"], torch.tensor([0.12, 0.011, 0.004]))
        vol = load_case(root / "cases" / cid).load_oct(mmap=False)
        np.testing.assert_allclose(item["volume"][0].numpy(), _reference_zscore(vol), atol=1e-4)
    none = EnfaceDataset(root, IDS, None)[0]
    assert "target" not in none and none["volume"].shape == (1, *SHAPE)


def test_targets_faf_inv_slo(root: Path) -> None:
    case = load_case(root / "cases" / "c1")
    faf = EnfaceDataset(root, ["c1"], "faf")[0]["target"][0].numpy()
    inv = EnfaceDataset(root, ["c1"], "faf_inv")[0]["target"][0].numpy()
    slo = EnfaceDataset(root, ["c1"], "slo")[0]["target"][0].numpy()
    np.testing.assert_allclose(faf, case.load_image("faf"))
    np.testing.assert_allclose(inv, 1.0 - faf)
    np.testing.assert_allclose(slo, case.load_image("slo"))


def test_augmented_equals_zscore_then_augment(root: Path) -> None:
    """Cropping first with whole-B-scan statistics = z-scoring the whole volume, then augmenting."""
    cfg = AugmentConfig(crop=(5, 16))
    ds = EnfaceDataset(root, IDS, "faf_inv", augment=cfg, seed=3)
    for i, cid in enumerate(IDS):
        case = load_case(root / "cases" / cid)
        full = zscore_per_bscan(case.load_oct(mmap=False).astype(np.float64))[None]
        for s in range(6):
            torch.manual_seed(s)
            item = ds[i]
            torch.manual_seed(s)
            v, t = augment_pair(full, (1.0 - case.load_image("faf"))[None], cfg, ds.item_rng())
            assert item["volume"].shape == (1, 5, 16, SHAPE[2]) and item["target"].shape == (1, 5, 16)
            np.testing.assert_allclose(item["volume"].numpy(), v, atol=1e-4)
            np.testing.assert_array_equal(item["target"].numpy(), t.astype(np.float32))


def test_deterministic_under_manual_seed(root: Path) -> None:
    ds = EnfaceDataset(root, IDS, "mask:ga", augment=AugmentConfig(crop=(4, 8)))

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [ds[i]["volume"] for i in (0, 1, 2, 0)]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[3])  # two draws of the same case differ
    other_seed = EnfaceDataset(root, IDS, "mask:ga", augment=AugmentConfig(crop=(4, 8)), seed=1)
    torch.manual_seed(0)
    assert not torch.equal(other_seed[0]["volume"], a[0])


def test_crop_clipped_and_no_resampling_without_augment(root: Path) -> None:
    ds = EnfaceDataset(root, ["c0"], "slo", augment=AugmentConfig())  # 32 x 256 > 12 x 40
    item = ds[0]
    assert item["volume"].shape == (1, *SHAPE) and item["target"].shape == (1, *SHAPE[:2])


def test_dataloader_two_workers(root: Path) -> None:
    ds = EnfaceDataset(root, IDS, "mask:ga", augment=AugmentConfig(crop=(4, 8)))

    def epoch() -> list[dict]:
        torch.manual_seed(5)
        dl = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
        return list(dl)

    first, second = epoch(), epoch()
    assert [b["case_id"] for b in first] == [["c0", "c1"], ["c2"]]
    assert first[0]["volume"].shape == (2, 1, 4, 8, SHAPE[2])
    assert first[0]["target"].shape == (2, 1, 4, 8) and first[0]["spacing"].shape == (2, 3)
    for x, y in zip(first, second):
        assert torch.equal(x["volume"], y["volume"]) and torch.equal(x["target"], y["target"])
    # statistics computed in the workers are visible to the parent (shared table)
    assert not torch.isnan(ds._stats).any()


def test_errors_name_the_case(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nofaf.*faf.png"):
        EnfaceDataset(root, ["c0", "nofaf"], "faf_inv")
    with pytest.raises(DatasetError, match="missing-case"):
        EnfaceDataset(root, ["missing-case"], None)
    with pytest.raises(ValueError, match="mask task .* is not a valid name"):
        EnfaceDataset(root, IDS, "mask:")
    # an SLO whose size differs from the volume's en-face grid
    rng = np.random.default_rng(3)
    write_case(
        tmp_path, CaseMeta("bad", "P1"), rng.random(SHAPE).astype(np.float32), images={"slo": rng.random(SHAPE[:2])}
    )
    atomic_save_png(tmp_path / "cases" / "bad" / "slo.png", np.zeros((5, 5), np.uint8))
    ds = EnfaceDataset(tmp_path, ["bad"], "slo")
    with pytest.raises(DatasetError, match=r"case bad: slo.png \(target 'slo'\) has shape \(5, 5\)"):
        ds[0]
    (tmp_path / "cases" / "bad" / "oct.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.*oct.npy"):
        EnfaceDataset(tmp_path, ["bad"], None)
