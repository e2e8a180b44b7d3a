"""``enface check``: validate a dataset folder and report every problem found.

Unlike the readers of :mod:`enface.data.folder`, which stop at the first problem, the
check walks the whole folder and collects:

* problems (the dataset is not usable as is): missing or invalid ``dataset.json``,
  ``splits.json`` with a patient in two splits, a case folder without ``oct.npy`` or
  ``meta.json``, unreadable or truncated files, a volume that is not 3D or has NaN/inf
  voxels, 2D images or masks not on the volume's ``(H, W)`` grid, non-binary masks,
  tasks/modalities present in cases but not declared in ``dataset.json``,
  two visits of one eye on one day, and one volume (``oct.npy`` byte for byte) in two
  cases (one scan under two names);
* warnings (worth a look): left-over temporary folders from an interrupted write,
  patients in no split, split patients without cases, declared tasks with no mask,
  mixed depths, unknown files, and flipped exports prepared before OCT-grid companions
  (masks, ``_bm.npy``) were flipped with the volume.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import (
    MASK_RE,
    MODALITIES,
    CaseMeta,
    is_dataset,
    list_ids,
    read_dataset_info,
    read_splits,
    split_coverage,
)
from enface.errors import DatasetError
from enface.fileio import load_npy, read_json_object
from enface.io.formats import infer_format
from enface.io.images import read_image, read_mask

__all__ = ["CheckReport", "check_case", "check_dataset"]

_CHUNK_VOXELS = 1 << 24  # finiteness is checked in chunks of ~16 M voxels


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        root: the dataset folder.
        problems: ``(where, message)`` that make the dataset unusable as is.
        warnings: ``(where, message)`` worth a look.
        n_cases: number of case folders examined.
        stats: counts (patients, modalities, tasks, shapes) for the summary.
    """

    root: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    n_cases: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem found (warnings allowed)."""
        return not self.problems

    def problem(self, where: str | Path, message: str) -> None:
        self.problems.append((str(where), message))

    def warn(self, where: str | Path, message: str) -> None:
        self.warnings.append((str(where), message))

    def format(self) -> str:
        """A readable report."""
        s = self.stats
        lines = [f"dataset {self.root}"]
        lines.append(
            f"  {self.n_cases} case(s), {s.get('patients', 0)} patient(s); "
            f"modalities: {', '.join(f'{k} {v}' for k, v in sorted(s.get('modalities', {}).items())) or 'none'}; "
            f"tasks: {', '.join(f'{k} {v}' for k, v in sorted(s.get('tasks', {}).items())) or 'none'}"
        )
        if s.get("shapes"):
            shapes = ", ".join(f"{'x'.join(map(str, k))} ({v})" for k, v in sorted(s["shapes"].items()))
            lines.append(f"  volume shapes: {shapes}")
        if s.get("grader_masks"):
            graders = ", ".join(f"{k} {v}" for k, v in sorted(s["grader_masks"].items()))
            lines.append(f"  extra graders' masks (<task>.<grader>): {graders}")
        if s.get("splits"):
            lines.append("  splits: " + ", ".join(f"{k} {v} patient(s)" for k, v in s["splits"].items()))
        if self.problems:
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines += _grouped(self.problems)
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += _grouped(self.warnings)
        lines.append("OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)")
        return "\n".join(lines)


GROUP_AFTER = 3
"""A message found in more than this many places is printed once, with a few examples."""


def _grouped(items: list[tuple[str, str]], examples: int = 3) -> list[str]:
    """Report lines: each message once; repeated ones as ``"<n> places: <message> (e.g. ...)"``."""
    by_message: dict[str, list[str]] = {}
    for where, message in items:
        by_message.setdefault(message, []).append(where)
    lines = []
    for message, places in by_message.items():
        if len(places) > GROUP_AFTER:
            shown = ", ".join(places[:examples])
            lines.append(f"  {len(places)} places: {message} (e.g. {shown}, ...)")
        else:
            lines += [f"  {w}: {message}" for w in places]
    return lines


def _count_nonfinite(vol: np.ndarray) -> int:
    if not np.issubdtype(vol.dtype, np.floating):
        return 0
    flat = vol.reshape(-1)
    n = 0
    for start in range(0, flat.size, _CHUNK_VOXELS):
        n += int((~np.isfinite(flat[start : start + _CHUNK_VOXELS])).sum())
    return n


def _check_bm(path: Path, hw: tuple[int, ...] | None, meta: CaseMeta | None, report: CheckReport, deep: bool) -> None:
    """``bm.npy``: the BM a case was flattened with, ``(H, W)`` finite depths within the source
    volume's depth (``meta.json`` ``extra.input_shape``)."""
    try:
        bm = load_npy(path, mmap=True)
    except DatasetError as e:
        report.problem(path, e.beside(path))
        return
    if bm.ndim != 2 or (hw is not None and bm.shape != hw):
        report.problem(path, f"BM map has shape {bm.shape}, expected the en-face grid {hw} of oct.npy")
        return
    if not deep:
        return
    values = np.asarray(bm, dtype=np.float64)
    if not np.isfinite(values).all():
        report.problem(path, "BM map has NaN/inf values")
        return
    shape = (meta.extra.get("input_shape") if meta is not None else None) or []
    if len(shape) == 3 and (values.min() < -0.5 or values.max() > shape[2] - 0.5):
        report.problem(
            path, f"BM depths {values.min():.1f}..{values.max():.1f} lie outside the source depth 0..{shape[2] - 1}"
        )


