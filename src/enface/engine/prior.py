"""A from-scratch segmentation head that starts at the labels' foreground share.

A freshly initialised network outputs logits near 0, probability 0.5 everywhere, while GA
covers a few percent of a scan. The first SGD steps (lr 0.1, momentum 0.9) then push every
output down at once and overshoot: predictions become empty (sigmoid saturated, the Dice
gradient gone) and a run with few labels may stay there for many epochs or for good (the
collapse of issue 18, ``benchmarks/bench_convergence.py``). Starting the head's bias at the
log-odds of the foreground share of the training masks (the prior initialisation of
RetinaNet, Lin et al. 2017) starts the network where the labels are, on average.

Pre-trained runs keep the head they transfer.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from enface.data.folder import load_case

__all__ = ["PRIOR_RANGE", "foreground_share", "set_head_prior"]

log = logging.getLogger(__name__)

PRIOR_RANGE = (0.01, 0.5)
"""Clip of the foreground share (a run whose masks are all empty still starts finite)."""


def foreground_share(root: str | os.PathLike, case_ids: Sequence[str], task: str) -> float:
    """Mean share of mask pixels over the cases' ``mask_<task>.png`` (primary grader)."""
    shares = [float(np.mean(load_case(os.path.join(root, "cases", c)).load_mask(task) > 0)) for c in case_ids]
    return float(np.mean(shares)) if shares else PRIOR_RANGE[0]


def set_head_prior(net: nn.Module, share: float) -> float:
    """Set the bias of ``net.head`` to ``log(p / (1 - p))`` with ``p`` the clipped share; returns it.

    Raises:
        ValueError: the network has no ``head`` with a bias.
    """
    head = getattr(net, "head", None)
    if head is None or getattr(head, "bias", None) is None:
        raise ValueError(f"{type(net).__name__} has no 'head' layer with a bias")
    p = min(max(float(share), PRIOR_RANGE[0]), PRIOR_RANGE[1])
    bias = math.log(p / (1.0 - p))
    with torch.no_grad():
        head.bias.fill_(bias)
    log.info("segmentation head started at the training masks' foreground share %.3f (bias %.2f)", p, bias)
    return bias
