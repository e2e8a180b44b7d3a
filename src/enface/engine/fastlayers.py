"""Torch layers the fast path swaps for equivalents that keep the channels-last layout and bf16.

Each class here is a subclass of the torch layer it replaces, with the same parameters,
buffers and ``state_dict`` keys, and computes the same function up to float rounding; only
the kernels differ. :func:`swap_layers` changes the class of a network's layers in place
(on the fast path's own networks: the training network, the inference copy), so checkpoints
are written and read as before.

* **convolutions** (inference only): oneDNN's kernel even where PyTorch would pick its
  generic one (batch-1 volumes of fewer than ~20k values in their first four dimensions,
  10-15x slower there);
* **instance norms** of 3D volumes: computed as a batch norm of each volume on its own
  (batch statistics over one volume are its instance statistics). ``nn.InstanceNorm3d``
  first copies a channels-last input to the contiguous layout and its gradient back, for
  every norm; the batch norm kernels run on either layout as it is;
* **average pooling along depth** only (kernel = stride = ``(1, 1, r)``, no padding):
  PyTorch's CPU ``avg_pool3d`` has no bf16 kernel and copies channels-last inputs. Here
  the mean of each window of ``r`` depth samples; at CPU inference a depthwise oneDNN
  convolution with weights ``1 / r`` (one read of the input).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthAvgPool3d", "VolumeInstanceNorm3d", "onednn_inference", "swap_layers"]


@functools.cache
def _onednn_bf16() -> bool:
    """Whether this CPU's oneDNN runs bf16 convolutions (it refuses on AVX2-only CPUs)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def onednn_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's convolution can run ``x`` with ``weight`` directly: CPU inference
    (no gradients) of matching dtypes, in a torch built with oneDNN, bf16 only where this
    CPU's oneDNN runs it (elsewhere torch's own kernels compute bf16, slowly)."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and x.dtype == weight.dtype
        and torch.backends.mkldnn.is_available()
        and (x.dtype != torch.bfloat16 or _onednn_bf16())
    )


def _onednn_conv(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if onednn_inference(x, weight):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    parent: Any = type(conv).__mro__[1]  # the nn.ConvNd's own
    return parent._conv_forward(conv, x, weight, bias)


class OneDNNConv2d(nn.Conv2d):
    """``nn.Conv2d`` that always runs oneDNN's kernel for CPU inference."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _onednn_conv(self, input, weight, bias)


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that always runs oneDNN's kernel for CPU inference."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _onednn_conv(self, input, weight, bias)


class VolumeInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` computed as a batch norm (batch statistics) of each volume.

    The same statistics (mean and biased variance over ``(H, W, D)`` per volume and channel)
    and affine map, on the input's own layout; a batch of several volumes is normalised one
    volume at a time and joined. Layers that track running statistics keep torch's forward.

    Shapes:
        ``(N, C, H, W, D)`` -> ``(N, C, H, W, D)``, in the input's layout.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 5 or self.track_running_stats:
            return super().forward(input)
        if input.shape[0] == 1:
            return self._one(input)
        return torch.cat([self._one(v) for v in input.split(1)])

    def _one(self, volume: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(volume, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _depth_window(pool: nn.AvgPool3d) -> int | None:
    """``r`` when ``pool`` averages windows of ``r`` depth samples only (kernel = stride =
    ``(1, 1, r)``, no padding, floor mode, the plain mean); else ``None``."""

    def triple(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)

    kernel, stride = triple(pool.kernel_size), triple(pool.stride or pool.kernel_size)
    plain = not pool.ceil_mode and pool.divisor_override is None and all(p == 0 for p in triple(pool.padding))
    return int(kernel[2]) if plain and kernel[:2] == (1, 1) and stride == kernel else None


class DepthAvgPool3d(nn.AvgPool3d):
    """``nn.AvgPool3d`` that, when it averages windows of ``r`` depth samples only, does so
    in any dtype and layout: the mean over each window (a depthwise oneDNN convolution with
    weights ``1 / r`` at CPU inference). Other poolings keep torch's forward.

    Shapes:
        ``(N, C, H, W, D)`` -> ``(N, C, H, W, D // r)``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        r = _depth_window(self)
        if r is None or input.dim() != 5 or input.shape[-1] < r:
            return super().forward(input)
        c, d = input.shape[1], input.shape[-1] // r
        weight = torch.full((c, 1, 1, 1, r), 1.0 / r, dtype=input.dtype, device=input.device)
        if onednn_inference(input, weight):
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
            return torch.ops.aten.mkldnn_convolution(input, weight, None, (0, 0, 0), (1, 1, r), (1, 1, 1), c)
        return input[..., : d * r].unflatten(-1, (d, r)).mean(-1)


def swap_layers(model: nn.Module, inference: bool) -> nn.Module:
    """Swap ``model``'s torch layers for the fast equivalents of this module, in place.

    Instance norms of volumes and poolings along depth always; convolutions (zero-padded,
    numeric padding) only for ``inference`` and only where torch has oneDNN. Returns ``model``.
    """
    swaps: dict[type, type] = {nn.InstanceNorm3d: VolumeInstanceNorm3d, nn.AvgPool3d: DepthAvgPool3d}
    onednn = inference and torch.backends.mkldnn.is_available()
    for layer in model.modules():
        kind = type(layer)
        if kind in swaps:
            layer.__class__ = swaps[kind]
        elif onednn and kind in (nn.Conv2d, nn.Conv3d) and layer.padding_mode == "zeros":
            if not isinstance(layer.padding, str):
                layer.__class__ = OneDNNConv2d if kind is nn.Conv2d else OneDNNConv3d
    return model
