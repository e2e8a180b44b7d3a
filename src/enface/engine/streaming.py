"""Inference over slabs of A-scans: the same logits as the whole-volume forward, bounded memory.

A full Spectralis volume (49 x 1024 x 128) through FPN at width 1 creates 16-channel
activations of ~440 MB each; a whole-volume forward holds several of them at once (2.2 GB
peak). The encoder stages of FPN / ReSensNet, IPN and IPN-V2 are *local along the A-scans*
(``W``): every convolution there has stride 1 and "same" padding in ``W``, and pooling is
aligned. So each stage can be run over slabs of ``W`` with a halo of as many A-scans as its
convolutions reach (:func:`w_radius`, counted from the layers themselves), and the slab
centres, cropped exactly, are the whole-volume result (float32; only the order of
summation inside a convolution may differ). Outputs of each stage are assembled in place;
what follows the encoders (2D decoders, heads) sees whole en-face maps, as in the
network's own forward.

:func:`streamed_forward` returns ``None`` for networks it does not know (or that are not
local along ``W``: Lachinov's InstanceNorms see the whole volume); the caller then runs the
network's own forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from enface.engine.fastpath import channels_last_input
from enface.models.blocks import crop_enface, pad_to_multiple
from enface.models.fpn import FeatureProjectionNetwork
from enface.models.ipn import ImageProjectionNetwork, pool_depth
from enface.models.ipnv2 import IPNV2

__all__ = ["DEFAULT_SLAB_MB", "run_in_slabs", "slab_starts", "streamed_forward", "w_radius", "widest"]

DEFAULT_SLAB_MB = 16.0
"""Memory of one activation of a slab (per stage), in MiB. Below glibc's largest mmap
threshold (32 MiB), so that slab activations are reused from the heap rather than mapped
and zero-filled by the kernel each time (which made 64 MiB slabs 1.5x slower)."""

_LOCAL_LEAVES = (nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.Identity)

Stage = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def w_radius(*modules: nn.Module) -> int:
    """How many A-scans (``W``, dim 3 of a volume, its last-but-one) the layers reach on
    either side: the sum over their convolutions of ``(k - 1) / 2 * dilation`` along ``W``.

    An upper bound whatever the layers' arrangement (sequential or parallel branches).

    Raises:
        ValueError: a convolution with a stride or padding other than "same" along ``W``,
            or a layer that is not known to be local along ``W``.
    """
    total = 0
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
                axis = 1  # W of kernels over (H, W, D) and (H, W)
                k, s, d, p = (layer.kernel_size[axis], layer.stride[axis], layer.dilation[axis], layer.padding)
                pad = p if isinstance(p, str) else p[axis]
                reach = (k - 1) // 2 * d
                if s != 1 or (pad != reach and pad != "same") or k % 2 == 0:
                    raise ValueError(f"{layer}: not a stride-1 'same' convolution along W")
                total += reach
            elif not list(layer.children()) and not isinstance(layer, _LOCAL_LEAVES):
                raise ValueError(f"{type(layer).__name__}: not known to be local along W")
    return total


def slab_starts(width: int, core: int) -> list[tuple[int, int]]:
    """``[(w0, w1)]``: consecutive slabs of ``core`` A-scans covering ``range(width)``."""
    return [(w0, min(width, w0 + core)) for w0 in range(0, width, core)]


def widest(*modules: nn.Module) -> int:
    """The most output channels of any convolution in ``modules`` (at least 1)."""
    return max(
        [1] + [m.out_channels for mod in modules for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    )


def _core(x: torch.Tensor, channels: int, slab_mb: float, align: int, halo: int) -> int:
    """Slab core width (a multiple of ``align``, at least ``2 * halo`` so that halos stay a
    small part) such that an activation of ``channels`` channels over the core and its halos
    on x's grid takes about ``slab_mb``."""
    per_column = max(1, x[:, :1, :, :1].numel()) * x.element_size() * channels
    core = int(slab_mb * 2**20 // per_column) - 2 * halo
    core = max(core, 2 * halo, align)
    return int(math.ceil(core / align) * align)


def run_in_slabs(
    stage: Stage,
    x: torch.Tensor,
    halo: int,
    align: int = 1,
    channels: int = 16,
    slab_mb: float = DEFAULT_SLAB_MB,
    scales: Sequence[int] = (),
) -> list[torch.Tensor]:
    """Run a ``W``-local ``stage`` over slabs of ``x`` and assemble its outputs.

    Args:
        stage: ``x_slab (N, C, H, w, ...) -> outputs``, each output with ``w // scale`` columns
            along dim 3 (the ``scales``), computed with ``"same"`` zero padding along ``W``.
        x: ``(N, C, H, W, ...)`` input.
        halo: A-scans the stage reaches on either side (:func:`w_radius`), rounded up here
            to a multiple of ``align``.
        align: slab boundaries are multiples of this (e.g. a pooling factor along ``W``);
            ``W`` itself must be one.
        channels: channels of the stage's widest activation (:func:`widest`).
        slab_mb: target memory of one such activation in a slab.
        scales: per output, the factor by which it is narrower than ``x`` (default all 1).

    Returns:
        The outputs of the whole ``x``.
    """
    width = x.shape[3]
    if width % align:
        raise ValueError(f"width {width} is not a multiple of the alignment {align}")
    halo = int(math.ceil(halo / align) * align)
    core = _core(x, channels, slab_mb, align, halo)
    outs: list[torch.Tensor] | None = None
    for w0, w1 in slab_starts(width, core):
        a, b = max(0, w0 - halo), min(width, w1 + halo)
        parts = stage(x[:, :, :, a:b])
        scales = tuple(scales) or (1,) * len(parts)
        if outs is None:
            outs = [
                torch.empty(
                    (*p.shape[:3], width // f, *p.shape[4:]),
                    dtype=p.dtype,
                    device=p.device,
                    memory_format=_layout_of(p),
                )
                for p, f in zip(parts, scales)
            ]
        for out, part, f in zip(outs, parts, scales):
            out[:, :, :, w0 // f : w1 // f] = part[:, :, :, (w0 - a) // f : (w1 - a) // f]
    assert outs is not None
    return outs


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    fmt = {5: torch.channels_last_3d, 4: torch.channels_last}.get(t.dim(), torch.contiguous_format)
    return fmt if t.is_contiguous(memory_format=fmt) and not t.is_contiguous() else torch.contiguous_format


# --------------------------------------------------------------------------- networks


def _fpn(net: FeatureProjectionNetwork, x: torch.Tensor, slab_mb: float) -> torch.Tensor:
    depth = x.shape[-1]
    if (net.fixed_depth is not None and depth != net.fixed_depth) or depth < net.min_depth:
        return net(x)  # the network's own error message
    x, size = pad_to_multiple(x, (4, 16, 1))
    x = channels_last_input(x)
    skips = []
    for i, (level, project) in enumerate(zip(net.encoder, net.projections)):
        last = i == len(net.encoder) - 1
        pool = None if last else net.pool[i]

        def stage(t: torch.Tensor, level=level, project=project, pool=pool) -> list[torch.Tensor]:
            y = level(t)
            return [project(y)] + ([] if pool is None else [pool(y)])

        align = 1 if pool is None else int(pool.kernel_size[1])
        outs = run_in_slabs(
            stage,
            x,
            w_radius(level, project),
            align,
            widest(level, project),
            slab_mb,
            scales=(1,) if last else (1, align),
        )
        skips.append(outs[0])
        if not last:
            x = outs[1]
    y = skips[-1]
    for stage_2d, skip in zip(net.decoder, reversed(skips[:-1])):
        y = stage_2d(y, skip)
    return crop_enface(net.head(y), size)


def _ipn(net: ImageProjectionNetwork, x: torch.Tensor, slab_mb: float) -> torch.Tensor:
    if x.shape[-1] < net.min_depth:
        return net(x)
    for plm, factor in zip(net.plms, net.factors(x.shape[-1])):
        x = run_in_slabs(lambda t, plm=plm, f=factor: [plm(t, f)], x, w_radius(plm), 1, widest(plm), slab_mb)[0]
    return net.head(x[..., 0])


def _ipnv2(net: IPNV2, x: torch.Tensor, slab_mb: float) -> torch.Tensor:
    if x.shape[-1] != net.fixed_depth:
        return net(x)
    x, size = pad_to_multiple(x, (2**net.n_pools, 2**net.n_pools, 1))
    x = channels_last_input(x)
    first = net.plms[0]

    def stage(t: torch.Tensor) -> list[torch.Tensor]:  # the input conv's full-res output stays in the slab
        x0 = net.input3d(t)
        return [net.full_depth(x0)[..., 0], pool_depth(x0, net.factors[0]) if first.pool_first else x0]

    parts = (net.input3d, net.full_depth)
    full, y = run_in_slabs(stage, x, w_radius(*parts), 1, widest(*parts), slab_mb)
    for i, (plm, factor) in enumerate(zip(net.plms, net.factors)):
        if i == 0 and plm.pool_first:  # pooled above
            y = run_in_slabs(lambda t, plm=plm: [plm.convs(t)], y, w_radius(plm), 1, widest(plm), slab_mb)[0]
        else:
            y = run_in_slabs(lambda t, plm=plm, f=factor: [plm(t, f)], y, w_radius(plm), 1, widest(plm), slab_mb)[0]
    fused = net.fuse(torch.cat([full, y[..., 0]], dim=1))
    return crop_enface(net.head(net.plane(fused)), size)


def streamed_forward(net: nn.Module, x: torch.Tensor, slab_mb: float = DEFAULT_SLAB_MB) -> torch.Tensor | None:
    """Logits of ``net`` (in eval mode) for ``x`` ``(N, C, H, W, D)``, encoder run over slabs
    of A-scans; ``None`` when ``net`` is not a network this module knows how to stream.
    """
    if net.training or x.dim() != 5:
        return None
    if isinstance(net, FeatureProjectionNetwork):
        return _fpn(net, x, slab_mb)
    if isinstance(net, ImageProjectionNetwork):
        return _ipn(net, x, slab_mb)
    if isinstance(net, IPNV2):
        return _ipnv2(net, x, slab_mb)
    return None
