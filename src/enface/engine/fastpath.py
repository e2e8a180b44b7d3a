"""The fast path: the same networks and weights, run the way the hardware runs them fastest.

The *plain path* is eager PyTorch in float32 on contiguous ``(N, C, H, W, D)`` tensors, the
network exactly as built. The *fast path*, which every command uses unless told otherwise
(``fast: false`` in a run config, ``--no-fast`` on the command line, ``fast=False`` in the
library), changes how the numbers are computed, never which numbers are learned:

* **channels-last memory layout** (``channels_last_3d`` for volumes, ``channels_last`` for
  en-face maps) of weights and inputs, in training and inference: oneDNN's convolutions run
  about twice as fast on it as on the contiguous layout on CPUs, and GPUs' tensor cores
  want it too. The weights' names and shapes do not change, and checkpoints are written
  contiguous (:func:`contiguous_state`), so a checkpoint of either path loads in the other;
* **bf16 mixed precision for training** (autocast; weights, optimiser and losses stay
  float32) where the hardware computes bf16 natively: CPUs with AVX512-BF16 or AMX, GPUs
  that support bf16 (:func:`native_bf16`). Elsewhere (e.g. AVX2-only CPUs) training stays
  float32;
* **inference** (validation, ``evaluate``, ``predict``) in float32 with BatchNorm folded into
  the convolution before it (on a copy: the trained network and its checkpoints are never
  changed), oneDNN convolutions even where PyTorch would fall back to its generic kernel
  (small batch-1 volumes), under ``torch.inference_mode``, and for the networks whose
  encoder is local along the A-scans (FPN, ReSensNet, IPN, IPN-V2) the encoder run over
  slabs of A-scans with exact halos (:mod:`enface.engine.streaming`), which bounds peak
  memory;
* **glibc's allocator** told to reuse freed tensor memory (:func:`tune_allocator`) instead
  of having the kernel map and zero-fill it again for every large tensor.

Probabilities of the fast inference path equal the plain path's to ~1e-6 (float32, only the
order of summation differs); tests compare both paths for every registered model.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "channels_last_input",
    "channels_last_is_faster",
    "contiguous_state",
    "fast_precision",
    "fold_batchnorm",
    "inference_network",
    "native_bf16",
    "release_free_memory",
    "to_channels_last",
    "to_contiguous",
    "tune_allocator",
    "use_onednn",
]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --------------------------------------------------------------------------- hardware


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _cpu_native_bf16() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = _cpu_flags()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 autocast is a speed-up there).

    CPU: x86-64 with the ``avx512_bf16`` or ``amx_bf16`` flag and a oneDNN build of torch
    (AVX2-only CPUs emulate bf16, which is slower than float32). CUDA: the GPU supports bf16
    (Ampere and newer). Anything else: False.
    """
    kind = torch.device(device).type if not isinstance(device, str) or device not in ("gpu", "cuda") else "cuda"
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return _cpu_native_bf16()
    return False


def fast_precision(accelerator: str) -> str:
    """The Lightning precision of the fast path on ``accelerator``: ``"bf16-mixed"`` where
    bf16 is native (:func:`native_bf16`), else ``"32-true"``.

    ``accelerator`` is Lightning's name (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"auto"``);
    ``"auto"`` means the GPU when one is available, else the CPU.
    """
    name = str(accelerator).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("gpu", "cuda", "cpu"):
        return "32-true"
    return "bf16-mixed" if native_bf16(name) else "32-true"


# --------------------------------------------------------------------------- memory layout


def _layout(t: torch.Tensor) -> torch.memory_format:
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(t.dim(), torch.contiguous_format)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 5-D weight/buffer of ``module`` channels-last-3d and every 4-D one
    channels-last, in place (``Module.to(memory_format=...)`` refuses networks that mix 3D
    and 2D layers). Names, shapes and values are unchanged. Returns ``module``.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            fmt = _layout(tensor)
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