def _check_volume(
    path: Path, report: CheckReport, deep: bool, shape: tuple[int, ...] | None = None
) -> tuple[int, ...] | None:
    """Check one ``.npy`` volume; returns its shape, or None when unusable."""
    try:
        vol = load_npy(path, mmap=True)
    except DatasetError as e:
        report.problem(path, e.beside(path))
        return None
    if vol.ndim != 3 or min(vol.shape) < 1:
        report.problem(path, f"volume must be 3D (H, W, D), got shape {vol.shape}")
        return None
    if shape is not None and tuple(vol.shape) != shape:
        report.problem(path, f"shape {vol.shape} differs from oct.npy {shape}")
    if deep:
        try:
            bad = _count_nonfinite(vol)
        except (ValueError, OSError) as e:
            report.problem(path, f"unreadable or truncated volume ({e})")
            return None
        if bad:
            report.problem(path, f"{bad} NaN/inf voxel(s)")
    return tuple(int(n) for n in vol.shape)


def check_case(case_dir: Path, report: CheckReport, deep: bool = True) -> dict[str, Any] | None:
    """Check one case folder, adding its problems to ``report``.

    Returns:
        ``{"meta": CaseMeta, "shape": (H, W, D), "modalities": [...], "tasks": [...], "path": case_dir}``
        or None when the case is unusable.
    """
    meta_path = case_dir / "meta.json"
    meta = None
    if not meta_path.is_file():
        report.problem(case_dir, "meta.json missing")
    else:
        try:
            meta = CaseMeta.from_json(read_json_object(meta_path), where=str(meta_path), folder_name=case_dir.name)
            if meta.case_id != case_dir.name:
                report.problem(meta_path, f"case_id {meta.case_id!r} does not match the folder name")
        except DatasetError as e:
            report.problem(meta_path, e.beside(meta_path))
    shape = _check_volume(case_dir / "oct.npy", report, deep)
    info: dict[str, Any] = {"meta": meta, "shape": shape, "modalities": [], "tasks": [], "volumes": []}
    info["path"] = case_dir
    hw = None if shape is None else shape[:2]
    for p in sorted(case_dir.iterdir()):
        name = p.name
        if name in ("oct.npy", "meta.json"):
            continue
        if p.is_dir() or name.startswith("."):
            report.warn(p, "unexpected entry in a case folder")
            continue
        if name == "bm.npy":
            _check_bm(p, hw, meta, report, deep)
            continue
        if name.endswith(".npy"):
            info["volumes"].append(p.stem)
            _check_volume(p, report, deep, shape)
            continue
        if name.endswith(".png") and p.stem in MODALITIES:
            try:
                img = read_image(p)
            except DatasetError as e:
                report.problem(p, e.beside(p))
                continue
            info["modalities"].append(p.stem)
            if hw is not None and img.shape != hw:
                report.problem(p, f"{p.stem} has shape {img.shape}, expected the en-face grid {hw} of oct.npy")
            continue
        m = MASK_RE.match(name)
        if m:
            try:
                mask = read_mask(p)
            except DatasetError as e:
                report.problem(p, e.beside(p))
                continue
            if m.group("grader") is None:
                info["tasks"].append(m.group("task"))
            info.setdefault("mask_keys", []).append(name[len("mask_") : -len(".png")])
            if hw is not None and mask.shape != hw:
                report.problem(p, f"mask has shape {mask.shape}, expected the en-face grid {hw} of oct.npy")
            continue
        report.warn(p, "unknown file")
    if meta is not None:
        _check_orientation(case_dir, meta, info.get("mask_keys", []), report)
    if meta is None or shape is None:
        return None
    return info


