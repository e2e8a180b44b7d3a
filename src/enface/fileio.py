"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and a crash mid-write never destroys the file that
was there before.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_save_png",
]


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], None]) -> Path:
    """Call ``writer(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: destination file.
        writer: function that writes the content to the binary file object it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _strict_json(obj: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, strict JSON (NaN/inf become null; trailing newline)."""
    return atomic_write_text(path, json.dumps(_strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def atomic_write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> Path:
    """Atomically write ``rows`` as CSV (floats as ``%.6g``; keys outside ``columns`` ignored).

    Args:
        path: destination file.
        rows: one mapping per row.
        columns: column order (default: the keys of the first row).
    """
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    if cols:
        writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically save ``array`` in ``.npy`` format (memory-mappable when read back)."""
    return atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def atomic_save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Atomically save a grayscale (uint8 or uint16) or RGB (uint8) image as PNG.

    Args:
        path: destination ``.png`` file.
        image: ``(H, W)`` uint8/uint16 array, or ``(H, W, 3)`` uint8 array.
    """
    from PIL import Image

    image = np.asarray(image)
    gray = image.ndim == 2 and image.dtype in (np.uint8, np.uint16)
    rgb = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    if not (gray or rgb):
        raise ValueError(
            f"{path}: expected a 2D uint8/uint16 or (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
