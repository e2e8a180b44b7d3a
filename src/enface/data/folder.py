"""The dataset folder (README, "The dataset folder"): reader, writer and validation.

Layout::

    <dataset>/
      dataset.json        name, modalities present, tasks (mask names), default spacing
      splits.json         {"train": [patient ids], "val": [...], "test": [...], ...}
      cases/<case_id>/
        oct.npy           (H, W, D) volume, flattened and depth-resampled; memory-mappable
        slo.png, faf.png  2D modalities on the (H, W) en-face grid, when present
        mask_<task>.png   en-face labels; mask_<task>.<grader>.png for extra graders
        meta.json         patient_id, eye, visit, spacing, device, source file

Every case is written into a hidden temporary folder and renamed into place, so a case
folder either is complete or does not exist. Every problem found while reading raises
:class:`DatasetError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enface.errors import ConfigError, DatasetError
from enface.fileio import (
    atomic_save_npy,
    atomic_save_png,
    atomic_write_json,
    load_npy,
    read_json_object,
    recover_replaced_folder,
    replace_folder,
    temp_dir,
)
from enface.io.base import check_visit_day
from enface.io.images import read_image, read_mask
from enface.targets import check_name

__all__ = [
    "MODALITIES",
    "QUEUE_COLUMNS",
    "Case",
    "CaseMeta",
    "DatasetError",
    "check_patient_overlap",
    "dataset_of",
    "is_case",
    "is_dataset",
    "list_cases",
    "list_ids",
    "load_case",
    "read_dataset_info",
    "read_splits",
    "split_coverage",
    "write_case",
    "write_dataset_info",
    "write_splits",
]

MODALITIES: tuple[str, ...] = ("slo", "faf")
"""2D modalities a case may carry, stored as ``<name>.png``."""

QUEUE_COLUMNS: tuple[str, ...] = (
    "rank",
    "case_id",
    "patient_id",
    "eye",
    "visit",
    "score",
    "predicted_area_mm2",
    "area_sd_mm2",
    "strategy",
)
"""Columns of a labeling queue of a dataset's cases (``enface select`` writes it, ``enface review``
reads it; ``case_id`` is the one a reader requires), one row per case, best first (``rank`` from 1)."""

MASK_RE = re.compile(r"^mask_(?P<task>[A-Za-z0-9-]+)(?:\.(?P<grader>[A-Za-z0-9_-]+))?\.png$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class CaseMeta:
    """What ``meta.json`` holds for one case (one eye at one visit).

    Attributes:
        case_id: folder name under ``cases/``.
        patient_id: patient identifier; splits are made by patient.
        eye: ``"OD"`` or ``"OS"``.
        visit: visit day (0 for the first visit); None when ``meta.json`` gives none.
        spacing: voxel spacing ``(sh, sw, sd)`` in mm: between B-scans, between A-scans,
            between depth samples.
        device: acquisition device or generator name.
        source: file the case was prepared from.
        extra: anything else (registration quality, BM offsets, ...).
    """

    case_id: str
    patient_id: str
    eye: str = "OD"
    visit: int | None = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    device: str = "unknown"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "eye": self.eye,
            "visit": None if self.visit is None else int(self.visit),
            "spacing": [float(s) for s in self.spacing],
            "device": self.device,
            "source": self.source,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "meta.json", folder_name: str | None = None) -> CaseMeta:
        """Parse ``meta.json``; ``case_id`` may be left out (it is the folder's name).

        Raises:
            DatasetError: naming ``where`` and the missing or invalid key.
        """
        if not isinstance(obj, Mapping):
            raise DatasetError("expected a JSON object", path=where)
        case_id = obj.get("case_id", folder_name)
        if case_id is None or not str(case_id).strip():
            raise DatasetError("missing key 'case_id'", path=where)
        patient = obj.get("patient_id")
        if patient is None or isinstance(patient, (bool, dict, list)) or not str(patient).strip():
            raise DatasetError(
                f"patient_id is missing, null or not a name ({patient!r}); every case "
                "needs its patient (splits are made by patient)",
                path=where,
            )
        visit = None if obj.get("visit") is None else check_visit_day(obj["visit"], where)
        try:
            spacing = tuple(float(s) for s in obj["spacing"])
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(f"spacing must be 3 positive numbers, got {obj['spacing']!r}")
            eye = str(obj.get("eye", "OD"))
            if eye not in ("OD", "OS"):
                raise ValueError(f"eye must be 'OD' or 'OS', got {eye!r}")
            return cls(
                case_id=str(case_id),
                patient_id=str(patient),
                eye=eye,
                visit=visit,
                spacing=spacing,
                device=str(obj.get("device", "unknown")),
                source=str(obj.get("source", "")),
                extra=dict(obj.get("extra", {})),
            )
        except KeyError as e:
            raise DatasetError(f"missing key {e.args[0]!r}", path=where) from None
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{e}", path=where) from None


# --------------------------------------------------------------------------- dataset.json


def write_dataset_info(
    root: str | os.PathLike,
    name: str,
    modalities: Sequence[str],
    tasks: Sequence[str],
    spacing: Sequence[float],
    **extra: Any,
) -> Path:
    """Write ``dataset.json``.

    Args:
        root: dataset folder (created when missing).
        name: dataset name (used in run folder names).
        modalities: modalities present in at least one case, e.g. ``("oct", "slo", "faf")``.
        tasks: mask names present in at least one case, e.g. ``("ga",)``.
        spacing: default voxel spacing ``(sh, sw, sd)`` in mm.
        **extra: further JSON-serialisable fields (generator settings, source, ...).
    """
    info = {
        "name": name,
        "modalities": list(modalities),
        "tasks": list(tasks),
        "spacing": [float(s) for s in spacing],
        "format_version": 1,
        **extra,
    }
    return atomic_write_json(Path(root) / "dataset.json", info)


def read_dataset_info(root: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``dataset.json`` (its ``name`` must be a safe folder name)."""
    path = Path(root) / "dataset.json"
    info = read_json_object(path)
    for key in ("name", "modalities", "tasks"):
        if key not in info:
            raise DatasetError(f"missing key {key!r}", path=path)
    try:  # the name becomes a run-folder component: nothing that could leave the runs folder
        check_name(info["name"], "dataset name")
    except ConfigError as e:
        raise DatasetError(f"{e}", path=path) from None
    return info


# --------------------------------------------------------------------------- images


def _to_uint8_image(image: np.ndarray, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return image
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise DatasetError("image has NaN or inf values", path=where)
    if image.min() < -1e-6 or image.max() > 1 + 1e-6:
        raise DatasetError(f"float image must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]", path=where)
    return np.round(image.clip(0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- cases


def _check_id(value: str, what: str) -> None:
    if not _ID_RE.match(value):
        raise DatasetError(f"{what} {value!r} is not a valid identifier (letters, digits, '_', '-', '.')")


def validate_case_arrays(
    case_id: str,
    oct_volume: np.ndarray,
    images: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    volumes: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Check a case's arrays before anything is written.

    Raises:
        DatasetError: naming the case and the problem (wrong shape, NaN/inf voxels,
            mismatched en-face sizes, non-binary masks, unknown modality).
    """
    vol = np.asarray(oct_volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise DatasetError(f"case {case_id}: OCT volume must be 3D (H, W, D), got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.number) or np.iscomplexobj(vol):
        raise DatasetError(f"case {case_id}: OCT volume must hold real numbers, got dtype {vol.dtype}")
    if np.issubdtype(vol.dtype, np.floating) and not np.isfinite(vol).all():
        n = int((~np.isfinite(vol)).sum())
        raise DatasetError(f"case {case_id}: OCT volume has {n} NaN/inf voxels")
    hw = vol.shape[:2]
    for name, img in (images or {}).items():
        if name not in MODALITIES:
            raise DatasetError(f"case {case_id}: unknown modality {name!r} (known: {MODALITIES})")
        if np.asarray(img).shape != hw:
            raise DatasetError(
                f"case {case_id}: {name} has shape {np.asarray(img).shape}, "
                f"expected the en-face grid {hw} of the OCT volume"
            )
    for name, extra in (volumes or {}).items():
        if name == "oct" or not _ID_RE.match(name) or "." in name:
            raise DatasetError(f"case {case_id}: invalid extra volume name {name!r}")
        ev = np.asarray(extra)
        if not np.issubdtype(ev.dtype, np.number) or np.iscomplexobj(ev):
            raise DatasetError(f"case {case_id}: {name} volume must hold real numbers, got dtype {ev.dtype}")
        if ev.shape != vol.shape:
            raise DatasetError(
                f"case {case_id}: {name} volume has shape {ev.shape}, expected the OCT shape {vol.shape}"
            )
        if np.issubdtype(ev.dtype, np.floating) and not np.isfinite(ev).all():
            raise DatasetError(f"case {case_id}: {name} volume has NaN/inf voxels")
    for key, mask in (masks or {}).items():
        m = np.asarray(mask)
        if m.shape != hw:
            raise DatasetError(f"case {case_id}: mask {key!r} has shape {m.shape}, expected the en-face grid {hw}")
        values = set(np.unique(m).tolist())
        if not values <= {0, 1}:
            raise DatasetError(f"case {case_id}: mask {key!r} is not binary (values {sorted(values)[:8]})")


def mask_filename(task: str, grader: str | None = None) -> str:
    """File name of a mask: ``mask_<task>.png`` or ``mask_<task>.<grader>.png``."""
    return f"mask_{task}.png" if grader is None else f"mask_{task}.{grader}.png"


def write_case(
    root: str | os.PathLike,
    meta: CaseMeta,
    oct_volume: np.ndarray,
    images: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
    volumes: Mapping[str, np.ndarray] | None = None,
    bm: np.ndarray | None = None,
) -> Path:
    """Validate and write one case atomically.

    Args:
        root: dataset folder.
        meta: case metadata; ``meta.case_id`` names the folder.
        oct_volume: ``(H, W, D)`` volume (float32, uint8 or uint16 are stored as given;
            other floats are stored as float32).
        images: ``{"slo": (H, W), "faf": (H, W)}`` in [0, 1] (float) or uint8/uint16.
        masks: ``{"ga": (H, W)}`` binary masks; a key ``"ga.grader2"`` writes an extra
            grader's mask ``mask_ga.grader2.png``.
        overwrite: replace an existing case folder; otherwise an existing case is an error.
        volumes: extra input channels on the OCT grid, ``{"octa": (H, W, D)}``, stored as
            ``<name>.npy`` beside ``oct.npy`` (same dtype rules).
        bm: ``(H, W)`` BM the volume was flattened with, stored as ``bm.npy`` (float32).

    Returns:
        The case folder.

    Raises:
        DatasetError: invalid arrays or ids, or the case exists and ``overwrite`` is False.
    """
    root = Path(root)
    _check_id(meta.case_id, "case id")
    _check_id(meta.patient_id, "patient id")
    validate_case_arrays(meta.case_id, oct_volume, images, masks, volumes)
    if bm is not None and (np.asarray(bm).shape != np.asarray(oct_volume).shape[:2] or not np.isfinite(bm).all()):
        raise DatasetError(
            f"case {meta.case_id}: bm must be finite with the grid's shape {np.asarray(oct_volume).shape[:2]}"
        )
    cases = root / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    final = cases / meta.case_id
    recover_replaced_folder(final)
    if final.exists() and not overwrite:
        raise DatasetError("case already exists (use overwrite=True to replace it)", path=final)

    vol = np.asarray(oct_volume)
    if vol.dtype not in (np.float32, np.uint8, np.uint16):
        vol = vol.astype(np.float32)
    tmp = temp_dir(cases, f".{meta.case_id}.")
    try:
        atomic_save_npy(tmp / "oct.npy", vol)
        for name, extra in (volumes or {}).items():
            ev = np.asarray(extra)
            atomic_save_npy(
                tmp / f"{name}.npy", ev if ev.dtype in (np.float32, np.uint8, np.uint16) else ev.astype(np.float32)
            )
        if bm is not None:
            atomic_save_npy(tmp / "bm.npy", np.asarray(bm, dtype=np.float32))
        for name, img in (images or {}).items():
            atomic_save_png(tmp / f"{name}.png", _to_uint8_image(img, f"case {meta.case_id}: {name}"))
        for key, mask in (masks or {}).items():
            task, _, grader = key.partition(".")
            png = (np.asarray(mask) > 0).astype(np.uint8) * 255
            atomic_save_png(tmp / mask_filename(task, grader or None), png)
        atomic_write_json(tmp / "meta.json", meta.to_json())
        replace_folder(tmp, final)  # a crash between its renames is undone by list_cases
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass(frozen=True)
class Case:
    """One case folder. Cheap to construct; files are read on demand.

    Attributes:
        path: the case folder.
        meta: parsed ``meta.json``.
    """

    path: Path
    meta: CaseMeta

    @property
    def case_id(self) -> str:
        return self.meta.case_id

    @property
    def patient_id(self) -> str:
        return self.meta.patient_id

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.meta.spacing

    def load_oct(self, mmap: bool = True) -> np.ndarray:
        """The ``(H, W, D)`` volume (memory-mapped by default; dtype as stored)."""
        return self.load_volume("oct", mmap=mmap)

    def oct_shape(self) -> tuple[int, int, int]:
        """Shape ``(H, W, D)`` read from the ``.npy`` header only."""
        h, w, d = self.load_oct(mmap=True).shape
        return int(h), int(w), int(d)

    def has_volume(self, name: str) -> bool:
        """Whether an extra input channel ``<name>.npy`` (e.g. ``octa``) is present."""
        return (self.path / f"{name}.npy").is_file()

    def load_volume(self, name: str, mmap: bool = True) -> np.ndarray:
        """An ``(H, W, D)`` input channel ``<name>.npy``: ``"oct"`` or an extra one (``"octa"``)."""
        path = self.path / f"{name}.npy"
        vol = load_npy(path, mmap=mmap)
        if vol.ndim != 3:
            raise DatasetError(f"volume must be 3D (H, W, D), got shape {vol.shape}", path=path)
        return vol

    def has_image(self, modality: str) -> bool:
        return (self.path / f"{modality}.png").is_file()

    def load_image(self, modality: str) -> np.ndarray:
        """The ``(H, W)`` float32 image of ``modality`` in [0, 1]."""
        return read_image(self.path / f"{modality}.png")

    def tasks(self) -> list[str]:
        """Tasks with a primary mask in this case."""
        out = []
        for p in sorted(self.path.glob("mask_*.png")):
            m = MASK_RE.match(p.name)
            if m and m.group("grader") is None:
                out.append(m.group("task"))
        return out

    def graders(self, task: str) -> list[str | None]:
        """Graders with a mask for ``task``: ``None`` is the primary mask."""
        out: list[str | None] = []
        for p in sorted(self.path.glob(f"mask_{task}*.png")):
            m = MASK_RE.match(p.name)
            if m and m.group("task") == task:
                out.append(m.group("grader"))
        return sorted(out, key=lambda g: (g is not None, g or ""))

    def has_mask(self, task: str, grader: str | None = None) -> bool:
        return (self.path / mask_filename(task, grader)).is_file()

    def load_mask(self, task: str, grader: str | None = None) -> np.ndarray:
        """The ``(H, W)`` uint8 {0, 1} mask of ``task`` (primary grader by default)."""
        return read_mask(self.path / mask_filename(task, grader))


def load_case(path: str | os.PathLike) -> Case:
    """Open a case folder (reads ``meta.json`` only)."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError("case folder not found", path=path)
    meta = CaseMeta.from_json(
        read_json_object(path / "meta.json"), where=str(path / "meta.json"), folder_name=path.name
    )
    if meta.case_id != path.name:
        raise DatasetError(f"case_id {meta.case_id!r} does not match folder name", path=path / "meta.json")
    return Case(path=path, meta=meta)


def is_dataset(path: str | os.PathLike, unfinished: bool = False) -> bool:
    """Whether ``path`` is a dataset folder: it holds ``dataset.json`` (``unfinished``: or a
    ``cases`` folder, as a dataset being written does)."""
    p = Path(path)
    return (p / "dataset.json").is_file() or (unfinished and (p / "cases").is_dir())


def is_case(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a case folder: it holds ``oct.npy``."""
    return (Path(path) / "oct.npy").is_file()


def dataset_of(path: str | os.PathLike) -> Path | None:
    """The dataset folder ``path`` is, or whose ``cases`` folder or case folder it is; ``None``."""
    p = Path(path)
    candidates = ((p, True), (p.parent, p.name == "cases"), (p.parent.parent, p.parent.name == "cases"))
    return next((root for root, fits in candidates if fits and is_dataset(root)), None)


def list_cases(root: str | os.PathLike) -> list[Case]:
    """All complete cases of a dataset folder, sorted by case id (hidden temp folders skipped)."""
    cases_dir = Path(root) / "cases"
    if not cases_dir.is_dir():
        raise DatasetError(f"folder not found (is {root} a dataset folder?)", path=cases_dir)
    for old in cases_dir.glob(".*.old"):
        recover_replaced_folder(cases_dir / old.name[1 : -len(".old")])
    return [load_case(p) for p in sorted(cases_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]


# --------------------------------------------------------------------------- splits


def check_patient_overlap(splits: Mapping[str, Iterable[str]], where: str = "splits") -> None:
    """Raise :class:`DatasetError` when a patient appears in two splits (or twice in one)."""
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        for pid in splits.get(split, ()):
            if pid in seen:
                other = seen[pid]
                detail = f"twice in {split!r}" if other == split else f"in both {other!r} and {split!r}"
                raise DatasetError(f"patient {pid!r} appears {detail}", path=where)
            seen[pid] = split


def split_coverage(splits: Mapping[str, Iterable[str]], patients: Iterable[str]) -> tuple[list[str], list[str]]:
    """Patients of the cases that are in no split, and split patients that have no case.

    Args:
        splits: the content of ``splits.json``.
        patients: the patient ids of the dataset's cases.

    Returns:
        ``(in_no_split, without_case)``, each sorted.
    """
    assigned = set().union(*(set(splits.get(k, ())) for k in ("train", "val", "test")))
    present = set(patients)
    return sorted(present - assigned), sorted(assigned - present)


def list_ids(ids: Sequence[str], limit: int = 8) -> str:
    """``"a, b, c, ..."``: the first ``limit`` ids of a list, for messages."""
    return ", ".join(ids[:limit]) + (", ..." if len(ids) > limit else "")


def write_splits(root: str | os.PathLike, splits: Mapping[str, Any]) -> Path:
    """Validate and write ``splits.json`` (keys ``train``, ``val``, ``test`` plus extras)."""
    path = Path(root) / "splits.json"
    for key in ("train", "val", "test"):
        if key not in splits:
            raise DatasetError(f"missing split {key!r}", path=path)
    check_patient_overlap(splits, where=str(path))
    return atomic_write_json(path, dict(splits))


def read_splits(root: str | os.PathLike) -> dict[str, Any]:
    """Read ``splits.json``; a patient appearing in two splits raises an error naming it."""
    path = Path(root) / "splits.json"
    splits = read_json_object(path)
    for key in ("train", "val", "test"):
        if key not in splits or not isinstance(splits[key], list):
            raise DatasetError(f"missing or invalid split {key!r}", path=path)
    check_patient_overlap(splits, where=str(path))
    return splits
