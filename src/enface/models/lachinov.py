"""Lachinov et al.: a U-Net-like 3D->2D network with projective skip-connections.

Lachinov, D., Seeböck, P., Mai, J., Goldbach, F., Schmidt-Erfurth, U., Bogunović, H.:
"Projective Skip-Connections for Segmentation Along a Subset of Dimensions in Retinal
OCT", MICCAI 2021, LNCS 12901, pp. 431-441.

Axes: input ``(N, C_in, H, W, D)`` = (batch, channels, B-scans, A-scans, depth); output
logits ``(N, C_out, H, W)``. Kernel sizes below are over ``(H, W, D)``.

Architecture (4 levels, 32/64/128/256 channels, 1/1/2/4 residual bottleneck blocks):
    * every block is 1x1x1 conv to C/8 -> IN -> ReLU -> 3-kernel conv -> IN -> ReLU ->
      1x1x1 conv to C -> IN, plus the identity, no ReLU after the sum (affine InstanceNorm);
    * stem: en-face (3,3,1) conv (with bias) + IN + the level-1 block;
    * encoder: a (1,2,2) stride-(1,2,2) conv (no bias) halves A-scans and depth — B-scans
      are never downsampled, so a single B-scan (``H = 1``) works — then the level's
      blocks, which convolve within B-scans with (1,3,3) kernels;
    * projective skips: the features of level ``i`` are average-pooled along depth by
      ``2 ** (3 - i)`` so every skip has the bottleneck's depth ``D / 8``;
    * decoder (levels 3, 2, 1): linear x2 upsampling along A-scans + 1x1x1 conv (no bias),
      concatenation with the skip, 3x3x3 conv (no bias) + IN, then as many blocks as the
      encoder level has, with en-face (3,3,1) kernels;
    * head: mean over depth, then an en-face 3x3 conv (with bias) to ``out_channels``.
    1,513,697 parameters at width 1, 1 input and 1 output channel.

Sizes: ``H >= 1`` and ``W >= 1`` are free: ``W`` is padded (replicate) to a multiple of 8
(to 16 when the bottleneck would otherwise hold a single value per channel, which its
InstanceNorm cannot normalise); the output is cropped back. ``D`` must be >= 8 (three
halvings) and is not padded: like the public code, the strided convs and the skip pools
floor, which keeps every skip at the bottleneck's depth ``D // 8``.

What matches the public code (j-morano/multimodal-ssl-fpn, ``models/lachinovnet``): every
layer, its order, kernels, bias, InstanceNorm (affine, eps 1e-5), the trilinear upsampling
(``align_corners=False``) and the ``[skip, upsampled]`` concatenation. With its weights
imported by ``enface import-weights`` (:mod:`enface.engine.paper_weights`), the logits equal
its pre-sigmoid output to ~1e-12 in float64 for every input it accepts (``W`` a multiple
of 8, any ``H``, any ``D >= 8``).

Departures from the public code, and why:
    * it returns logits (the original applies a sigmoid) — losses take logits here;
    * the original builds a fourth decoder stage that its forward never uses; it is not
      built here, so every parameter is trained and counted (the importer leaves those
      weights out and says so);
    * padding/cropping instead of requiring A-scans divisible by 8;
    * ``in_channels`` is honoured (the original hard-codes one input channel) and
      ``width`` scales every channel count (the bottleneck keeps at least 1 channel);
    * axes are ordered (B-scans, A-scans, depth) like the rest of enface (the original's
      are (B-scans, depth, A-scans)); kernels were permuted accordingly, and the importer
      transposes the weights. The stem conv keeps its bias, as in the original, although
      the InstanceNorm after it makes that bias (nearly) redundant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from enface.models.blocks import Triple, crop_enface, init_weights, pad_to_multiple, scale_channels
from enface.models.registry import register_model

__all__ = ["BottleneckBlock", "LachinovNet"]

_WITHIN_BSCAN: tuple[int, int, int] = (1, 3, 3)
_EN_FACE: tuple[int, int, int] = (3, 3, 1)


# --------------------------------------------------------------------------- blocks


class BottleneckBlock(nn.Module):
    """Residual bottleneck: 1x1x1 to C/8, a 3-kernel conv, 1x1x1 back to C; InstanceNorms.

    Args:
        channels: ``C``, input and output channels.
        kernel: kernel of the middle conv, e.g. ``(1, 3, 3)`` (within B-scans) or
            ``(3, 3, 1)`` (en-face); padded to keep the size.
        compression: bottleneck ratio (8): the middle conv has ``max(1, C // 8)`` channels.

    Shapes:
        ``(N, C, H, W, D)`` -> ``(N, C, H, W, D)``.
    """

    def __init__(self, channels: int, kernel: Triple, compression: int = 8) -> None:
        super().__init__()
        mid = max(1, channels // compression)
        padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
        self.body = nn.Sequential(
            nn.Conv3d(channels, mid, 1, bias=False),
            nn.InstanceNorm3d(mid, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, mid, kernel, padding=padding, bias=False),
            nn.InstanceNorm3d(mid, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, channels, 1, bias=False),
            nn.InstanceNorm3d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _blocks(channels: int, n: int, kernel: Triple) -> list[nn.Module]:
    return [BottleneckBlock(channels, kernel) for _ in range(n)]


class UpAlongAScans(nn.Module):
    """Linear x2 upsampling along A-scans (``W``) only, then a 1x1x1 conv (no bias).

    Shapes:
        ``(N, c_in, H, W, D)`` -> ``(N, c_out, H, 2W, D)``.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 1.0), mode="trilinear", align_corners=False)
        return self.conv(x)


