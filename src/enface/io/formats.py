"""The registry of export formats: what each is called, how its scans are found in a folder,
how one is read into a :class:`~enface.io.base.Scan`.

``enface prepare``, ``enface predict`` and ``enface check`` look formats up here and name
none of them; a new format is one :func:`register_format` call (the way a model is one
``register_model``), made by the module that reads it. The built-in formats register when
:mod:`enface.io` is imported: Heidelberg ``vol``, ``xml``, ``e2e``
(:mod:`enface.io.heidelberg`), ``octa500`` (:mod:`enface.io.octa500`), ``nifti`` and
``numpy`` (:mod:`enface.io.volumes`).

A format declares (:class:`ExportFormat`):

* ``name`` (the ``--format`` value) and a one-line ``description``;
* ``suffixes``: the file suffixes that name it, so that a file or folder given without
  ``--format`` is recognised (a layout such as OCTA-500 has none and must be named);
* ``read(unit, options) -> Scan``: one scan, from the :class:`ScanUnit` its finder made;
* ``find(root) -> [ScanUnit]`` (optional): the scans under a folder (or the one file given).
  The default makes one unit per file with one of the format's suffixes, searched
  recursively, hidden files and ``<stem>_bm.npy`` companions left out. A format whose unit
  is not one file (a folder per scan, a series of files grouped by an identifier, several
  scans in one file) gives its own finder: one unit per scan, each with its own ``key``,
  ``source`` and ``files``; a scan that cannot be read becomes a unit with a ``problem``
  naming the file, which fails alone when read (the batch goes on);
* ``detect(path) -> bool`` (optional): recognises one of its files by content, whatever the
  name (DICOM: the ``DICM`` preamble), when no suffix names a format;
* ``channels``: extra input channels it can read beside the OCT (OCTA-500: ``octa``);
* ``official_split`` / ``split_source``: a dataset's own train/val/test split by patient id
  (OCTA-500), used when ``splits.json`` is written.

Kept free of heavy imports: the command line builds its ``--format`` choices from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enface.errors import DatasetError
from enface.io.base import Scan

__all__ = [
    "COMPANION_SUFFIXES",
    "ExportFormat",
    "ReadOptions",
    "ScanUnit",
    "find_units",
    "format_of_name",
    "get_format",
    "infer_format",
    "list_formats",
    "read_unit",
    "register_format",
    "scan_stem",
    "units_of_files",
]

COMPANION_SUFFIXES: tuple[str, ...] = ("_bm.npy",)
"""Suffixes of companion files that end like a format's suffix but are no scan."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may be told, beyond its files.

    Attributes:
        axes: stored axis order of volumes that do not state it (``HWD`` letters).
        spacing: ``(sh, sw, sd)`` in mm for scans that do not state it.
        channels: extra input channels wanted beside the OCT (a subset of the format's).
        tasks: keep only these mask tasks (``None``: all).
        export_bm: read the export's own BM segmentation (False: it is estimated anyway).
    """

    axes: str | None = None
    spacing: tuple[float, float, float] | None = None
    channels: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    export_bm: bool = True


@dataclass(frozen=True)
class ScanUnit:
    """One scan a format found: what identifies it, what reports name, what reads it.

    Attributes:
        key: identifies the scan on a re-run (``prepare`` skips a key it already prepared):
            by default its path within the source folder; a format with several scans per
            file or folder adds what tells them apart (``"a/b#<series uid>"``).
        name: the case id it asks for (sanitised and made unique by ``prepare``).
        source: the file or folder reports name for this scan.
        files: every file the scan is read from (empty: ``source`` alone).
        detail: anything the format's reader needs (picklable: it may go to a worker).
        problem: why the scan cannot be read (reading it raises this, naming ``source``);
            ``None`` when it can.
        kind: the kind of ``problem`` (reports count failures by kind: ``"damaged file"``,
            ``"line scan"``, ... as :class:`~enface.errors.ScanKindError` names them).
    """

    key: str
    name: str
    source: Path
    files: tuple[Path, ...] = ()
    detail: Any = None
    problem: str | None = None
    kind: str = "error"


Finder = Callable[[Path], list[ScanUnit]]
"""``find(root)``: the scans under a folder, or of the one file ``root``."""

Reader = Callable[[ScanUnit, ReadOptions], Scan]
"""``read(unit, options)``: one scan (raises :class:`~enface.errors.DatasetError` naming the file)."""


@dataclass(frozen=True)
class ExportFormat:
    """An export format: its name, how its scans are found and read (see the module docstring).

    Attributes:
        name: the ``--format`` value (lowercase letters, digits, ``_``, ``-``).
        description: one line for help texts and docs.
        read: reads one :class:`ScanUnit` into a :class:`~enface.io.base.Scan`.
        suffixes: lowercase file suffixes that name the format (``".nii.gz"``); none for a
            layout that must be named with ``--format``.
        find: the scans under a folder or of one file; ``None``: one per file with a suffix.
        detect: recognises one of the format's files by its content, whatever its name (a
            DICOM file by its ``DICM`` preamble), for files and folders given without
            ``--format`` whose suffixes name no format.
        channels: extra input channels the format can read (``("octa",)``).
        official_split: ``patient id -> "train" | "val" | "test" | None``, the dataset's
            own split, or ``None``.
        split_source: what that split is called in ``splits.json`` and notes.
    """

    name: str
    description: str
    read: Reader
    suffixes: tuple[str, ...] = ()
    find: Finder | None = None
    detect: Callable[[Path], bool] | None = None
    channels: tuple[str, ...] = ()
    official_split: Callable[[str], str | None] | None = None
    split_source: str = ""


_REGISTRY: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Register an export format (the module that reads it calls this when imported).

    Raises:
        ValueError: an invalid or taken name, or a suffix another format already claims.
    """
    if not _NAME_RE.match(fmt.name):
        raise ValueError(f"format name {fmt.name!r}: use lowercase letters, digits, '_' and '-'")
    if fmt.name in _REGISTRY:
        raise ValueError(f"format {fmt.name!r} is already registered")
    for suf in fmt.suffixes:
        if not suf.startswith(".") or suf != suf.lower():
            raise ValueError(f"format {fmt.name!r}: suffix {suf!r} must be lowercase and start with '.'")
        owner = next((f.name for f in _REGISTRY.values() if suf in f.suffixes), None)
        if owner is not None:
            raise ValueError(f"format {fmt.name!r}: suffix {suf!r} already names format {owner!r}")
    if fmt.official_split is not None and not fmt.split_source:
        raise ValueError(f"format {fmt.name!r}: an official split needs a split_source naming it")
    _REGISTRY[fmt.name] = fmt
    return fmt


