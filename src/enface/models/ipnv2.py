"""IPN-V2: Image Projection Network V2 (3D projection + 2D plane perceptron).

Li, M., Zhang, Y., Ji, Z., Xie, K., Yuan, S., Liu, Q., Chen, Q.: "IPN-V2 and OCTA-500:
Methodology and Dataset for Retinal Image Segmentation", arXiv:2012.07261 (2020).

Axes: input ``(N, C_in, H, W, D)`` = (batch, channels, B-scans, A-scans, depth); output
logits ``(N, C_out, H, W)``.

Architecture (64 channels throughout; every conv has a bias and is followed by ReLU,
except the last; no normalisation layers, as in the original):
    * 3D part: an input 3x3x3 conv, then 3 projection learning modules, each a max-pooling
      along depth followed by two 3x3x3 convs. The pooling factors follow the rule of
      :func:`enface.models.ipn.pooling_factors` for 3 steps (D = 160 -> 8, 5, 4 as in the
      paper; D = 128 -> 8, 4, 4), so the depth ends at 1;
    * a learned full-depth projection of the input conv's features: a conv whose kernel
      spans the whole depth ``(1, 1, D)``;
    * both 64-channel maps are concatenated (128) and fused by a 2D double 3x3 conv (-> 64);
    * plane perceptron: a 2D U-Net with 64 channels at every level (a double conv, 4
      max-poolings each followed by a double conv, 4 bilinear x2 upsamplings each followed
      by concatenation with the skip and a double conv 128 -> 64);
    * a 1x1 conv to ``out_channels``.
    2,113,025 parameters at width 1, 1 in, 1 out, D = 128.

Sizes: any ``H, W >= 1`` (padded, replicate, to multiples of 16 for the U-Net's 4
poolings, output cropped back). Because of the full-depth projection kernel the network is
built for one depth (``depth`` kwarg, default 128, at least 8); any other depth is an error.

Departures from the public code (chaosallen/IPNV2_pytorch), and why:
    * padding/cropping so whole volumes of any en-face size work (the original trains on
      fixed-size blocks and re-pads inside its up-sampling steps);
    * the pooling factors are derived from the built depth (the original hard-codes 8, 5, 4
      for its 160-sample blocks);
    * returns 2D logits ``(N, C, H, W)`` (the original adds a singleton depth axis) and
      only the logits (not the plane-perceptron features);
    * the project's initialisation (Xavier-normal, zero biases); ``width`` scales every
      channel count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from enface.models.blocks import crop_enface, init_weights, pad_to_multiple, scale_channels
from enface.models.ipn import ProjectionLearningModule, plm_stage, pool_depth, pooling_factors
from enface.models.registry import register_model
from enface.models.stages import SlabStage, StageRunner, run_whole

__all__ = ["IPNV2", "PlanePerceptron"]


# --------------------------------------------------------------------------- blocks


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """(3x3 conv with bias -> ReLU) x 2, en-face."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class PlanePerceptron(nn.Module):
    """2D U-Net with the same channel count at every level and bilinear upsampling.

    The final 1x1 conv to the logits is the network's ``head`` (kept outside this block so
    that every registered model names its final layer ``head``).

    Args:
        c_in: input channels.
        channels: channels of every level.
        n_pools: number of 2x2 max-poolings.

    Shapes:
        ``(N, c_in, H, W)`` -> ``(N, channels, H, W)``; ``H`` and ``W`` must be
        multiples of ``2 ** n_pools``.
    """

    def __init__(self, c_in: int, channels: int, n_pools: int = 4) -> None:
        super().__init__()
        self.inc = _double_conv(c_in, channels)
        self.down = nn.ModuleList(_double_conv(channels, channels) for _ in range(n_pools))
        self.up = nn.ModuleList(_double_conv(2 * channels, channels) for _ in range(n_pools))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for conv in self.down:
            skips.append(x)
            x = conv(F.max_pool2d(x, 2))
        for conv, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
            x = conv(torch.cat([skip, x], dim=1))
        return x


# --------------------------------------------------------------------------- network


