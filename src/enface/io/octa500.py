"""The OCTA-500 dataset layout (Li et al., OCTA-500, Medical Image Analysis 2024).

Expected tree (the released archive, or any subset of it)::

    <root>/
      OCTA_6mm/                          (and/or OCTA_3mm/)
        OCT/<id>/1.bmp ... <n>.bmp       one B-scan per file: D rows (depth) x W columns
        OCTA/<id>/1.bmp ...              same geometry, flow signal
        Projection Maps/...              (not used: they are projections of the volumes)
      Label/                             (at the root, or inside OCTA_6mm/ / OCTA_3mm/)
        GT_<Name>/<id>.bmp               en-face labels: LargeVessel, FAZ, Capillary, Artery, Vein
        GT_Layers/<id>.mat               layer surfaces; surface 6 (index 5) is BM

Geometry: the 6 mm subset has 400 B-scans x 400 A-scans x 640 samples over
6 x 6 x 2 mm, the 3 mm subset 304 x 304 x 640 over 3 x 3 x 2 mm; spacing is extent / size.

Orientation: an en-face label image is indexed ``label[a_scan, b_scan]`` (the layout of the
dataset authors' own loader, IPN), so it is transposed onto the ``(H, W)`` = (B-scan,
A-scan) grid. ``GT_Layers`` ``Layer[k, b_scan, a_scan]`` is on the grid already.

The official split (the dataset paper's): 6 mm: 10001-10180 train, 10181-10200 val,
10201-10300 test; 3 mm: 10301-10440 train, 10441-10450 val, 10451-10500 test. Each eye is
its own subject, so the id is also the patient id.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enface.errors import DatasetError
from enface.io.base import Scan, source_str
from enface.io.formats import ExportFormat, ReadOptions, ScanUnit, register_format
from enface.io.images import NOT_BINARY, read_bscan_stack, read_mask

log = logging.getLogger(__name__)

__all__ = [
    "OCTA500_EXTENT_MM",
    "OCTA500_SPLITS",
    "Octa500Case",
    "find_octa500_cases",
    "label_to_grid",
    "octa500_split",
    "read_octa500_case",
]

OCTA500_EXTENT_MM: dict[str, tuple[float, float, float]] = {"6mm": (6.0, 6.0, 2.0), "3mm": (3.0, 3.0, 2.0)}
"""Physical extent ``(height, width, depth)`` of each subset's volumes."""

OCTA500_SPLITS: dict[str, dict[str, tuple[int, int]]] = {
    "6mm": {"train": (10001, 10180), "val": (10181, 10200), "test": (10201, 10300)},
    "3mm": {"train": (10301, 10440), "val": (10441, 10450), "test": (10451, 10500)},
}
"""Official id ranges (inclusive) of each split, per subset."""

