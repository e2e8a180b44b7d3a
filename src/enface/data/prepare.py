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

Finished cases are skipped on a re-run (unless ``overwrite``), a failing case is reported
(file, reason) and does not stop the batch, and a failing case never touches a case folder
already written. Afterwards ``dataset.json`` is (re)written from the cases on disk, visit
days are derived from visit dates, and ``splits.json`` is written when absent (patient-wise
from a seed; OCTA-500 uses its official split).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from enface.data.folder import CaseMeta, list_cases, write_case, write_dataset_info, write_splits
from enface.errors import DatasetError, EnfaceError
from enface.data.preprocess import (
    FlattenParams,
    enface_points,
    estimate_bm,
    fill_bm,
    flatten_volume,
    resample_depth,
    sample_enface,
    sample_enface_mask,
)
from enface.data.register import apply_matrix, register_images
from enface.fileio import atomic_write_json
from enface.io.base import Scan, normalise_eye, safe_id, unique_ids
from enface.io.formats import FORMATS

log = logging.getLogger(__name__)

__all__ = [
    "PrepareOptions",
    "PrepareReport",
    "ScanSource",
    "discover_sources",
    "scan_to_case",
    "prepare_dataset",
]


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of :func:`prepare_dataset`.

    Attributes:
        fmt: input format, one of :data:`FORMATS`.
        flatten: flattening window and output depth.
        bm: ``"auto"`` (the export's BM when present, else estimated), ``"export"`` (fail
            without one) or ``"estimate"`` (ignore the export's).
        axes: stored axis order of NumPy/NIfTI volumes when the sidecar gives none.
        spacing: ``(sh, sw, sd)`` in mm for inputs that do not state it (``.e2e``, NumPy
            without sidecar spacing); a sidecar's ``spacing`` overrides what an input states.
        octa: OCTA-500: add the OCTA volume as a second input channel (``octa.npy``).
        tasks: keep only these mask tasks (OCTA-500: which ``GT_*`` labels to read).
        register_faf: register FAF to SLO; if False the FAF is assumed to cover the SLO's
            field exactly (it is only rescaled).
        faf_model: registration model (``rigid``, ``similarity``, ``affine``).
        faf_min_quality: FAF registrations scoring below this are not used (the case keeps
            its OCT and SLO; a mask drawn on such a FAF makes the case fail).
        patient_regex: regular expression with a group ``patient`` applied to the file
            name stem when the input gives no patient id.
        default_eye: eye when the input does not say (``OD``/``OS``).
        name: dataset name (default: the output folder name).
        seed: seed of the patient split written when ``splits.json`` is absent.
        ratios: train/val/test ratios of that split.
        overwrite: re-prepare cases that already exist (each is replaced atomically, only
            after its new version was computed without error).
        resplit: rewrite ``splits.json`` even when it exists.
    """

    fmt: str
    flatten: FlattenParams = FlattenParams()
    bm: Literal["auto", "export", "estimate"] = "auto"
    axes: str | None = None
    spacing: tuple[float, float, float] | None = None
    octa: bool = False
    tasks: tuple[str, ...] | None = None
    register_faf: bool = True
    faf_model: str = "affine"
    faf_min_quality: float = 0.3
    patient_regex: str | None = None
    default_eye: str = "OD"
    name: str | None = None
    seed: int = 0
    ratios: tuple[float, float, float] = (0.6, 0.1, 0.3)
    overwrite: bool = False
    resplit: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown format {self.fmt!r} (known: {', '.join(FORMATS)})")
        if self.bm not in ("auto", "export", "estimate"):
            raise ValueError(f"bm must be 'auto', 'export' or 'estimate', got {self.bm!r}")
        if normalise_eye(self.default_eye) is None:
            raise ValueError(f"default eye must be OD or OS, got {self.default_eye!r}")
        if self.patient_regex is not None:
            try:
                rx = re.compile(self.patient_regex)
            except re.error as e:
                raise ValueError(f"invalid patient regex {self.patient_regex!r}: {e}") from None
            if "patient" not in rx.groupindex:
                raise ValueError(f"patient regex {self.patient_regex!r} needs a named group (?P<patient>...)")
        if self.spacing is not None and (len(self.spacing) != 3 or not all(s > 0 for s in self.spacing)):
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing!r}")
        if self.octa and self.fmt != "octa500":
            raise ValueError("the OCTA channel is only available for the octa500 format")


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
                    lambda c=case: read_octa500_case(c, with_octa=opts.octa, tasks=opts.tasks,
                                                     use_layers=opts.bm != "estimate"),
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
            sources.append(ScanSource(cid, path, lambda p=path: _read_file_scan(p, opts)))
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
    scan = read_heidelberg(path, opts.fmt, spacing=None if sp is None else tuple(sp),  # type: ignore[arg-type]
                           default_spacing=opts.spacing)
    return attach_companions(scan, find_companions(path.parent, stem), sidecar, use_slo=False)


# --------------------------------------------------------------------------- one scan -> one case


@dataclass
class CaseArrays:
    """Everything :func:`~enface.data.folder.write_case` needs for one case."""

    meta: CaseMeta
    oct: np.ndarray
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    volumes: dict[str, np.ndarray]
    notes: list[str]


def _patient_id(scan: Scan, case_id: str, source: Path, opts: PrepareOptions, notes: list[str]) -> str:
    pid = scan.meta.get("patient_id")
    if opts.patient_regex and not (scan.meta.get("patient_from_sidecar")):
        m = re.search(opts.patient_regex, source.name)
        if m and m.group("patient"):
            return safe_id(m.group("patient"))
    if pid:
        return safe_id(pid)
    notes.append("no patient id in the input: the case is its own patient (use --patient-regex or a sidecar)")
    return case_id


def _scale_matrix(src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> np.ndarray:
    """Pixel-centre-correct scaling taking an image of ``src_shape`` onto ``dst_shape``."""
    fx = dst_shape[1] / src_shape[1]
    fy = dst_shape[0] / src_shape[0]
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])


def _flatten(
    scan: Scan, opts: PrepareOptions, extra: dict[str, Any]
) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Flatten (or only resample) the volume and extra channels; returns them and the new sd."""
    sh, sw, sd = scan.spacing
    params = opts.flatten
    if scan.flattened:
        d = scan.volume.shape[2]
        extra["flattening"] = "input already flattened"
        vols = {k: resample_depth(v, params.depth) for k, v in scan.extra_volumes.items()}
        return resample_depth(scan.volume, params.depth), vols, sd * d / params.depth
    if scan.bm is not None and opts.bm != "estimate":
        try:
            bm = fill_bm(scan.bm, (sh, sw))
        except ValueError as e:
            raise DatasetError(f"{scan.source}: BM segmentation of the export is unusable ({e})") from None
        extra["bm_source"] = "export"
    elif opts.bm == "export":
        raise DatasetError(f"{scan.source}: the export has no BM segmentation (bm='export' was asked)")
    else:
        bm = estimate_bm(scan.volume, scan.spacing)
        extra["bm_source"] = "estimated"
    d = scan.volume.shape[2]
    extra["bm_depth_range"] = [round(float(bm.min()), 2), round(float(bm.max()), 2)]
    extra["flatten"] = {
        "above_mm": params.above_mm,
        "below_mm": params.below_mm,
        "depth": params.depth,
        "bm_index": round(params.bm_index, 3),
        "input_depth": int(d),
    }
    window_lo = float(bm.min()) - params.above_mm / sd
    window_hi = float(bm.max()) + params.below_mm / sd
    if window_lo < -0.5 or window_hi > d - 0.5:
        extra["window_padded"] = True
    oct_flat = flatten_volume(scan.volume, bm, sd, params)
    vols = {k: flatten_volume(v, bm, sd, params) for k, v in scan.extra_volumes.items()}
    return oct_flat, vols, params.output_spacing()


def scan_to_case(scan: Scan, case_id: str, opts: PrepareOptions) -> CaseArrays:
    """Turn a scan into the arrays and metadata of one case.

    Args:
        scan: the scan as read.
        case_id: the case folder name.
        opts: preparation settings.

    Returns:
        The case's arrays, metadata and notes.

    Raises:
        DatasetError: invalid input (naming the source file and the problem).
    """
    scan.validate()
    notes: list[str] = []
    extra: dict[str, Any] = {}
    source = Path(scan.source)
    h, w = scan.grid_shape
    oct_flat, volumes, sd_out = _flatten(scan, opts, extra)
    spacing = (float(scan.spacing[0]), float(scan.spacing[1]), float(sd_out))

    images: dict[str, np.ndarray] = {}
    points = None if scan.bscan_positions is None else enface_points(scan.bscan_positions, w)
    if scan.slo is not None and points is not None:
        images["slo"], outside = sample_enface(scan.slo, points)
        if outside > 0.02:
            notes.append(f"{100 * outside:.0f}% of the OCT grid lies outside the SLO")
    faf_to_ref = None
    if scan.faf is not None:
        if scan.faf_to_slo is not None:
            faf_to_ref = np.asarray(scan.faf_to_slo, dtype=np.float64)
        elif scan.slo is None:
            notes.append("FAF present but no SLO or FAF placement: FAF not used")
        elif not opts.register_faf:
            faf_to_ref = _scale_matrix(scan.faf.shape, scan.slo.shape)
            extra["faf_registration"] = {"model": "none (rescaled to the SLO)"}
        else:
            reg = register_images(scan.slo, scan.faf, model=opts.faf_model)  # type: ignore[arg-type]
            extra["faf_registration"] = reg.to_json()
            if reg.quality >= opts.faf_min_quality:
                faf_to_ref = reg.matrix
            else:
                notes.append(
                    f"FAF registration quality {reg.quality:.2f} < {opts.faf_min_quality:.2f}: FAF not used"
                )
        if faf_to_ref is not None and points is not None:
            faf_points = apply_matrix(np.linalg.inv(faf_to_ref), points)
            images["faf"], outside = sample_enface(scan.faf, faf_points)
            if outside > 0.02:
                notes.append(f"{100 * outside:.0f}% of the OCT grid lies outside the registered FAF")

    masks: dict[str, np.ndarray] = {}
    for key, mask in scan.masks.items():
        task = key.partition(".")[0]
        if opts.tasks is not None and task not in opts.tasks:
            continue
        space = scan.mask_spaces.get(key, "oct")
        if space == "oct":
            masks[key] = mask.astype(np.uint8)
        elif points is None:
            raise DatasetError(
                f"{scan.source}: mask {key!r} is drawn on the {space.upper()} but the B-scan positions are unknown"
            )
        elif space == "slo":
            masks[key] = sample_enface_mask(mask, points)
        else:
            if faf_to_ref is None:
                raise DatasetError(
                    f"{scan.source}: mask {key!r} is drawn on the FAF, which could not be registered "
                    f"to the SLO reliably (quality {extra.get('faf_registration', {}).get('quality', 'n/a')}; "
                    "lower --faf-min-quality or provide faf_to_slo)"
                )
            masks[key] = sample_enface_mask(mask, apply_matrix(np.linalg.inv(faf_to_ref), points))
        if space != "oct":
            extra.setdefault("mask_space", {})[key] = space

    patient = _patient_id(scan, case_id, source, opts, notes)
    eye = normalise_eye(scan.meta.get("eye"))
    if eye is None:
        eye = normalise_eye(opts.default_eye) or "OD"
        extra["eye_assumed"] = True
    visit = scan.meta.get("visit")
    if isinstance(visit, int):
        extra.pop("visit_date", None)
    else:
        visit = 0
        if scan.meta.get("visit_date"):
            extra["visit_date"] = str(scan.meta["visit_date"])
    for key in ("flipped_bscans", "flipped_ascans", "split"):
        if scan.meta.get(key):
            extra[key] = scan.meta[key]
    if volumes:
        extra["channels"] = ["oct", *sorted(volumes)]
    extra["input_shape"] = [int(n) for n in scan.volume.shape]
    meta = CaseMeta(
        case_id=case_id,
        patient_id=patient,
        eye=eye,
        visit=int(visit),
        spacing=spacing,  # type: ignore[arg-type]
        device=str(scan.meta.get("device") or "unknown"),
        source=str(scan.source),
        extra=extra,
    )
    return CaseArrays(meta, oct_flat, images, masks, volumes, notes)


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
                ("splits.json", f"{len(missing)} patient(s) in no split: {list_ids(missing, 5)} "
                 "(re-run with --resplit, or enface split)")
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
    src: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    progress: bool = True,
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
            write_case(out, arrays.meta, arrays.oct, arrays.images, arrays.masks,
                       overwrite=opts.overwrite, volumes=arrays.volumes)
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
