"""IPN: Image Projection Network.

Li, M., Chen, Y., Ji, Z., Xie, K., Yuan, S., Chen, Q., Li, S.: "Image Projection Network:
3D to 2D Image Segmentation in OCTA Images", IEEE Transactions on Medical Imaging 39(11),
3343-3354 (2020).

Axes: input ``(N, C_in, H, W, D)`` = (batch, channels, B-scans, A-scans, depth); output
logits ``(N, C_out, H, W)``.

Architecture: 5 projection learning modules (PLMs), each three 3x3x3 convs (64 channels,
bias, ReLU) followed by max-pooling along depth only ("unidirectional pooling"); then a
3x3 en-face conv to ``out_channels``. ``H`` and ``W`` are never downsampled, so any
``H, W >= 1`` works without padding. 1,551,553 parameters at width 1, 1 in, 1 out.

Pooling factors: pooling has no parameters, so the factors are computed from the input
depth at forward time by :func:`pooling_factors`: ``n`` integers >= 2, listed from largest
to smallest, whose product is the smallest one >= ``D``, ties broken by the smallest sum
(D = 128 -> 4, 4, 2, 2, 2; D = 160 -> 5, 4, 2, 2, 2; D = 32 -> 2, 2, 2, 2, 2). Pooling
rounds up (a partial last window is kept), so the depth always ends at exactly 1.
Minimum depth: 32 = 2^5, so that every module really pools.

Departures from the public code (chaosallen/IPN_tensorflow), and why:
    * no ReLU on the output: the original applies one to its logits, which makes negative
      logits (and so confident background) impossible — a known pitfall;
    * the final conv is 2D 3x3 (the original's 3x3x3 conv on a depth-1 map is the same
      thing with its unused depth taps removed);
    * the original only accepts factor sets whose product lies within 10 % of ``D`` and
      fails otherwise; here the smallest product >= ``D`` is always used (same result
      whenever the original finds one);
    * whole volumes of any en-face size instead of fixed-size patches (mind the memory:
      the first module keeps 64 full-resolution channels, ~1.6 GB per activation for a
      49 x 1024 x 128 volume — train on crops);
    * the project's initialisation (Xavier-normal, zero biases) instead of a truncated
      normal (std 0.02) and biases of 0.1; ``width`` scales the channel count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from enface.models.blocks import init_weights, scale_channels
from enface.models.registry import register_model
from enface.models.stages import SlabStage, StageRunner, run_whole

__all__ = ["ImageProjectionNetwork", "ProjectionLearningModule", "plm_stage", "pool_depth", "pooling_factors"]


@functools.lru_cache(maxsize=256)
def pooling_factors(depth: int, n: int) -> tuple[int, ...]:
    """Depth pooling factors of ``n`` modules that together reduce ``depth`` to 1.

    Args:
        depth: input depth ``D`` (>= 1).
        n: number of pooling steps (>= 1).

    Returns:
        ``n`` integers >= 2, largest first, with the smallest product >= ``depth``; among
        those, the one with the smallest sum.
        E.g. ``pooling_factors(128, 5) == (4, 4, 2, 2, 2)``,
        ``pooling_factors(160, 3) == (8, 5, 4)``.
    """
    if depth < 1 or n < 1:
        raise ValueError(f"pooling_factors needs depth >= 1 and n >= 1, got depth={depth}, n={n}")
    best_key: tuple[int, int] | None = None
    best: tuple[int, ...] = ()

    def search(prefix: tuple[int, ...], product: int) -> None:
        # Enumerates non-decreasing factor lists; the last factor is the smallest one that
        # reaches the depth. The first list found wins ties, i.e. the lexicographically smallest.
        nonlocal best_key, best
        low = prefix[-1] if prefix else 2
        if len(prefix) == n - 1:
            candidate = prefix + (max(low, -(-depth // product)),)
            key = (product * candidate[-1], sum(candidate))
            if best_key is None or key < best_key:
                best_key, best = key, candidate
            return
        f = low
        while True:
            search(prefix + (f,), product * f)
            # All remaining factors equal to f already reach the depth: a larger f can only
            # give a larger product.
            if product * f ** (n - len(prefix)) >= depth:
                return
            f += 1

    search((), 1)
    return tuple(sorted(best, reverse=True))


def pool_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Max-pool ``(N, C, H, W, D)`` along depth by ``factor``, keeping a partial last window."""
    k = min(factor, x.shape[-1])
    return F.max_pool3d(x, kernel_size=(1, 1, k), stride=(1, 1, k), ceil_mode=True)


