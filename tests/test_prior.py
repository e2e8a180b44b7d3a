"""The from-scratch segmentation head starts at the masks' foreground share (enface.engine.prior)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enface.data.splits import select_cases
from enface.engine.prior import PRIOR_RANGE, foreground_share, set_head_prior
from enface.models import create_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_head_starts_at_the_prior(name: str) -> None:
    net = create_model(name, 1, 1, 0.125)
    bias = set_head_prior(net, 0.05)
    assert bias == pytest.approx(math.log(0.05 / 0.95))
    x = torch.randn(1, 1, 8, 32, net.fixed_depth or 64)  # a network built for one depth gets that depth
    with torch.no_grad():
        p = torch.sigmoid(net.eval()(x)).mean().item()
    assert p < 0.3, "the network no longer starts at 0.5 everywhere"
    assert set_head_prior(net, 0.0) == pytest.approx(math.log(PRIOR_RANGE[0] / (1 - PRIOR_RANGE[0])))
    with pytest.raises(ValueError, match="head"):
        set_head_prior(torch.nn.Conv2d(1, 1, 1), 0.1)


def test_foreground_share_of_a_dataset(phantom_dataset: Path) -> None:
    ids = select_cases(phantom_dataset, "train", requires=("mask:ga",))
    share = foreground_share(phantom_dataset, ids, "ga")
    masks = [np.asarray(Image.open(phantom_dataset / "cases" / c / "mask_ga.png")) > 0 for c in ids]
    assert len(ids) > 1 and share == pytest.approx(np.mean([m.mean() for m in masks])) and share > 0
    assert foreground_share(phantom_dataset, [], "ga") == PRIOR_RANGE[0]
