"""2D images and masks: PNG, TIFF, BMP (and anything else Pillow reads).

Images come back as float32 in [0, 1]: 8-bit divided by 255, 16-bit by 65535, float
images (TIFF mode ``F``) min-max scaled; colour is converted to luminance. Masks come back
as uint8 {0, 1}; a mask must be binary (0/1 or 0/255, in any channel layout where all
channels agree). Every problem raises :class:`~enface.data.folder.DatasetError` naming the
file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from enface.data.folder import DatasetError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_mask", "read_bscan_stack"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
"""File suffixes recognised as 2D images."""


def _open_array(path: Path, what: str) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                if mode == "1":
                    im = im.convert("L")
                elif mode == "P":
                    im = im.convert("RGB")
                arr = np.asarray(im)
                return arr, im.mode
            return np.asarray(im), mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable or truncated {what} ({e})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image as ``(h, w)`` float32 in [0, 1].

    Raises:
        DatasetError: missing, unreadable or truncated file, or not a 2D image.
    """
    path = Path(path)
    arr, mode = _open_array(path, "image")
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # drop alpha
            arr = arr[..., :-1]
        arr = arr.astype(np.float64)
        arr = arr[..., 0] if arr.shape[2] == 1 else arr @ np.array([0.299, 0.587, 0.114])[: arr.shape[2]]
        out = arr / 255.0
    elif arr.ndim == 2:
        if arr.dtype == np.uint8 or arr.dtype == bool:
            out = arr.astype(np.float64) / (1.0 if arr.dtype == bool else 255.0)
        elif arr.dtype == np.uint16 or mode.startswith("I;16"):
            out = arr.astype(np.float64) / 65535.0
        elif np.issubdtype(arr.dtype, np.integer):
            out = arr.astype(np.float64) / (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        else:
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise DatasetError(f"{path}: image has NaN or inf pixels")
            lo, hi = float(arr.min()), float(arr.max())
            out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        raise DatasetError(f"{path}: expected a 2D image, got shape {arr.shape}")
    if min(out.shape) < 2:
        raise DatasetError(f"{path}: image is too small ({out.shape})")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary en-face mask as ``(h, w)`` uint8 {0, 1}.

    Accepted: values {0, 1} or {0, 255} (any other pair of values is rejected, so is a
    grey-level image); colour masks whose channels agree.

    Raises:
        DatasetError: missing, unreadable or truncated file, or a non-binary mask.
    """
    path = Path(path)
    arr, _ = _open_array(path, "mask")
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):
            arr = arr[..., :-1]
        if not (arr == arr[..., :1]).all():
            raise DatasetError(f"{path}: colour mask whose channels differ; expected a binary mask")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{path}: mask must be 2D, got shape {arr.shape}")
    values = set(np.unique(arr).tolist())
    if values <= {0, 1} or arr.dtype == bool:
        return arr.astype(np.uint8)
    if values <= {0, 255}:
        return (arr > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in sorted(values)[:8]) + (", ..." if len(values) > 8 else "")
    raise DatasetError(f"{path}: mask is not binary (values {shown}; expected 0/1 or 0/255)")


def _read_bscan(path: Path) -> np.ndarray:
    """A B-scan as stored: uint8 for 8-bit greyscale files, else float32 in [0, 1]."""
    arr, mode = _open_array(path, "B-scan image")
    if mode == "L" and arr.ndim == 2:
        return arr
    return read_image(path)


def read_bscan_stack(files: list[Path], where: str) -> np.ndarray:
    """Read one B-scan image per file into a ``(H, W, D)`` volume.

    Each file is a B-scan of ``D`` rows (depth, vitreous at the top) and ``W`` columns
    (A-scans); file ``i`` becomes B-scan ``i``.

    Args:
        files: the B-scan images in acquisition order.
        where: name of the scan used in errors.

    Returns:
        ``(H, W, D)`` volume: uint8 when every file is 8-bit greyscale (saves memory on
        large stacks), else float32 in [0, 1].

    Raises:
        DatasetError: no files, an unreadable file, or B-scans of different sizes.
    """
    if not files:
        raise DatasetError(f"{where}: no B-scan images found")
    first = _read_bscan(files[0])
    vol = np.empty((len(files), first.shape[1], first.shape[0]), dtype=first.dtype)
    vol[0] = first.T
    for i, f in enumerate(files[1:], start=1):
        img = _read_bscan(f)
        if img.shape != first.shape:
            raise DatasetError(f"{f}: B-scan has shape {img.shape}, expected {first.shape} like {files[0].name}")
        if img.dtype != vol.dtype:  # mixed bit depths: fall back to float in [0, 1]
            vol = vol.astype(np.float32) / (255.0 if vol.dtype == np.uint8 else 1.0)
            img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
        vol[i] = img.T
    return vol
