"""Heidelberg Spectralis exports through eyepy: ``.vol``, HEYEX XML and ``.e2e``.

eyepy parses the files; this module only converts its :class:`eyepy.EyeVolume` into a
:class:`~enface.io.base.Scan`:

* eyepy's ``(n_bscans, depth, width)`` data become ``(H, W, D)``;
* each B-scan's start/end on the localizer (mm, or degrees for ``.e2e``) become SLO pixel
  coordinates, with eyepy's own unit convention (degrees are relative to the centre of a
  30 degree field of view);
* the en-face grid is put in the orientation of the SLO: B-scan 0 is the topmost one on
  the SLO and A-scan 0 the leftmost (Spectralis stores them bottom-up, so the volume is
  usually flipped along ``H``); :func:`~enface.io.base.orient_scan` reverses everything on
  the grid together and records it (``Scan.file_flips``, ``meta``), so that companion files
  in the export's own B-scan order land on the right B-scans too;
* the BM segmentation (layer ``"BM"``) is used when the export has one.

``.e2e`` files do not state the voxel spacing in a form eyepy reads, so it must be given.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError, ScanKindError
from enface.io.base import (
    Scan,
    clean_id,
    normalise_eye,
    orient_scan,
    orientation_from_positions,
    source_str,
    to_unit_float,
)
from enface.io.export_checks import NOT_A_VOLUME, check_not_empty, check_vol, check_xml, refuse_nan_bscans
from enface.io.formats import ExportFormat, ReadOptions, ScanUnit, register_format, scan_stem
from enface.io.volumes import attach_companions, find_companions, read_sidecar

log = logging.getLogger(__name__)

__all__ = ["HEIDELBERG_FORMATS", "eyevolume_to_scan", "read_export", "read_heidelberg"]

HEIDELBERG_FORMATS: tuple[str, ...] = ("vol", "xml", "e2e")


def vol_display(raw: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Heyex's display mapping of ``.vol`` intensities, as eyepy's ``vol`` transform computes it
    (the same uint8 values), in float32 over the whole array in place of masked gathers (~4x
    faster on a Spectralis cube).

    ``.vol`` files store linear intensities in [0, 1], and ``FLT_MAX`` where nothing was
    measured: a value ``v <= 1`` maps to ``clip((log(v + 2.44e-4) + 8.3) / 8.285, 0, 1)``, an
    unmeasured one to 0, then to ``rint(255 x)`` as uint8.

    Args:
        raw: the file's float32 intensities, any shape.
        in_place: map ``raw`` itself (float32) instead of a copy (eyepy hands its hook a copy).

    Returns:
        uint8 array of the same shape.
    """
    data = raw if in_place and raw.dtype == np.float32 else np.array(raw, dtype=np.float32)
    unmeasured = data == np.finfo(np.float32).max
    above = data > 1  # outside the mapping: clipped to 1 below
    with np.errstate(invalid="ignore", divide="ignore"):  # values outside the file's range, as eyepy
        np.add(data, np.float32(2.44e-04), out=data)
        np.log(data, out=data)
    data += np.float32(8.3)
    data /= np.float32(8.285)
    data[above] = 1
    data[unmeasured] = 0
    np.clip(data, 0, 1, out=data)
    data *= np.float32(255)
    np.rint(data, out=data)
    return data.astype(np.uint8)