_SUBSET_RE = re.compile(r"^OCTA_(\d+)mm$", re.IGNORECASE)
_BM_SURFACE = 5
_IMAGE_SUFFIXES = (".bmp", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Octa500Case:
    """One OCTA-500 volume found on disk.

    Attributes:
        case_id: the dataset id (e.g. ``"10001"``).
        subset: ``"6mm"`` or ``"3mm"``.
        oct_dir: folder of OCT B-scans.
        octa_dir: folder of OCTA B-scans (may not exist).
        label_dirs: ``GT_*`` folders to look for labels in.
    """

    case_id: str
    subset: str
    oct_dir: Path
    octa_dir: Path
    label_dirs: tuple[Path, ...]


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _subset_of_id(case_id: str) -> str | None:
    try:
        n = int(case_id)
    except ValueError:
        return None
    for subset, ranges in OCTA500_SPLITS.items():
        lo = min(r[0] for r in ranges.values())
        hi = max(r[1] for r in ranges.values())
        if lo <= n <= hi:
            return subset
    return None


def octa500_split(case_id: str) -> str | None:
    """Official split (``train``/``val``/``test``) of an OCTA-500 id, or None."""
    subset = _subset_of_id(case_id)
    if subset is None:
        return None
    n = int(case_id)
    for split, (lo, hi) in OCTA500_SPLITS[subset].items():
        if lo <= n <= hi:
            return split
    return None


def find_octa500_cases(root: str | os.PathLike) -> list[Octa500Case]:
    """All volumes under an OCTA-500 root (or a single ``OCTA_6mm``/``OCTA_3mm`` folder).

    Raises:
        DatasetError: the folder does not look like OCTA-500.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("folder not found", path=root)
    subsets = (
        [root]
        if _SUBSET_RE.match(root.name)
        else sorted(p for p in root.iterdir() if p.is_dir() and _SUBSET_RE.match(p.name))
    )
    if not subsets:
        raise DatasetError("no OCTA_6mm/ or OCTA_3mm/ folder (is this the OCTA-500 layout?)", path=root)
    cases = []
    for sub in subsets:
        subset = f"{_SUBSET_RE.match(sub.name).group(1)}mm"  # type: ignore[union-attr]
        oct_root = sub / "OCT"
        if not oct_root.is_dir():
            raise DatasetError("missing OCT/ folder", path=sub)
        label_dirs = tuple(
            sorted(
                {p for base in (sub, sub.parent) for p in (base / "Label").glob("GT_*") if p.is_dir()},
                key=lambda p: (p.name, str(p)),
            )
        )
        for case_dir in sorted((p for p in oct_root.iterdir() if p.is_dir()), key=_natural_key):
            cases.append(Octa500Case(case_dir.name, subset, case_dir, sub / "OCTA" / case_dir.name, label_dirs))
    return cases


def label_to_grid(label: np.ndarray) -> np.ndarray:
    """An OCTA-500 en-face label (``label[a_scan, b_scan]``) on the ``(H, W)`` grid."""
    return np.ascontiguousarray(np.asarray(label).T)


def task_name(label_dir: Path) -> str:
    """``GT_LargeVessel`` -> ``largevessel``."""
    return label_dir.name[3:].lower().replace("_", "-")


def _bscan_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES), key=_natural_key
    )


def _read_bm(mat_path: Path, grid: tuple[int, int], depth: int) -> np.ndarray | None:
    from scipy.io import loadmat

    try:
        layers = np.asarray(loadmat(mat_path)["Layer"], dtype=np.float64)
    except (KeyError, ValueError, OSError, TypeError) as e:
        raise DatasetError(f"unreadable layer file ({e})", path=mat_path) from None
    if layers.ndim != 3 or layers.shape[0] <= _BM_SURFACE or layers.shape[1:] != grid:
        raise DatasetError(f"expected Layer of shape (6, {grid[0]}, {grid[1]}), got {layers.shape}", path=mat_path)
    bm = layers[_BM_SURFACE]
    bm = np.where((bm > 0) & (bm < depth), bm, np.nan)
    return bm.astype(np.float32)


def read_octa500_case(
    case: Octa500Case, with_octa: bool = False, tasks: tuple[str, ...] | None = None, use_layers: bool = True
) -> Scan:
    """Read one OCTA-500 volume with its labels.

    Args:
        case: the case from :func:`find_octa500_cases`.
        with_octa: also read the OCTA volume as a second channel (``extra_volumes["octa"]``).
        tasks: label names to read (e.g. ``("largevessel", "faz")``); default: every binary
            ``GT_*`` label present for the case.
        use_layers: use the BM surface of ``GT_Layers`` when present.

    Returns:
        The scan; masks are on the OCT grid. The volume stays uint8 (as stored).

    Raises:
        DatasetError: missing or inconsistent files, naming them.
    """
    where = source_str(case.oct_dir)
    vol = read_bscan_stack(_bscan_files(case.oct_dir) if case.oct_dir.is_dir() else [], where)
    extra = {}
    if with_octa:
        if not case.octa_dir.is_dir():
            raise DatasetError("OCTA folder not found (needed for the OCTA channel)", path=case.octa_dir)
        octa = read_bscan_stack(_bscan_files(case.octa_dir), source_str(case.octa_dir))
        if octa.shape != vol.shape:
            raise DatasetError(f"OCTA volume has shape {octa.shape}, OCT has {vol.shape}", path=case.octa_dir)
        extra["octa"] = octa
    grid = vol.shape[:2]
    masks: dict[str, np.ndarray] = {}
    bm = None
    wanted = None if tasks is None else set(tasks)
    for label_dir in case.label_dirs:
        if label_dir.name == "GT_Layers":
            mat = label_dir / f"{case.case_id}.mat"
            if use_layers and mat.is_file():
                bm = _read_bm(mat, grid, vol.shape[2])
            continue
        name = task_name(label_dir)
        if wanted is not None and name not in wanted:
            continue
        files = [p for p in label_dir.glob(f"{case.case_id}.*") if p.suffix.lower() in _IMAGE_SUFFIXES]
        if not files:
            continue
        try:
            mask = label_to_grid(read_mask(files[0]))
        except DatasetError as e:
            if wanted is None and e.kind == NOT_BINARY:
                log.debug("skipping multi-class label %s", files[0])
                continue
            raise
        if mask.shape != grid:
            raise DatasetError(
                f"label has shape {mask.shape[::-1]}, expected {grid[::-1]} for this volume", path=files[0]
            )
        masks[name] = mask
    if wanted is not None:
        missing = sorted(wanted - set(masks))
        if missing:
            log.debug("%s: no label for %s", case.case_id, ", ".join(missing))
    ext = OCTA500_EXTENT_MM[case.subset]
    spacing = tuple(e / n for e, n in zip(ext, vol.shape))
    return Scan(
        volume=vol,
        spacing=spacing,
        source=where,
        bm=bm,
        extra_volumes=extra,
        masks=masks,
        meta={
            "patient_id": case.case_id,
            "eye": None,
            "device": f"OCTA-500 {case.subset}",
            "split": octa500_split(case.case_id),
        },
    )


def _find(root: Path) -> list[ScanUnit]:
    """One unit per volume of the layout (its OCT folder named in reports)."""
    return [ScanUnit(f"octa500:{c.case_id}", c.case_id, c.oct_dir, detail=c) for c in find_octa500_cases(root)]


def _read(unit: ScanUnit, options: ReadOptions) -> Scan:
    return read_octa500_case(
        unit.detail, with_octa="octa" in options.channels, tasks=options.tasks, use_layers=options.export_bm
    )


register_format(
    ExportFormat(
        "octa500",
        "the OCTA-500 layout (OCTA_6mm/, OCTA_3mm/)",
        _read,
        find=_find,
        channels=("octa",),
        official_split=octa500_split,
        split_source="OCTA-500 official split",
    )
)
