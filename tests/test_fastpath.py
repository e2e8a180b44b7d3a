"""The fast path computes what the plain path computes: inference, training, checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from enface.config import load_config
from enface.engine import fastpath, precision
from enface.engine.checkpoint import load_model, read_checkpoint, topk_checkpoints
from enface.engine.fastlayers import DepthAvgPool3d, VolumeInstanceNorm3d, swap_layers
from enface.engine.fastpath import FastPath, channels_last_suits, fast_precision, fold_batchnorm
from enface.engine.fit import fit, resolved_precision
from enface.engine.inference import Ensemble
from enface.engine.layout import channels_last_input, contiguous_state, to_channels_last
from enface.engine.module import EnfaceModule
from enface.engine.streaming import run_in_slabs, streamed_forward, w_radius
from enface.models import create_model, list_models

# every model at a small width, with a depth it accepts; W spans several slabs of the
# encoders and is not a multiple of the FPN's 16, H not a multiple of 4
VOLUME = (1, 1, 6, 200, 64)
KWARGS = {"resensnet": {"depth": 64}, "ipnv2": {"depth": 64}}
# what enface.engine.fastpath promises: probabilities to float32 rounding (measured over 12
# seeds: <= 1.2e-6); Lachinov's instance norms, computed as batch statistics, sum in another
# order (measured: <= 1.9e-5)
FAST_PLAIN_TOLERANCE = {"lachinov": 1e-4}


def _trained_like(name: str, width: float = 0.25, seed: int = 0) -> nn.Module:
    """A network with non-trivial BatchNorm statistics, as after training."""
    torch.manual_seed(seed)
    model = create_model(name, width=width, **KWARGS.get(name, {}))
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("name", list_models())
def test_fast_inference_equals_plain_for_every_model(name: str) -> None:
    model = _trained_like(name)
    x = torch.randn(VOLUME) * 1.5
    with torch.inference_mode():
        plain = torch.sigmoid(FastPath(False).logits(model, x))
        fastpath = FastPath(True, slab_mb=0.05, precision="32")  # many slabs; float32 as the plain path
        fast = torch.sigmoid(fastpath.logits(fastpath.inference_network(model), x))
    assert fast.shape == plain.shape == (1, 1, *VOLUME[2:4])
    assert (fast - plain).abs().max().item() < FAST_PLAIN_TOLERANCE.get(name, 5e-6)
    assert ((fast >= 0.5) == (plain >= 0.5)).float().mean().item() >= 0.999


def test_fold_batchnorm_computes_the_same_and_leaves_the_network_alone() -> None:
    model = _trained_like("fpn")
    keys = {k: v.shape for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    x = torch.randn(1, 1, 4, 32, 64)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_streaming_really_runs_in_slabs_and_crops_exactly() -> None:
    conv = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv3d(2, 2, (1, 5, 1), padding=(0, 2, 0)))
    pool = nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2))
    calls = []

    def stage(t: torch.Tensor) -> list[torch.Tensor]:
        calls.append(t.shape[3])
        y = conv(t)
        return [y.mean(-1), pool(y)]

    x = torch.randn(1, 1, 3, 90, 8)
    assert w_radius(conv) == 3
    with torch.no_grad():
        whole = stage(x)
        calls.clear()
        parts = run_in_slabs(stage, x, w_radius(conv), align=2, channels=2, slab_mb=0.001, scales=(1, 2))
    assert len(calls) > 3 and max(calls) < 90
    for a, b in zip(parts, whole):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def test_w_radius_refuses_layers_that_are_not_local_along_w() -> None:
    assert w_radius(create_model("fpn", width=0.125).encoder[0]) == 4
    with pytest.raises(ValueError, match="stride-1"):
        w_radius(nn.Conv3d(1, 1, 3, stride=(1, 2, 1), padding=1))
    with pytest.raises(ValueError, match="InstanceNorm3d"):
        w_radius(nn.Sequential(nn.Conv3d(1, 1, 3, padding=1), nn.InstanceNorm3d(1)))


def test_networks_that_cannot_be_streamed_run_whole() -> None:
    x = torch.randn(1, 1, 2, 16, 8)
    with torch.inference_mode():
        assert streamed_forward(create_model("lachinov", width=0.125).eval(), x) is None
        assert streamed_forward(create_model("fpn", width=0.125).train(), x) is None


def _as(layout: str, x: torch.Tensor) -> torch.Tensor:
    return channels_last_input(x) if layout == "channels-last" else x.contiguous()


@pytest.mark.parametrize("layout", ["channels-last", "contiguous"])
def test_volume_instance_norm_computes_torch_s_instance_norm(layout: str) -> None:
    torch.manual_seed(0)
    ref = nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
    fast = copy.deepcopy(ref)
    swap_layers(fast, inference=False)
    assert type(fast) is VolumeInstanceNorm3d and fast.state_dict().keys() == ref.state_dict().keys()
    x = (torch.randn(3, 6, 4, 10, 12) * 3 + 2).requires_grad_(True)  # several volumes: each its own statistics
    xs = _as(layout, x.detach()).requires_grad_(True)
    grad = torch.randn(3, 6, 4, 10, 12)
    (ref(x) * grad).sum().backward()
    out = fast(xs)
    (out * grad).sum().backward()
    assert out.is_contiguous(
        memory_format=torch.channels_last_3d if layout == "channels-last" else torch.contiguous_format
    )
    assert torch.allclose(out, ref(x), atol=1e-5)
    assert torch.allclose(xs.grad, x.grad, atol=1e-4)
    assert torch.allclose(fast.weight.grad, ref.weight.grad, atol=1e-3) and torch.allclose(
        fast.bias.grad, ref.bias.grad
    )


@pytest.mark.parametrize("layout", ["channels-last", "contiguous"])
def test_depth_pooling_computes_torch_s_average_pooling(layout: str) -> None:
    torch.manual_seed(0)
    pool = nn.AvgPool3d((1, 1, 4), stride=(1, 1, 4))
    fast = swap_layers(nn.Sequential(copy.deepcopy(pool)), inference=True)[0]
    assert type(fast) is DepthAvgPool3d
    x = torch.randn(2, 3, 2, 5, 14, requires_grad=True)  # 14 depth samples: the last 2 left out, as torch does
    xs = _as(layout, x.detach()).requires_grad_(True)
    grad = torch.randn(2, 3, 2, 5, 3)
    (pool(x) * grad).sum().backward()
    out = fast(xs)
    (out * grad).sum().backward()
    assert out.shape == (2, 3, 2, 5, 3) and torch.allclose(out, pool(x), atol=1e-6)
    assert torch.allclose(xs.grad, x.grad, atol=1e-6)
    with torch.inference_mode():  # the oneDNN kernel of inference, also in bf16 (torch's pooling has none)
        assert torch.allclose(fast(_as(layout, x.detach())), pool(x.detach()), atol=1e-6)
        low = fast(_as(layout, x.detach()).bfloat16())
        assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), pool(x.detach()), atol=3e-2)
    other = swap_layers(nn.Sequential(nn.AvgPool3d(2)), inference=False)[0]  # not along depth only: torch's own
    assert torch.allclose(other(x), F.avg_pool3d(x, 2))


def test_lachinov_fast_training_follows_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float32, channels-last with the fast layers: the first loss and gradient of the plain path."""
    monkeypatch.setattr(EnfaceModule, "log", lambda *a, **k: None)
    batch = _batches(4)[0]
    grads = {}
    for fast in (False, True):
        torch.manual_seed(0)
        module = EnfaceModule("lachinov", width=0.25, fast=fast)
        if fast:
            assert any(isinstance(m, VolumeInstanceNorm3d) for m in module.model.modules())
            module.fastpath.layout_choice = "skipped: this test"  # channels-last, as the network is
        loss = module.training_step(batch, 0)
        loss.backward()
        grads[fast] = (loss.item(), torch.cat([p.grad.flatten() for p in module.parameters()]))
    assert abs(grads[True][0] - grads[False][0]) < 1e-5
    assert (grads[True][1] - grads[False][1]).norm() < 1e-3 * grads[False][1].norm()


