"""The machine's arithmetic ceiling: peak FLOP/s per precision, derived and measured.

**Derived** (:func:`derived_peak`): cores x clock x FLOP per cycle per core, with the FLOP
per cycle read off the instruction set the CPU reports (``/proc/cpuinfo`` flags, vendor and
family) and the vector units that family is documented to have:

* float32 FMA: vector width (512 bits with AVX-512, else 256 with AVX2/FMA) / 32 bits x
  2 (multiply + add) x FMA units per core (2 on the CPUs listed; AMD Zen 4 runs 512-bit
  instructions on 256-bit units, i.e. one 512-bit FMA per cycle);
* bf16 with ``avx512_bf16`` (``VDPBF16PS``): each 32-bit lane does two bf16 products into one
  float32 sum, so twice the float32 rate on the same units;
* bf16 with ``amx_bf16`` (Intel AMX, ``TDPBF16PS``): 1024 FLOP per cycle per core.

The clock is the one Linux reports (``cpu MHz``; in a virtual machine the host's nominal
clock, turbo unknown), so the derived peak is a nominal figure, not a guarantee.

**Measured** (:func:`measured_peak`): the best of a few large matrix products
(``torch.mm``) in each precision on all the process's threads: what PyTorch's own kernels
reach on this machine, a ceiling that convolution networks can approach but not pass.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

__all__ = ["cpu_description", "derived_peak", "measured_peak"]


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _fp32_flop_per_cycle(flags: set[str], vendor: str, family: int) -> tuple[int, str]:
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family < 26:  # Zen 4: 512-bit ops on two 256-bit FMA units
            return 32, "AVX-512 on 2 x 256-bit FMA units (AMD Zen 4): 1 x 16 lanes x 2"
        return 64, "AVX-512, 2 x 512-bit FMA units: 2 x 16 lanes x 2"
    if "fma" in flags and "avx2" in flags:
        return 32, "AVX2, 2 x 256-bit FMA units: 2 x 8 lanes x 2"
    return 8, "SSE: 2 x 4 lanes (no FMA)"


def derived_peak() -> dict[str, object]:
    """Nominal peak GFLOP/s of this CPU per precision (see the module's description)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    mhz = float(info.get("cpu MHz", "0") or 0)
    cores = _cores()
    fp32, how = _fp32_flop_per_cycle(flags, vendor, family)
    if "amx_bf16" in flags:
        bf16, bf16_how = 1024, "AMX-BF16 tiles: 1024 per cycle"
    elif "avx512_bf16" in flags:
        bf16, bf16_how = 2 * fp32, "AVX512-BF16 VDPBF16PS: 2 bf16 products per float32 lane, 2x float32"
    else:
        bf16, bf16_how = 0, "no native bf16"
    ghz = mhz / 1000
    return {
        "cores": cores,
        "ghz": ghz,
        "fp32_flop_per_cycle": fp32,
        "bf16_flop_per_cycle": bf16,
        "fp32_gflops": cores * ghz * fp32,
        "bf16_gflops": cores * ghz * bf16,
        "how": f"{cores} cores x {ghz:.2f} GHz x FLOP/cycle: float32 {fp32} ({how}); bf16 {bf16} ({bf16_how})",
    }


def measured_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of the best of ``repeats`` ``n x n`` matrix products, per precision."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = min(_seconds(a, b) for _ in range(repeats))
        out[f"{name}_gflops"] = 2 * n**3 / best / 1e9
    return out


def _seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    t0 = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - t0


def cpu_description() -> str:
    """One line: model name, cores, clock and the vector extensions that set the peak."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (
        f"{info.get('model name', platform.processor() or 'unknown CPU')}, family {info.get('cpu family', '?')}, "
        f"{_cores()} cores at {float(info.get('cpu MHz', '0') or 0):.0f} MHz; {', '.join(isa) or 'no AVX'}"
    )
