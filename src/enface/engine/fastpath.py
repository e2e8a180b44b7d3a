"""The fast path: the same networks and weights, run the way the hardware runs them fastest.

The *plain path* is eager PyTorch in float32 on contiguous ``(N, C, H, W, D)`` tensors, the
network exactly as built. The *fast path*, which every command uses unless told otherwise
(``fast: false`` in a run config, ``--no-fast`` on the command line, ``fast=False`` in the
library; the default is :data:`enface.config.FAST_DEFAULT`), changes how the numbers are
computed, never which numbers are learned. One object, :class:`FastPath`, owns every
difference between the two, so that the engine asks it and never decides itself:

* **precision**: bf16 mixed precision for training (autocast; weights, optimiser and losses
  stay float32) where the hardware computes bf16 natively: CPUs with AVX512-BF16 or AMX,
  GPUs that support bf16 (:func:`native_bf16`). Elsewhere (e.g. AVX2-only CPUs) float32;
* **the training layout**: channels-last weights and inputs (:mod:`enface.engine.layout`),
  which oneDNN's convolutions run about twice as fast; on a CPU, narrow networks train
  contiguous instead, by a rule on their channels (:func:`channels_last_suits`), never by a
  timing that the machine's load could change. The layout is recorded in every checkpoint
  and kept when a run resumes. Checkpoints are written contiguous, so a checkpoint of
  either path loads in the other;
* **the inference copy** (validation, ``evaluate``, ``predict``): float32, BatchNorm folded
  into the convolution before it (on a copy: the trained network and its checkpoints are
  never changed), oneDNN convolutions even where PyTorch would fall back to its generic
  kernel (small batch-1 volumes), channels-last, and the parts a model declares local along
  the A-scans run over slabs of A-scans with exact halos (:mod:`enface.engine.streaming`),
  which bounds peak memory;
* **process settings**: glibc's allocator told to reuse freed tensor memory
  (:func:`tune_allocator`) instead of having the kernel map and zero-fill it again for every
  large tensor; pinned loader memory and cuDNN's autotuner on GPUs.

Probabilities of the fast inference path equal the plain path's to float32 rounding (only
the order of summation differs): tests compare both paths for every registered model and
require them to agree to 5e-6 (measured: at most 1.2e-6), or 1e-4 for Lachinov's network,
whose instance norms the fast path computes as batch statistics (measured: at most 2e-5).
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import platform
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from enface.config import FAST_DEFAULT
from enface.engine.layout import channels_last_input, contiguous_state, to_channels_last, to_contiguous
from enface.engine.streaming import DEFAULT_SLAB_MB, streamed_forward

__all__ = [
    "FastPath",
    "channels_last_suits",
    "fast_precision",
    "fold_batchnorm",
    "inference_network",
    "native_bf16",
    "release_free_memory",
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


# --------------------------------------------------------------------------- the training layout


CHANNELS_LAST_MIN_CHANNELS = 16
"""Output channels of a network's first 3D convolution from which it trains channels-last on a CPU."""


def channels_last_suits(net: nn.Module) -> tuple[bool, int]:
    """Whether ``net`` trains faster channels-last on a CPU, by a rule: ``(verdict, channels)``.

    Channels-last makes oneDNN's 3D convolutions several times faster, but PyTorch's CPU
    BatchNorm is 1.5-5x slower on channels-last tensors with few channels, so narrow networks
    train faster contiguous and wide ones channels-last (FPN, 2 CPU cores, bf16, measured
    alone: width 0.25, 4 channels at the first convolution: 0.58 s a step contiguous vs
    0.87 s channels-last; width 1, 16 channels: 3.1 s vs 1.4 s). The verdict is a rule on
    the channels of the network's first 3D convolution (at least
    :data:`CHANNELS_LAST_MIN_CHANNELS`), not a timing: a timing taken while the machine is
    busy picked either layout for the same run, and with it another order of floating-point
    sums, i.e. another training trajectory. The rule makes the numbers of a run a function
    of its config and the hardware only.
    """
    first = next((m for m in net.modules() if isinstance(m, nn.Conv3d)), None)
    channels = int(first.out_channels) if first is not None else 0
    return channels >= CHANNELS_LAST_MIN_CHANNELS, channels


# --------------------------------------------------------------------------- inference


