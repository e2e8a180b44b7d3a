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

The clock is measured (:func:`measured_clock_ghz`: a chain of dependent integer additions,
one per cycle, compiled with the system's C compiler and timed in CPU seconds), since the
one Linux reports (``cpu MHz``) is in a virtual machine the host's nominal clock, not the
boost clock the cores run at; without a C compiler, the reported clock.

**Measured** (:func:`measured_peak`): the best of a few large matrix products
(``torch.mm``: MKL or OpenBLAS in float32, oneDNN in bf16) and of a few large 1x1
convolutions through oneDNN (the library enface's convolutions run in) in each precision,
on torch's threads: what the kernels reach on this machine, a ceiling that convolution
networks can approach but not pass.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
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


def derived_peak(cores: int | None = None) -> dict[str, object]:
    """Nominal peak GFLOP/s of this CPU per precision (see the module's description), on
    ``cores`` cores (default: all this process may run on)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    reported = float(info.get("cpu MHz", "0") or 0) / 1000
    measured = measured_clock_ghz()
    ghz, clock = (measured, "measured") if measured else (reported, "reported by Linux")
    cores = cores or _cores()
    fp32, how = _fp32_flop_per_cycle(flags, vendor, family)
    if "amx_bf16" in flags:
        bf16, bf16_how = 1024, "AMX-BF16 tiles: 1024 per cycle"
    elif "avx512_bf16" in flags:
        bf16, bf16_how = 2 * fp32, "AVX512-BF16 VDPBF16PS: 2 bf16 products per float32 lane, 2x float32"
    else:
        bf16, bf16_how = 0, "no native bf16"
    return {
        "cores": cores,
        "ghz": ghz,
        "fp32_flop_per_cycle": fp32,
        "bf16_flop_per_cycle": bf16,
        "fp32_gflops": cores * ghz * fp32,
        "bf16_gflops": cores * ghz * bf16,
        "how": f"{cores} cores x {ghz:.2f} GHz ({clock}; Linux reports {reported:.2f}) x FLOP/cycle: "
        f"float32 {fp32} ({how}); bf16 {bf16} ({bf16_how})",
    }


_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    unsigned long n = 200000000UL, x = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    for (unsigned long i = 0; i < n; i++)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.4f\n", 8.0 * n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9) / 1e9);
    return x == 0;
}
"""


def measured_clock_ghz(repeats: int = 3) -> float | None:
    """The clock the cores run at, in GHz: dependent x86-64 integer additions (one per cycle)
    per CPU second, the best of ``repeats``; ``None`` without a C compiler or off x86-64."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "clock.c", Path(tmp) / "clock"
        src.write_text(_CLOCK_C, encoding="ascii")
        if subprocess.run([cc, "-O1", "-o", str(exe), str(src)], capture_output=True).returncode != 0:
            return None
        runs = [subprocess.run([str(exe)], capture_output=True, text=True) for _ in range(repeats)]
    values = [float(r.stdout) for r in runs if r.stdout.strip()]
    return max(values) if values else None


def measured_peak(n: int = 2048, repeats: int = 5, cpu_time: bool = False) -> dict[str, float]:
    """GFLOP/s of the best of ``repeats`` ``n x n`` matrix products, per precision, on torch's
    threads; ``cpu_time``: per second of the process's CPU time instead of wall time."""
    clock = time.process_time if cpu_time else time.perf_counter
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[f"{name}_gflops"] = 2 * n**3 / _best(functools.partial(torch.mm, a, b), repeats, clock) / 1e9
        c, side = 512, 64
        x = torch.randn(1, c, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
        conv = functools.partial(torch.ops.aten.mkldnn_convolution, x, w, None, (0, 0), (1, 1), (1, 1), 1)
        out[f"{name}_conv_gflops"] = 2 * c * c * side * side / _best(conv, repeats, clock) / 1e9
    return out


def _best(fn: Callable[[], torch.Tensor], repeats: int, clock: Callable[[], float]) -> float:
    """Fewest seconds of ``fn`` over ``repeats`` runs, after one unmeasured."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def cpu_description() -> str:
    """One line: model name, cores, clock and the vector extensions that set the peak."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (
        f"{info.get('model name', platform.processor() or 'unknown CPU')}, family {info.get('cpu family', '?')}, "
        f"{_cores()} cores at {float(info.get('cpu MHz', '0') or 0):.0f} MHz; {', '.join(isa) or 'no AVX'}"
    )