# --------------------------------------------------------------------------- layout, hardware


def test_channels_last_keeps_names_shapes_and_values() -> None:
    model = create_model("fpn", width=0.125)
    before = copy.deepcopy(model.state_dict())
    to_channels_last(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k].shape == before[k].shape and torch.equal(after[k], before[k]) for k in before)
    conv = model.encoder[1].unit1.body[0].weight  # (a one-channel input is both layouts at once)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert all(t.is_contiguous() for t in contiguous_state(after).values())
    assert channels_last_input(torch.randn(1, 2, 3, 4, 5)).is_contiguous(memory_format=torch.channels_last_3d)
    one_channel = channels_last_input(torch.randn(1, 1, 3, 4, 5))
    assert one_channel.stride(1) == 1  # so that convolutions return channels-last outputs


def test_training_precision_is_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert fast_precision("cpu") == "32-true"
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert fast_precision("cpu") == "bf16-mixed"
    cfg = load_config(None, "train", {"dataset": "d", "fast": False})
    assert resolved_precision(cfg) == "32-true"
    assert resolved_precision(load_config(None, "train", {"dataset": "d", "precision": "16-mixed"})) == "16-mixed"


# --------------------------------------------------------------------------- training


def _steps(module: EnfaceModule, batches: list[dict], bf16: bool = False) -> tuple[list[float], torch.Tensor]:
    """Losses of SGD steps on ``batches``, and the flattened gradient of the first step."""
    opt = module.configure_optimizers()
    losses, first_grad = [], None
    for batch in batches:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, 0)
        loss.backward()
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten() for p in module.parameters()])
        opt.step()
        losses.append(float(loss))
    return losses, first_grad