def list_formats() -> list[str]:
    """Names of the registered formats, sorted."""
    return sorted(_REGISTRY)


def get_format(name: str) -> ExportFormat:
    """The registered format ``name``.

    Raises:
        ValueError: no such format (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r} (registered: {', '.join(list_formats())})") from None


def _suffix_pairs() -> list[tuple[str, str]]:
    """``(suffix, format)`` of every registered format, the longest suffix first."""
    pairs = [(suf, f.name) for f in _REGISTRY.values() for suf in f.suffixes]
    return sorted(pairs, key=lambda p: -len(p[0]))


def format_of_name(name: str) -> str | None:
    """The format a file name's suffix names, or ``None`` (also for a ``<stem>_bm.npy`` companion)."""
    low = name.lower()
    if low.endswith(COMPANION_SUFFIXES):  # a companion beside an export, not a volume
        return None
    return next((fmt for suf, fmt in _suffix_pairs() if low.endswith(suf)), None)


def scan_stem(path: Path) -> str:
    """File name without the suffix of a registered format (``a.nii.gz`` -> ``a``)."""
    low = path.name.lower()
    suf = next((s for s, _ in _suffix_pairs() if low.endswith(s)), None)
    return path.name[: -len(suf)] if suf else path.stem


def _detected(path: Path) -> str | None:
    """The format whose ``detect`` recognises the file's content, or None."""
    return next((f.name for f in _REGISTRY.values() if f.detect is not None and f.detect(path)), None)


def infer_format(path: Path) -> str:
    """The export format of a file (by suffix) or a folder (by the suffixes it holds).

    Raises:
        DatasetError: unknown suffix, nothing recognisable, or several formats in a folder.
    """
    if path.is_file():
        fmt = format_of_name(path.name) or _detected(path)
        if fmt is None:
            known = ", ".join(f"{suf} ({name})" for suf, name in _suffix_pairs())
            raise DatasetError(
                f"not an OCT volume or export (suffix {''.join(path.suffixes) or 'none'}; "
                f"registered formats: {known}; give --format)",
                path=path,
            )
        return fmt
    found = {
        fmt
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and (fmt := format_of_name(p.name)) is not None
    }
    if not found:
        found = {fmt for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and (fmt := _detected(p))}
    if not found:
        unnamed = [f.name for f in _REGISTRY.values() if not f.suffixes]
        raise DatasetError(
            f"no case, dataset or OCT export found in this folder "
            f"(give --format for {', '.join(unnamed) or 'a format'} or unusual suffixes)",
            path=path,
        )
    if len(found) > 1:
        raise DatasetError(f"files of several formats ({', '.join(sorted(found))}); give --format", path=path)
    return found.pop()


def units_of_files(files: list[Path], root: Path) -> list[ScanUnit]:
    """One unit per file: key its path within ``root``, name its folders and stem joined by ``_``."""
    units = []
    for p in files:
        rel = p.relative_to(root) if p.is_relative_to(root) else Path(p.name)
        units.append(ScanUnit(rel.as_posix(), "_".join((*rel.parent.parts, scan_stem(p))), p))
    return units


def _files_with_suffixes(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``root`` (recursive) ending in one of ``suffixes``, hidden files and companions
    left out, sorted."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.name.lower().endswith(suffixes)
        and not p.name.lower().endswith(COMPANION_SUFFIXES)
    )


def find_units(fmt: ExportFormat, root: Path) -> list[ScanUnit]:
    """The scans of ``root`` in format ``fmt``: the format's finder, else one unit per file with
    one of its suffixes (a file given directly is taken whatever its suffix)."""
    if fmt.find is not None:
        return fmt.find(root)
    if root.is_file():
        return units_of_files([root], root.parent)
    return units_of_files(_files_with_suffixes(root, fmt.suffixes), root)


def read_unit(fmt: ExportFormat, unit: ScanUnit, options: ReadOptions) -> Scan:
    """Read one scan with its format's reader.

    Raises:
        DatasetError: the unit's ``problem`` (of its ``kind``, naming its ``source``), or
            what the reader raises.
    """
    if unit.problem is not None:
        raise DatasetError(unit.problem, unit.source, unit.kind)
    return fmt.read(unit, options)
