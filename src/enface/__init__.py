"""enface: label-efficient 3D->2D segmentation of retinal OCT.

A 3D OCT volume ``(H, W, D)`` (B-scans, A-scans per B-scan, depth) goes in; a 2D en-face
map ``(H, W)`` comes out. See ``DESIGN.md`` in the project's shared folder for the axes,
the dataset folder layout and the command line.
"""

__version__ = "0.1.0"