def test_bf16_needs_crops_of_12_b_scans_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thinner crops train in float32: oneDNN's bf16 weight gradients of the deepest (3, 1, 1)
    convolutions came out non-finite there (1 run in 4-8 at 4-8 B-scans, torch 2.13)."""
    monkeypatch.setattr(fastpath, "fast_precision", lambda accelerator: "bf16-mixed")
    fp = FastPath(True)
    assert fp.precision("auto", "cpu", crop_bscans=32) == fp.precision("auto", "cpu", crop_bscans=12) == "bf16-mixed"
    assert fp.precision("auto", "cpu", crop_bscans=8) == "32-true"
    assert fp.precision("bf16-mixed", "cpu", crop_bscans=8) == "bf16-mixed"  # what is asked for is kept
    assert fp.precision("auto", "gpu", crop_bscans=8) == "bf16-mixed"
    assert FastPath(False).precision("auto", "cpu", crop_bscans=32) == "32-true"


def _batches(bscans: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [
        {
            "volume": torch.randn(2, 1, bscans, 32, 64, generator=g),
            "target": (torch.rand(2, 1, bscans, 32, generator=g) > 0.6).float(),
        }
        for _ in range(2)
    ]


def test_fast_training_steps_follow_the_plain_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EnfaceModule, "log", lambda *a, **k: None)  # no trainer attached
    kw = dict(model_name="fpn", width=0.25, lr=0.01)

    def steps(fast: bool, bf16: bool, batches: list[dict]) -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        return _steps(EnfaceModule(**kw, fast=fast), batches, bf16)

    # float32 on 4-B-scan crops. Training this tiny net is chaotic: weights perturbed by 1e-6
    # (relative) give losses 4 % apart by the third step. So: the first gradient, and the
    # first two steps' losses. (On 16 B-scans the first gradient is already 0.3 % off float64's
    # on the plain path and 3.6 % channels-last: cancelling sums; measured in the issue 17 note.)
    thin = _batches(4)
    (plain, g_plain), (fast, g_fast) = steps(False, False, thin), steps(True, False, thin)
    assert abs(fast[0] - plain[0]) < 1e-6  # same weights, same batch: the same loss
    assert (g_fast - g_plain).norm() < 1e-3 * g_plain.norm()  # float32: summation order only
    assert np.allclose(fast[:2], plain[:2], rtol=2e-3), (fast, plain)  # the optimizer state carries over
    # bf16 on 16-B-scan crops (thinner ones train in float32 on a CPU: FastPath.precision):
    # the losses, not the gradient. On random volumes with random targets the gradient of the
    # early layers is a small remainder of large cancelling sums, and bf16 (8-bit mantissa)
    # leaves mostly noise there (measured: cosine 0.26-0.36 to float32's, with either path).
    # What bf16 does to learning is measured on the demo study.
    thick = _batches(16)
    (plain16, _), (fast_bf16, g_bf16) = steps(False, False, thick), steps(True, True, thick)
    assert g_bf16.isfinite().all()
    assert abs(fast_bf16[0] - plain16[0]) < 2e-2 * plain16[0], (fast_bf16, plain16)


@pytest.mark.parametrize(
    ("model", "width", "channels", "channels_last"),
    [("fpn", 0.25, 4, False), ("fpn", 0.5, 8, False), ("fpn", 1.0, 16, True), ("lachinov", 0.25, 8, False)],
)
def test_layout_rule_follows_the_first_convolution(model: str, width: float, channels: int, channels_last: bool):
    kwargs = {"depth": 64} if model in ("ipnv2", "resensnet") else {}
    assert channels_last_suits(create_model(model, width=width, **kwargs)) == (channels_last, channels)


@pytest.mark.parametrize(("width", "channels_last"), [(0.25, False), (1.0, True)])
def test_training_takes_the_layout_of_the_rule(monkeypatch: pytest.MonkeyPatch, width: float, channels_last: bool):
    monkeypatch.setattr(EnfaceModule, "log", lambda *a, **k: None)
    g = torch.Generator().manual_seed(3)
    batch = {
        "volume": torch.randn(2, 1, 4, 32, 64, generator=g),
        "target": (torch.rand(2, 1, 4, 32, generator=g) > 0.6).float(),
    }
    losses = {}
    for fast in (True, False):
        torch.manual_seed(0)
        module = EnfaceModule("fpn", width=width, fast=fast)
        losses[fast] = float(module.training_step(batch, 0))
    torch.manual_seed(0)
    module = EnfaceModule("fpn", width=width, fast=True)
    module.training_step(batch, 0)
    conv = module.model.encoder[1].unit1.body[0].weight
    assert module.fastpath.layout == ("channels-last" if channels_last else "contiguous")
    assert module.fastpath.layout_choice == f"rule: {int(16 * width)} channels"
    assert conv.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    assert abs(losses[True] - losses[False]) < 1e-5


def test_a_kept_layout_overrides_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EnfaceModule, "log", lambda *a, **k: None)
    batch = {"volume": torch.randn(2, 1, 4, 32, 64), "target": torch.zeros(2, 1, 4, 32)}
    module = EnfaceModule("fpn", width=0.25, fast=True)  # the rule says contiguous
    module.fastpath.keep_layout("channels-last")
    module.training_step(batch, 0)
    assert module.fastpath.layout == "channels-last"
    assert module.fastpath.layout_choice == "kept: resumed run (channels-last)"
    assert module.model.encoder[1].unit1.body[0].weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_checkpoints_of_either_path_load_in_the_other(phantom_dataset: Path, tmp_path: Path) -> None:
    common = {
        "dataset": str(phantom_dataset),
        "target": "ga",
        "width": 0.125,
        "crop": (8, 32),
        "batch_size": 2,
        "num_workers": 0,
        "accelerator": "cpu",
        "top_k": 1,
        "epochs": 1,
    }
    runs = {}
    for fast in (True, False):
        cfg = load_config(None, "train", {**common, "fast": fast, "runs_dir": str(tmp_path / f"fast-{fast}")})
        runs[fast] = fit(cfg, progress=False).run_dir
    plain_keys = {k: v.shape for k, v in create_model("fpn", width=0.125).state_dict().items()}
    for fast, run in runs.items():
        ckpt = read_checkpoint(topk_checkpoints(run)[0])
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
        assert {k: v.shape for k, v in state.items()} == plain_keys
        assert all(v.is_contiguous() for v in state.values())
        assert ckpt["enface"]["precision"] == "32-true"  # 8 B-scan crops: float32 even on the fast path
        assert ckpt["enface"]["layout"] in (("channels-last", "contiguous") if fast else ("contiguous",))
        model, _ = load_model(topk_checkpoints(run)[0])  # the plain network
        assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    x = torch.randn(1, 1, 8, 32, 64)
    for run in runs.values():  # each run's checkpoint, on both inference paths
        out = {fast: Ensemble.from_run(run, 1, fast=fast, precision="32").run(x).mean for fast in (True, False)}
        assert np.abs(out[True] - out[False]).max() < 1e-4


def test_ssim_is_computed_in_float32_under_bf16_autocast() -> None:
    from enface.losses import NegativeSSIMLoss
    from enface.metrics import ssim

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 24, 24, generator=g), torch.rand(2, 1, 24, 24, generator=g)
    logits = torch.randn(2, 1, 24, 24, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = (ssim(a, b), NegativeSSIMLoss()(logits, b))
    assert torch.allclose(in_bf16[0], ssim(a, b), atol=1e-6)
    assert torch.allclose(in_bf16[1], NegativeSSIMLoss()(logits, b), atol=1e-6)
