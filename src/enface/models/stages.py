"""The parts of a forward pass that are local along the A-scans, declared by the model itself.

A 3D encoder whose convolutions all have stride 1 and "same" padding along the A-scans
(``W``) computes each output column from a bounded neighbourhood of input columns. Such a
part can be run over slabs of A-scans with a halo and the slabs' outputs joined by
concatenation along ``W``, which bounds the memory of whole-volume inference
(:mod:`enface.engine.streaming`). The model writes its forward pass once and marks those
parts:

* it sets ``slab_stages = True`` and takes ``forward(x, run=run_whole)``;
* for each local part it builds a :class:`SlabStage` — what runs on one slab (``fn``), the
  layers it uses (their convolutions give the halo), how slab boundaries must align (a
  pooling along ``W``) and how much narrower each output is than the input — and calls
  ``run(stage, x)``, which returns the outputs for the whole ``x``;
* everything between such calls (2D decoders, heads) runs on whole tensors as usual.

Called as ``model(x)``, :func:`run_whole` applies each stage to the whole tensor: the plain
forward pass. An executor passes its own ``run``. No executor needs to know any model.

    >>> stage = SlabStage(lambda t: [conv(t)], layers=(conv,))
    >>> (y,) = run(stage, x)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

__all__ = ["SlabStage", "StageRunner", "run_whole"]


@dataclass(frozen=True)
class SlabStage:
    """A part of a forward pass that is local along the A-scans (``W``, dim 3).

    Attributes:
        fn: ``x_slab (N, C, H, w, ...) -> outputs``; output ``i`` has ``w // scales[i]``
            columns along dim 3 and is computed with zero "same" padding along ``W``.
        layers: the modules ``fn`` runs; every convolution among them must be stride 1 and
            "same" along ``W`` (the executor derives the halo from them and refuses others).
        align: slab boundaries must be multiples of this (the pooling factor along ``W``
            of an output), and so must the input's width.
        scales: per output, the factor by which it is narrower than ``x`` along ``W``
            (empty: all 1).
    """

    fn: Callable[[torch.Tensor], Sequence[torch.Tensor]]
    layers: tuple[nn.Module, ...]
    align: int = 1
    scales: tuple[int, ...] = ()


class StageRunner(Protocol):
    """How a model's forward pass runs its :class:`SlabStage` parts: ``run(stage, x)`` returns
    the stage's outputs for the whole ``x``."""

    def __call__(self, stage: SlabStage, x: torch.Tensor) -> list[torch.Tensor]: ...


def run_whole(stage: SlabStage, x: torch.Tensor) -> list[torch.Tensor]:
    """The plain forward pass: the stage applied to the whole tensor."""
    return list(stage.fn(x))