def _pass_seconds(net: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward + backward pass of ``net`` on ``x``."""
    import time

    net.zero_grad(set_to_none=True)  # gradients take the layout of the weights
    start = time.perf_counter()
    net(x).float().square().mean().backward()
    return time.perf_counter() - start


def channels_last_is_faster(net: nn.Module, volume: torch.Tensor, passes: int = 3) -> tuple[bool, float, float]:
    """Whether a training step of ``net`` on batches like ``volume`` runs faster channels-last.

    Channels-last makes oneDNN's 3D convolutions several times faster, but PyTorch's CPU
    BatchNorm is 1.5-5x slower on channels-last tensors with few channels, so narrow networks
    (e.g. FPN at width 0.25 on 2 CPU cores, bf16: 0.58 s contiguous vs 0.87 s channels-last
    per step) are faster contiguous while wide ones are not (width 1: 3.1 s vs 1.4 s). Which
    wins depends on the CPU, the precision and the shapes, so it is measured on two copies
    of ``net``, one per layout, under the caller's autocast setting: ``passes`` forward +
    backward passes each, alternating, the first of each discarded (warm-up) and the fastest
    of the others kept. ``net`` itself (weights, BatchNorm statistics, gradients) is not
    touched. The trial runs on the batch's first sample, half its B-scans (so that it needs
    less memory than a training step; which layout wins does not change with the batch size
    or the crop on the machines measured).

    Args:
        net: the network in training mode.
        volume: a batch ``(N, C, H, W, D)`` of the training shape (only its values are read).
        passes: passes per layout (at least 2).

    Returns:
        (channels-last is faster, seconds channels-last, seconds contiguous).
    """
    sample = volume[:1, :, : max(4, volume.shape[2] // 2)]  # a smaller trial keeps the peak memory of training
    trials = {True: to_channels_last(copy.deepcopy(net).train()), False: to_contiguous(copy.deepcopy(net).train())}
    inputs = {True: channels_last_input(sample), False: sample.contiguous()}
    seconds: dict[bool, list[float]] = {True: [], False: []}
    with torch.enable_grad():
        for _ in range(max(2, passes)):
            for layout, trial in trials.items():
                seconds[layout].append(_pass_seconds(trial, inputs[layout]))
    t_last, t_contiguous = min(seconds[True][1:]), min(seconds[False][1:])
    del trials, inputs
    release_free_memory()
    return t_last <= t_contiguous, t_last, t_contiguous


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(N, C, H, W, D)`` or ``(N, C, H, W)``) in the channels-last layout.

    With one channel both layouts are the same memory, but a convolution only returns a
    channels-last output when the input's strides say so (channel stride 1); such an input
    is copied once into explicitly channels-last strides.
    """
    fmt = _layout(x)
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


# --------------------------------------------------------------------------- inference