def _check_orientation(case_dir: Path, meta: CaseMeta, mask_keys: list[str], report: CheckReport) -> None:
    """Warn about cases prepared before OCT-grid companions followed the volume's flips.

    Before, a ``<stem>_mask_<task>.png`` on the OCT grid or a ``<stem>_bm.npy`` beside an
    export stored bottom-up was used in the file's B-scan order while the volume was
    flipped to the SLO's: the labels sit on the wrong B-scans. Such cases carry
    ``flipped_bscans`` / ``flipped_ascans`` but no ``grid_order`` in ``meta.json``.
    """
    extra = meta.extra
    if not (extra.get("flipped_bscans") or extra.get("flipped_ascans")) or "grid_order" in extra:
        return
    on_grid = sorted(k for k in mask_keys if k not in extra.get("mask_space", {}))
    if on_grid:
        report.warn(
            case_dir,
            f"OCT-grid mask(s) {', '.join(on_grid)} of a flipped export, prepared by an enface "
            "version that did not flip companions with the volume: they may lie on the wrong "
            "B-scans (re-run enface prepare --overwrite)",
        )
    elif extra.get("bm_source") == "export":
        report.warn(
            case_dir,
            "flipped export prepared by an enface version that did not flip a _bm.npy companion "
            "with the volume: if BM came from one, the flattening is wrong (re-run enface "
            "prepare --overwrite)",
        )


def _across_cases(results: list[dict[str, Any]], report: CheckReport) -> None:
    """The checks that compare cases: same-day visits of one eye, one volume in two cases."""
    _same_day_visits(results, report)
    _duplicate_volumes([Path(r["path"]) for r in results], report)


def _same_day_visits(results: list[dict[str, Any]], report: CheckReport) -> None:
    """Two cases of one eye on one visit day (``enface progression`` refuses them)."""
    days: dict[tuple[str, str, int], list[str]] = {}
    for r in results:
        meta = r["meta"]
        if meta.visit is not None:
            days.setdefault((meta.patient_id, meta.eye, int(meta.visit)), []).append(meta.case_id)
    for (patient, eye, day), ids in sorted(days.items()):
        if len(ids) > 1:
            report.problem(
                report.root / "cases",
                f"two visits of one eye on one day: {patient} {eye} day {day}: {list_ids(ids)} "
                "(a repeated scan? keep one, or give each its own visit day; `enface progression` refuses them)",
            )


_SAMPLE = 1 << 16