class ProjectionLearningModule(nn.Module):
    """``n_convs`` 3x3x3 convs (bias, ReLU) and a max-pooling along depth.

    Args:
        c_in: input channels.
        c_out: output channels.
        n_convs: number of convs (3 in IPN, 2 in IPN-V2).
        pool_first: pool before the convs (IPN-V2) instead of after them (IPN).

    Shapes:
        ``(N, c_in, H, W, D)`` and a pooling ``factor`` -> ``(N, c_out, H, W, ceil(D / factor))``.
    """

    def __init__(self, c_in: int, c_out: int, n_convs: int = 3, pool_first: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.pool_first = pool_first

    def forward(self, x: torch.Tensor, factor: int) -> torch.Tensor:
        if self.pool_first:
            return self.convs(pool_depth(x, factor))
        return pool_depth(self.convs(x), factor)


def plm_stage(plm: ProjectionLearningModule, factor: int, pooled: bool = False) -> SlabStage:
    """A projection learning module as a :class:`~enface.models.stages.SlabStage` (its
    convolutions and pooling act within A-scan neighbourhoods). ``pooled``: the input is
    already pooled by ``factor`` (only the convolutions run)."""
    if pooled:
        return SlabStage(lambda x: [plm.convs(x)], (plm,))
    return SlabStage(lambda x: [plm(x, factor)], (plm,))


class ImageProjectionNetwork(nn.Module):
    """IPN: projection learning modules, then an en-face 3x3 conv to logits.

    Args:
        in_channels: input channels.
        out_channels: output logit channels.
        channels: channels of every conv (before ``width``).
        n_modules: number of projection learning modules (pooling steps).
        width: channel multiplier.

    Shapes:
        ``(N, in_channels, H, W, D)`` -> ``(N, out_channels, H, W)``, ``D >= 2 ** n_modules``.
    """

    fixed_depth: int | None = None
    slab_stages = True
    """The projection learning modules run as :class:`~enface.models.stages.SlabStage` parts."""

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, channels: int = 64, n_modules: int = 5, width: float = 1.0
    ) -> None:
        super().__init__()
        if n_modules < 1:
            raise ValueError(f"IPN needs at least one projection module, got n_modules={n_modules}")
        c = scale_channels(channels, width)
        self.plms = nn.ModuleList(
            ProjectionLearningModule(in_channels if i == 0 else c, c, n_convs=3) for i in range(n_modules)
        )
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)
        self.apply(init_weights)

    @property
    def min_depth(self) -> int:
        """Smallest accepted depth ``D``: 2 per pooling step."""
        return 2 ** len(self.plms)

    def factors(self, depth: int) -> Sequence[int]:
        """Depth pooling factors used for an input of depth ``depth``."""
        return pooling_factors(depth, len(self.plms))

    def forward(self, x: torch.Tensor, run: StageRunner = run_whole) -> torch.Tensor:
        """``(N, C_in, H, W, D)`` -> logits ``(N, C_out, H, W)``; ``run`` executes the modules."""
        if x.dim() != 5:
            raise ValueError(f"expected a volume batch (N, C, H, W, D), got shape {tuple(x.shape)}")
        if x.shape[-1] < self.min_depth:
            raise ValueError(f"input depth D = {x.shape[-1]} is below IPN's minimum of {self.min_depth}")
        return self.forward_head(self.forward_features(x, run))

    def forward_features(self, x: torch.Tensor, run: StageRunner = run_whole) -> torch.Tensor:
        """The projection learning modules: ``(N, C_in, H, W, D)`` -> ``(N, C, H, W)``."""
        plms = cast(Sequence[ProjectionLearningModule], self.plms)
        for plm, factor in zip(plms, self.factors(x.shape[-1])):
            (x,) = run(plm_stage(plm, factor), x)
        return x[..., 0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The en-face 3x3 conv to logits."""
        return self.head(features)


@register_model
def ipn(in_channels: int = 1, out_channels: int = 1, width: float = 1.0, **kwargs) -> ImageProjectionNetwork:
    """IPN (Li et al., IEEE TMI 2020). 1,551,553 parameters at width 1, 1 in, 1 out. D >= 32."""
    return ImageProjectionNetwork(in_channels, out_channels, width=width, **kwargs)