class IPNV2(nn.Module):
    """IPN-V2 built for volumes of exactly ``depth`` samples.

    Args:
        in_channels: input channels.
        out_channels: output logit channels.
        depth: the only accepted input depth ``D`` (>= 8).
        channels: channels of the 3D part and of the fused 2D map (before ``width``).
        plane_channels: channels of the plane perceptron's levels (before ``width``).
        width: channel multiplier.

    Shapes:
        ``(N, in_channels, H, W, depth)`` -> ``(N, out_channels, H, W)``.
    """

    n_pools: int = 4
    slab_stages = True
    """The 3D part runs as :class:`~enface.models.stages.SlabStage` parts."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 128,
        channels: int = 64,
        plane_channels: int = 64,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if int(depth) != depth or depth < 8:
            raise ValueError(f"ipnv2 needs an integer build depth >= 8 (three depth poolings), got depth={depth}")
        self.fixed_depth: int = int(depth)
        self.factors = pooling_factors(self.fixed_depth, 3)
        c = scale_channels(channels, width)
        self.input3d = nn.Sequential(nn.Conv3d(in_channels, c, 3, padding=1), nn.ReLU(inplace=True))
        self.plms = nn.ModuleList(ProjectionLearningModule(c, c, n_convs=2, pool_first=True) for _ in self.factors)
        self.full_depth = nn.Conv3d(c, c, (1, 1, self.fixed_depth))
        self.fuse = _double_conv(2 * c, c)
        c_plane = scale_channels(plane_channels, width)
        self.plane = PlanePerceptron(c, c_plane, self.n_pools)
        self.head = nn.Conv2d(c_plane, out_channels, 1)
        self.apply(init_weights)

    @property
    def min_depth(self) -> int:
        """The only accepted depth (the built one)."""
        return self.fixed_depth

    def forward(self, x: torch.Tensor, run: StageRunner = run_whole) -> torch.Tensor:
        """``(N, C_in, H, W, D)`` -> logits ``(N, C_out, H, W)``; ``run`` executes the 3D part."""
        if x.dim() != 5:
            raise ValueError(f"expected a volume batch (N, C, H, W, D), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.fixed_depth:
            raise ValueError(
                f"this ipnv2 model was built for depth D = {self.fixed_depth} (got D = {x.shape[-1]}); resample "
                f"the volume depth or build it with create_model('ipnv2', depth={x.shape[-1]})"
            )
        x, size = pad_to_multiple(x, (2**self.n_pools, 2**self.n_pools, 1))
        return crop_enface(self.forward_head(self.forward_features(x, run)), size)

    def forward_features(self, x: torch.Tensor, run: StageRunner = run_whole) -> torch.Tensor:
        """The 3D part and the fusion of a padded volume: ``(N, C_in, H, W, D)`` -> ``(N, C, H, W)``.

        The input conv's full-resolution output only lives within the first stage, which
        also gives its full-depth projection and its pooling for the first module.
        """
        plms = cast(Sequence[ProjectionLearningModule], self.plms)

        def first(t: torch.Tensor) -> list[torch.Tensor]:
            x0 = self.input3d(t)
            return [self.full_depth(x0)[..., 0], pool_depth(x0, self.factors[0]) if plms[0].pool_first else x0]

        full, y = run(SlabStage(first, (self.input3d, self.full_depth)), x)
        for i, (plm, factor) in enumerate(zip(plms, self.factors)):
            (y,) = run(plm_stage(plm, factor, pooled=i == 0 and plm.pool_first), y)
        return self.fuse(torch.cat([full, y[..., 0]], dim=1))

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        """The plane perceptron and the 1x1 head: fused map -> padded logits."""
        return self.head(self.plane(fused))


# --------------------------------------------------------------------------- registered constructors


@register_model
def ipnv2(in_channels: int = 1, out_channels: int = 1, width: float = 1.0, depth: int = 128, **kwargs) -> IPNV2:
    """IPN-V2 (Li et al., arXiv:2012.07261). 2,113,025 parameters at width 1, 1 in, 1 out, D = 128 only."""
    return IPNV2(in_channels, out_channels, depth=depth, width=width, **kwargs)
