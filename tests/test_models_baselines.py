"""Model-specific checks of the baselines: lachinov, ipn, ipnv2 (generic ones: test_models.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from enface.models import count_parameters, create_model
from enface.models.ipn import pooling_factors

WIDTH = 0.25


# --------------------------------------------------------------------------- IPN pooling factors


@pytest.mark.parametrize(
    "depth, n, expected",
    [
        (128, 5, (4, 4, 2, 2, 2)),
        (160, 5, (5, 4, 2, 2, 2)),
        (32, 5, (2, 2, 2, 2, 2)),
        (160, 3, (8, 5, 4)),
        (128, 3, (8, 4, 4)),
    ],
)
def test_pooling_factors_match_the_papers(depth: int, n: int, expected: tuple[int, ...]) -> None:
    assert pooling_factors(depth, n) == expected


@pytest.mark.parametrize("n", [1, 3, 5])
def test_pooling_factors_are_minimal_and_reach_depth_one(n: int) -> None:
    for depth in range(1, 90):
        factors = pooling_factors(depth, n)
        assert len(factors) == n and min(factors) >= 2
        assert list(factors) == sorted(factors, reverse=True)
        # Exhaustive search for the smallest product >= depth, then the smallest sum. No
        # factor beyond ceil(depth / 2^(n-1)) can help: 2, ..., 2, that one already reaches depth.
        top = max(2, -(-depth // 2 ** (n - 1)))
        best = min(
            (math.prod(c), sum(c))
            for c in itertools.combinations_with_replacement(range(2, top + 1), n)
            if math.prod(c) >= depth
        )
        assert (math.prod(factors), sum(factors)) == best, (depth, n, factors)


def test_ipn_uses_the_factors_of_the_input_depth() -> None:
    model = create_model("ipn", width=WIDTH).eval()
    assert tuple(model.factors(128)) == (4, 4, 2, 2, 2)
    assert tuple(model.factors(160)) == (5, 4, 2, 2, 2)
    seen: list[int] = []
    hooks = [plm.register_forward_hook(lambda m, a, out: seen.append(out.shape[-1])) for plm in model.plms]
    with torch.no_grad():
        y = model(torch.randn(1, 1, 3, 5, 160))
    for h in hooks:
        h.remove()
    assert seen == [32, 8, 4, 2, 1]
    assert y.shape == (1, 1, 3, 5)


def test_ipn_depth_not_a_product_of_small_factors() -> None:
    model = create_model("ipn", width=WIDTH).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 2, 3, 37))
    assert y.shape == (1, 1, 2, 3) and torch.isfinite(y).all()


def test_ipn_logits_can_be_negative() -> None:
    """No ReLU on the logits (the original's pitfall): background must be expressible."""
    model = create_model("ipn", out_channels=2, width=WIDTH).eval()
    assert not isinstance(list(model.modules())[-1], torch.nn.ReLU)
    with torch.no_grad():
        y = model(torch.randn(1, 1, 6, 9, 32))
    assert (y < 0).any() and (y > 0).any()


def test_ipn_never_downsamples_enface() -> None:
    """An input change at one en-face pixel only moves outputs within the receptive field."""
    model = create_model("ipn", width=WIDTH).eval()
    x = torch.randn(1, 1, 40, 40, 32)
    x2 = x.clone()
    x2[:, :, 20, 20] += 5.0
    with torch.no_grad():
        diff = (model(x2) - model(x)).abs()[0, 0]
    changed = diff > 1e-6
    # 15 convs of 3x3x3 + a 3x3 head: radius 16 around (20, 20); pooling never mixes pixels.
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed[20, 20]
    assert rows.min() >= 4 and rows.max() <= 36 and cols.min() >= 4 and cols.max() <= 36


def test_ipn_parameter_count() -> None:
    # 64-ch 3x3x3 convs with bias: 1,792 + 14 * 110,656; 3x3 head: 577.
    assert count_parameters(create_model("ipn")) == 1_551_553


# --------------------------------------------------------------------------- IPN-V2


def test_ipnv2_rejects_other_depths() -> None:
    model = create_model("ipnv2", width=WIDTH)
    with pytest.raises(ValueError, match="built for depth D = 128.*got D = 160"):
        model(torch.randn(1, 1, 4, 16, 160))


def test_ipnv2_built_for_another_depth() -> None:
    model = create_model("ipnv2", width=WIDTH, depth=160).eval()
    assert model.min_depth == 160
    assert model.factors == (8, 5, 4)
    assert model.full_depth.kernel_size == (1, 1, 160)
    with torch.no_grad():
        y = model(torch.randn(1, 1, 5, 18, 160))
    assert y.shape == (1, 1, 5, 18)
    with pytest.raises(ValueError, match="depth"):
        model(torch.randn(1, 1, 5, 18, 128))


def test_ipnv2_too_small_build_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        create_model("ipnv2", depth=4)


def test_ipnv2_parameter_count() -> None:
    # 3D part 665,728; full-depth projection 524,352; fusion 110,720; U-Net 812,225.
    assert count_parameters(create_model("ipnv2")) == 2_113_025


def test_ipnv2_both_branches_reach_the_output() -> None:
    model = create_model("ipnv2", width=WIDTH).train()
    model(torch.randn(1, 1, 4, 16, 128)).sum().backward()
    assert model.full_depth.weight.grad.abs().sum() > 0
    assert model.plms[-1].convs[0].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- Lachinov et al.


def test_lachinov_single_bscan() -> None:
    """B-scans are never downsampled, so a single B-scan works."""
    model = create_model("lachinov", width=WIDTH).eval()
    strided = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.stride != (1, 1, 1)]
    assert strided and all(m.stride == (1, 2, 2) for m in strided)
    with torch.no_grad():
        y = model(torch.randn(2, 1, 1, 37, 20))
    assert y.shape == (2, 1, 1, 37) and torch.isfinite(y).all()


