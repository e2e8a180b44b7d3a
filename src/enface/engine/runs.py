"""Run folders: ``runs/<dataset>/<task>/<model>/<init>/frac-<f>/seed-<s>/``, built and parsed by one pair.

``task`` is the mask task for segmentation (``ga``) or ``recon-<target>`` for pre-training
(``recon-faf_inv``); ``model`` is the model name, with ``-w<width>`` appended when the width
is not 1; ``init`` is ``scratch`` or ``ssl-<target>`` (``ssl-faf_inv``); ``f`` is the label
fraction in percent.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunKey", "run_dir", "parse_run_dir", "format_fraction"]


def format_fraction(fraction: float) -> str:
    """0.05 -> ``"5"``, 1.0 -> ``"100"``, 0.125 -> ``"12.5"``."""
    return f"{round(fraction * 100, 6):g}"


@dataclass(frozen=True)
class RunKey:
    """The identity of a run, as encoded in its folder path."""

    dataset: str
    task: str
    model: str
    init: str = "scratch"
    fraction: float = 1.0
    seed: int = 0
    width: float = 1.0

    @property
    def model_dir(self) -> str:
        return self.model if self.width == 1.0 else f"{self.model}-w{self.width:g}"


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def run_dir(root: str | os.PathLike, key: RunKey) -> Path:
    """The folder of run ``key`` under ``root``."""
    parts = [key.dataset, key.task, key.model_dir, key.init]
    for p in parts:
        if not _SAFE.match(p) or "/" in p:
            raise ValueError(f"run folder component {p!r} contains characters that cannot be parsed back")
    return Path(root, *parts, f"frac-{format_fraction(key.fraction)}", f"seed-{key.seed}")


def parse_run_dir(path: str | os.PathLike) -> tuple[Path, RunKey]:
    """Inverse of :func:`run_dir`: ``(root, key)`` from a run folder path.

    Raises:
        ValueError: the path does not end in ``<dataset>/<task>/<model>/<init>/frac-<f>/seed-<s>``.
    """
    p = Path(path)
    parts = p.parts
    if len(parts) < 6:
        raise ValueError(f"{path}: not a run folder (expected .../<dataset>/<task>/<model>/<init>/frac-<f>/seed-<s>)")
    dataset, task, model_dir, init, frac, seed = parts[-6:]
    mf = re.fullmatch(r"frac-([0-9.]+)", frac)
    ms = re.fullmatch(r"seed-(-?[0-9]+)", seed)
    if not (mf and ms):
        raise ValueError(f"{path}: not a run folder (expected .../frac-<f>/seed-<s> at the end)")
    mw = re.fullmatch(r"(.+)-w([0-9.]+)", model_dir)
    model, width = (mw.group(1), float(mw.group(2))) if mw else (model_dir, 1.0)
    key = RunKey(dataset, task, model, init, float(mf.group(1)) / 100.0, int(ms.group(1)), width)
    return Path(*parts[:-6]) if len(parts) > 6 else Path("."), key
