"""Losses and metrics against hand-computed values and reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from enface.losses import DiceBCELoss, NegativeSSIMLoss, soft_dice_loss
from enface.metrics import abs_area_difference, area_mm2, dice_per_sample, dice_score, hd95_mm, ssim, ssim_map


@pytest.mark.parametrize("shape, noise", [((40, 50), 0.2), ((11, 11), 0.05), ((64, 32), 0.5)])
def test_ssim_matches_skimage(shape: tuple[int, int], noise: float) -> None:
    rng = np.random.default_rng(1)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    ours = ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None]).item()
    assert ours == pytest.approx(ref, abs=1e-10)


def test_ssim_of_identical_images_is_one_and_map_is_valid_region() -> None:
    x = torch.rand(2, 1, 20, 30)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim_map(x, x).shape == (2, 1, 10, 20)
    per_image = ssim(x, torch.rand(2, 1, 20, 30), reduction="none")
    assert per_image.shape == (2,) and (per_image < 0.5).all()


def test_ssim_small_images_use_a_smaller_window() -> None:
    x = torch.rand(1, 1, 6, 40)
    assert ssim_map(x, x).shape == (1, 1, 2, 36)


def test_negative_ssim_loss_is_on_sigmoid_of_logits() -> None:
    target = torch.rand(1, 1, 16, 16) * 0.8 + 0.1
    logits = torch.logit(target)
    assert NegativeSSIMLoss()(logits, target).item() == pytest.approx(-1.0, abs=1e-5)
    assert NegativeSSIMLoss()(torch.zeros_like(logits), target).item() > -0.5


def test_dice_bce_hand_computed() -> None:
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert DiceBCELoss()(logits, target).item() == pytest.approx((dice + bce).item(), rel=1e-6)
    # numbers written out: p = [0.8808, 0.2689, 0.5, 0.9526]
    assert bce.item() == pytest.approx(
        (-math.log(0.880797) - math.log(1 - 0.268941) - math.log(0.5) - math.log(1 - 0.952574)) / 4, rel=1e-5
    )


def test_dice_bce_per_sample_and_pooled() -> None:
    # one crop without lesion, one with: pooled, predicting nothing costs the whole batch's
    # Dice and a false positive on the empty crop little; per sample, that crop's worth
    target = torch.zeros(2, 1, 8, 8)
    target[1, 0, 2:6, 2:6] = 1
    nothing = torch.full_like(target, -10.0)
    assert DiceBCELoss(bce_weight=0, batch_dice=True)(nothing, target).item() > 0.9
    assert DiceBCELoss(bce_weight=0)(nothing, target).item() < 0.5
    right = torch.where(target > 0, 10.0, -10.0)
    right[0, 0, 0, 0] = 10.0  # one false-positive pixel on the empty crop
    assert DiceBCELoss(bce_weight=0, batch_dice=True)(right, target).item() < 0.05
    assert DiceBCELoss(bce_weight=0)(right, target).item() > 0.2


def test_dice_loss_perfect_and_batch_modes() -> None:
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, :2] = 1
    assert soft_dice_loss(t[:1], t[:1], smooth=1e-9).item() == pytest.approx(0.0, abs=1e-6)
    # sample 1 is empty in target and prediction: smooth makes its Dice 1 (loss 0)
    assert soft_dice_loss(t, t, smooth=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(1 - t, t, batch_dice=True).item() > 0.9


def test_dice_score_cases() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_score(a, b) == 1.0
    assert dice_score(a, b, empty_value=float("nan")) != dice_score(a, b, empty_value=float("nan"))
    a[0, :2] = True
    assert dice_score(a, b) == 0.0
    b[0, 1:3] = True
    assert dice_score(a, b) == pytest.approx(2 * 1 / 4)
    with pytest.raises(ValueError, match="shapes differ"):
        dice_score(a, b[:2])


def test_dice_per_sample() -> None:
    p = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    t = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    p[1, 0, 0, 0] = True
    p[2, 0, 0] = True
    t[2, 0, :, 0] = True
    d = dice_per_sample(p, t)
    assert d.shape == (3, 1)
    assert d[:, 0].tolist() == pytest.approx([1.0, 0.0, 0.5])


def test_areas_in_mm2() -> None:
    m = np.zeros((49, 100), np.uint8)
    m[10:20, 10:30] = 1
    spacing = (0.1363, 0.0065, 0.0039)
    assert area_mm2(m, spacing) == pytest.approx(200 * 0.1363 * 0.0065)
    m2 = m.copy()
    m2[10:20, 30:40] = 1
    assert abs_area_difference(m, m2, spacing) == pytest.approx(100 * 0.1363 * 0.0065)
    assert abs_area_difference(m2, m, spacing) == abs_area_difference(m, m2, spacing)


def test_hd95_anisotropic_spacing() -> None:
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b[5:10, 8:13] = True  # shifted 3 columns
    assert hd95_mm(a, b, (1.0, 1.0)) == pytest.approx(3.0)
    assert hd95_mm(a, b, (1.0, 0.5)) == pytest.approx(1.5)
    c = np.zeros((20, 20), bool)
    c[8:13, 5:10] = True  # shifted 3 rows
    assert hd95_mm(a, c, (2.0, 0.5)) == pytest.approx(6.0)
    assert hd95_mm(a, a, (1, 1)) == 0.0
    assert hd95_mm(np.zeros_like(a), np.zeros_like(a), (1, 1)) == 0.0
    assert math.isinf(hd95_mm(a, np.zeros_like(a), (1, 1)))