def test_lachinov_skips_are_projected_to_bottleneck_depth() -> None:
    model = create_model("lachinov", width=WIDTH).eval()
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    hooks = [
        level.register_forward_hook(lambda m, args, out: shapes.append((tuple(args[0].shape), tuple(args[1].shape))))
        for level in model.decoder
    ]
    with torch.no_grad():
        model(torch.randn(1, 1, 3, 64, 32))
    for h in hooks:
        h.remove()
    # Decoder runs from the deepest level up: A-scans 16, 32, 64; depth always 32 / 8 = 4.
    assert [s[1][3:] for s in shapes] == [(16, 4), (32, 4), (64, 4)]
    assert all(x == skip for x, skip in shapes)


def test_lachinov_pads_ascans_and_floors_depth() -> None:
    """A-scans are padded to a multiple of 8; depth is not padded: like the paper code, the
    strided convs and skip pools floor, so every skip keeps the bottleneck's depth D // 8."""
    model = create_model("lachinov", width=WIDTH).eval()
    seen: list[tuple[int, ...]] = []
    hook = model.stem.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        y = model(torch.randn(1, 1, 3, 13, 12))
    hook.remove()
    assert y.shape == (1, 1, 3, 13) and torch.isfinite(y).all()
    assert seen == [(1, 1, 3, 16, 12)]


def test_lachinov_bottleneck_never_holds_a_single_value() -> None:
    """W is padded to 16 only where the bottleneck would hold one value per channel."""
    model = create_model("lachinov", width=WIDTH).eval()
    for shape, padded_w in (((1, 1, 1, 5, 8), 16), ((1, 1, 2, 5, 8), 8), ((1, 1, 1, 5, 16), 8)):
        seen: list[int] = []
        hook = model.stem.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0].shape[3]))
        with torch.no_grad():
            assert model(torch.randn(*shape)).shape == (1, 1, shape[2], 5)
        hook.remove()
        assert seen == [padded_w], shape


def test_lachinov_init() -> None:
    model = create_model("lachinov", width=WIDTH)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.affine and torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert all(m.bias is None or torch.all(m.bias == 0) for m in convs)


@pytest.mark.parametrize("name", ["lachinov", "ipn", "ipnv2"])
def test_non_volume_input_is_a_clear_error(name: str) -> None:
    model = create_model(name, width=WIDTH)
    with pytest.raises(ValueError, match=r"\(N, C, H, W, D\)"):
        model(torch.randn(1, 4, 16, 32))
