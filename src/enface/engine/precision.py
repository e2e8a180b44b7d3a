"""Which number format the fast path computes in: the hardware's bf16, detected, or float32.

bf16 is a speed-up only where the hardware computes it natively: x86-64 CPUs with the
``avx512_bf16`` or ``amx_bf16`` flag (AVX2-only CPUs emulate it, slower than float32) and
GPUs that support it (Ampere and newer). Everything here is decided at run time from what
the machine reports, never assumed.

* **Training** (:func:`fast_precision`): bf16 mixed precision (autocast; weights, optimiser
  state and losses in float32) where native, else float32.
* **Inference** (:func:`inference_dtype`): the network's weights and activations in bf16
  where native (``"auto"``, the default :data:`~enface.config.INFERENCE_PRECISION_DEFAULT`),
  or as forced (``"bf16"`` / ``"32"``, e.g. ``enface predict --precision``). Probabilities,
  masks and areas are always computed from float32 logits. What bf16 changes in the masks
  was measured before it became the default (``docs/speed.md``, *bf16 inference*).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch

from enface.config import INFERENCE_PRECISIONS
from enface.errors import ConfigError

__all__ = ["cpu_flags", "fast_precision", "inference_dtype", "native_bf16", "precision_name"]

log = logging.getLogger(__name__)


def cpu_flags() -> frozenset[str]:
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
    if not ({"avx512_bf16", "amx_bf16"} & cpu_flags()):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 is a speed-up there).

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
    """The Lightning precision of the fast path's training on ``accelerator``:
    ``"bf16-mixed"`` where bf16 is native (:func:`native_bf16`), else ``"32-true"``.

    ``accelerator`` is Lightning's name (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"auto"``);
    ``"auto"`` means the GPU when one is available, else the CPU.
    """
    name = str(accelerator).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("gpu", "cuda", "cpu"):
        return "32-true"
    return "bf16-mixed" if native_bf16(name) else "32-true"


def inference_dtype(precision: str, device: str | torch.device, fast: bool = True) -> torch.dtype:
    """The dtype inference networks compute in.

    Args:
        precision: ``"auto"`` (bf16 where ``device`` computes it natively, else float32),
            ``"bf16"`` or ``"32"`` (forced).
        device: where the network runs.
        fast: the fast path; the plain path is the float32 reference and takes ``"auto"``
            or ``"32"`` only.

    Raises:
        ConfigError: an unknown precision, or bf16 asked of the plain path.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"precision {precision!r}: inference runs in one of {', '.join(INFERENCE_PRECISIONS)}")
    if not fast:
        if precision == "bf16":
            raise ConfigError(
                "precision bf16 runs on the fast path; the plain path (--no-fast) is the float32 reference"
            )
        return torch.float32
    if precision == "32":
        return torch.float32
    native = native_bf16(device)
    if precision == "bf16" and not native:
        log.warning("bf16 inference forced on %s, which does not compute bf16 natively: slower than float32", device)
    return torch.bfloat16 if precision == "bf16" or native else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """``"bf16"`` or ``"32"``: how a dtype of :func:`inference_dtype` is written (logs, outputs)."""
    return "bf16" if dtype == torch.bfloat16 else "32"
