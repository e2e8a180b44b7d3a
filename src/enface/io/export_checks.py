"""What a Heidelberg export file is, before a parser is let loose on it.

A folder of Spectralis exports holds more than volume scans: line scans (one B-scan with its
SLO), peripapillary circle scans, radial (star) scans, and files that an interrupted copy
left empty or truncated. Each gets one clear message naming its kind
(:class:`~enface.errors.ScanKindError`), instead of whatever the parser stumbles over first.

* :func:`check_vol` reads the ``.vol`` file header (the published layout: a 2048-byte file
  header, the SLO as ``size_x_slo * size_y_slo`` bytes, then per B-scan a header of
  ``bscan_hdr_size`` bytes followed by ``size_x * size_y`` float32 samples) and compares the
  file with what it announces: scan pattern, B-scan count, size, B-scan signatures, NaN samples;
* :func:`check_xml` parses a HEYEX XML export and checks the B-scan images it names;
* :func:`check_not_empty` for every format.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enface.errors import ScanKindError

__all__ = ["VolHeader", "check_not_empty", "check_vol", "check_xml", "refuse_nan_bscans"]

_VOL_MAGIC = b"HSF-OCT"
_BSCAN_MAGIC = b"HSF-BS"
_HEADER_SIZE = 2048
# leading fields of the file header: version, size_x, n_bscans, size_y, scale_x, distance, scale_y,
# size_x_slo, size_y_slo, scale_x_slo, scale_y_slo, field_size_slo, scan_focus, scan_position,
# exam_time, scan_pattern, bscan_hdr_size
_HEADER_FIELDS = struct.Struct("<12sIIIdddIIddId4sQiI")
_PATTERNS = {1: "line scan", 2: "circle scan", 5: "radial scan"}
NOT_A_VOLUME = "en-face maps need a volume (raster) scan"
"""The reason every scan that is not a raster volume is not prepared."""


@dataclass(frozen=True)
class VolHeader:
    """The fields of a ``.vol`` header that say what the file holds."""

    size_x: int
    n_bscans: int
    size_y: int
    distance: float
    size_x_slo: int
    size_y_slo: int
    scan_pattern: int
    bscan_hdr_size: int

    @property
    def bscan_bytes(self) -> int:
        """Bytes of one B-scan: its header and its samples."""
        return self.bscan_hdr_size + 4 * self.size_x * self.size_y

    @property
    def data_start(self) -> int:
        """Offset of the first B-scan."""
        return _HEADER_SIZE + self.size_x_slo * self.size_y_slo

    @property
    def expected_size(self) -> int:
        """Size of a complete file with ``n_bscans`` B-scans (thickness grids may follow)."""
        return self.data_start + self.n_bscans * self.bscan_bytes


def check_not_empty(path: Path, what: str) -> int:
    """The file's size in bytes.

    Raises:
        ScanKindError: ``empty file`` (0 bytes).
    """
    size = path.stat().st_size if path.is_file() else -1
    if size == 0:
        raise ScanKindError("empty file", f"empty file (0 bytes): not a {what}", path=path)
    return size


def _read_header(path: Path, size: int) -> VolHeader:
    with open(path, "rb") as f:
        head = f.read(_HEADER_SIZE)
    if not head.startswith(_VOL_MAGIC):
        raise ScanKindError(
            "damaged file", f"not a Heidelberg .vol file (it does not start with {_VOL_MAGIC.decode()})", path=path
        )
    if len(head) < _HEADER_SIZE:
        raise ScanKindError(
            "truncated file", f"truncated at byte {size} (the .vol header alone is {_HEADER_SIZE} bytes)", path=path
        )
    fields = _HEADER_FIELDS.unpack_from(head)
    return VolHeader(
        size_x=int(fields[1]),
        n_bscans=int(fields[2]),
        size_y=int(fields[3]),
        distance=float(fields[5]),
        size_x_slo=int(fields[7]),
        size_y_slo=int(fields[8]),
        scan_pattern=int(fields[15]),
        bscan_hdr_size=int(fields[16]),
    )


def _count_extra_bscans(path: Path, hdr: VolHeader, size: int) -> int:
    """B-scans after the ones the header counts (their signature where the file should end)."""
    extra = 0
    with open(path, "rb") as f:
        offset = hdr.expected_size
        while offset + hdr.bscan_bytes <= size:
            f.seek(offset)
            if f.read(len(_BSCAN_MAGIC)) != _BSCAN_MAGIC:
                break
            extra += 1
            offset += hdr.bscan_bytes
    return extra


def _nan_bscans(path: Path, hdr: VolHeader) -> list[int]:
    """Indices of B-scans with NaN samples."""
    bad = []
    data = np.memmap(path, dtype="<f4", mode="r", offset=0, shape=(hdr.expected_size // 4,))
    n = hdr.size_x * hdr.size_y
    for i in range(hdr.n_bscans):
        start = hdr.data_start + i * hdr.bscan_bytes + hdr.bscan_hdr_size
        if start % 4:  # samples not on a 4-byte boundary: read them as bytes
            raw = np.fromfile(path, dtype="<f4", count=n, offset=start)
        else:
            raw = data[start // 4 : start // 4 + n]
        if np.isnan(raw).any():
            bad.append(i)
    del data
    return bad


def refuse_nan_bscans(bad: list[int], path: Path) -> None:
    """Refuse a ``.vol`` export whose B-scans ``bad`` (indices) hold NaN samples.

    Raises:
        ScanKindError: ``damaged file`` when ``bad`` is not empty.
    """
    if bad:
        raise ScanKindError(
            "damaged file",
            f"{len(bad)} B-scan(s) hold NaN samples (first: B-scan {bad[0]}); the export is damaged",
            path=path,
        )


def check_vol(path: Path, samples: bool = True) -> VolHeader:
    """Say what a ``.vol`` file is when it is not a complete volume scan.

    Args:
        path: the file.
        samples: also read every B-scan's samples for NaN (a reader that checks the samples
            it parses anyway passes False, and :func:`refuse_nan_bscans` its findings).

    Returns:
        The header of a complete volume scan.

    Raises:
        ScanKindError: ``empty file``, ``truncated file`` (``truncated at byte N of M``),
            ``damaged file`` (not a .vol, more B-scans than the header counts, B-scans
            without their signature, NaN samples), or a scan that is not a raster volume
            (``line scan``, ``circle scan``, ``radial scan``).
    """
    size = check_not_empty(path, "Heidelberg .vol export")
    hdr = _read_header(path, size)
    kind = _PATTERNS.get(hdr.scan_pattern)
    if kind is None and hdr.n_bscans == 1:
        kind = "line scan"
    if kind is not None:
        what = {"line scan": "1 B-scan", "circle scan": "1 circular B-scan around the optic disc"}.get(
            kind, f"{hdr.n_bscans} B-scans through one centre"
        )
        raise ScanKindError(kind, f"{kind} ({what}): {NOT_A_VOLUME}", path=path)
    if hdr.n_bscans == 0 or hdr.size_x == 0 or hdr.size_y == 0:
        raise ScanKindError(
            "damaged file",
            f"the header announces {hdr.n_bscans} B-scans of {hdr.size_x} x {hdr.size_y}: no volume",
            path=path,
        )
    if size < hdr.expected_size:
        n_whole = max(0, (size - hdr.data_start) // hdr.bscan_bytes)
        raise ScanKindError(
            "truncated file",
            f"truncated at byte {size} of {hdr.expected_size} ({n_whole} of {hdr.n_bscans} B-scans complete)",
            path=path,
        )
    extra = _count_extra_bscans(path, hdr, size)
    if extra:
        raise ScanKindError(
            "damaged file",
            f"the header counts {hdr.n_bscans} B-scans but the file holds {hdr.n_bscans + extra}; "
            "it was altered after export (re-export it)",
            path=path,
        )
    with open(path, "rb") as f:
        for i in range(hdr.n_bscans):
            f.seek(hdr.data_start + i * hdr.bscan_bytes)
            if f.read(len(_BSCAN_MAGIC)) != _BSCAN_MAGIC:
                raise ScanKindError(
                    "damaged file", f"B-scan {i} does not start with its signature: the file is damaged", path=path
                )
    if samples:
        refuse_nan_bscans(_nan_bscans(path, hdr), path)
    return hdr


def check_xml(path: Path) -> int:
    """Say what a HEYEX XML export is when it is not a readable volume scan.

    Returns:
        The number of B-scans.

    Raises:
        ScanKindError: ``empty file``, ``truncated file`` (not well-formed XML),
            ``damaged file`` (missing, unreadable or odd-sized B-scan images), or a
            single B-scan (a line or circle scan).
    """
    from PIL import Image, UnidentifiedImageError

    size = check_not_empty(path, "HEYEX XML export")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        line, col = e.position
        raise ScanKindError(
            "truncated file",
            f"truncated or damaged XML ({size} bytes; not well-formed at line {line}, column {col})",
            path=path,
        ) from None
    images = root.findall(".//ImageType[Type='OCT']..")
    if not images:
        raise ScanKindError("damaged file", "a HEYEX XML file without OCT images", path=path)
    if len(images) == 1:
        raise ScanKindError("single B-scan", f"single B-scan (a line or circle scan): {NOT_A_VOLUME}", path=path)
    sizes: dict[tuple[int, int], list[str]] = {}
    for im in images:
        url = im.find("./ImageData/ExamURL")
        name = (url.text or "").split("\\")[-1] if url is not None else ""
        file = path.parent / name
        if not name or not file.is_file():
            raise ScanKindError("damaged file", f"B-scan image {name or '(unnamed)'} is missing", path=path)
        try:
            with Image.open(file) as img:
                img.load()
                sizes.setdefault(img.size, []).append(name)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ScanKindError(
                "damaged file", f"unreadable B-scan image ({type(e).__name__}: {e})", path=file
            ) from None
    if len(sizes) > 1:
        common = max(sizes, key=lambda s: len(sizes[s]))
        odd = next(n for s, names in sizes.items() if s != common for n in names)
        raise ScanKindError(
            "damaged file",
            f"B-scan image {odd} is not {common[0]} x {common[1]} like the other B-scans",
            path=path,
        )
    return len(images)
