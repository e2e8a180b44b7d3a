"""enface: label-efficient 3D->2D segmentation of retinal OCT.

A 3D OCT volume ``(H, W, D)`` (B-scans, A-scans per B-scan, depth) goes in; a 2D en-face
map ``(H, W)`` comes out. README.md describes the axes, the dataset folder layout, the
command line and how the package is laid out.
"""

__version__ = "0.2.0"
"""The package version (its one source: pyproject.toml reads it). 0.2.0: checkpoint format 2."""