class _NanNoting:
    """An intensity transform for eyepy that notes the B-scans holding NaN in the raw samples
    it is handed before mapping them (so that the file's samples are not read a second time to
    check them). A ``.vol`` OCT volume is mapped by :func:`vol_display`, in place on the copy
    eyepy passes in; another mapping (angiography) is eyepy's own."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform
        self.nan_bscans: list[int] = []

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        self.nan_bscans = np.flatnonzero(np.isnan(raw).any(axis=tuple(range(1, raw.ndim)))).tolist()
        return self.transform(raw)


def _iso_date(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.date().isoformat() if isinstance(value, _dt.datetime) else value.isoformat()
    text = str(value).strip()
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        return None


def _positions_px(bscan_meta: list[Any], localizer_meta: Any) -> np.ndarray | None:
    """``(n, 2, 2)`` B-scan start/end on the localizer in pixels, or None when unknown."""
    try:
        scale = np.array([float(localizer_meta["scale_x"]), float(localizer_meta["scale_y"])])
        unit = str(localizer_meta["scale_unit"])
        pos = np.array(
            [[bm["start_pos"], bm["end_pos"]] for bm in bscan_meta], dtype=np.float64
        )  # (n, 2, 2) in the localizer's unit
    except (KeyError, TypeError, ValueError):
        return None
    if pos.ndim != 3 or not np.isfinite(pos).all() or not (scale > 0).all():
        return None
    offset = np.array([15.0, 15.0]) if unit == "°" else np.zeros(2)  # eyepy: 30° FOV, centred
    return (pos + offset) / scale


def _volume_and_spacing(
    ev: Any, source: str, spacing: tuple[float, float, float] | None, default_spacing: tuple[float, float, float] | None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """eyepy's ``(n_bscans, depth, width)`` data as an ``(H, W, D)`` float volume, and the
    spacing ``(sh, sw, sd)`` in mm (given, from the export, or the default)."""
    data = np.asarray(ev.data)
    if data.ndim != 3:
        raise DatasetError(f"expected a 3D OCT volume, got shape {data.shape}", path=source)
    if data.dtype == np.uint8:  # (H, W, D) in [0, 1] in one pass, C-ordered (as to_unit_float, bit for bit)
        volume = np.empty((data.shape[0], data.shape[2], data.shape[1]), np.float32)
        np.divide(np.transpose(data, (0, 2, 1)), np.float32(255.0), out=volume, dtype=np.float32)
    else:
        volume = to_unit_float(np.transpose(data, (0, 2, 1)))  # (H, W, D)
    meta = ev.meta
    unit = str(meta.get("scale_unit", ""))
    if spacing is None and unit != "mm":
        spacing = default_spacing
    if spacing is None:
        if unit != "mm":
            raise DatasetError(
                f"the export gives no spacing in mm (unit {unit!r}); pass the spacing "
                "explicitly (--spacing SH,SW,SD in mm)",
                path=source,
            )
        spacing = (float(meta["scale_z"]), float(meta["scale_x"]), float(meta["scale_y"]))
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise DatasetError(f"invalid spacing in the export {spacing}", path=source)
    return volume, tuple(float(s) for s in spacing)  # type: ignore[return-value]


def _localizer(ev: Any, n_bscans: int, source: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The SLO in [0, 1] and the ``(H, 2, 2)`` B-scan positions on it (in file order)."""
    localizer = getattr(ev, "localizer", None)
    if localizer is None:
        return None, None
    slo_data = np.asarray(localizer.data)
    if slo_data.ndim == 3:
        slo_data = slo_data[..., 0]
    positions = _positions_px(list(ev.meta["bscan_meta"]), localizer.meta)
    if positions is not None and positions.shape[0] != n_bscans:
        log.warning("%s: %d B-scan positions for %d B-scans; ignoring them", source, positions.shape[0], n_bscans)
        positions = None
    return to_unit_float(slo_data), positions


def _export_bm(ev: Any, shape: tuple[int, int, int], source: str) -> np.ndarray | None:
    """The export's BM segmentation (layer ``"BM"``, file order) when it covers at least half
    of the A-scans; NaN where it is missing."""
    layers = getattr(ev, "layers", {})
    if "BM" not in layers:
        return None
    cand = np.asarray(layers["BM"].data, dtype=np.float64)
    if cand.shape != shape[:2]:
        return None
    valid = np.isfinite(cand) & (cand > 0) & (cand < shape[2])
    if valid.mean() >= 0.5:
        return np.where(valid, cand, np.nan).astype(np.float32)
    if valid.any():
        log.info("%s: BM segmentation covers only %.0f%% of A-scans; estimating BM instead", source, 100 * valid.mean())
    return None


