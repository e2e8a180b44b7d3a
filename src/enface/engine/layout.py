"""Memory layouts of tensors and networks: contiguous ``(N, C, H, W, D)`` or channels-last.

oneDNN's convolutions (CPUs) and tensor cores (GPUs) run fastest on channels-last tensors
(``channels_last_3d`` for volumes, ``channels_last`` for en-face maps). These functions
convert weights, inputs and checkpoint entries between the layouts; names, shapes and values
never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "channels_last_format",
    "channels_last_input",
    "contiguous_state",
    "memory_format_of",
    "to_channels_last",
    "to_contiguous",
]


def channels_last_format(t: torch.Tensor) -> torch.memory_format:
    """The channels-last format of a tensor of ``t``'s dimensionality (5-D: ``channels_last_3d``,
    4-D: ``channels_last``; others: contiguous)."""
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(t.dim(), torch.contiguous_format)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout ``t`` is stored in: its channels-last format when its strides are
    channels-last (and not also contiguous), else contiguous."""
    fmt = channels_last_format(t)
    return fmt if t.is_contiguous(memory_format=fmt) and not t.is_contiguous() else torch.contiguous_format


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 5-D weight/buffer of ``module`` channels-last-3d and every 4-D one
    channels-last, in place (``Module.to(memory_format=...)`` refuses networks that mix 3D
    and 2D layers). Names, shapes and values are unchanged. Returns ``module``.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            fmt = channels_last_format(tensor)
            if fmt is not torch.contiguous_format and not tensor.is_contiguous(memory_format=fmt):
                tensor.data = tensor.data.contiguous(memory_format=fmt)
    return module


def to_contiguous(module: nn.Module) -> nn.Module:
    """Undo :func:`to_channels_last`: every weight and buffer of ``module`` contiguous, in
    place (the tensors stay the same ``Parameter`` objects, so an optimizer built on them is
    unaffected). Returns ``module``."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if not tensor.is_contiguous():
                tensor.data = tensor.data.contiguous()
    return module


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(N, C, H, W, D)`` or ``(N, C, H, W)``) in the channels-last layout.

    With one channel both layouts are the same memory, but a convolution only returns a
    channels-last output when the input's strides say so (channel stride 1); such an input
    is copied once into explicitly channels-last strides.
    """
    fmt = channels_last_format(x)
    if fmt is torch.contiguous_format or (x.is_contiguous(memory_format=fmt) and x.stride(1) == 1):
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt).copy_(x)


def contiguous_state(value: Any) -> Any:
    """A (nested) checkpoint entry with every tensor made contiguous (as the plain path
    writes them), e.g. ``state_dict`` or optimiser states of a channels-last network."""
    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, Mapping):
        return {k: contiguous_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(contiguous_state(v) for v in value)
    return value
