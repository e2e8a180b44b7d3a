"""Building blocks shared by the architectures: padding to multiples, weight init, channel scaling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Triple", "crop_enface", "init_weights", "pad_to_multiple", "scale_channels"]

Triple = tuple[int, int, int]
"""A kernel size or stride over ``(H, W, D)``."""


def scale_channels(channels: int, width: float, minimum: int = 1) -> int:
    """``round(channels * width)``, at least ``minimum``."""
    return max(minimum, int(round(channels * width)))


def pad_to_multiple(
    x: torch.Tensor, multiples: Sequence[int], minimum: Sequence[int] | None = None, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the spatial axes of ``x`` at their far end up to multiples (and minimum sizes).

    Args:
        x: ``(N, C, H, W, D)`` volume (or ``(N, C, H, W)`` image).
        multiples: one multiple per spatial axis, e.g. ``(4, 16, 16)``.
        minimum: optional minimum size per spatial axis (applied before rounding up).
        mode: ``"replicate"`` (default, no artificial edges) or ``"constant"`` (zeros).

    Returns:
        The padded tensor and the original ``(H, W)``, to crop the en-face output back with
        :func:`crop_enface`.
    """
    spatial = x.shape[2:]
    if len(multiples) != len(spatial):
        raise ValueError(f"expected {len(spatial)} multiples, got {len(multiples)}")
    minimum = minimum or [1] * len(spatial)
    pads: list[int] = []
    for size, mult, low in zip(reversed(spatial), reversed(multiples), reversed(minimum)):
        target = max(size, low)
        target = int(math.ceil(target / mult) * mult)
        pads += [0, target - size]
    if any(pads):
        x = F.pad(x, pads, mode="replicate") if mode == "replicate" else F.pad(x, pads, value=0.0)
    return x, (int(spatial[0]), int(spatial[1]))


def crop_enface(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``(N, C, H', W')`` back to ``(N, C, H, W)`` with ``(H, W) = size``."""
    return y[:, :, : size[0], : size[1]]


def init_weights(module: nn.Module) -> None:
    """Initialise like the paper's code.

    Xavier-normal conv (and transposed conv) weights, zero conv biases, BatchNorm weight
    ~ N(1, 0.02) and bias 0. Use as ``model.apply(init_weights)``. Other layers keep
    PyTorch's defaults (InstanceNorm affine weight 1, bias 0).
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
