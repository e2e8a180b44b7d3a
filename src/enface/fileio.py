"""Safe file reads and writes: checked JSON and ``.npy`` loaders, atomic replacement, paths
that stay under their root, folder locks.

* :func:`read_json_object` and :func:`load_npy` read the two generic formats of a dataset and
  a run folder, with errors that name the file (never a parser's traceback, never unpickling).

* Atomic writes go to a temporary file in the same folder, then are renamed over the
  target: a reader never sees a half-written file, and a crash mid-write never destroys the
  file that was there before. Files get the permissions the umask allows (``0644`` under
  ``umask 022``), like any file a program creates, so colleagues can read shared outputs.
* :func:`replace_folder` puts a finished temporary folder in place of an existing one (the
  replaced folder survives as ``.<name>.old`` until the new one is in place, and
  :func:`recover_replaced_folder` undoes a crash between the two renames).
* :func:`path_under` joins user-given names onto a root and refuses any result that would
  leave it (``..``, absolute names, symbolic links pointing out).
* :class:`FolderLock` keeps two processes from writing one run or study folder at once.
* :func:`writable_folder` refuses an output folder that cannot be written, before any work.
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import io
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from enface.errors import ConfigError, DatasetError, RunFolderError, UnsafePathError

__all__ = [
    "FolderLock",
    "atomic_save_npy",
    "atomic_save_png",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "load_npy",
    "path_under",
    "read_json_object",
    "recover_replaced_folder",
    "replace_folder",
    "temp_dir",
    "writable_folder",
]


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], object]) -> Path:
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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give what open() would
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


# --------------------------------------------------------------------------- safe reads


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file whose top level is an object.

    Raises:
        DatasetError: naming the file: missing, not valid JSON, nested too deeply for the
            parser, or not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError("file not found", path=path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"not valid JSON ({e})", path=path) from None
    except RecursionError:
        raise DatasetError("nested too deeply to be read (is it the file enface wrote?)", path=path) from None
    if not isinstance(obj, dict):
        raise DatasetError("expected a JSON object", path=path)
    return obj


_NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str | os.PathLike, mmap: bool = True, where: str | None = None) -> np.ndarray:
    """Load a ``.npy`` array of real numbers (memory-mapped by default), never unpickling.

    Raises:
        DatasetError: naming the file: missing, not a ``.npy`` file at all, truncated, or
            holding objects, strings or complex numbers.
    """
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise DatasetError("file not found", path=where)
    with open(path, "rb") as f:
        magic = f.read(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:
        raise DatasetError("not a .npy file (it does not start with the NumPy format's signature)", path=where)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetError(f"unreadable or truncated .npy file ({e})", path=where) from None
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DatasetError(f"expected real numbers, got dtype {arr.dtype}", path=where)
    return arr


# --------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden temporary folder in ``parent`` (to be renamed into place), with the
    permissions the umask allows (``mkdtemp`` alone gives ``0700``)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def _replaced_copy(final: Path) -> Path:
    """Where :func:`replace_folder` keeps the folder it replaces until the new one is in place."""
    return final.parent / f".{final.name}.old"


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put the finished folder ``tmp`` in place of ``final`` (whole or not at all).

    An existing ``final`` is first renamed to ``.<name>.old`` beside it and removed once
    ``tmp`` is in place; if the second rename fails, it is put back. A crash between the two
    renames leaves ``.<name>.old`` and no ``final``: :func:`recover_replaced_folder` undoes it.
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return final
    old = _replaced_copy(final)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_replaced_folder(final: str | os.PathLike) -> bool:
    """Undo a :func:`replace_folder` interrupted between its two renames (the old folder is
    put back). Returns whether there was one to undo."""
    final = Path(final)
    old = _replaced_copy(final)
    if old.is_dir() and not final.exists():
        os.replace(old, final)
        return True
    return False


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


class _Writes:
    """A file seen through its ``write`` alone. NumPy writes an array to a real file with
    ``ndarray.tofile``, whose short write on a full disk raises an ``OSError`` without an errno;
    through ``write`` (in chunks) the file system's own error comes back (``ENOSPC``)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: bytes) -> int:
        return self._f.write(data)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically save ``array`` in ``.npy`` format (memory-mappable when read back); a full disk
    raises ``OSError`` with ``errno.ENOSPC``."""
    return atomic_write(path, lambda f: np.save(_Writes(f), np.ascontiguousarray(array), allow_pickle=False))


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


def path_under(root: str | os.PathLike, *names: str) -> Path:
    """``root / name / ...``, refusing any result outside ``root``.

    Args:
        root: the folder every output must stay in.
        *names: path components, typically derived from names a user or a file gave.

    Raises:
        UnsafePathError: a component is empty, absolute, ``.``/``..``, contains a separator,
            or the resolved path (symbolic links followed) leaves ``root``.
    """
    base = Path(root)
    for name in names:
        text = str(name)
        if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
            raise UnsafePathError(f"{text!r} cannot be used as a file or folder name under {base}")
    path = base.joinpath(*names)
    real_root = base.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(f"{path} lies outside {base}; refusing to write there")
    return path


class FolderLock:
    """An exclusive, advisory lock on a folder while one process writes it.

    The lock is ``<folder>/.lock`` held with ``flock``: the operating system releases it
    when the process ends, however it ends, so a killed run never leaves a stale lock. The
    file records who holds it, for the message the next process gets.

    Args:
        folder: the folder (created when missing).
        what: what the folder is, for messages (``"run folder"``, ``"study"``).

    Raises:
        RunFolderError: (on entering) another process holds the lock; the message names it.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise RunFolderError(
                f"{self.folder}: this {self.what} is being written by another process ({holder}); "
                "wait for it to finish, or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        since = datetime.datetime.now().isoformat(timespec="seconds")
        command = " ".join(sys.argv[:4])
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since} ({command})\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def writable_folder(folder: str | os.PathLike, what: str = "--out") -> Path:
    """``folder`` if this process can create it or write into it (checked before any work).

    The check looks at the folder, or, when it does not exist yet, at the nearest existing
    folder above it, where it would be created.

    Raises:
        ConfigError: naming ``what`` and the folder: a file is in the way, or the folder
            (or the one it would be created in) is read-only for this user.
    """
    folder = Path(folder)
    here = folder
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise ConfigError(f"{what} {folder}: {here} is a file, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        where = "" if here == folder else f" (it would be created in {here})"
        raise ConfigError(f"{what} {folder}: cannot write there{where}: permission denied or a read-only file system")
    return folder
