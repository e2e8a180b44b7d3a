"""The sidecar JSON of a scan (``<scan>.json``): its keys and the checks of their values.

A sidecar is written by hand, so every value is checked for its JSON type, not only for
being "truthy": ``"flattened": "no"`` is refused (a string is not a boolean), as are
``"spacing": [true, ...]`` (a boolean is not a number), a ``visit_date`` that is not a valid
``YYYY-MM-DD`` date, a blank ``patient_id`` (it would merge unrelated scans into one patient)
and ``visit`` together with ``visit_date`` (one would silently win). Each error names the
sidecar and the field. The keys are listed in :mod:`enface.io.volumes`.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import DatasetError
from enface.fileio import read_json_object
from enface.io.base import MASK_SPACES, check_visit_day, normalise_eye, spacing_error

__all__ = ["BOOLEAN_KEYS", "SIDECAR_KEYS", "check_iso_date", "read_sidecar"]

SIDECAR_KEYS: frozenset[str] = frozenset(
    {
        "axes",
        "spacing",
        "patient_id",
        "eye",
        "visit",
        "visit_date",
        "device",
        "flattened",
        "depth_flipped",
        "slo_box",
        "faf_box",
        "faf_registered",
        "faf_to_slo",
        "mask_space",
    }
)
"""Keys a sidecar JSON may hold (anything else is an error: it is probably a typo)."""

BOOLEAN_KEYS: tuple[str, ...] = ("flattened", "depth_flipped", "faf_registered")
"""Sidecar keys whose value must be a JSON boolean (``true`` / ``false``)."""

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ID_CHARS = re.compile(r"[A-Za-z0-9]")


def check_iso_date(value: Any, where: str) -> str:
    """``value`` as an ISO date ``YYYY-MM-DD`` that exists in the calendar.

    Raises:
        DatasetError: naming ``where``: not a string, another format (``01/02/2020``, a
            date with a time, ``yesterday``) or no such day (``2021-02-30``).
    """
    if not isinstance(value, str) or not _ISO_DATE.match(value.strip()):
        raise DatasetError(f"visit_date must be a date written YYYY-MM-DD (e.g. 2021-03-04), got {value!r}", path=where)
    try:
        return _dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError as e:
        raise DatasetError(f"visit_date {value!r} is no valid date ({e})", path=where) from None


def _check_patient_id(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(f"patient_id must be a name (a string), got {value!r}", path=where)
    if not _ID_CHARS.search(str(value)):
        raise DatasetError(
            f"patient_id {value!r} is blank or has no letter or digit; give the patient's identifier "
            "(or leave the key out: the scan is then its own patient, or use --patient-regex)",
            path=where,
        )


def _check_mask_space(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise DatasetError(
            f'mask_space must be an object {{task: "oct" | "slo" | "faf"}} (e.g. {{"ga": "slo"}}), got {value!r}',
            path=where,
        )
    for key, space in value.items():
        if space not in MASK_SPACES:
            raise DatasetError(f"mask_space of {key!r} must be one of {MASK_SPACES}, got {space!r}", path=where)


def _check_box(value: Any, key: str, where: str) -> None:
    numbers = isinstance(value, list) and len(value) == 4
    numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not np.isfinite(np.asarray(value, dtype=float)).all():
        raise DatasetError(f"{key} must be [x0, y0, x1, y1] (pixels), got {value!r}", path=where)


def _check_values(obj: dict[str, Any], where: str) -> None:
    """Type and range of every key (the file is named in each error)."""
    if "spacing" in obj:
        sp = obj["spacing"]
        problem = spacing_error(sp, where) if isinstance(sp, list) else f"{where}: spacing must be a list, got {sp!r}"
        if problem:
            raise DatasetError(problem)
    for key in BOOLEAN_KEYS:
        if key in obj and not isinstance(obj[key], bool):
            raise DatasetError(f"{key} must be true or false (a JSON boolean), got {obj[key]!r}", path=where)
    if "eye" in obj and normalise_eye(obj["eye"]) is None:
        raise DatasetError(f"eye must be 'OD' or 'OS', got {obj['eye']!r}", path=where)
    if "patient_id" in obj:
        _check_patient_id(obj["patient_id"], where)
    if "visit" in obj and "visit_date" in obj:
        raise DatasetError(
            f"both visit ({obj['visit']!r}) and visit_date ({obj['visit_date']!r}) are given; "
            "give one (all visits of an eye the same way)",
            path=where,
        )
    if "visit" in obj:
        obj["visit"] = check_visit_day(obj["visit"], where)
    if "visit_date" in obj:
        obj["visit_date"] = check_iso_date(obj["visit_date"], where)
    for key in ("slo_box", "faf_box"):
        if key in obj:
            _check_box(obj[key], key, where)
    if "faf_to_slo" in obj:
        try:
            m = np.asarray(obj["faf_to_slo"], dtype=float)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-9:
            raise DatasetError("faf_to_slo must be an invertible 3 x 3 matrix", path=where)
    if "mask_space" in obj:
        _check_mask_space(obj["mask_space"], where)
    for key in ("axes", "device"):
        if key in obj and not isinstance(obj[key], str):
            raise DatasetError(f"{key} must be a string, got {obj[key]!r}", path=where)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sidecar JSON (empty dict when the file does not exist).

    Returns:
        The keys (``visit_date`` normalised to ``YYYY-MM-DD``), and ``_path``: the file.

    Raises:
        DatasetError: invalid JSON, not an object, unknown keys or invalid values (naming
            the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    obj = read_json_object(path)
    unknown = sorted(set(obj) - SIDECAR_KEYS)
    if unknown:
        raise DatasetError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SIDECAR_KEYS))})", path=path)
    _check_values(obj, str(path))
    obj["_path"] = str(path)
    return obj
