"""``enface prepare``: device exports and common formats in, a dataset folder out.

For every scan found under the source folder:

1. read it (:mod:`enface.io`) and check it;
2. flatten along Bruch's membrane (the export's segmentation when it has one, else the
   estimate of :func:`~enface.data.preprocess.estimate_bm`), crop a window around BM and
   resample depth (128 by default);
3. bring the 2D modalities onto the ``(H, W)`` en-face grid: the SLO through the B-scan
   coordinates, the FAF by registration to the SLO (quality stored in ``meta.json``);
   masks drawn on the SLO, the FAF or the OCT grid;
4. write the case atomically (:func:`~enface.data.folder.write_case`).

Steps 1-3 for one scan are :func:`~enface.data.scan_case.scan_to_case` (re-exported here,
with :class:`PrepareOptions`); this module finds the scans and runs the batch.

Finished cases are skipped on a re-run (unless ``overwrite``), a failing case is reported
(file, reason) and does not stop the batch, and a failing case never touches a case folder
already written. Afterwards ``dataset.json`` is (re)written from the cases on disk, visit
days are derived from visit dates, and ``splits.json`` is written when absent (patient-wise
from a seed; OCTA-500 uses its official split).
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import list_cases, write_case, write_dataset_info, write_splits
from enface.data.scan_case import CaseArrays, PrepareOptions, scan_to_case
from enface.errors import DatasetError, EnfaceError
from enface.fileio import atomic_write_json
from enface.io.base import Scan, safe_id, unique_ids

log = logging.getLogger(__name__)

__all__ = [
    "CaseArrays",
    "PrepareOptions",
    "PrepareReport",
    "ScanSource",
    "discover_sources",
    "prepare_dataset",
    "scan_to_case",
]


@dataclass
class ScanSource:
    """One scan to prepare.

    Attributes:
        case_id: the case folder name.
        source: the file or folder it comes from.
        read: returns the :class:`~enface.io.base.Scan`.
    """

    case_id: str
    source: Path
    read: Callable[[], Scan]


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` did.

    Attributes:
        out: the dataset folder.
        written: case ids written in this run.
        skipped: case ids already present (not re-prepared).
        failed: ``(source, reason)`` of every case that failed.
        notes: ``(case id, message)`` worth a look (low FAF registration quality, ...).
        splits: ``"written"``, ``"kept"`` or ``"none"`` (no case at all).
    """

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    splits: str = "none"

    @property
    def ok(self) -> bool:
        """No case failed."""
        return not self.failed

    def summary(self) -> str:
        """A readable multi-line summary."""
        lines = [
            f"dataset {self.out}: {len(self.written)} case(s) written, {len(self.skipped)} already "
            f"present (skipped), {len(self.failed)} failed; splits.json {self.splits}"
        ]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {cid}: {msg}" for cid, msg in self.notes]
        if self.failed:
            lines.append("failed:")
            lines += [f"  {src}: {reason}" for src, reason in self.failed]
        return "\n".join(lines)


# --------------------------------------------------------------------------- discovery


def _relative_id(path: Path, root: Path, stem: str) -> str:
    rel = path.parent.relative_to(root).parts if path.parent != root else ()
    return safe_id("_".join((*rel, stem)))


def discover_sources(src: str | os.PathLike, opts: PrepareOptions) -> list[ScanSource]:
    """Find every scan of format ``opts.fmt`` under ``src``.

    Raises:
        DatasetError: ``src`` is missing or holds nothing of that format.
    """
    from enface.io.volumes import scan_stem

    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src}: source folder not found")
    fmt = opts.fmt
    sources: list[ScanSource] = []
    if fmt == "octa500":
        from enface.io.octa500 import find_octa500_cases, read_octa500_case

        for case in find_octa500_cases(src):
            sources.append(
                ScanSource(
                    safe_id(case.case_id),
                    case.oct_dir,
                    functools.partial(
                        read_octa500_case, case, with_octa=opts.octa, tasks=opts.tasks, use_layers=opts.bm != "estimate"
                    ),
                )
            )
    else:
        if src.is_file():
            files, root = [src], src.parent
        elif fmt in ("numpy", "nifti"):
            from enface.io.volumes import find_volume_files

            files, root = find_volume_files(src, fmt), src
        else:
            files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == f".{fmt}")
            root = src
        ids = list(zip(unique_ids([_relative_id(p, root, scan_stem(p)) for p in files]), files))
        for cid, path in ids:
            sources.append(ScanSource(cid, path, functools.partial(_read_file_scan, path, opts)))
    if not sources:
        raise DatasetError(f"{src}: no {fmt} scans found")
    return sources


def _read_file_scan(path: Path, opts: PrepareOptions) -> Scan:
    from enface.io.volumes import attach_companions, find_companions, read_sidecar, read_volume_scan, scan_stem

    if opts.fmt in ("numpy", "nifti"):
        return read_volume_scan(path, opts.fmt, axes=opts.axes, spacing=opts.spacing)
    from enface.io.heidelberg import read_heidelberg

    stem = scan_stem(path)
    sidecar = read_sidecar(path.parent / f"{stem}.json")
    sp = sidecar.get("spacing")
    scan = read_heidelberg(
        path,
        opts.fmt,
        spacing=None if sp is None else (float(sp[0]), float(sp[1]), float(sp[2])),
        default_spacing=opts.spacing,
    )
    return attach_companions(scan, find_companions(path.parent, stem), sidecar, use_slo=False)


# --------------------------------------------------------------------------- the batch


def _parse_date(text: str) -> _dt.date | None:
    try:
        return _dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        return None


