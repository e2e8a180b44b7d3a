"""The input formats enface reads, and how a file's suffix names its format.

Kept free of heavy imports: the command line builds its ``--format`` choices from here.
"""

from __future__ import annotations

from pathlib import Path

from enface.errors import DatasetError

__all__ = ["FORMATS", "SUFFIX_FORMATS", "format_of_name", "infer_format"]

FORMATS: tuple[str, ...] = ("vol", "xml", "e2e", "dicom", "octa500", "nifti", "numpy")
"""Formats of ``enface prepare`` and ``enface predict``: Heidelberg ``.vol``, HEYEX XML,
``.e2e``, the OCTA-500 layout, NIfTI and NumPy volumes."""

SUFFIX_FORMATS: tuple[tuple[str, str], ...] = (
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".npy", "numpy"),
    (".vol", "vol"),
    (".xml", "xml"),
    (".e2e", "e2e"),
    (".dcm", "dicom"),
)
"""``(suffix, format)`` pairs, longest suffix first; OCTA-500 has no suffix of its own."""


def format_of_name(name: str) -> str | None:
    """The format a file name's suffix names, or ``None`` (also for a ``<stem>_bm.npy`` companion)."""
    low = name.lower()
    if low.endswith("_bm.npy"):  # a BM companion beside an export, not a volume
        return None
    return next((fmt for suf, fmt in SUFFIX_FORMATS if low.endswith(suf)), None)


def infer_format(path: Path) -> str:
    """The export format of a file (by suffix) or a folder (by the suffixes it holds).

    Raises:
        DatasetError: unknown suffix, nothing recognisable, or several formats in a folder.
    """
    if path.is_file():
        fmt = format_of_name(path.name)
        if fmt is None:
            known = ", ".join(s for s, _ in SUFFIX_FORMATS)
            raise DatasetError(
                f"{path}: not an OCT volume or export (suffix {''.join(path.suffixes) or 'none'}; "
                f"known: {known}; give --format)"
            )
        return fmt
    found = {
        fmt
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and (fmt := format_of_name(p.name)) is not None
    }
    if not found:
        raise DatasetError(
            f"{path}: no case, dataset or OCT export found in this folder "
            "(give --format for OCTA-500 or unusual suffixes)"
        )
    if len(found) > 1:
        raise DatasetError(f"{path}: files of several formats ({', '.join(sorted(found))}); give --format")
    return found.pop()