def _digest(path: Path, whole: bool) -> str:
    """SHA-256 of a file, or of its size and three ``_SAMPLE``-byte blocks (start, middle, end)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if whole:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            for offset in (0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)):
                f.seek(offset)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


def _groups(paths: list[Path], key: Any) -> list[list[Path]]:
    found: dict[Any, list[Path]] = {}
    for p in paths:
        found.setdefault(key(p), []).append(p)
    return [g for g in found.values() if len(g) > 1]


def _duplicate_volumes(case_dirs: list[Path], report: CheckReport) -> None:
    """Cases whose ``oct.npy`` is the same file byte for byte: one scan under two names.

    Cheap on large datasets: only files of equal size are compared, first by three sampled
    blocks, and only those that agree there are hashed whole.
    """
    volumes = [d / "oct.npy" for d in case_dirs if (d / "oct.npy").is_file()]
    for same_size in _groups(volumes, lambda p: p.stat().st_size):
        for same_sample in _groups(same_size, lambda p: _digest(p, whole=False)):
            for same in _groups(same_sample, lambda p: _digest(p, whole=True)):
                ids = sorted(p.parent.name for p in same)
                report.problem(
                    report.root / "cases",
                    f"the same volume (oct.npy, byte for byte) in {len(ids)} cases: {list_ids(ids)} "
                    "(one scan prepared under two names? keep one: a copy can land in two splits)",
                )


def _export_format(root: Path) -> str | None:
    """The registered export format of a folder that holds exports and nothing of a dataset."""
    if is_dataset(root, unfinished=True):
        return None
    try:
        return infer_format(root)
    except DatasetError:
        return None


def _declared_and_present(
    info: dict[str, Any], modalities: set[str], tasks: set[str], where: Path, report: CheckReport
) -> None:
    """What ``dataset.json`` declares against what the cases hold."""
    declared_mod = set(info.get("modalities", []))
    declared_tasks = set(info.get("tasks", []))
    for m in sorted(modalities - declared_mod):
        report.problem(where, f"modality {m!r} is present in cases but not declared")
    for t in sorted(tasks - declared_tasks):
        report.problem(where, f"task {t!r} is present in cases but not declared")
    for t in sorted(declared_tasks - tasks):
        report.warn(where, f"task {t!r} is declared but no case has its mask")
    for m in sorted((declared_mod - {"oct"}) - modalities):
        report.warn(where, f"modality {m!r} is declared but no case has it")


def check_dataset(root: str | os.PathLike, deep: bool = True) -> CheckReport:
    """Validate a dataset folder.

    Args:
        root: the dataset folder.
        deep: read every voxel (NaN/inf check); otherwise only headers and images.

    Returns:
        The report (``report.ok`` is False when problems were found).
    """
    root = Path(root)
    report = CheckReport(root=root)
    if not root.is_dir():
        report.problem(root, "dataset folder not found")
        return report
    exports = _export_format(root)
    if exports is not None:
        report.problem(
            root,
            f"a folder of {exports} exports, not a dataset folder: prepare it first "
            f"(enface prepare {root} OUT --format {exports})",
        )
        return report
    info: dict[str, Any] | None = None
    try:
        info = read_dataset_info(root)
    except DatasetError as e:
        report.problem(root / "dataset.json", e.beside(root / "dataset.json"))

    cases_dir = root / "cases"
    results = []
    if not cases_dir.is_dir():
        report.problem(cases_dir, "folder not found")
    else:
        for p in sorted(cases_dir.iterdir()):
            if p.name.startswith("."):
                report.warn(p, "left-over temporary entry of an interrupted write (safe to delete)")
                continue
            if not p.is_dir():
                report.warn(p, "unexpected file in cases/")
                continue
            report.n_cases += 1
            r = check_case(p, report, deep)
            if r is not None:
                results.append(r)
        if report.n_cases == 0:
            report.problem(cases_dir, "no case")

    _across_cases(results, report)
    patients = sorted({r["meta"].patient_id for r in results})
    modalities = Counter(m for r in results for m in r["modalities"])
    tasks = Counter(t for r in results for t in r["tasks"])
    shapes = Counter(r["shape"] for r in results)
    graders = Counter(k for r in results for k in r.get("mask_keys", []) if "." in k)
    report.stats.update(patients=len(patients), modalities=dict(modalities), tasks=dict(tasks), shapes=dict(shapes))
    report.stats["grader_masks"] = dict(graders)
    if len({s[2] for s in shapes}) > 1:
        report.warn(cases_dir, f"cases have different depths {sorted({s[2] for s in shapes})}")

    if info is not None:
        _declared_and_present(info, set(modalities), set(tasks), root / "dataset.json", report)
    splits_path = root / "splits.json"
    if not splits_path.is_file():
        report.warn(splits_path, "no splits.json (run enface split)")
    else:
        try:
            splits = read_splits(root)
        except DatasetError as e:
            report.problem(splits_path, e.beside(splits_path))
        else:
            report.stats["splits"] = {k: len(splits[k]) for k in ("train", "val", "test")}
            missing, unknown = split_coverage(splits, patients)
            if missing:
                report.warn(splits_path, f"{len(missing)} patient(s) in no split: {list_ids(missing)}")
            if unknown and results:
                report.warn(splits_path, f"{len(unknown)} split patient(s) have no case: {list_ids(unknown)}")
    return report