def _folded(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` (with a bias) that computes ``bn(conv(x))`` of an eval-mode BN."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    weight = conv.weight.detach().double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    out = copy.deepcopy(conv)
    out.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    out.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return out


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, _CONV)
        and isinstance(bn, _BATCHNORM)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.affine
        and conv.out_channels == bn.num_features
    )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm that directly follows a
    convolution in an ``nn.Sequential`` folded into that convolution (computed in float64).

    The copy computes what ``model.eval()`` computes, to float32 rounding. ``model`` itself
    is not changed (its checkpoints keep their BatchNorm layers).
    """
    model = copy.deepcopy(model).eval()
    n = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if _foldable(seq[i], seq[i + 1]):
                seq[i] = _folded(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
                n += 1
    log.debug("folded %d BatchNorm layers", n)
    return model


def _onednn_conv(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.device.type == "cpu" and not torch.is_grad_enabled() and x.dtype == weight.dtype:
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return type(conv).__mro__[1]._conv_forward(conv, x, weight, bias)  # the nn.ConvNd's own


class _OneDNNConv2d(nn.Conv2d):
    """``nn.Conv2d`` that always runs oneDNN's kernel for CPU inference (see :func:`use_onednn`)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _onednn_conv(self, input, weight, bias)


class _OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that always runs oneDNN's kernel for CPU inference (see :func:`use_onednn`)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _onednn_conv(self, input, weight, bias)


def use_onednn(model: nn.Module) -> nn.Module:
    """Make the convolutions of an inference network always use oneDNN on the CPU, in place.

    For a batch of one small volume (fewer than ~20k values in its first four dimensions,
    e.g. 4 channels x 32 x 128) PyTorch picks its generic im2col convolution, which is
    10-15x slower than oneDNN's there (and adds a copy of the bias). Networks of small width
    validated on small volumes spent most of their validation there. Only zero-padded
    convolutions with numeric padding are switched; their weights and outputs are unchanged
    up to float rounding. Without oneDNN (``torch.backends.mkldnn``), nothing changes.
    """
    if not torch.backends.mkldnn.is_available():
        return model
    for layer in model.modules():
        if (
            type(layer) in (nn.Conv2d, nn.Conv3d)
            and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)
        ):
            layer.__class__ = _OneDNNConv2d if type(layer) is nn.Conv2d else _OneDNNConv3d
    return model


class _SingleVolumeInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that normalises a batch of one volume as a batch norm with batch
    statistics, which is the same computation but runs on channels-last tensors as they
    are (instance norm first copies its input to the contiguous layout)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 5 or input.shape[0] != 1 or self.track_running_stats:
            return super().forward(input)
        return torch.nn.functional.batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)


def inference_network(model: nn.Module, fast: bool = True) -> nn.Module:
    """The network to run inference with.

    Plain: ``model`` itself in eval mode. Fast: an eval-mode copy with BatchNorm folded
    (:func:`fold_batchnorm`), weights channels-last, oneDNN convolutions
    (:func:`use_onednn`), instance norms that keep the channels-last layout, and
    ``requires_grad`` off.
    """
    if not fast:
        return model.eval()
    net = use_onednn(to_channels_last(fold_batchnorm(model)))
    for layer in net.modules():
        if type(layer) is nn.InstanceNorm3d:
            layer.__class__ = _SingleVolumeInstanceNorm3d
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# --------------------------------------------------------------------------- allocator


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_ALLOCATOR_SETTINGS: dict[str, tuple[tuple[int, int], ...]] = {
    "training": ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 256 << 20)),
    "inference": ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 128 << 20)),
}
_allocator_state: list[str] = []


def _libc() -> Any:
    """glibc, or None where there is none (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_allocator(purpose: str = "inference") -> bool:
    """Make glibc's allocator reuse freed tensor memory instead of returning it to the kernel.

    By default glibc maps every large allocation (above a threshold that adapts up to 32 MiB)
    fresh from the kernel, which zero-fills it page by page, and unmaps it when freed; a
    training step allocates hundreds of such tensors. That kernel work was a quarter of the
    CPU time of ``enface demo`` and of a training step of FPN at width 1.

    * ``"training"``: no mapping at all (``M_MMAP_MAX`` 0): every tensor comes from the heap
      and is reused; free memory at the top of the heap is returned above 256 MiB. Training
      steps 1.3-1.6x faster; peak memory grows by about a third (still below the plain
      path's, which keeps more activations in float32).
    * ``"inference"``: tensors up to 32 MiB (the slabs of :mod:`enface.engine.streaming`) come
      from the heap; the heap is trimmed above 128 MiB free.

    Process-wide, and lasting: once ``"training"`` is set, ``"inference"`` changes nothing.
    Returns whether the setting applies (False without glibc, e.g. on macOS or Windows).
    """
    if purpose not in _ALLOCATOR_SETTINGS:
        raise ValueError(f"purpose must be one of {sorted(_ALLOCATOR_SETTINGS)}, got {purpose!r}")
    if "training" in _allocator_state or purpose in _allocator_state:
        return True
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    ok = all(mallopt(param, value) == 1 for param, value in _ALLOCATOR_SETTINGS[purpose])
    if ok:
        _allocator_state.append(purpose)
    log.debug("glibc allocator tuned for %s: %s", purpose, ok)
    return ok


def release_free_memory() -> bool:
    """Return the allocator's free memory to the kernel (glibc ``malloc_trim``), e.g. after
    a one-off computation whose memory the next ones would not reuse as it is. Returns
    whether glibc did so (False without glibc)."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return malloc_trim is not None and bool(malloc_trim(0))
