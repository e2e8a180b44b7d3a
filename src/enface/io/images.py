"""2D images and masks: PNG, TIFF, BMP (and anything else Pillow reads).

Images come back as float32 in [0, 1]: 8-bit divided by 255, 16-bit by 65535, float
images (TIFF mode ``F``) min-max scaled; colour is converted to luminance. Masks come back
as uint8 {0, 1}, read by what they show (:func:`read_mask` gives the rules for palette,
alpha and colour images). Every problem raises :class:`~enface.errors.DatasetError` naming
the file. These are the only image and mask readers of enface: the dataset folder reads its
``slo.png``/``faf.png``/``mask_*.png`` with them too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from enface.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "NOT_BINARY", "read_bscan_stack", "read_image", "read_mask"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
"""File suffixes recognised as 2D images."""

NOT_BINARY = "not a binary mask"
"""The ``kind`` of the error :func:`read_mask` raises for a mask of more than two values."""


def _open_array(path: Path, what: str) -> tuple[np.ndarray, str]:
    """Pixels as stored, except that palette and 1-bit images become what they show.

    A palette image becomes RGB (RGBA when the palette has transparency), so that a mask is
    read by its colours, never by its palette indices.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DatasetError(f"{what} file not found", path=path)
    try:
        with Image.open(path) as opened:
            opened.load()
            im: Image.Image = opened
            if im.mode == "1":
                im = im.convert("L")
            elif im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr"):
                im = im.convert("RGB")
            return np.asarray(im), im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"unreadable or truncated {what} ({e})", path=path) from None


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
                raise DatasetError("image has NaN or inf pixels", path=path)
            lo, hi = float(arr.min()), float(arr.max())
            out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        raise DatasetError(f"expected a 2D image, got shape {arr.shape}", path=path)
    if min(out.shape) < 2:
        raise DatasetError(f"image is too small ({out.shape})", path=path)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _describe_colours(pixels: np.ndarray, limit: int = 6) -> str:
    """The distinct colours of ``(n, c)`` pixels with their counts, most frequent first."""
    colours, counts = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0, return_counts=True)
    order = np.argsort(-counts)
    shown = [f"{tuple(int(v) for v in colours[i])} x{int(counts[i])}" for i in order[:limit]]
    more = f", ... ({len(colours)} colours)" if len(colours) > limit else ""
    return ", ".join(shown) + more


def _mask_plane(arr: np.ndarray, path: Path) -> np.ndarray:
    """The single plane of a mask image that carries the lesion (see :func:`read_mask`)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3:
        raise DatasetError(f"mask must be 2D, got shape {arr.shape}", path=path)
    has_alpha = arr.shape[2] in (2, 4)
    colour = arr[..., :-1] if has_alpha else arr
    if has_alpha and arr[..., -1].min() != arr[..., -1].max():
        return arr[..., -1]  # lesion painted on a transparent layer: alpha is the mask
    if not (colour == colour[..., :1]).all():
        raise DatasetError(
            f"colour mask (colours {_describe_colours(colour)}); expected a binary mask: "
            "black/white, 0/1, or a lesion painted on a transparent layer",
            path=path,
        )
    return colour[..., 0]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary en-face mask as ``(h, w)`` uint8 {0, 1}, by what the image shows.

    Rules, in order:

    * palette images are read by their colours (never by palette indices);
    * an image with an alpha channel that is not uniform is a lesion painted on a
      transparent layer: the alpha channel is the mask (opaque = lesion);
    * otherwise the colour channels must be grey (all equal) and are the mask;
    * the values of the plane read must be {0, 1} or {0, 255} (lesion = the non-zero value).

    Raises:
        DatasetError: missing, unreadable or truncated file; a colour mask (the message lists
            its colours); grey levels other than two binary values.
    """
    path = Path(path)
    arr, _ = _open_array(path, "mask")
    plane = _mask_plane(arr, path)
    values = set(np.unique(plane).tolist())
    if values <= {0, 1} or plane.dtype == bool:
        return plane.astype(np.uint8)
    if values <= {0, 255}:
        return (plane > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in sorted(values)[:8]) + (", ..." if len(values) > 8 else "")
    raise DatasetError(f"mask is not binary (values {shown}; expected 0/1 or 0/255)", path=path, kind=NOT_BINARY)


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
        raise DatasetError("no B-scan images found", path=where)
    first = _read_bscan(files[0])
    vol = np.empty((len(files), first.shape[1], first.shape[0]), dtype=first.dtype)
    vol[0] = first.T
    for i, f in enumerate(files[1:], start=1):
        img = _read_bscan(f)
        if img.shape != first.shape:
            raise DatasetError(f"B-scan has shape {img.shape}, expected {first.shape} like {files[0].name}", path=f)
        if img.dtype != vol.dtype:  # mixed bit depths: fall back to float in [0, 1]
            vol = vol.astype(np.float32) / (255.0 if vol.dtype == np.uint8 else 1.0)
            img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
        vol[i] = img.T
    return vol
