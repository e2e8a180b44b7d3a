"""Inference over slabs of A-scans: the same logits as the whole-volume forward, bounded memory.

A full Spectralis volume (49 x 1024 x 128) through a 3D encoder with 16 channels at full
resolution creates activations of ~440 MB each; a whole-volume forward holds several of
them at once (2.2 GB peak). Each model marks the parts of its forward pass that are *local along the A-scans*
(``W``) as :class:`~enface.models.stages.SlabStage` (every convolution there has stride 1
and "same" padding in ``W``, pooling is aligned; see :mod:`enface.models.stages`). This
module runs each such part over slabs of ``W`` with a halo of as many A-scans as its
convolutions reach (:func:`w_radius`, counted from the layers themselves), crops the slab
centres exactly and joins them along ``W``: the whole-volume result (float32; only the order
of summation inside a convolution may differ). What the model does between those parts
(2D decoders, heads) sees whole en-face maps, as in its own forward.

Nothing here knows any model: :func:`streamed_forward` passes a :class:`SlabRunner` to the
forward of every model that declares ``slab_stages``, and returns ``None`` for the others
(e.g. a network whose instance norms see the whole volume); the caller then runs the
network's own forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from enface.engine.layout import channels_last_input, memory_format_of
from enface.models.stages import SlabStage

__all__ = ["DEFAULT_SLAB_MB", "SlabRunner", "run_in_slabs", "slab_starts", "streamed_forward", "w_radius", "widest"]

DEFAULT_SLAB_MB = 16.0
"""Memory of one activation of a slab (per stage), in MiB. Below glibc's largest mmap
threshold (32 MiB), so that slab activations are reused from the heap rather than mapped
and zero-filled by the kernel each time (which made 64 MiB slabs 1.5x slower)."""

_LOCAL_LEAVES = (nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.Identity)


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
    convs = [m for mod in modules for m in mod.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return max([1] + [m.out_channels for m in convs])


def _core(x: torch.Tensor, channels: int, slab_mb: float, align: int, halo: int) -> int:
    """Slab core width (a multiple of ``align``, at least ``2 * halo`` so that halos stay a
    small part) such that an activation of ``channels`` channels over the core and its halos
    on x's grid takes about ``slab_mb``."""
    per_column = max(1, x[:, :1, :, :1].numel()) * x.element_size() * channels
    core = int(slab_mb * 2**20 // per_column) - 2 * halo
    core = max(core, 2 * halo, align)
    return int(math.ceil(core / align) * align)


def run_in_slabs(
    stage: Callable[[torch.Tensor], Sequence[torch.Tensor]],
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
    outs: list[torch.Tensor] = []
    for w0, w1 in slab_starts(width, core):
        a, b = max(0, w0 - halo), min(width, w1 + halo)
        parts = stage(x[:, :, :, a:b])
        factors = tuple(scales) or (1,) * len(parts)
        if not outs:
            outs = [_empty_like_assembled(p, width // f) for p, f in zip(parts, factors)]
        for out, part, f in zip(outs, parts, factors):
            out[:, :, :, w0 // f : w1 // f] = part[:, :, :, (w0 - a) // f : (w1 - a) // f]
    return outs


def _empty_like_assembled(part: torch.Tensor, width: int) -> torch.Tensor:
    """An uninitialised tensor shaped like ``part`` but ``width`` wide along dim 3, same layout."""
    shape = (*part.shape[:3], width, *part.shape[4:])
    return torch.empty(shape, dtype=part.dtype, device=part.device, memory_format=memory_format_of(part))


class SlabRunner:
    """A :class:`~enface.models.stages.StageRunner` that runs each stage over slabs of A-scans.

    Args:
        slab_mb: target memory of one activation of a slab, in MiB.
    """

    def __init__(self, slab_mb: float = DEFAULT_SLAB_MB) -> None:
        self.slab_mb = float(slab_mb)

    def __call__(self, stage: SlabStage, x: torch.Tensor) -> list[torch.Tensor]:
        x = channels_last_input(x)
        halo, channels = w_radius(*stage.layers), widest(*stage.layers)
        return run_in_slabs(stage.fn, x, halo, stage.align, channels, self.slab_mb, stage.scales)


def streamed_forward(net: nn.Module, x: torch.Tensor, slab_mb: float = DEFAULT_SLAB_MB) -> torch.Tensor | None:
    """Logits of ``net`` (in eval mode) for ``x`` ``(N, C, H, W, D)``, its
    :class:`~enface.models.stages.SlabStage` parts run over slabs of A-scans; ``None`` when
    ``net`` declares none (``slab_stages`` false or absent) or is training.
    """
    if net.training or x.dim() != 5 or not getattr(net, "slab_stages", False):
        return None
    return net(x, run=SlabRunner(slab_mb))