def _folded(conv: _ConvNd, bn: _BatchNorm) -> nn.Module:
    """A copy of ``conv`` (with a bias) that computes ``bn(conv(x))`` of an eval-mode BN
    that tracks running statistics (:func:`_foldable`)."""
    mean, var = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)
    scale = bn.weight.detach().double() / torch.sqrt(var.detach().double() + bn.eps)
    weight = conv.weight.detach().double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - mean.detach().double()) * scale + bn.bias.detach().double()
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
                seq[i] = _folded(cast(_ConvNd, seq[i]), cast(_BatchNorm, seq[i + 1]))
                seq[i + 1] = nn.Identity()
                n += 1
    log.debug("folded %d BatchNorm layers", n)
    return model


def _onednn_conv(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.device.type == "cpu" and not torch.is_grad_enabled() and x.dtype == weight.dtype:
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    parent: Any = type(conv).__mro__[1]  # the nn.ConvNd's own
    return parent._conv_forward(conv, x, weight, bias)


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


def inference_network(model: nn.Module, fast: bool = FAST_DEFAULT) -> nn.Module:
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


# --------------------------------------------------------------------------- the one object

CHANNELS_LAST, CONTIGUOUS = "channels-last", "contiguous"

MIN_BF16_CPU_BSCANS = 12
"""Fewest B-scans per training crop that train in bf16 on a CPU (see :meth:`FastPath.precision`)."""


class FastPath:
    """Every difference between the fast path and the plain path of one training or inference.

    The engine asks this object and never decides itself: the Lightning module, ``fit``,
    ensembles and the commands built on them hold one. ``FastPath()`` is the fast path (the
    default, :data:`~enface.config.FAST_DEFAULT`), ``FastPath(False)`` the plain path.

    Args:
        enabled: the fast path (else the plain path: eager float32, contiguous layout, the
            network's own forward everywhere).
        slab_mb: memory of one slab activation of streamed inference (fast path), in MiB.

    Attributes:
        layout: the training layout, ``"channels-last"`` or ``"contiguous"``.
        layout_choice: how the layout was chosen: ``"pending"`` (before the first batch),
            ``"rule: <n> channels"`` (:func:`channels_last_suits`), ``"kept: ..."`` (a
            resumed run's), ``"skipped: ..."`` (why no rule), or ``"none"`` (plain path).
    """

    def __init__(self, enabled: bool = FAST_DEFAULT, slab_mb: float = DEFAULT_SLAB_MB) -> None:
        self.enabled = bool(enabled)
        self.slab_mb = float(slab_mb)
        self.layout = CHANNELS_LAST if self.enabled else CONTIGUOUS
        self.layout_choice = "pending" if self.enabled else "none"
        self._validation_net: nn.Module | None = None

    def __repr__(self) -> str:
        return f"FastPath(enabled={self.enabled}, layout={self.layout!r})"

    # ---- process-wide and trainer settings

    def precision(self, requested: str, accelerator: str, crop_bscans: int | None = None) -> str:
        """Lightning precision: ``requested``, or for ``"auto"`` ``"bf16-mixed"`` where bf16
        is native on ``accelerator`` (fast path) and ``"32-true"`` otherwise.

        On a CPU, training crops of fewer than :data:`MIN_BF16_CPU_BSCANS` B-scans train in
        float32: there the deepest encoder levels hold 1-2 B-scans, and oneDNN's bf16 weight
        gradient of their (3, 1, 1) convolutions came out non-finite in 1 run in 4-8 (torch
        2.13, AVX512-BF16; never from 12 B-scans up, 80 runs).
        """
        if requested != "auto":
            return requested
        chosen = fast_precision(accelerator) if self.enabled else "32-true"
        on_cpu = str(accelerator).lower() == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if chosen == "bf16-mixed" and on_cpu and crop_bscans is not None and crop_bscans < MIN_BF16_CPU_BSCANS:
            log.info("training in float32: crops of %d B-scans are too thin for bf16 on the CPU", crop_bscans)
            return "32-true"
        return chosen

    def tune_process(self, purpose: str, device: str | torch.device) -> None:
        """On a CPU, the allocator setting for ``purpose`` (``"training"``/``"inference"``;
        process-wide, see :func:`tune_allocator`). Nothing on the plain path or a GPU."""
        if self.enabled and torch.device(device).type == "cpu":
            tune_allocator(purpose)

    def pin_memory(self, on_gpu: bool) -> bool:
        """Whether data loaders pin their memory (fast path on a GPU)."""
        return self.enabled and on_gpu

    def cudnn_benchmark(self, on_gpu: bool, deterministic: bool) -> bool | None:
        """Lightning's ``benchmark`` (cuDNN autotuner: training crops all have one size);
        ``None`` leaves Lightning's default."""
        return True if self.enabled and on_gpu and not deterministic else None

    # ---- training

    def training_network(self, net: nn.Module, rule: bool = True) -> nn.Module:
        """``net`` in the training layout, in place; ``rule``: let the first CPU batch
        choose the layout by :func:`channels_last_suits` (off for compiled networks)."""
        if self.enabled:
            to_channels_last(net)
            if not rule:
                self.layout_choice = "skipped: compiled network"
        return net

    def keep_layout(self, layout: str | None) -> None:
        """Train in ``layout`` (a resumed run's, from its checkpoint) instead of choosing one;
        None (a checkpoint of an older enface) leaves the choice to the first batch."""
        if self.enabled and layout in (CHANNELS_LAST, CONTIGUOUS) and self.layout_choice == "pending":
            self.layout = str(layout)
            self.layout_choice = "kept: resumed run"

    def training_input(self, volume: torch.Tensor) -> torch.Tensor:
        """A training batch in the network's layout."""
        return channels_last_input(volume) if self.layout == CHANNELS_LAST else volume

    def settle_layout(self, net: nn.Module, volume: torch.Tensor, world_size: int = 1) -> None:
        """Before the first training step on a CPU: put ``net`` in the layout that
        :func:`channels_last_suits` gives it (or the one :meth:`keep_layout` kept). Several
        training processes keep channels-last, so that all ranks use one layout."""
        if self.layout_choice == "kept: resumed run":
            (to_channels_last if self.layout == CHANNELS_LAST else to_contiguous)(net)
            self.layout_choice = f"kept: resumed run ({self.layout})"
            log.info("training layout: %s (kept from the checkpoint the run resumes)", self.layout)
            return
        if self.layout_choice != "pending":
            return
        if volume.device.type != "cpu":
            self.layout_choice = f"skipped: {volume.device.type}"
            return
        if world_size > 1:
            self.layout_choice = f"skipped: {world_size} training processes"
            log.info("training layout: channels-last (no rule with %d training processes)", world_size)
            return
        suits, channels = channels_last_suits(net)
        self.layout_choice = f"rule: {channels} channels"
        if not suits:
            to_contiguous(net)
            self.layout = CONTIGUOUS
        log.info("training layout: %s (%d channels at the first 3D convolution)", self.layout, channels)

    def begin_validation(self, net: nn.Module) -> None:
        """Validate on an inference copy of this epoch's weights (fast path)."""
        self._validation_net = inference_network(net) if self.enabled else None

    def end_validation(self) -> None:
        self._validation_net = None

    def validation_logits(self, volume: torch.Tensor) -> torch.Tensor | None:
        """Logits of the validation copy, in float32 whatever the training precision;
        ``None`` on the plain path (the caller runs its network)."""
        if self._validation_net is None:
            return None
        with torch.autocast(volume.device.type, enabled=False):
            return self.logits(self._validation_net, volume.float())

    def write_checkpoint(self, checkpoint: MutableMapping[str, Any]) -> None:
        """Make a Lightning checkpoint as the plain path writes it (contiguous tensors), in place."""
        if self.enabled:
            for key in ("state_dict", "optimizer_states"):
                if key in checkpoint:
                    checkpoint[key] = contiguous_state(checkpoint[key])

    # ---- inference

    def inference_network(self, model: nn.Module) -> nn.Module:
        """The network to run inference with (:func:`inference_network`)."""
        return inference_network(model, self.enabled)

    def logits(self, net: nn.Module, volume: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C_out, H, W)`` of an eval-mode network (from :meth:`inference_network`)
        for normalised volumes ``(N, C_in, H, W, D)`` on its device: on the fast path with a
        channels-last input and the model's slab stages over slabs of A-scans; else the
        network's own forward on ``volume`` as given."""
        if not self.enabled:
            return net(volume)
        volume = channels_last_input(volume)
        logits = streamed_forward(net, volume, self.slab_mb)
        return net(volume) if logits is None else logits