def _assign_visit_days(out: Path) -> int:
    """Visit day = days since the patient's first dated visit (cases with a visit date only).

    Returns:
        Number of ``meta.json`` files updated.
    """
    cases = list_cases(out)
    first: dict[str, _dt.date] = {}
    dated = []
    for c in cases:
        d = _parse_date(c.meta.extra.get("visit_date", "")) if c.meta.extra.get("visit_date") else None
        if d is not None:
            dated.append((c, d))
            first[c.patient_id] = min(d, first.get(c.patient_id, d))
    n = 0
    for c, d in dated:
        day = (d - first[c.patient_id]).days
        if day != c.meta.visit:
            atomic_write_json(c.path / "meta.json", replace(c.meta, visit=day).to_json())
            n += 1
    return n


def _write_info(out: Path, opts: PrepareOptions, src: Path) -> list[str]:
    """(Re)write ``dataset.json`` from the cases on disk; returns the patient ids."""
    cases = list_cases(out)
    modalities = ["oct"]
    channels = {"oct"}
    tasks: set[str] = set()
    for c in cases:
        for m in ("slo", "faf"):
            if c.has_image(m) and m not in modalities:
                modalities.append(m)
        tasks.update(c.tasks())
        channels.update(c.meta.extra.get("channels", []))
    spacing = np.median(np.array([c.spacing for c in cases]), axis=0) if cases else np.ones(3)
    f = opts.flatten
    write_dataset_info(
        out,
        name=opts.name or safe_id(out.resolve().name),
        modalities=modalities,
        tasks=sorted(tasks),
        spacing=[float(s) for s in spacing],
        channels=["oct", *sorted(channels - {"oct"})],
        source={"format": opts.fmt, "path": str(src)},
        preparation={"depth": f.depth, "above_mm": f.above_mm, "below_mm": f.below_mm, "bm": opts.bm},
    )
    return sorted({c.patient_id for c in cases})


def _write_splits(out: Path, opts: PrepareOptions, patients: list[str], report: PrepareReport) -> None:
    from enface.data.splits import make_splits

    path = out / "splits.json"
    if path.is_file() and not opts.resplit:
        from enface.data.folder import list_ids, read_splits, split_coverage

        missing, _ = split_coverage(read_splits(out), patients)
        if missing:
            report.notes.append(
                (
                    "splits.json",
                    f"{len(missing)} patient(s) in no split: {list_ids(missing, 5)} "
                    "(re-run with --resplit, or enface split)",
                )
            )
        report.splits = "kept"
        return
    if not patients:
        return
    if opts.fmt == "octa500":
        from enface.io.octa500 import octa500_split

        splits: dict[str, Any] = {"train": [], "val": [], "test": []}
        for p in patients:
            s = octa500_split(p)
            if s is None:
                report.notes.append((p, "id outside the official OCTA-500 ranges: put in train"))
                s = "train"
            splits[s].append(p)
        splits["source"] = "OCTA-500 official split"
    else:
        splits = dict(make_splits(patients, seed=opts.seed, ratios=opts.ratios))
        splits["seed"] = opts.seed
        splits["ratios"] = [float(r) for r in opts.ratios]
    write_splits(out, splits)
    report.splits = "written"


def prepare_dataset(
    src: str | os.PathLike, out: str | os.PathLike, opts: PrepareOptions, progress: bool = True
) -> PrepareReport:
    """Convert every scan under ``src`` into a case of the dataset folder ``out``.

    Args:
        src: source folder (or a single file).
        out: dataset folder (created when missing).
        opts: settings.
        progress: show a progress bar.

    Returns:
        The report: written, skipped and failed cases with reasons, notes, splits status.

    Raises:
        DatasetError: ``src`` is missing or holds no scan of the format (nothing is written).
    """
    from tqdm.auto import tqdm

    src = Path(src)
    out = Path(out)
    sources = discover_sources(src, opts)
    report = PrepareReport(out=out)
    cases_dir = out / "cases"
    bar = tqdm(sources, desc="prepare", unit="scan", disable=not progress)
    for item in bar:
        bar.set_postfix_str(item.case_id, refresh=False)
        if (cases_dir / item.case_id / "meta.json").is_file() and not opts.overwrite:
            report.skipped.append(item.case_id)
            continue
        try:
            arrays = scan_to_case(item.read(), item.case_id, opts)
            write_case(
                out,
                arrays.meta,
                arrays.oct,
                arrays.images,
                arrays.masks,
                overwrite=opts.overwrite,
                volumes=arrays.volumes,
            )
        except (EnfaceError, ValueError, OSError) as e:  # a bad scan must not stop the batch; bugs surface
            reason = str(e) if isinstance(e, (EnfaceError, ValueError)) else f"{type(e).__name__}: {e}"
            reason = reason.removeprefix(f"{item.source}: ")  # the summary names the file already
            log.warning("%s: failed: %s", item.source, reason)
            report.failed.append((str(item.source), reason))
            continue
        report.written.append(item.case_id)
        report.notes.extend((item.case_id, n) for n in arrays.notes)
    bar.close()
    if not cases_dir.is_dir():
        return report
    updated = _assign_visit_days(out)
    if updated:
        log.info("visit days set from visit dates in %d case(s)", updated)
    patients = _write_info(out, opts, src)
    _write_splits(out, opts, patients, report)
    return report


def parse_numbers(text: str, n: int, what: str) -> tuple[float, ...]:
    """``"a,b,c"`` -> ``n`` floats (CLI helper).

    Raises:
        ValueError: not ``n`` numbers, naming the option ``what``.
    """
    words = {2: "two", 3: "three"}.get(n, str(n))
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise ValueError(f"{what} must be {words} numbers separated by commas, got {text!r}")
    return vals
