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

Scans are prepared one at a time or by ``workers`` processes: each case depends on its scan
alone, so the output is the same byte for byte. Finished cases are skipped on a re-run
(unless ``overwrite``): a case is recognised by the file it was prepared from (its path
within the source folder, ``meta.json`` ``extra.source_key``), not by its folder name, so
that files added later, whose names sanitise alike, get new case ids and never a finished
one. A failing scan is reported (file, kind, reason) and does not stop the batch, and never
touches a case folder already written. Afterwards ``dataset.json`` is (re)written from the
cases on disk, visit days are derived from visit dates, and ``splits.json`` is written when
absent (patient-wise from a seed; OCTA-500 uses its official split).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import (
    list_cases,
    list_ids,
    read_splits,
    split_coverage,
    write_case,
    write_dataset_info,
    write_splits,
)
from enface.data.scan_case import CaseArrays, PrepareOptions, scan_to_case
from enface.data.splits import make_splits
from enface.data.visits import assign_visit_days
from enface.errors import DISK_FULL, DatasetError, EnfaceError, ScanKindError, failure, is_disk_full
from enface.io.base import Scan, safe_id
from enface.io.formats import find_units, get_format, read_unit
from enface.progress import Progress

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


@dataclass(frozen=True)
class ScanSource:
    """One scan to prepare.

    Attributes:
        case_id: the case folder name.
        source: the file or folder it comes from.
        reader: returns the :class:`~enface.io.base.Scan` (picklable: it may run in a worker
            process).
        key: what identifies the scan on a re-run: its path within the source folder.
    """

    case_id: str
    source: Path
    reader: Callable[[], Scan]
    key: str = ""

    def read(self) -> Scan:
        """Read the scan."""
        return self.reader()


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` did.

    Attributes:
        out: the dataset folder.
        written: case ids written in this run.
        skipped: case ids already present (not re-prepared).
        failed: ``(source, reason)`` of every case that failed.
        kinds: the kind of each failed source (``line scan``, ``empty file``, ...; ``error``
            for any other problem), see :class:`~enface.errors.ScanKindError`.
        notes: ``(case id, message)`` worth a look (low FAF registration quality, ...).
        splits: ``"written"``, ``"kept"`` or ``"none"`` (no case at all).
    """

    out: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)
    splits: str = "none"

    @property
    def ok(self) -> bool:
        """No case failed."""
        return not self.failed

    def kind_counts(self) -> dict[str, int]:
        """Failed sources counted by kind, most frequent first."""
        counts: dict[str, int] = {}
        for src, _ in self.failed:
            kind = self.kinds.get(src, "error")
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """A readable multi-line summary: counts (failures by kind), notes, one line per failed file
        (scans that are not volumes, damaged files and other failures apart)."""
        by_kind = ", ".join(f"{n} {plural(kind, n)}" for kind, n in self.kind_counts().items())
        lines = [
            f"dataset {self.out}: {len(self.written)} case(s) written, {len(self.skipped)} already "
            f"present (skipped), {len(self.failed)} failed{f' ({by_kind})' if by_kind else ''}; "
            f"splits.json {self.splits}"
        ]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {cid}: {msg}" for cid, msg in self.notes]
        groups = (
            ("not volume scans (not prepared):", lambda k: k in ScanKindError.NOT_VOLUMES),
            ("damaged files:", lambda k: k in ("empty file", "truncated file", "damaged file")),
            (
                "failed:",
                lambda k: k not in ScanKindError.NOT_VOLUMES + ("empty file", "truncated file", "damaged file"),
            ),
        )
        for title, belongs in groups:
            rows = [(src, reason) for src, reason in self.failed if belongs(self.kinds.get(src, "error"))]
            if rows:
                lines.append(title)
                lines += [f"  {src}: {reason}" for src, reason in rows]
        return "\n".join(lines)


def plural(kind: str, n: int) -> str:
    """``line scan`` -> ``line scans`` when there are several (``disk full`` stays)."""
    return kind if n == 1 or kind == DISK_FULL else f"{kind}s"


# --------------------------------------------------------------------------- discovery


def _assign_ids(wanted: list[tuple[str, str]], known: dict[str, str]) -> list[str]:
    """Case ids for ``(key, wanted id)`` pairs: a key a case was already prepared from keeps
    that case's id; a new key gets its wanted id, or ``<id>-2``, ``-3``, ... when that is taken
    (by a case on disk or an earlier key of this run)."""
    taken = set(known.values())
    out: list[str] = []
    for key, cid in wanted:
        if key in known:
            out.append(known[key])
            continue
        new, n = cid, 1
        while new in taken:
            n += 1
            new = f"{cid}-{n}"
        taken.add(new)
        out.append(new)
    return out


def prepared_sources(out: Path, src: Path) -> dict[str, str]:
    """``{source key: case id}`` of the cases already in the dataset folder ``out``.

    A case records its key in ``meta.json`` (``extra.source_key``); a case prepared before
    that is matched by its ``source`` path when it lies in ``src``, else by its folder name.
    """
    cases = out / "cases"
    if not cases.is_dir():
        return {}
    root = src.resolve() if src.is_dir() else src.resolve().parent
    known: dict[str, str] = {}
    for d in sorted(p for p in cases.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a finished case: prepared again when its scan is found
        if not isinstance(meta, dict):
            continue
        key = (meta.get("extra") or {}).get("source_key") if isinstance(meta.get("extra"), dict) else None
        if key is None and meta.get("source"):
            try:
                key = Path(str(meta["source"])).resolve().relative_to(root).as_posix()
            except (ValueError, OSError):
                key = None
        known[str(key) if key is not None else f"<case {d.name}>"] = d.name
    return known


def discover_sources(
    src: str | os.PathLike, opts: PrepareOptions, known: dict[str, str] | None = None
) -> list[ScanSource]:
    """Find every scan of format ``opts.fmt`` under ``src`` (the format's finder,
    :mod:`enface.io.formats`).

    Args:
        src: source folder or file.
        opts: settings (the format, what its reader is told).
        known: ``{source key: case id}`` of cases already prepared (:func:`prepared_sources`):
            their scans keep their ids, new scans get ids not in use.

    Raises:
        DatasetError: ``src`` is missing or holds nothing of that format.
    """
    src = Path(src)
    if not src.exists():
        raise DatasetError("source folder not found", path=src)
    fmt = get_format(opts.fmt)
    units = find_units(fmt, src)
    if not units:
        raise DatasetError(f"no {fmt.name} scans found", path=src)
    ids = _assign_ids([(u.key, safe_id(u.name)) for u in units], known or {})
    ropts = opts.read_options()
    return [ScanSource(cid, u.source, functools.partial(read_unit, fmt, u, ropts), u.key) for cid, u in zip(ids, units)]


# --------------------------------------------------------------------------- the batch


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
    path = out / "splits.json"
    if path.is_file() and not opts.resplit:
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
    fmt = get_format(opts.fmt)
    if fmt.official_split is not None:
        splits: dict[str, Any] = {"train": [], "val": [], "test": []}
        for p in patients:
            s = fmt.official_split(p)
            if s is None:
                report.notes.append((p, f"id outside the ranges of the {fmt.split_source}: put in train"))
                s = "train"
            splits[s].append(p)
        splits["source"] = fmt.split_source
    else:
        splits = dict(make_splits(patients, seed=opts.seed, ratios=opts.ratios))
        splits["seed"] = opts.seed
        splits["ratios"] = [float(r) for r in opts.ratios]
    write_splits(out, splits)
    report.splits = "written"


@dataclass(frozen=True)
class _Outcome:
    """What preparing one scan gave (returned by a worker process)."""

    case_id: str
    source: str
    notes: tuple[str, ...] = ()
    reason: str | None = None
    kind: str = "error"


def _prepare_one(item: ScanSource, out: Path, opts: PrepareOptions) -> _Outcome:
    """Read, convert and write one case (in this process or a worker)."""
    try:
        arrays = scan_to_case(item.read(), item.case_id, opts)
        arrays.meta.extra["source_key"] = item.key
        write_case(
            out,
            arrays.meta,
            arrays.oct,
            arrays.images,
            arrays.masks,
            overwrite=opts.overwrite,
            volumes=arrays.volumes,
            bm=arrays.bm,
        )
    except (EnfaceError, ValueError, OSError) as e:  # a bad scan must not stop the batch; bugs surface
        reason, kind = failure(e, item.source, "case")
        log.debug("%s: failed: %s", item.source, reason)
        return _Outcome(item.case_id, str(item.source), reason=reason, kind=kind)
    return _Outcome(item.case_id, str(item.source), notes=tuple(arrays.notes))


def _run_batch(
    todo: list[ScanSource], out: Path, opts: PrepareOptions, workers: int, bar: Progress
) -> Iterator[_Outcome]:
    """Outcomes of the scans to prepare, in the order they finish (``workers`` processes)."""
    if workers <= 1 or len(todo) <= 1:
        for item in todo:
            bar.working_on(item.case_id)
            yield _prepare_one(item, out, opts)
        return
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_prepare_one, item, out, opts) for item in todo]
        for fut in as_completed(futures):
            yield fut.result()


def check_source_and_output(src: Path, out: Path, what: str = "OUT") -> None:
    """Refuse an output folder that is, or lies inside, the source folder, or holds it: a re-run
    would read its own output as new scans, or write into the exports.

    Raises:
        DatasetError: naming both folders.
    """
    if not src.exists():
        return  # reported by discovery
    s = src.resolve()
    o = out.resolve()
    if s.is_dir() and (o == s or s in o.parents):
        raise DatasetError(f"{what} lies inside the source folder {src}; choose a folder outside it", path=out)
    if o == s or o in s.parents:
        raise DatasetError(f"{what} holds the source {src}; choose a folder that does not contain it", path=out)


def prepare_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    progress: bool = True,
    workers: int = 1,
) -> PrepareReport:
    """Convert every scan under ``src`` into a case of the dataset folder ``out``.

    Args:
        src: source folder (or a single file).
        out: dataset folder (created when missing); neither inside ``src`` nor holding it.
        opts: settings.
        progress: show a progress bar.
        workers: scans prepared at once, each in its own process (1: in this process). The
            output does not depend on it.

    Returns:
        The report: written, skipped and failed cases with reasons and kinds, notes, splits
        status.

    Raises:
        DatasetError: ``src`` is missing or holds no scan of the format, or ``out`` and
            ``src`` are nested (nothing is written); the dataset files cannot be written.
    """
    src = Path(src)
    out = Path(out)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_source_and_output(src, out)
    sources = discover_sources(src, opts, prepared_sources(out, src))
    report = PrepareReport(out=out)
    cases_dir = out / "cases"
    todo = []
    for item in sources:
        if (cases_dir / item.case_id / "meta.json").is_file() and not opts.overwrite:
            report.skipped.append(item.case_id)
        else:
            todo.append(item)
    order = {item.case_id: i for i, item in enumerate(sources)}
    outcomes: list[_Outcome] = []
    with Progress(len(todo), "prepare", "scan", progress, log) as bar:
        for outcome in _run_batch(todo, out, opts, workers, bar):
            outcomes.append(outcome)
            n_failed = sum(o.reason is not None for o in outcomes)
            result = "written" if outcome.reason is None else f"failed ({outcome.kind}): {outcome.reason}"
            bar.step(f"{outcome.case_id}: {result}", f"{n_failed} failed" if n_failed else None)
    for o in sorted(outcomes, key=lambda o: order[o.case_id]):  # the report in input order, whatever the workers
        if o.reason is not None:
            report.failed.append((o.source, o.reason))
            report.kinds[o.source] = o.kind
        else:
            report.written.append(o.case_id)
            report.notes.extend((o.case_id, n) for n in o.notes)
    if not cases_dir.is_dir():
        return report
    try:
        updated = assign_visit_days(out)
        if updated:
            log.info("visit days set from visit dates in %d case(s)", updated)
        patients = _write_info(out, opts, src)
        _write_splits(out, opts, patients, report)
    except OSError as e:
        raise DatasetError(
            f"cannot write the dataset files ({'the disk is full' if is_disk_full(e) else e}); "
            "the cases written are complete: re-run prepare once there is room",
            path=out,
        ) from None
    return report
