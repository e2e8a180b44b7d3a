"""The error types every layer of enface raises.

This is the ground floor of the package: it imports nothing of enface, so readers (``io``),
the dataset layer (``data``), the engine and the command line can all raise and catch the
same types without importing each other. The command line prints every :class:`EnfaceError`
as one line naming the file or field, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EnfaceError",
    "NonFiniteLossError",
    "RunFolderError",
    "ScanKindError",
    "UnsafePathError",
]


class EnfaceError(Exception):
    """Base of the errors that concern the user's input, files or folders."""


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

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keeps its kind across processes
        return (type(self), (self.kind, str(self)))


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
