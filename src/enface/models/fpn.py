"""FPN: 3D encoder + 2D decoder joined by feature projection blocks (FPBs).

Morano et al., "Self-supervised Learning via Inter-modal Reconstruction and Feature
Projection Networks for Label-Efficient 3D-to-2D Segmentation", MICCAI 2023. Also
``resensnet``, the same network with the projection of ReSensNet (Seeböck et al.,
Ophthalmology Retina 2022), which only accepts the depth it was built for.

Axes: input ``(N, C_in, H, W, D)`` = (batch, channels, B-scans, A-scans, depth); output
logits ``(N, C_out, H, W)``. Kernel sizes below are over ``(H, W, D)``.

Sizes: ``H`` and ``W`` may be anything >= 1 — the input is padded (replicate) to multiples
of 4 in ``H`` and 16 in ``W`` and the output is cropped back. ``D`` must be >= 64 for
``fpn`` (the deepest level needs 4 depth samples for its (1,1,4) projection kernel) and
exactly the built depth (128 by default) for ``resensnet``.

What matches the paper's public code (j-morano/multimodal-ssl-fpn, ``models/resensnet.py``,
``ModifiedUnet3D``): every layer and its order — convs without bias before BatchNorm
(eps 1e-5, momentum 0.1), ReLU after each residual sum, the projection blocks' strided
(1,1,3) convs and (1,1,k) projection conv, max pooling, nearest upsampling, the decoder's
``[skip, upsampled]`` concatenation and the 1x1 head with bias. The paper code's decoder
convs are 3D with (3,3,1) kernels on a depth of 1; here they are the equal 2D convs. With
its weights imported by ``enface import-weights`` (:mod:`enface.engine.paper_weights`), the
logits equal its pre-sigmoid output to ~1e-14 in float64 for every input it accepts (``H``
a multiple of 4, ``W`` of 16).

Departures from the paper's public code, and why:
    * it returns logits (the original applies a sigmoid) — losses take logits here;
    * padding/cropping instead of requiring ``H`` divisible by 4 and ``W`` by 16, so the
      49 B-scans of a Spectralis volume run at full resolution;
    * ``in_channels`` is honoured (the original hard-codes one input channel) and
      ``width`` scales every channel count (for tests and CPU demos).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from enface.models.blocks import Triple, crop_enface, init_weights, pad_to_multiple, scale_channels
from enface.models.registry import register_model
from enface.models.stages import SlabStage, StageRunner, run_whole

__all__ = ["FeatureProjectionNetwork"]


# --------------------------------------------------------------------------- blocks


def _conv_bn_3d(c_in: int, c_out: int, kernel: Triple, stride: Triple = (1, 1, 1)) -> list[nn.Module]:
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return [nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False), nn.BatchNorm3d(c_out)]


class ResidualUnit3d(nn.Module):
    """Residual unit: (conv -> BN -> ReLU) x (k-1), conv -> BN, + shortcut, ReLU.

    Args:
        c_in: input channels.
        c_out: output channels.
        kernels: one kernel size per conv, e.g. ``((1, 3, 3), (1, 3, 3))``.
        strides: one stride per conv (default all 1).
        shortcut_stride: stride of the 1x1x1 shortcut conv (used when the channel count
            changes or the unit is strided).

    Shapes:
        ``(N, c_in, H, W, D)`` -> ``(N, c_out, H', W', D')``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernels: Sequence[Triple],
        strides: Sequence[Triple] | None = None,
        shortcut_stride: Triple = (1, 1, 1),
    ) -> None:
        super().__init__()
        strides = strides or [(1, 1, 1)] * len(kernels)
        layers: list[nn.Module] = []
        c = c_in
        for i, (k, s) in enumerate(zip(kernels, strides)):
            layers += _conv_bn_3d(c, c_out, k, s)
            if i < len(kernels) - 1:
                layers.append(nn.ReLU(inplace=True))
            c = c_out
        self.body = nn.Sequential(*layers)
        if c_in != c_out or any(s != 1 for s in shortcut_stride):
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=shortcut_stride, bias=False), nn.BatchNorm3d(c_out)
            )
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class EncoderLevel(nn.Module):
    """Two residual units: two (1,3,3) convs; then (1,3,3), (1,3,3), (3,1,1)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.unit1 = ResidualUnit3d(c_in, c_out, [(1, 3, 3), (1, 3, 3)])
        self.unit2 = ResidualUnit3d(c_out, c_out, [(1, 3, 3), (1, 3, 3), (3, 1, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit2(self.unit1(x))


class FeatureProjectionBlock(nn.Module):
    """Project ``(N, C, H, W, D)`` features to ``(N, C, H, W)``.

    ``n_strided`` stride-2 (1,1,3) depth convs in a residual unit (absent when 0), then a
    ``(1,1,final_kernel)`` conv without padding + BN + ReLU, then (``reduce="mean"``) the
    mean over the remaining depth. With ``reduce="none"`` the remaining depth must be 1
    (ReSensNet's fixed-size projection).
    """

    def __init__(self, channels: int, n_strided: int, final_kernel: int = 4, reduce: str = "mean") -> None:
        super().__init__()
        if reduce not in ("mean", "none"):
            raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
        self.reduce = reduce
        self.final_kernel = final_kernel
        if n_strided > 0:
            self.downsample: nn.Module = ResidualUnit3d(
                channels,
                channels,
                kernels=[(1, 1, 3)] * n_strided,
                strides=[(1, 1, 2)] * n_strided,
                shortcut_stride=(1, 1, 2**n_strided),
            )
        else:
            self.downsample = nn.Identity()
        self.project = nn.Sequential(
            nn.Conv3d(channels, channels, (1, 1, final_kernel), bias=False),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if x.shape[-1] < self.final_kernel:
            raise ValueError(
                f"feature depth {x.shape[-1]} is smaller than the projection kernel {self.final_kernel}; "
                "the input volume is too shallow"
            )
        x = self.project(x)
        if self.reduce == "none":
            if x.shape[-1] != 1:
                raise ValueError(f"fixed-size projection left depth {x.shape[-1]}, expected 1")
            return x[..., 0]
        return x.mean(dim=-1)


class DecoderStage(nn.Module):
    """Upsample (nearest), concatenate ``[skip, upsampled]``, residual unit of two 3x3 convs.

    The first ``c_skip`` input channels of the convs see the skip, the last ``c_in`` the
    upsampled features (the paper code's order, so that its weights apply unchanged).

    Shapes:
        ``x (N, c_in, h, w)``, ``skip (N, c_skip, h*sh, w*sw)`` -> ``(N, c_out, h*sh, w*sw)``.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, scale: tuple[int, int]) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=scale, mode="nearest")
        self.c_skip = c_skip
        c = c_in + c_skip
        self.body = nn.Sequential(
            nn.Conv2d(c, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(c, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([skip, self.up(x)], dim=1)  # skip first, as in the paper's code
        return self.act(self.body(x) + self.shortcut(x))


def encoder_stage(level: nn.Module, project: nn.Module, pool: nn.Module | None = None, factor: int = 1) -> SlabStage:
    """One encoder level as a :class:`~enface.models.stages.SlabStage`: the level, its
    projection to an en-face map and (except for the deepest level) the pooling that feeds
    the next level, which narrows ``W`` by ``factor``. Outputs: ``[projected (N, C, H, W)]``
    or ``[projected, pooled]``."""

    def fn(x: torch.Tensor) -> list[torch.Tensor]:
        y = level(x)
        return [project(y)] if pool is None else [project(y), pool(y)]

    if pool is None:
        return SlabStage(fn, (level, project))
    return SlabStage(fn, (level, project), align=factor, scales=(1, factor))


# --------------------------------------------------------------------------- network


class FeatureProjectionNetwork(nn.Module):
    """FPN (and, with ``fixed_depth``, ReSensNet-style) 3D->2D network.

    Args:
        in_channels: input channels (1 for OCT; 2 for OCT + OCTA).
        out_channels: output logit channels.
        channels: channels of the 5 encoder levels (before ``width``).
        width: channel multiplier.
        final_kernel: depth kernel of each FPB's projection conv (4 for FPN, 8 for ReSensNet).
        fixed_depth: if set, the FPBs do not average over depth and the network only
            accepts volumes of exactly this depth (ReSensNet).

    Shapes:
        ``(N, in_channels, H, W, D)`` -> ``(N, out_channels, H, W)``.
    """

    pools: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    ups: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (1, 2), (1, 2))

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        width: float = 1.0,
        final_kernel: int = 4,
        fixed_depth: int | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"FPN has 5 levels, got channels={channels}")
        chs = [scale_channels(c, width) for c in channels]
        self.fixed_depth = fixed_depth
        self.final_kernel = final_kernel
        self.encoder = nn.ModuleList()
        c_prev = in_channels
        for c in chs:
            self.encoder.append(EncoderLevel(c_prev, c))
            c_prev = c
        self.pool = nn.ModuleList(nn.MaxPool3d(p, stride=p) for p in self.pools)
        reduce = "none" if fixed_depth is not None else "mean"
        self.projections = nn.ModuleList(
            FeatureProjectionBlock(c, n_strided=4 - i, final_kernel=final_kernel, reduce=reduce)
            for i, c in enumerate(chs)
        )
        self.decoder = nn.ModuleList()
        c_prev = chs[-1]
        for level, scale in zip(range(3, -1, -1), self.ups):
            self.decoder.append(DecoderStage(c_prev, chs[level], chs[level], scale))
            c_prev = chs[level]
        self.head = nn.Conv2d(c_prev, out_channels, 1)
        self.apply(init_weights)

    slab_stages = True
    """The encoder runs as :class:`~enface.models.stages.SlabStage` parts (one per level)."""

    @property
    def min_depth(self) -> int:
        """Smallest accepted depth ``D``."""
        return self.fixed_depth if self.fixed_depth is not None else 16 * self.final_kernel

    def forward(self, x: torch.Tensor, run: StageRunner = run_whole) -> torch.Tensor:
        """``(N, C_in, H, W, D)`` -> logits ``(N, C_out, H, W)``; ``run`` executes the encoder levels."""
        self._check_input(x)
        x, size = pad_to_multiple(x, (4, 16, 1))
        return crop_enface(self.forward_head(self.forward_features(x, run)), size)

    def forward_features(self, x: torch.Tensor, run: StageRunner = run_whole) -> list[torch.Tensor]:
        """Encoder and projections of a volume padded to multiples of ``(4, 16, 1)``.

        Returns:
            The en-face features of the 5 levels, ``(N, C_i, H_i, W_i)``, finest first.
        """
        skips = []
        for i, (level, project) in enumerate(zip(self.encoder, self.projections)):
            last = i == len(self.pool)
            stage = (
                encoder_stage(level, project) if last else encoder_stage(level, project, self.pool[i], self.pools[i][1])
            )
            outs = run(stage, x)
            skips.append(outs[0])
            if not last:
                x = outs[1]
        return skips

    def forward_head(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """The 2D decoder and the 1x1 head: level features (finest first) -> padded logits."""
        y = skips[-1]
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            y = stage(y, skip)
        return self.head(y)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"expected a volume batch (N, C, H, W, D), got shape {tuple(x.shape)}")
        depth = x.shape[-1]
        if self.fixed_depth is not None and depth != self.fixed_depth:
            raise ValueError(
                f"this network only accepts depth D = {self.fixed_depth} (got D = {depth}); "
                "resample the volume depth or use 'fpn', which accepts any D >= 64"
            )
        if depth < self.min_depth:
            raise ValueError(f"input depth D = {depth} is below this network's minimum of {self.min_depth}")

    def upgrade_state_dict(self, state: dict[str, torch.Tensor], format_version: int) -> dict[str, torch.Tensor]:
        """Weights of an enface checkpoint of format 1 in this network's layout.

        Up to format 1, decoder stages concatenated ``[upsampled, skip]``; the paper's code,
        and enface since format 2, concatenate ``[skip, upsampled]``. The input channels of
        each stage's first conv and shortcut conv are reordered accordingly, so an old
        checkpoint predicts exactly what it predicted when it was written.
        """
        if format_version >= 2:
            return state
        out = dict(state)
        for i, stage in enumerate(self.decoder):
            for key in (f"decoder.{i}.body.0.weight", f"decoder.{i}.shortcut.0.weight"):
                if key in out:
                    w = out[key]
                    c_up = w.shape[1] - cast(DecoderStage, stage).c_skip
                    out[key] = torch.cat([w[:, c_up:], w[:, :c_up]], dim=1)
        return out


# --------------------------------------------------------------------------- registered constructors


@register_model
def fpn(in_channels: int = 1, out_channels: int = 1, width: float = 1.0, **kwargs) -> FeatureProjectionNetwork:
    """The paper's FPN (MICCAI 2023). 4,369,553 parameters at width 1, 1 in, 1 out. D >= 64."""
    return FeatureProjectionNetwork(in_channels, out_channels, width=width, final_kernel=4, **kwargs)


@register_model
def resensnet(
    in_channels: int = 1, out_channels: int = 1, width: float = 1.0, depth: int = 128, **kwargs
) -> FeatureProjectionNetwork:
    """ReSensNet projection (Seeböck et al. 2022): no mean; only the built depth D = ``depth``.

    The projection conv's depth kernel spans the whole remaining depth (``depth / 16``: 8 for
    the default D = 128). 4,718,737 parameters at width 1, 1 in, 1 out, D = 128.
    """
    if depth < 16 or depth % 16 != 0:
        raise ValueError(f"resensnet needs a depth that is a multiple of 16 (got depth={depth})")
    return FeatureProjectionNetwork(
        in_channels, out_channels, width=width, final_kernel=depth // 16, fixed_depth=depth, **kwargs
    )