class DecoderLevel(nn.Module):
    """Concatenate the projected skip, 3x3x3 conv + IN, then en-face bottleneck blocks.

    Shapes:
        ``x (N, C, H, W, d)``, ``skip (N, C, H, W, d)`` -> ``(N, C, H, W, d)``.
    """

    def __init__(self, channels: int, n_blocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(2 * channels, channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(channels, affine=True),
            *_blocks(channels, n_blocks, _EN_FACE),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([skip, x], dim=1))


# --------------------------------------------------------------------------- network


class LachinovNet(nn.Module):
    """Lachinov et al.'s 3D->2D network with projective skip-connections.

    Args:
        in_channels: input channels.
        out_channels: output logit channels.
        channels: channels of the 4 levels (before ``width``).
        blocks: bottleneck blocks per level (the decoder reuses the counts of levels 1-3).
        width: channel multiplier.

    Shapes:
        ``(N, in_channels, H, W, D)`` -> ``(N, out_channels, H, W)``.
    """

    fixed_depth: int | None = None
    slab_stages = False
    """Not streamed: its InstanceNorms normalise over the whole volume."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 2, 4),
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(blocks) or len(channels) < 2:
            raise ValueError(f"channels and blocks need one entry per level (>= 2), got {channels}, {blocks}")
        chs = [scale_channels(c, width) for c in channels]
        self.levels = len(chs)
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, chs[0], _EN_FACE, padding=(1, 1, 0), bias=True),
            nn.InstanceNorm3d(chs[0], affine=True),
            *_blocks(chs[0], blocks[0], _WITHIN_BSCAN),
        )
        self.encoder = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(chs[i], chs[i + 1], (1, 2, 2), stride=(1, 2, 2), bias=False),
                *_blocks(chs[i + 1], blocks[i + 1], _WITHIN_BSCAN),
            )
            for i in range(self.levels - 1)
        )
        self.skip_pools = nn.ModuleList(
            nn.AvgPool3d((1, 1, 2 ** (self.levels - 1 - i)), stride=(1, 1, 2 ** (self.levels - 1 - i)))
            for i in range(self.levels - 1)
        )
        self.upsample = nn.ModuleList(UpAlongAScans(chs[i + 1], chs[i]) for i in range(self.levels - 1))
        self.decoder = nn.ModuleList(DecoderLevel(chs[i], blocks[i]) for i in range(self.levels - 1))
        self.head = nn.Conv2d(chs[0], out_channels, 3, padding=1, bias=True)
        self.apply(init_weights)

    @property
    def min_depth(self) -> int:
        """Smallest accepted depth ``D`` (one sample per halving)."""
        return 2 ** (self.levels - 1)

    def _min_ascans(self, x: torch.Tensor) -> int:
        """Fewest A-scans to pad to: ``2 ** (levels - 1)``, doubled if the bottleneck would
        otherwise hold a single value per channel (its InstanceNorm needs more than one)."""
        factor = self.min_depth
        bottleneck = x.shape[2] * -(-x.shape[3] // factor) * (x.shape[4] // factor)
        return factor if bottleneck > 1 else 2 * factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected a volume batch (N, C, H, W, D), got shape {tuple(x.shape)}")
        if x.shape[-1] < self.min_depth:
            raise ValueError(f"input depth D = {x.shape[-1]} is below this network's minimum of {self.min_depth}")
        x, size = pad_to_multiple(x, (1, self.min_depth, 1), minimum=(1, self._min_ascans(x), 1))
        return crop_enface(self.forward_head(self.forward_features(x)), size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder, projective skips and decoder of a padded volume, averaged over depth:
        ``(N, C_in, H, W, D)`` -> ``(N, C, H, W)``."""
        x = self.stem(x)
        skips = []
        for pool, down in zip(self.skip_pools, self.encoder):
            skips.append(pool(x))
            x = down(x)
        for i in reversed(range(self.levels - 1)):
            x = self.decoder[i](self.upsample[i](x), skips[i])
        return x.mean(dim=-1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The en-face 3x3 conv to (padded) logits."""
        return self.head(features)


# --------------------------------------------------------------------------- registered constructors


@register_model
def lachinov(in_channels: int = 1, out_channels: int = 1, width: float = 1.0, **kwargs) -> LachinovNet:
    """Lachinov et al. (MICCAI 2021). 1,513,697 parameters at width 1, 1 in, 1 out. D >= 8."""
    return LachinovNet(in_channels, out_channels, width=width, **kwargs)
