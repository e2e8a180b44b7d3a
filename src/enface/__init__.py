"""enface: label-efficient 3D->2D segmentation of retinal OCT.

A 3D OCT volume ``(H, W, D)`` (B-scans, A-scans per B-scan, depth) goes in; a 2D en-face
map ``(H, W)`` comes out. README.md describes the axes, the dataset folder layout, the
command line and how the package is laid out.
"""

import os

# OpenMP threads that sleep, not spin, while they wait (read once, when torch loads libgomp,
# so it is set here, before any module of the package imports torch; a value the user set is
# kept). Alone on a 2-core machine it changes nothing (the demo's pre-training: 45 vs 46 s);
# beside another busy process the threads no longer burn the shared cores spinning at each
# barrier: the same pre-training beside a one-thread torch training loop took 91 s instead of
# 116 s, with 97 instead of 155 CPU-seconds (benchmarks/bench_sharing.py, docs/speed.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"
"""The package version (its one source: pyproject.toml reads it). 0.2.0: checkpoint format 2."""
