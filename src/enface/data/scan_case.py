"""One scan -> one case: the conversion at the heart of ``enface prepare`` (and of
``enface predict`` on device exports), with its options.

:func:`scan_to_case` takes a :class:`~enface.io.base.Scan` as a reader returns it and
produces the arrays and ``meta.json`` of one dataset case, in named steps:

1. :func:`_flatten`: flatten along BM (the export's or a ``_bm.npy`` companion's, else the
   estimate of :func:`~enface.data.preprocess.estimate_bm`), crop a window around it and
   resample depth; the source spacing, the window and the resampling are recorded in
   ``meta.json`` so that every output sample can be traced back to the export;
2. :func:`_enface_images`: the SLO through the B-scan positions, the FAF by registration
   to the SLO;
3. :func:`_enface_masks`: masks drawn on the OCT grid (already in the grid's orientation:
   see :func:`~enface.io.volumes.attach_companions`), the SLO or the FAF;
4. :func:`_case_meta`: patient, eye, visit, orientation and provenance.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import CaseMeta
from enface.data.options import PrepareOptions
from enface.data.preprocess import (
    enface_points,
    estimate_bm,
    fill_bm,
    flatten_volume,
    resample_depth,
    sample_enface,
    sample_enface_mask,
)
from enface.data.register import apply_matrix, register_images
from enface.errors import DatasetError
from enface.io.base import Scan, normalise_eye, safe_id

__all__ = ["STEPS", "CaseArrays", "PrepareOptions", "scan_to_case"]
"""Input formats of ``enface prepare``."""


@dataclass
class CaseArrays:
    """Everything :func:`~enface.data.folder.write_case` needs for one case.

    Attributes:
        bm: ``(H, W)`` BM the volume was flattened with (``bm.npy``), in voxels of the source
            volume as read (depth 0 on the vitreous side), on the case's grid; None for an
            input that was already flattened.
        seconds: wall seconds of the steps (:data:`STEPS`: ``bm``, the estimate or the
            export's BM made usable; ``flatten``, flattening and depth resampling; ``enface``,
            the 2D images and masks onto the grid and the metadata); never written to a case.
    """

    meta: CaseMeta
    oct: np.ndarray
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    volumes: dict[str, np.ndarray]
    notes: list[str]
    bm: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


STEPS = ("bm", "flatten", "enface")
"""The steps of :func:`scan_to_case` that :attr:`CaseArrays.seconds` times."""


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


def _bm_for_flattening(scan: Scan, opts: PrepareOptions, extra: dict[str, Any]) -> np.ndarray:
    """BM of the scan's grid: the export's (or a ``_bm.npy`` companion's), or estimated."""
    sh, sw, _ = scan.spacing
    if scan.bm is not None and opts.bm != "estimate":
        try:
            bm = fill_bm(scan.bm, (sh, sw))
        except ValueError as e:
            raise DatasetError(f"BM segmentation of the export is unusable ({e})", path=scan.source) from None
        bm_file = scan.meta.get("bm_file")
        extra["bm_source"] = "export" if bm_file is None else f"companion {bm_file}"
        return bm
    if opts.bm == "export":
        raise DatasetError("the export has no BM segmentation (bm='export' was asked)", path=scan.source)
    extra["bm_source"] = "estimated"
    return estimate_bm(scan.volume, scan.spacing)


def _flatten(
    scan: Scan, opts: PrepareOptions, extra: dict[str, Any], seconds: dict[str, float]
) -> tuple[np.ndarray, dict[str, np.ndarray], float, np.ndarray | None]:
    """Flatten (or only resample) the volume and extra channels; returns them, the new sd and
    the BM flattened along (None for an input already flattened). The seconds of making the
    BM go to ``seconds["bm"]``.

    Records in ``extra`` how output depth maps to the input: ``flatten`` (window in mm and
    in input voxels, step, interpolation, anti-aliasing) or ``flattening`` (an input
    already flattened: the whole depth resampled).
    """
    sd = scan.spacing[2]
    params = opts.flatten
    d = scan.volume.shape[2]
    if scan.flattened:
        step = d / params.depth
        extra["flattening"] = "input already flattened"
        extra["resampling"] = {
            "input_depth": int(d),
            "depth": params.depth,
            "step_voxels": round(step, 6),
            "mapping": "output sample k = input depth (k + 0.5) * step_voxels - 0.5",
            "interpolation": "linear",
            "antialias_sigma_voxels": round(0.4 * step, 6) if step > 1 else 0.0,
        }
        vols = {k: resample_depth(v, params.depth) for k, v in scan.extra_volumes.items()}
        return resample_depth(scan.volume, params.depth), vols, sd * d / params.depth, None
    if (params.above_mm + params.below_mm) < sd:
        raise DatasetError(
            f"the depth window ({params.above_mm:g} + {params.below_mm:g} mm) is under one depth "
            f"voxel of the scan ({sd:g} mm); widen --window-mm",
            path=scan.source,
        )
    start = time.perf_counter()
    bm = _bm_for_flattening(scan, opts, extra)
    seconds["bm"] = time.perf_counter() - start
    step = (params.above_mm + params.below_mm) / sd / params.depth
    extra["bm_depth_range"] = [round(float(bm.min()), 2), round(float(bm.max()), 2)]
    extra["flatten"] = {
        "above_mm": params.above_mm,
        "below_mm": params.below_mm,
        "depth": params.depth,
        "bm_index": round(params.bm_index, 3),
        "input_depth": int(d),
        "input_depth_spacing_mm": float(sd),
        "above_voxels": round(params.above_mm / sd, 6),
        "step_voxels": round(step, 6),
        "mapping": "output sample k of A-scan (i, j) = input depth bm[i, j] - above_voxels + (k + 0.5) * step_voxels",
        "interpolation": "linear",
        "antialias_sigma_voxels": round(0.4 * step, 6) if step > 1 else 0.0,
    }
    window_lo = float(bm.min()) - params.above_mm / sd
    window_hi = float(bm.max()) + params.below_mm / sd
    if window_lo < -0.5 or window_hi > d - 0.5:
        extra["window_padded"] = True
    oct_flat = flatten_volume(scan.volume, bm, sd, params)
    vols = {k: flatten_volume(v, bm, sd, params) for k, v in scan.extra_volumes.items()}
    extra["bm_npy"] = "BM flattened along: (H, W) depth in voxels of the source volume (input_shape), this grid"
    return oct_flat, vols, params.output_spacing(), np.asarray(bm, dtype=np.float32)


def _register_faf(scan: Scan, opts: PrepareOptions, extra: dict[str, Any], notes: list[str]) -> np.ndarray | None:
    """The FAF -> reference-image transform: given, a rescaling, or a registration that
    scored at least ``opts.faf_min_quality`` (None otherwise)."""
    if scan.faf_to_slo is not None:
        return np.asarray(scan.faf_to_slo, dtype=np.float64)
    if scan.slo is None:
        notes.append("FAF present but no SLO or FAF placement: FAF not used")
        return None
    if not opts.register_faf:
        extra["faf_registration"] = {"model": "none (rescaled to the SLO)"}
        return _scale_matrix(scan.faf.shape, scan.slo.shape)  # type: ignore[union-attr]
    reg = register_images(scan.slo, scan.faf, model=opts.faf_model)  # type: ignore[arg-type]
    extra["faf_registration"] = reg.to_json()
    if reg.quality >= opts.faf_min_quality:
        return reg.matrix
    notes.append(f"FAF registration quality {reg.quality:.2f} < {opts.faf_min_quality:.2f}: FAF not used")
    return None


def _enface_images(
    scan: Scan, opts: PrepareOptions, points: np.ndarray | None, extra: dict[str, Any], notes: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """SLO and FAF sampled at the grid ``points``; returns them and the FAF transform."""
    images: dict[str, np.ndarray] = {}
    if scan.slo is not None and points is not None:
        images["slo"], outside = sample_enface(scan.slo, points)
        if outside > 0.02:
            notes.append(f"{100 * outside:.0f}% of the OCT grid lies outside the SLO")
    if scan.faf is None:
        return images, None
    faf_to_ref = _register_faf(scan, opts, extra, notes)
    if faf_to_ref is not None and points is not None:
        images["faf"], outside = sample_enface(scan.faf, apply_matrix(np.linalg.inv(faf_to_ref), points))
        if outside > 0.02:
            notes.append(f"{100 * outside:.0f}% of the OCT grid lies outside the registered FAF")
    return images, faf_to_ref


def _enface_masks(
    scan: Scan, opts: PrepareOptions, points: np.ndarray | None, faf_to_ref: np.ndarray | None, extra: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Masks on the grid: OCT-grid masks as they are (the reader oriented them with the
    volume), SLO / FAF masks sampled at the grid points."""
    masks: dict[str, np.ndarray] = {}
    for key, mask in scan.masks.items():
        if opts.tasks is not None and key.partition(".")[0] not in opts.tasks:
            continue
        space = scan.mask_spaces.get(key, "oct")
        if space == "oct":
            masks[key] = mask.astype(np.uint8)
            continue
        if points is None:
            raise DatasetError(
                f"mask {key!r} is drawn on the {space.upper()} but the B-scan positions are unknown", path=scan.source
            )
        if space == "slo":
            masks[key] = sample_enface_mask(mask, points)
        elif faf_to_ref is None:
            raise DatasetError(
                f"mask {key!r} is drawn on the FAF, which could not be registered "
                f"to the SLO reliably (quality {extra.get('faf_registration', {}).get('quality', 'n/a')}; "
                "lower --faf-min-quality or provide faf_to_slo)",
                path=scan.source,
            )
        else:
            masks[key] = sample_enface_mask(mask, apply_matrix(np.linalg.inv(faf_to_ref), points))
        extra.setdefault("mask_space", {})[key] = space
    return masks


def _case_meta(
    scan: Scan,
    case_id: str,
    opts: PrepareOptions,
    spacing: tuple[float, float, float],
    extra: dict[str, Any],
    notes: list[str],
) -> CaseMeta:
    """``meta.json``: patient, eye, visit, orientation and provenance of the case."""
    patient = _patient_id(scan, case_id, Path(scan.source), opts, notes)
    eye = normalise_eye(scan.meta.get("eye"))
    if eye is None:
        eye = normalise_eye(opts.default_eye) or "OD"
        extra["eye_assumed"] = True
    visit = scan.meta.get("visit")
    if not isinstance(visit, int):
        visit = 0
        if scan.meta.get("visit_date"):
            extra["visit_date"] = str(scan.meta["visit_date"])
    flips = scan.file_flips
    for key, value in (
        ("flipped_bscans", flips[0]),
        ("flipped_ascans", flips[1]),
        ("depth_flipped", flips[2]),
        ("split", scan.meta.get("split")),
    ):
        if value:
            extra[key] = value
    if isinstance(scan.meta.get("dicom"), dict):  # where a DICOM scan came from (predict writes back to it)
        extra["dicom"] = scan.meta["dicom"]
    extra["grid_order"] = ORIENTATION_NOTE
    extra["source_spacing"] = [float(s) for s in scan.spacing]
    extra["input_shape"] = [int(n) for n in scan.volume.shape]
    return CaseMeta(
        case_id=case_id,
        patient_id=patient,
        eye=eye,
        visit=int(visit),
        spacing=spacing,
        device=str(scan.meta.get("device") or "unknown"),
        source=str(scan.source),
        extra=extra,
    )


ORIENTATION_NOTE = "SLO orientation; OCT-grid companions read in file order and reoriented"
"""``meta.json`` ``grid_order`` of cases whose OCT-grid companions went through the reader's
reorientation (``flipped_bscans`` / ``flipped_ascans`` say which; absent: none)."""


def scan_to_case(scan: Scan, case_id: str, opts: PrepareOptions) -> CaseArrays:
    """Turn a scan into the arrays and metadata of one case.

    Args:
        scan: the scan as read (OCT-grid companions already on its grid).
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
    seconds = {"bm": 0.0}
    start = time.perf_counter()
    oct_flat, volumes, sd_out, bm = _flatten(scan, opts, extra, seconds)
    seconds["flatten"] = time.perf_counter() - start - seconds["bm"]
    start = time.perf_counter()
    points = None if scan.bscan_positions is None else enface_points(scan.bscan_positions, scan.grid_shape[1])
    images, faf_to_ref = _enface_images(scan, opts, points, extra, notes)
    masks = _enface_masks(scan, opts, points, faf_to_ref, extra)
    if volumes:
        extra["channels"] = ["oct", *sorted(volumes)]
    spacing = (float(scan.spacing[0]), float(scan.spacing[1]), float(sd_out))
    meta = _case_meta(scan, case_id, opts, spacing, extra, notes)
    seconds["enface"] = time.perf_counter() - start
    return CaseArrays(meta, oct_flat, images, masks, volumes, notes, bm, seconds)