def eyevolume_to_scan(
    ev: Any,
    source: str,
    *,
    patient_id: str | None = None,
    visit_date: str | None = None,
    device: str = "Heidelberg Spectralis",
    spacing: tuple[float, float, float] | None = None,
    default_spacing: tuple[float, float, float] | None = None,
) -> Scan:
    """Convert an :class:`eyepy.EyeVolume` into a :class:`Scan`.

    Args:
        ev: the eyepy volume (data ``(n_bscans, depth, width)``).
        source: file name used in errors and stored in ``meta.json``.
        patient_id: patient identifier from the export, if any.
        visit_date: ISO date of the visit, if known.
        device: device name stored in ``meta.json``.
        spacing: ``(sh, sw, sd)`` in mm overriding the export's.
        default_spacing: ``(sh, sw, sd)`` in mm used when the export does not state its
            spacing in mm (``.e2e``).

    Returns:
        The scan on ``(H, W, D)`` axes in SLO orientation; :attr:`Scan.file_flips` says
        which of the file's axes were reversed (companions in file order follow them).

    Raises:
        DatasetError: unusable data (not 3D, unknown spacing, ...).
    """
    if np.asarray(ev.data).ndim == 3 and np.asarray(ev.data).shape[0] == 1:
        raise ScanKindError("line scan", f"line scan (1 B-scan): {NOT_A_VOLUME}", path=source)
    volume, spacing = _volume_and_spacing(ev, source, spacing, default_spacing)
    slo, positions = _localizer(ev, volume.shape[0], source)
    if positions is not None and volume.shape[0] > 1 and np.ptp(positions, axis=0).max() < 1e-6:
        raise ScanKindError(
            "repeated line scan",
            f"all {volume.shape[0]} B-scans lie at the same place on the SLO (a repeated line "
            f"scan, or B-scan positions lost on export): {NOT_A_VOLUME}",
            path=source,
        )
    meta = ev.meta
    eye = normalise_eye(meta.get("laterality"))
    localizer = getattr(ev, "localizer", None)
    if eye is None and localizer is not None:
        eye = normalise_eye(localizer.meta.get("laterality"))
    info: dict[str, Any] = {
        "device": device,
        "patient_id": patient_id,
        "eye": eye,
        "visit_date": visit_date or _iso_date(meta.get("visit_date")) or _iso_date(meta.get("exam_time")),
    }
    scan = Scan(
        volume=np.ascontiguousarray(volume, dtype=np.float32),
        spacing=spacing,
        source=source,
        slo=slo,
        bscan_positions=positions,
        bm=_export_bm(ev, volume.shape, source),
        meta=info,
    )
    return orient_scan(scan, *orientation_from_positions(positions))


