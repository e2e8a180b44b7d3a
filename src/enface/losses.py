"""Losses: Dice + BCE for segmentation, negative mean SSIM for reconstruction.

Both take ``(input, target)`` where ``input`` are **logits** ``(N, C, H, W)`` (models never
apply the sigmoid) and ``target`` is ``(N, C, H, W)`` in [0, 1].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from enface.metrics import ssim

__all__ = ["DiceBCELoss", "NegativeSSIMLoss", "soft_dice_loss"]


def soft_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, batch_dice: bool = False
) -> torch.Tensor:
    """``1 - (2 Σ p t + s) / (Σ p + Σ t + s)``.

    Args:
        probs: ``(N, C, H, W)`` probabilities.
        target: ``(N, C, H, W)`` in [0, 1].
        smooth: additive smoothing ``s`` (keeps empty masks well defined).
        batch_dice: pool the sums over the whole batch (one Dice per channel) instead of
            one Dice per sample and channel.

    Returns:
        Scalar loss (mean over samples/channels).
    """
    dims = (0, 2, 3) if batch_dice else (2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


class DiceBCELoss(nn.Module):
    """Sum of soft Dice loss (on sigmoid probabilities) and BCE (on logits).

    The Dice is one per sample by default, like the per-case Dice a study reports: a crop
    without lesion then asks for an empty prediction, as a scan without GA does at
    evaluation (empty labels are real labels). ``batch_dice=True`` pools it over the batch
    (nnU-Net's choice), which is more tolerant of false positives on lesion-free crops.

    Args:
        dice_weight: weight of the Dice term.
        bce_weight: weight of the BCE term.
        smooth: Dice smoothing.
        batch_dice: see :func:`soft_dice_loss`.
    """

    def __init__(
        self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0, batch_dice: bool = False
    ) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth
        self.batch_dice = batch_dice

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(N, C, H, W)``; ``target``: ``(N, C, H, W)`` in {0, 1}.

        Computed in float32 whatever the autocast dtype (bf16 sums over a mask are too coarse).
        """
        input = input.float()
        target = target.float()
        dice = soft_dice_loss(torch.sigmoid(input), target, self.smooth, self.batch_dice)
        bce = F.binary_cross_entropy_with_logits(input, target)
        return self.dice_weight * dice + self.bce_weight * bce


class NegativeSSIMLoss(nn.Module):
    """Negative mean SSIM between ``sigmoid(input)`` and ``target`` (the paper's NMSSIM).

    Args:
        window_size: Gaussian window taps (11).
        sigma: Gaussian standard deviation (1.5).
        k1, k2: SSIM constants (0.01, 0.03).
        data_range: dynamic range of the images (1).
    """

    def __init__(
        self, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, data_range: float = 1.0
    ) -> None:
        super().__init__()
        self.kwargs: dict[str, Any] = dict(window_size=window_size, sigma=sigma, k1=k1, k2=k2, data_range=data_range)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(N, C, H, W)``; ``target``: ``(N, C, H, W)`` in [0, 1]."""
        probs = torch.sigmoid(input.float())
        return -ssim(probs, target.float(), **self.kwargs)
