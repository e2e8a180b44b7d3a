"""Device-like acquisition presets of the phantom generator.

A preset fixes a default grid ``(H, W, D)`` and the physical extent it covers in mm
(en-face height, en-face width, depth window after flattening and depth resampling). When a
different shape is asked for, the extent stays and the spacing is scaled:
``spacing = extent / shape``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One acquisition protocol.

    Attributes:
        name: preset key.
        shape: default grid ``(H, W, D)``: B-scans, A-scans per B-scan, depth samples.
        extent_mm: physical extent ``(height, width, depth)`` of the grid in mm.
        device: device name written to ``meta.json``.
        description: one line shown by ``enface synth --help``.
    """

    name: str
    shape: tuple[int, int, int]
    extent_mm: tuple[float, float, float]
    device: str
    description: str

    def spacing(self, shape: tuple[int, int, int] | None = None) -> tuple[float, float, float]:
        """Voxel spacing ``(sh, sw, sd)`` in mm of ``shape`` (default: the preset's shape)."""
        h, w, d = shape or self.shape
        (eh, ew, ed) = self.extent_mm
        return float(eh) / int(h), float(ew) / int(w), float(ed) / int(d)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "spectralis",
            (49, 1024, 128),
            (6.68, 6.68, 1.92),
            "Spectralis (phantom)",
            "Spectralis macular cube as in GA-M: 49 x 1024 A-scans over 6.68 x 6.68 mm, 1.92 mm depth resampled to 128",
        ),
        Preset(
            "spectralis-512",
            (49, 512, 128),
            (6.02, 6.03, 1.92),
            "Spectralis (phantom)",
            "Spectralis cube as in GA-S: 49 x 512 over 6.02 x 6.03 mm, depth 128",
        ),
        Preset(
            "spectralis-97",
            (97, 1024, 128),
            (5.73, 5.72, 1.92),
            "Spectralis (phantom)",
            "dense Spectralis cube as in RPD-S: 97 x 1024 over 5.73 x 5.72 mm, depth 128",
        ),
        Preset(
            "demo",
            (32, 128, 64),
            (6.0, 6.0, 1.2),
            "phantom-demo",
            "CPU-sized 6 x 6 mm cube: 32 x 128, 1.2 mm depth window around BM resampled to 64",
        ),
        Preset("tiny", (8, 32, 64), (6.0, 6.0, 1.2), "phantom-tiny", "test-sized 6 x 6 mm cube: 8 x 32, depth 64"),
    )
}
"""Known presets by name."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown phantom preset {name!r} (known: {', '.join(PRESETS)})") from None