@contextlib.contextmanager
def _quiet_eyepy() -> Iterator[None]:
    """eyepy's warnings (e.g. "less layers than expected" on every valid .vol) held back while
    it parses: what matters is reported by enface itself, naming the file."""
    logger = logging.getLogger("eyepy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_kind(path: Path, fmt: str, source: str) -> None:
    """Refuse, naming its kind, a file that is no readable volume scan (before eyepy parses it)."""
    if fmt == "vol":
        check_vol(path, samples=False)  # the samples are checked as they are parsed (_parse)
    elif fmt == "xml":
        xml = path
        if path.is_dir():
            found = sorted(path.glob("*.xml"))
            if len(found) != 1:
                raise DatasetError(f"expected one HEYEX XML file in the folder, found {len(found)}", path=source)
            xml = found[0]
        check_xml(xml)
    else:
        check_not_empty(path, f"Heidelberg .{fmt} export")


def read_heidelberg(
    path: str | os.PathLike,
    fmt: str | None = None,
    spacing: tuple[float, float, float] | None = None,
    default_spacing: tuple[float, float, float] | None = None,
) -> Scan:
    """Read a Heidelberg export with eyepy.

    Args:
        path: a ``.vol`` file, a HEYEX XML file (or the folder holding exactly one), or an
            ``.e2e`` file (its first OCT volume series).
        fmt: ``"vol"``, ``"xml"`` or ``"e2e"``; guessed from the suffix when omitted.
        spacing: ``(sh, sw, sd)`` in mm overriding the export's.
        default_spacing: ``(sh, sw, sd)`` in mm when the export states none in mm (``.e2e``
            needs one of the two).

    Returns:
        The scan, with SLO, B-scan positions and BM when the export has them.

    Raises:
        DatasetError: the file is missing, truncated or not a supported export.
    """
    path = Path(path)
    source = source_str(path)
    if fmt is None:
        fmt = "xml" if path.is_dir() else path.suffix.lower().lstrip(".")
    if fmt not in HEIDELBERG_FORMATS:
        raise DatasetError(f"unknown Heidelberg format {fmt!r} (known: {HEIDELBERG_FORMATS})", path=source)
    if not path.exists():
        raise DatasetError("file not found", path=source)
    _check_kind(path, fmt, source)
    with _quiet_eyepy():
        ev, patient, visit = _parse(path, fmt, source)
    return eyevolume_to_scan(
        ev, source, patient_id=patient, visit_date=visit, spacing=spacing, default_spacing=default_spacing
    )


def _parse(path: Path, fmt: str, source: str) -> tuple[Any, str | None, str | None]:
    """eyepy's volume of the export, its patient id and visit date."""
    try:
        if fmt == "vol":
            from eyepy.io.he import HeVolReader

            reader = HeVolReader(path)
            ev = reader.volume
            oct_mapping = ev.meta.get("intensity_transform") == "vol"
            hook = _NanNoting(partial(vol_display, in_place=True) if oct_mapping else ev.intensity_transform)
            ev.set_intensity_transform(hook)
            ev.data  # noqa: B018  (maps the intensities now, and finds NaN B-scans)
            refuse_nan_bscans(hook.nan_bscans, path)
            pf = reader.parsed_file
            patient = clean_id(pf.patient_id) or clean_id(pf.pid)
            visit = _iso_date(pf.visit_date) or _iso_date(pf.exam_time)
        elif fmt == "xml":
            from eyepy.io.he import HeXmlReader

            reader = HeXmlReader(path)
            ev = reader.volume
            pv = reader.parsed_values
            patient = clean_id(pv.get("patient_id")) or clean_id(pv.get("pid"))
            visit = _iso_date(pv.get("visit_date")) or _iso_date(pv.get("exam_time"))
        else:
            from eyepy.io.he import HeE2eReader

            with HeE2eReader(path) as reader:
                ev = reader.volume
            heyex = ev.meta.get("e2e_metadata", {}).get("heyex", {}) if hasattr(ev.meta, "get") else {}
            patient = clean_id(heyex.get("Patient", {}).get("Patient ID"))
            visit = _iso_date(heyex.get("Container", {}).get("Series Date"))
    except DatasetError:
        raise
    except Exception as e:  # eyepy / construct raise many types on truncated or foreign files
        raise ScanKindError(
            "damaged file", f"unreadable or truncated {fmt} export ({type(e).__name__}: {e})", path=source
        ) from None
    return ev, patient, visit


def read_export(unit: ScanUnit, options: ReadOptions, fmt: str) -> Scan:
    """One Heidelberg export with the companions beside it (``<stem>.json`` sidecar, whose
    ``spacing`` overrides the export's, ``<stem>_faf.png``, masks, ``<stem>_bm.npy``; an
    ``_slo`` companion is not used: the export has its own SLO).

    Raises:
        DatasetError: the export or a companion is unusable, naming the file.
    """
    path = unit.source
    stem = scan_stem(path)
    sidecar = read_sidecar(path.parent / f"{stem}.json")
    sp = sidecar.get("spacing")
    scan = read_heidelberg(
        path,
        fmt,
        spacing=None if sp is None else (float(sp[0]), float(sp[1]), float(sp[2])),
        default_spacing=options.spacing,
    )
    return attach_companions(scan, find_companions(path.parent, stem), sidecar, use_slo=False)


def _read_vol(unit: ScanUnit, options: ReadOptions) -> Scan:
    return read_export(unit, options, "vol")


def _read_xml(unit: ScanUnit, options: ReadOptions) -> Scan:
    return read_export(unit, options, "xml")


def _read_e2e(unit: ScanUnit, options: ReadOptions) -> Scan:
    return read_export(unit, options, "e2e")


register_format(ExportFormat("vol", "Heidelberg Spectralis .vol", _read_vol, (".vol",)))
register_format(ExportFormat("xml", "Heidelberg HEYEX XML export", _read_xml, (".xml",)))
register_format(ExportFormat("e2e", "Heidelberg .e2e (needs --spacing)", _read_e2e, (".e2e",)))
