"""The fast path: the same networks and weights, run the way the hardware runs them fastest.

The *plain path* is eager PyTorch in float32 on contiguous ``(N, C, H, W, D)`` tensors, the
network exactly as built. The *fast path*, which every command uses unless told otherwise
(``fast: false`` in a run config, ``--no-fast`` on the command line, ``fast=False`` in the
library; the default is :data:`enface.config.FAST_DEFAULT`), changes how the numbers are
computed, never which numbers are learned. One object, :class:`FastPath`, owns every
difference between the two, so that the engine asks it and never decides itself:

* **precision** (:mod:`enface.engine.precision`): bf16 mixed precision for training
  (autocast; weights, optimiser and losses stay float32) and bf16 inference networks where
  the hardware computes bf16 natively: CPUs with AVX512-BF16 or AMX, GPUs that support
  bf16 (:func:`~enface.engine.precision.native_bf16`). Elsewhere (e.g. AVX2-only CPUs)
  float32; inference may be forced either way (``precision``). Validation during training
  stays float32;
* **the training layout**: channels-last weights and inputs (:mod:`enface.engine.layout`),
  which oneDNN's convolutions run about twice as fast; on a CPU, narrow networks train
  contiguous instead, by a rule on their channels (:func:`channels_last_suits`), never by a
  timing that the machine's load could change. The layout is recorded in every checkpoint
  and kept when a run resumes. Checkpoints are written contiguous, so a checkpoint of
  either path loads in the other;
* **layers** (:mod:`enface.engine.fastlayers`): instance norms and depth poolings swapped for
  kernels that keep the channels-last layout and bf16, in training and inference;
* **the inference copy** (validation, ``evaluate``, ``predict``): BatchNorm folded into the
  convolution before it (on a copy: the trained network and its checkpoints are never
  changed), oneDNN convolutions even where PyTorch would fall back to its generic kernel
  (small batch-1 volumes), channels-last, bf16 weights where chosen, and the parts a model
  declares local along the A-scans run over slabs of A-scans with exact halos
  (:mod:`enface.engine.streaming`), which bounds peak memory;
* **process settings**: glibc's allocator told to reuse freed tensor memory
  (:func:`tune_allocator`) instead of having the kernel map and zero-fill it again for every
  large tensor; pinned loader memory and cuDNN's autotuner on GPUs.

In float32, probabilities of the fast inference path equal the plain path's to float32
rounding (only the order of summation differs): tests compare both paths for every
registered model and require them to agree to 5e-6 (measured: at most 1.2e-6), or 1e-4 for
Lachinov's network, whose instance norms the fast path computes as batch statistics
(measured: at most 2e-5). In bf16 the masks agree with float32's as measured in
``docs/speed.md`` and held by ``tests/test_precision.py``.
"""

from __future__ import annotations

import copy
import ctypes
import logging
from collections.abc import MutableMapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from enface.config import FAST_DEFAULT, INFERENCE_PRECISION_DEFAULT
from enface.engine.fastlayers import swap_layers
from enface.engine.layout import channels_last_input, contiguous_state, to_channels_last, to_contiguous
from enface.engine.precision import fast_precision, inference_dtype, native_bf16
from enface.engine.streaming import DEFAULT_SLAB_MB, streamed_forward

__all__ = [
    "FastPath",
    "channels_last_suits",
    "fast_precision",
    "fold_batchnorm",
    "inference_network",
    "native_bf16",
    "network_dtype",
    "release_free_memory",
    "tune_allocator",
]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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


def inference_network(model: nn.Module, fast: bool = FAST_DEFAULT, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The network to run inference with.

    Plain: ``model`` itself in eval mode. Fast: an eval-mode copy with BatchNorm folded
    (:func:`fold_batchnorm`; in float64, then rounded to ``dtype``), weights channels-last
    and in ``dtype``, the fast layers (:func:`~enface.engine.fastlayers.swap_layers`: oneDNN
    convolutions, instance norms and depth poolings on the channels-last layout), and
    ``requires_grad`` off.
    """
    if not fast:
        return model.eval()
    net = to_channels_last(fold_batchnorm(model).to(dtype))
    swap_layers(net, inference=True)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def network_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of ``net``'s floating-point weights (float32 for a network without any)."""
    return next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)


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
        precision: what inference networks compute in (one of
            :data:`~enface.config.INFERENCE_PRECISIONS`; ``"auto"``: bf16 where native, see
            :func:`~enface.engine.precision.inference_dtype`). Validation during training
            is float32 whatever this says.

    Attributes:
        layout: the training layout, ``"channels-last"`` or ``"contiguous"``.
        layout_choice: how the layout was chosen: ``"pending"`` (before the first batch),
            ``"rule: <n> channels"`` (:func:`channels_last_suits`), ``"kept: ..."`` (a
            resumed run's), ``"skipped: ..."`` (why no rule), or ``"none"`` (plain path).
        dtype: what the last inference network made computes in.
    """

    def __init__(
        self,
        enabled: bool = FAST_DEFAULT,
        slab_mb: float = DEFAULT_SLAB_MB,
        precision: str = INFERENCE_PRECISION_DEFAULT,
    ) -> None:
        self.enabled = bool(enabled)
        self.slab_mb = float(slab_mb)
        self.inference_precision = precision
        self.dtype = torch.float32
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
        """``net`` in the training layout with the fast layers
        (:func:`~enface.engine.fastlayers.swap_layers`), in place; ``rule``: let the first CPU
        batch choose the layout by :func:`channels_last_suits` (off for compiled networks)."""
        if self.enabled:
            to_channels_last(swap_layers(net, inference=False))
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
        """Validate on a float32 inference copy of this epoch's weights (fast path): the
        checkpoints are ranked on the numbers the plain path computes."""
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
        """The network to run inference with (:func:`inference_network`), in the precision
        asked for on the device ``model`` is on (recorded as :attr:`dtype`).

        Raises:
            ConfigError: an unknown precision, or bf16 on the plain path.
        """
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.dtype = inference_dtype(self.inference_precision, device, self.enabled)
        return inference_network(model, self.enabled, self.dtype)

    def logits(self, net: nn.Module, volume: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``(N, C_out, H, W)`` of an eval-mode network (from
        :meth:`inference_network`) for normalised volumes ``(N, C_in, H, W, D)`` on its
        device: on the fast path in the network's dtype, with a channels-last input and the
        model's slab stages over slabs of A-scans; else the network's own forward on
        ``volume`` as given."""
        if not self.enabled:
            return net(volume).float()
        volume = channels_last_input(volume.to(network_dtype(net)))
        logits = streamed_forward(net, volume, self.slab_mb)
        return (net(volume) if logits is None else logits).float()
