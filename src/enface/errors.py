"""The error types every layer of enface raises.

This is the ground floor of the package: it imports nothing of enface, so readers (``io``),
the dataset layer (``data``), the engine and the command line can all raise and catch the
same types without importing each other. The command line prints every :class:`EnfaceError`
as one line naming the file or field, without a traceback.

An error carries what callers branch on, never to be parsed back out of its message: the
file or folder it concerns (``path``), what is wrong without it (``reason``) and its
``kind``. :func:`failure` is the one place that turns any exception of a batch item (a scan
to prepare or predict) into the reason and kind its report shows.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "DISK_FULL",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EnfaceError",
    "NonFiniteLossError",
    "RunFolderError",
    "ScanKindError",
    "UnsafePathError",
    "failure",
    "is_disk_full",
]

DISK_FULL = "disk full"
"""The kind of a failure that is a full disk (or quota)."""


class EnfaceError(Exception):
    """Base of the errors that concern the user's input, files or folders.

    Args:
        message: what is wrong.
        path: the file or folder it concerns; the error then reads ``"<path>: <message>"``.
        kind: what kind of failure it is, when callers tell kinds apart (default ``"error"``).

    Attributes:
        path: that file or folder (``""`` when the message names none apart).
        reason: the message without the path.
        kind: the kind.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, kind: str = "error") -> None:
        self.path = "" if path is None else os.fspath(path)
        self.reason = message
        self.kind = kind
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # keeps path, reason and kind across processes
        return (type(self), (self.reason, self.path, self.kind))

    def beside(self, where: str | os.PathLike[str]) -> str:
        """The message to show beside ``where``: the reason alone when the error concerns
        ``where``, else the whole message (naming its own path)."""
        return self.reason if self.path == os.fspath(where) else str(self)


class DatasetError(EnfaceError, ValueError):
    """A dataset folder, case, device export or file is missing, malformed or inconsistent."""


class ScanKindError(DatasetError):
    """A file that is no usable volume scan, with its kind named: another scan pattern (``line
    scan``, ``circle scan``, ``radial scan``, ``single B-scan``) or a damaged file (``empty
    file``, ``truncated file``, ``damaged file``).

    Attributes:
        kind: the kind, as listed above (summaries count failures by it).
    """

    NON_OPHTHALMIC = "non-ophthalmic DICOM"
    """A DICOM object of another modality in an export folder (a CT slice, an MR image)."""

    NOT_VOLUMES: tuple[str, ...] = (
        "line scan",
        "circle scan",
        "radial scan",
        "single B-scan",
        "repeated line scan",
        NON_OPHTHALMIC,
    )
    """Kinds of well-formed files that are not raster volume scans (the others are damaged files)."""

    def __init__(self, kind: str, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message, path, kind)

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.kind, self.reason, self.path))


class ConfigError(EnfaceError, ValueError):
    """A configuration file, override or command-line value is invalid."""


class CheckpointError(EnfaceError, ValueError):
    """A checkpoint file is missing, unreadable or not an enface checkpoint."""


class RunFolderError(EnfaceError, ValueError):
    """A run or study folder cannot be used as asked (another run's record, locked, incomplete)."""


class UnsafePathError(EnfaceError, ValueError):
    """A name given by a user or a file would make a writer leave its root folder."""


class NonFiniteLossError(EnfaceError, RuntimeError):
    """The training loss became NaN or inf; the run stops, the last good checkpoint remains."""


def is_disk_full(e: BaseException) -> bool:
    """Whether an error is a full disk or quota (``ENOSPC`` / ``EDQUOT``)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def failure(e: BaseException, source: str | os.PathLike[str], what: str = "scan") -> tuple[str, str]:
    """``(reason, kind)`` of a batch item that failed, for its report line.

    Args:
        e: what was raised.
        source: the file or folder the report names for the item (left out of the reason
            when the error concerns that one).
        what: the item, in words (``"case"``, ``"scan"``).

    Returns:
        A full disk: a reason saying nothing of the item was kept, kind :data:`DISK_FULL`;
        an :class:`EnfaceError` or ``ValueError``: its message, kind its ``kind``; anything
        else: its type and message, kind ``"error"``.
    """
    if is_disk_full(e):
        return f"the disk is full (nothing of this {what} was kept)", DISK_FULL
    if isinstance(e, EnfaceError):
        return e.beside(source), e.kind
    return (str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"), "error"
