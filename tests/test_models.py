"""Model zoo: every registered model is checked for shape, finiteness, gradients, determinism."""

from __future__ import annotations

import pytest
import torch

from enface.models import count_parameters, create_model, list_models, model_spec

WIDTH = 0.25
ALL = list_models()


def _depth(name: str) -> int:
    """Smallest depth the model accepts (its fixed depth for fixed-depth models)."""
    return create_model(name, width=WIDTH).min_depth


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("hw", [(7, 45), (49, 20), (1, 1)])
def test_output_shape_any_enface_size(name: str, hw: tuple[int, int]) -> None:
    model = create_model(name, out_channels=2, width=WIDTH).eval()
    x = torch.randn(2, 1, *hw, _depth(name))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 2, *hw)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = create_model(name, width=WIDTH).train()
    x = torch.randn(2, 1, 8, 32, _depth(name))
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_model_and_output(name: str) -> None:
    x = torch.randn(1, 1, 5, 19, _depth(name))
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model(name, width=WIDTH).eval()
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    other = create_model(name, width=WIDTH).eval()
    with torch.no_grad():
        assert not torch.equal(other(x), outs[0])


@pytest.mark.parametrize("name", ALL)
def test_two_input_channels(name: str) -> None:
    model = create_model(name, in_channels=2, width=WIDTH).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 2, 4, 16, _depth(name)))
    assert y.shape == (1, 1, 4, 16)


@pytest.mark.parametrize("name", ALL)
def test_width_shrinks_parameter_count(name: str) -> None:
    assert count_parameters(create_model(name, width=0.5)) < count_parameters(create_model(name, width=1.0))


@pytest.mark.parametrize("name", ALL)
def test_spec_rebuilds_the_model(name: str) -> None:
    model = create_model(name, out_channels=3, width=WIDTH)
    spec = model_spec(model)
    rebuilt = create_model(spec["name"], spec["in_channels"], spec["out_channels"], spec["width"], **spec["kwargs"])
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ALL)
def test_too_shallow_volume_is_a_clear_error(name: str) -> None:
    model = create_model(name, width=WIDTH)
    with pytest.raises(ValueError, match="depth"):
        model(torch.randn(1, 1, 4, 16, model.min_depth - 1))


@pytest.mark.parametrize("name, expected", [("fpn", 4_369_553), ("resensnet", 4_718_737), ("lachinov", 1_513_697)])
def test_exact_parameter_counts(name: str, expected: int) -> None:
    if name not in ALL:
        pytest.fail(f"model {name!r} is not registered")
    assert count_parameters(create_model(name)) == expected


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*fpn"):
        create_model("nope")


def test_resensnet_rejects_other_depths() -> None:
    model = create_model("resensnet", width=WIDTH)
    with pytest.raises(ValueError, match="D = 128"):
        model(torch.randn(1, 1, 4, 16, 96))


def test_fpn_accepts_depth_not_multiple_of_16() -> None:
    model = create_model("fpn", width=WIDTH).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 3, 10, 100)).shape == (1, 1, 3, 10)


def test_init_follows_paper_code() -> None:
    model = create_model("fpn")
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
    assert all(m.bias is None or torch.all(m.bias == 0) for m in convs)
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm3d, torch.nn.BatchNorm2d))]
    weights = torch.cat([m.weight.detach().flatten() for m in bns])
    assert abs(weights.mean().item() - 1.0) < 0.01 and 0.01 < weights.std().item() < 0.03
    assert all(torch.all(m.bias == 0) for m in bns)


def test_cli_lists_every_model_with_its_parameter_count(capsys) -> None:
    from enface.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out
    assert "4,369,553" in out and "4,718,737" in out and "1,513,697" in out


@pytest.mark.parametrize("name", ALL)
def test_model_interface(name: str) -> None:
    """Every model honours its head, min_depth and fixed_depth at the boundary (that they exist,
    with the right types, create_model checks itself: test_registry_refuses_a_model_without_the_interface)."""
    model = create_model(name, out_channels=3, width=WIDTH).eval()
    head_shapes = {k: v.shape for k, v in model.head.state_dict().items()}
    assert any(s[0] == 3 for s in head_shapes.values()), "the head produces the output channels"
    with torch.no_grad():
        assert model(torch.randn(1, 1, 3, 5, model.min_depth)).shape == (1, 3, 3, 5)
        if model.min_depth > 1:
            with pytest.raises(ValueError, match="depth"):
                model(torch.randn(1, 1, 3, 5, model.min_depth - 1))
        if model.fixed_depth is not None:
            with pytest.raises(ValueError, match="depth"):
                model(torch.randn(1, 1, 3, 5, model.fixed_depth + 16))
        else:
            assert model(torch.randn(1, 1, 3, 5, model.min_depth + 16)).shape == (1, 3, 3, 5)


def test_registry_refuses_a_model_without_the_interface() -> None:
    from torch import nn

    from enface.models import register_model
    from enface.models.registry import _REGISTRY

    @register_model
    def _no_interface(in_channels: int = 1, out_channels: int = 1, width: float = 1.0) -> nn.Module:
        return nn.Conv3d(in_channels, out_channels, 1)

    try:
        with pytest.raises(TypeError, match="no 'head' layer.*min_depth.*fixed_depth"):
            create_model("_no_interface")
    finally:
        _REGISTRY.pop("_no_interface")
