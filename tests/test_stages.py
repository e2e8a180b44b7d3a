"""A model gets streamed inference by declaring its slab stages — nothing in the engine names it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from enface.engine.fastpath import FastPath
from enface.engine.streaming import SlabRunner, streamed_forward
from enface.models import create_model, list_models
from enface.models.stages import SlabStage, StageRunner, run_whole


class ToyNet(nn.Module):
    """A 3D conv stage and a W-pooling stage local along A-scans, then a whole-map 2D head."""

    slab_stages = True
    fixed_depth = None
    min_depth = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 3, (1, 7, 1), padding=(0, 3, 0))
        )
        self.pool = nn.MaxPool3d((1, 2, 1), stride=(1, 2, 1))
        self.up = nn.Upsample(scale_factor=(1, 2), mode="nearest")
        self.head = nn.Conv2d(6, 1, 3, padding=1)  # sees the whole en-face map

    def forward(self, x: torch.Tensor, run: StageRunner = run_whole) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, run))

    def forward_features(self, x: torch.Tensor, run: StageRunner = run_whole) -> list[torch.Tensor]:
        def first(t: torch.Tensor) -> list[torch.Tensor]:
            y = self.conv(t)
            return [y.mean(-1), self.pool(y)]

        full, pooled = run(SlabStage(first, (self.conv,), align=2, scales=(1, 2)), x)
        (deep,) = run(SlabStage(lambda t: [self.conv[2](t).amax(-1)], (self.conv[2],)), pooled)
        return [full, deep]

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        full, deep = features
        return self.head(torch.cat([full, self.up(deep)], dim=1))


class Recorder(SlabRunner):
    """The slab runner, recording the widths of the slabs it ran."""

    def __init__(self, slab_mb: float) -> None:
        super().__init__(slab_mb)
        self.widths: list[int] = []

    def __call__(self, stage: SlabStage, x: torch.Tensor) -> list[torch.Tensor]:
        fn = stage.fn

        def recorded(t: torch.Tensor) -> list[torch.Tensor]:
            self.widths.append(t.shape[3])
            return list(fn(t))

        return super().__call__(SlabStage(recorded, stage.layers, stage.align, stage.scales), x)


def test_a_toy_model_streams_by_declaring_its_stages() -> None:
    torch.manual_seed(0)
    net = ToyNet().eval()
    x = torch.randn(1, 1, 3, 96, 8)
    with torch.inference_mode():
        plain = net(x)
        runner = Recorder(slab_mb=0.0005)
        streamed = net(x, run=runner)
        via_engine = streamed_forward(net, x, slab_mb=0.0005)
        fastpath = FastPath(True, slab_mb=0.0005, precision="32")
        via_fastpath = fastpath.logits(fastpath.inference_network(net), x)
    assert len(runner.widths) > 4 and max(runner.widths) < 96  # really in slabs
    for out in (streamed, via_engine, via_fastpath):
        assert out is not None and out.shape == plain.shape == (1, 1, 3, 96)
        assert torch.allclose(out, plain, atol=1e-5)


def test_a_stage_that_is_not_local_along_w_is_refused() -> None:
    conv = nn.Conv3d(1, 1, 3, stride=(1, 2, 1), padding=1)
    stage = SlabStage(lambda t: [conv(t)], (conv,))
    with pytest.raises(ValueError, match="stride-1"):
        SlabRunner()(stage, torch.randn(1, 1, 2, 16, 4))


@pytest.mark.parametrize("name", list_models())
def test_every_model_exposes_its_halves(name: str) -> None:
    """forward == forward_head(forward_features) on a grid that needs no padding."""
    kwargs = {"resensnet": {"depth": 64}, "ipnv2": {"depth": 64}}.get(name, {})
    torch.manual_seed(0)
    model = create_model(name, width=0.125, **kwargs).eval()
    x = torch.randn(1, 1, 16, 32, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x)))
    assert isinstance(model.slab_stages, bool) and model.slab_stages == (name != "lachinov")
