"""One phantom eye (fixed anatomy and lesion history) and its scans at any visit day.

:class:`EyeModel` draws everything that belongs to the eye from one seed — fovea, vessel
tree, choroid, tissue parameters, Bruch's-membrane shape, GA/RPD history, fundus
appearance — and :meth:`EyeModel.render` produces the scan of a visit: OCT volume, SLO,
FAF and masks, with fresh acquisition effects (speckle, tilt, illumination, FAF
registration error). :func:`generate_case` is the one-call version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from enface.synth.anatomy import BMShape, LayerStyle, bm_surface, flat_bm_depth, retina_maps, tilt_for_visit
from enface.synth.atrophy import GraderStyle, MultifocalGA, grade
from enface.synth.canvas import Canvas, Grid
from enface.synth.fundus import FAFStyle, FundusScene, SLOStyle, render_faf, render_slo
from enface.synth.lesions import Drusen, GALesions, RPDDeposits, RPDMaps
from enface.synth.mimics import Mimics
from enface.synth.oct import Acquisition, render_oct
from enface.synth.presets import get_preset
from enface.synth.quality import VisitQuality
from enface.synth.realism import get_difficulty
from enface.synth.vessels import grow_vessel_tree, rasterise_vessels

__all__ = ["TASKS", "EyeModel", "PhantomCase", "generate_case", "make_grid"]

TASKS: tuple[str, ...] = ("ga", "rpd", "both")
"""Lesion settings: GA only, RPD only, or both (each eye has GA, RPD or both)."""

_MIN_DEPTH_WINDOW_MM = 0.8


@dataclass
class PhantomCase:
    """One phantom scan (one eye at one visit).

    Attributes:
        oct: ``(H, W, D)`` float32 non-negative OCT intensities (not normalised).
        bm: ``(H, W)`` float32 depth index (sub-pixel) of Bruch's membrane in ``oct``:
            constant when flattened, the true curved surface otherwise.
        slo: ``(H, W)`` float32 near-infrared SLO in [0, 1].
        faf: ``(H, W)`` float32 FAF in [0, 1].
        masks: ``{"ga": (H, W) uint8, "ga.grader2": ...}`` en-face labels in {0, 1}.
        spacing: ``(sh, sw, sd)`` in mm.
        eye: ``"OD"`` or ``"OS"``.
        day: visit day.
        info: ground truth and settings (true lesion area, fovea position, seed, the FAF's
            misregistration ``faf_misregistration`` as in :class:`~enface.synth.canvas.Affine`, ...).
        drusen: ``(H, W)`` float32 height (mm) of the RPE above BM where drusen lift it, or
            None when the scan was rendered without drusen.
        regions: realistic phantom only: ``(H, W)`` float32 maps on the OCT grid of what
            the scan shows and the labels do not say: ``ga_truth`` (the true RPE loss),
            ``irora``, ``pigment``, ``hypertransmission``, ``junction`` (FAF) and
            ``vessel`` (for statistics and tests).
    """

    oct: np.ndarray
    bm: np.ndarray
    slo: np.ndarray
    faf: np.ndarray
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float, float]
    eye: str = "OD"
    day: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    drusen: np.ndarray | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)


def make_grid(
    shape: tuple[int, int, int] | None = None, spacing: tuple[float, float, float] | None = None, preset: str = "demo"
) -> Grid:
    """The acquisition grid of a preset, optionally with another shape and/or spacing.

    Args:
        shape: ``(H, W, D)``; default: the preset's shape.
        spacing: ``(sh, sw, sd)`` in mm; default: the preset's extent divided by ``shape``.
        preset: preset name (see :data:`~enface.synth.presets.PRESETS`).

    Raises:
        ValueError: unknown preset, malformed shape or spacing, or a depth window too
            shallow to hold a retina and choroid.
    """
    p = get_preset(preset)
    if shape is None:
        shape = p.shape
    if len(tuple(shape)) != 3 or any(int(n) != n or int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive integers (H, W, D), got {tuple(shape)}")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    if shape[1] < 2 or shape[2] < 16:
        raise ValueError(f"shape {shape}: need at least 2 A-scans per B-scan and 16 depth samples")
    sh, sw, sd = p.spacing(shape) if spacing is None else spacing
    spacing = (float(sh), float(sw), float(sd))
    grid = Grid(shape, spacing)
    if grid.extent[2] < _MIN_DEPTH_WINDOW_MM:
        raise ValueError(
            f"depth window {grid.extent[2]:.3g} mm (D={shape[2]} x {spacing[2]:.3g} mm) is too shallow: "
            f"need at least {_MIN_DEPTH_WINDOW_MM} mm for retina and choroid"
        )
    return grid


def _lumen(noise: np.ndarray, coverage: float) -> np.ndarray:
    """Vessel-like tubes around the zero level set of a smooth field, profile in [0, 1]."""
    width = float(np.quantile(np.abs(noise), coverage))
    return np.sqrt(np.clip(1.0 - (noise / width) ** 2, 0.0, 1.0)).astype(np.float32)


class EyeModel:
    """A phantom eye: anatomy and lesion history fixed by ``seed``.

    Args:
        seed: non-negative integer.
        grid: acquisition grid of its scans.
        task: ``"ga"``, ``"rpd"`` or ``"both"``.
        eye: ``"OD"``/``"OS"``; default: drawn from the seed.
        difficulty: ``"realistic"`` (default: multifocal GA or none, mimics, graders who
            disagree, clinical image quality) or ``"easy"`` (unit tests: the phantom of
            earlier versions); see :mod:`enface.synth.realism`.
    """

    def __init__(
        self, seed: int, grid: Grid, task: str = "ga", eye: str | None = None, difficulty: str = "realistic"
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if eye is not None and eye not in ("OD", "OS"):
            raise ValueError(f"eye must be 'OD' or 'OS', got {eye!r}")
        self.seed = int(seed)
        self.grid = grid
        self.task = task
        self.realism = get_difficulty(difficulty)
        rng = np.random.default_rng([self.seed, 0])
        drawn = "OD" if rng.random() < 0.5 else "OS"
        self.eye = eye or drawn
        self.nasal_sign = 1.0 if self.eye == "OD" else -1.0
        canvas = self.canvas = Canvas.for_grid(grid)
        eh, ew, _ = grid.extent
        fy, fx = np.clip(rng.normal(0.0, 0.15, 2), -0.4, 0.4)
        self.fovea = (float(fy), float(fx))
        disc = (fy + rng.uniform(-0.5, 0.1), fx + self.nasal_sign * rng.uniform(4.0, 4.8))

        vessel_rng = np.random.default_rng([self.seed, 1])
        paths = grow_vessel_tree(vessel_rng, self.fovea, disc, step=min(0.01, canvas.cs / 2))
        self.vessels = rasterise_vessels(paths, canvas)

        y, x = canvas.coords()
        self.fovea_dist = np.hypot(y - fy, x - fx).astype(np.float32)
        self.lumen_large = _lumen(canvas.smooth_noise(rng, 0.35), 0.22)
        self.lumen_medium = _lumen(canvas.smooth_noise(rng, 0.12), 0.18)
        self.texture = np.stack([canvas.smooth_noise(rng, c) for c in (0.6, 0.25, 0.8)])
        self.stroma_texture = canvas.smooth_noise(rng, 0.3)
        self.undulation = canvas.smooth_noise(rng, 2.5)
        self.af_spots = self._af_spots(rng, (eh, ew))
        self.layers = LayerStyle.random(rng)
        self.bm_shape = BMShape.random(rng)
        self.slo_style = SLOStyle.random(rng)
        self.faf_style = FAFStyle.random(rng)

        lesion_rng = np.random.default_rng([self.seed, 2])
        has_ga, has_rpd = task == "ga", task == "rpd"
        if task == "both":
            has_ga, has_rpd = lesion_rng.random() < 0.85, lesion_rng.random() < 0.7
            if not (has_ga or has_rpd):
                has_ga = True
        fov = canvas.fov(grid)
        self.ga: GALesions | MultifocalGA | None = None
        self.mimics: Mimics | None = None
        self.graders: tuple[GraderStyle, GraderStyle] | None = None
        if not self.realism.enabled:
            self.ga = GALesions.random(lesion_rng, canvas, fov, self.fovea) if has_ga else None
        else:  # every realistic draw from streams of its own: the easy phantom stays as it was
            self._realistic_eye(has_ga, fov)
        self.rpd = RPDDeposits.random(lesion_rng, canvas, (eh / 2, ew / 2), self.fovea) if has_rpd else None
        # drawn from their own stream: scans rendered without drusen are unchanged by them
        self.drusen = Drusen.random(np.random.default_rng([self.seed, 3]), self.fovea)

    def _realistic_eye(self, has_ga: bool, fov: np.ndarray) -> None:
        """Draw the realistic GA (or none), its mimics, the graders' habits and fundus styles."""
        real = self.realism
        ga_rng = np.random.default_rng([self.seed, 4])
        if has_ga and ga_rng.random() >= real.ga_free_eye:
            self.ga = MultifocalGA.random(ga_rng, self.canvas, fov, self.fovea, real)
        self.mimics = Mimics.random(np.random.default_rng([self.seed, 5]), self.canvas, self.fovea, real)
        grader_rng = np.random.default_rng([self.seed, 6])
        self.graders = (GraderStyle.random(grader_rng, real), GraderStyle.random(grader_rng, real))
        style_rng = np.random.default_rng([self.seed, 7])
        self.slo_style = SLOStyle.random(style_rng, realistic=True)
        self.faf_style = FAFStyle.random(style_rng, realistic=True)

    def _af_spots(self, rng: np.random.Generator, extent: tuple[float, float]) -> np.ndarray:
        """Focal autofluorescence changes (mostly hypo-, some hyper-autofluorescent)."""
        y, x = self.canvas.coords()
        spots = np.zeros(self.canvas.shape, dtype=np.float32)
        for _ in range(int(rng.poisson(6))):
            cy, cx = rng.uniform(-extent[0] / 2, extent[0] / 2), rng.uniform(-extent[1] / 2, extent[1] / 2)
            sigma = rng.uniform(0.03, 0.1)
            amp = rng.uniform(-0.5, -0.2) if rng.random() < 0.7 else rng.uniform(0.1, 0.3)
            spots += amp * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma * sigma))
        return np.clip(spots, -0.9, None)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Mask names this eye's scans carry."""
        return ("ga", "rpd") if self.task == "both" else (self.task,)

    def render(self, day: int = 0, flattened: bool = True, drusen: bool | None = None) -> PhantomCase:
        """The scan of visit ``day``.

        Args:
            day: days since the first visit (non-negative); lesions grow with it.
            flattened: BM at a constant depth (as ``prepare`` stores scans), or the raw
                curved and tilted BM.
            drusen: render the eye's drusen (RPE lifted off BM; OCT only in the easy
                phantom). Default: always in the realistic phantom; in raw scans only in the
                easy one.

        Returns:
            The :class:`PhantomCase`. The flattened and raw scans of the same day share
            every random draw; only the BM geometry (and, by default, the drusen) differs.
        """
        if int(day) != day or day < 0:
            raise ValueError(f"day must be a non-negative integer, got {day!r}")
        day = int(day)
        default_drusen = (not flattened) or self.realism.drusen_flattened
        with_drusen = default_drusen if drusen is None else bool(drusen)
        rng = np.random.default_rng([self.seed, 100, day])
        quality = None
        if self.realism.enabled:
            quality = VisitQuality.random(
                np.random.default_rng([self.seed, 100, day, 1]), self.grid.shape[0], self.realism
            )
        motion = None if quality is None else quality.motion
        lesions = self._lesions(day)
        masks = self._masks(lesions, motion)
        drusen_canvas = drusen_map = None
        if with_drusen:  # drusen regress where the atrophy (and its margin) is
            drusen_canvas = self.drusen.rasterise(self.canvas, lesions.photoreceptor_loss)
            drusen_map = self._point(drusen_canvas, motion)
        volume, bm = self._volume(lesions, rng, flattened, drusen_map, quality)
        slo, faf, faf_affine = self._fundus(lesions, rng, quality, drusen_canvas)
        info = self._info(day, flattened, lesions, masks)
        info["faf_misregistration"] = {
            "ty_mm": float(faf_affine.ty),
            "tx_mm": float(faf_affine.tx),
            "rot_deg": float(faf_affine.rot_deg),
            "scale": float(faf_affine.scale),
        }
        if quality is not None:
            info["quality"] = {
                "frames": quality.frames,
                "signal": round(quality.signal, 3),
                "motion_rms_mm": round(float(np.sqrt(np.mean(np.square(quality.motion)))), 4),
                "slo_defocused": quality.slo_defocus_mm > 0,
            }
        return PhantomCase(
            oct=volume,
            bm=bm,
            slo=slo,
            faf=faf,
            masks=masks,
            spacing=self.grid.spacing,
            eye=self.eye,
            day=day,
            info=info,
            drusen=drusen_map,
            regions=self._regions(lesions, motion) if self.mimics is not None else {},
        )

    def _regions(self, lesions: _VisitLesions, motion: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Unlabeled structures point-sampled on the OCT grid (see :class:`PhantomCase`)."""
        assert self.mimics is not None
        canvas_maps = {
            "ga_truth": lesions.ga,
            "irora": self.mimics.irora,
            "pigment": self.mimics.pigment,
            "hypertransmission": self.mimics.hypertransmission,
            "junction": lesions.junction,
            "vessel": self.vessels.profile,
        }
        return {k: self._point(v, motion) for k, v in canvas_maps.items()}

    def _fundus(
        self,
        lesions: _VisitLesions,
        rng: np.random.Generator,
        quality: VisitQuality | None,
        drusen: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """SLO, FAF and the FAF's misregistration of one visit."""
        mim = self.mimics
        scene = FundusScene(
            canvas=self.canvas,
            fovea_dist=self.fovea_dist,
            vessels=self.vessels,
            ga=lesions.ga,
            faf_ga=lesions.faf_ga,
            junction=lesions.junction,
            choroid_pattern=self.lumen_large,
            texture=self.texture,
            af_spots=self.af_spots,
            rpd=lesions.rpd,
            irora=None if mim is None else mim.irora,
            pigment=None if mim is None else mim.pigment,
            pigment_af=None if mim is None else mim.pigment_af,
            drusen=drusen if self.realism.enabled else None,
        )
        if quality is None:
            slo = render_slo(scene, self.slo_style, self.grid, rng)
            faf, affine = render_faf(scene, self.faf_style, self.grid, rng)
        else:
            slo = render_slo(scene, self.slo_style, self.grid, rng, defocus_mm=quality.slo_defocus_mm)
            faf, affine = render_faf(scene, self.faf_style, self.grid, rng, noise=quality.faf_noise)
        return slo, faf, affine

    def _point(self, image: np.ndarray, motion: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Canvas image point-sampled at the B-scan lines and A-scan positions (moved by ``motion``)."""
        return self.canvas.to_grid(image, self.grid, motion=motion)

    def _lesions(self, day: int) -> _VisitLesions:
        """Canvas maps of the lesions present at ``day``."""
        zeros = np.zeros(self.canvas.shape, dtype=np.float32)
        rpd = self.rpd.rasterise(self.canvas, day) if self.rpd is not None else None
        graded = self._graded(day)
        if self.ga is None:
            return _VisitLesions(zeros, zeros, zeros, zeros, zeros, rpd, graded)
        faf_ga, junction = self.ga.faf_lesion(day)
        truth = self.ga.lesion(day)
        if isinstance(self.ga, MultifocalGA):
            grader2 = graded[1] if graded is not None else truth
        else:
            grader2 = self.ga.lesion_grader2(day)
        return _VisitLesions(
            ga=truth.astype(np.float32),
            photoreceptor_loss=self.ga.photoreceptor_loss(day, self.canvas.cs),
            ga_grader2=grader2.astype(np.float32),
            faf_ga=faf_ga,
            junction=junction,
            rpd=rpd,
            graded=graded,
        )

    def _graded(self, day: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The two realistic graders' outlines of the GA at ``day`` (None in the easy phantom)."""
        if self.graders is None:
            return None
        truth = self.ga.lesion(day) if self.ga is not None else np.zeros(self.canvas.shape, dtype=bool)
        rng = np.random.default_rng([self.seed, 100, day, 2])
        g1, g2 = (grade(truth, self.canvas, style, self.realism, rng) for style in self.graders)
        return g1, g2

    def _masks(
        self, lesions: _VisitLesions, motion: tuple[np.ndarray, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Labels as graded along the B-scans: ``{task: mask, task.grader2: mask}``."""
        h, w = self.grid.shape[:2]
        masks: dict[str, np.ndarray] = {}
        if "ga" in self.tasks:
            first, second = lesions.ga, lesions.ga_grader2
            if lesions.graded is not None:
                first, second = (g.astype(np.float32) for g in lesions.graded)
            masks["ga"] = (self._point(first, motion) >= 0.5).astype(np.uint8)
            masks["ga.grader2"] = (self._point(second, motion) >= 0.5).astype(np.uint8)
        if "rpd" in self.tasks:
            if lesions.rpd is None:
                masks["rpd"] = np.zeros((h, w), dtype=np.uint8)
                masks["rpd.grader2"] = masks["rpd"].copy()
            else:
                for key, outline in (("rpd", lesions.rpd.mask), ("rpd.grader2", lesions.rpd.mask2)):
                    masks[key] = (self._point(outline.astype(np.float32), motion) >= 0.5).astype(np.uint8)
        return masks

    def _volume(
        self,
        lesions: _VisitLesions,
        rng: np.random.Generator,
        flattened: bool,
        drusen: np.ndarray | None,
        quality: VisitQuality | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The OCT volume ``(H, W, D)`` and its BM depth ``(H, W)`` (``drusen``: ``(H, W)`` mm or None)."""
        h, w, d = self.grid.shape
        sd = self.grid.spacing[2]
        motion = None if quality is None else quality.motion
        y = self.grid.rows_mm()[:, None].astype(np.float32)
        x = self.grid.cols_mm()[None, :].astype(np.float32)
        ym, xm = (y, x) if motion is None else (y + motion[0][:, None], x + motion[1][:, None])
        fy, fx = self.fovea
        no_rpd = np.zeros((h, w), np.float32)
        mim = self.mimics
        rpe_loss = lesions.ga if mim is None else np.maximum(lesions.ga, mim.irora)
        pr_loss = lesions.photoreceptor_loss if mim is None else np.maximum(lesions.photoreceptor_loss, mim.irora)
        pt = self._point
        maps = retina_maps(
            self.layers,
            fovea_dist=np.hypot(ym - fy, xm - fx),
            nasal=np.broadcast_to((xm - fx) * self.nasal_sign, (h, w)),
            vert=np.broadcast_to(ym - fy, (h, w)),
            rpe_loss=pt(rpe_loss, motion),
            photoreceptor_loss=pt(pr_loss, motion),
            sdd_height=pt(lesions.rpd.height, motion) if lesions.rpd is not None else no_rpd,
            vessel=pt(self.vessels.profile, motion),
            vessel_radius=pt(self.vessels.radius, motion),
            lumen_large=pt(self.lumen_large, motion),
            lumen_medium=pt(self.lumen_medium, motion),
            texture=pt(self.stroma_texture, motion),
            drusen=drusen,
            hypertransmission=None if mim is None else pt(mim.hypertransmission, motion),
            pigment=None if mim is None else pt(mim.pigment, motion),
        )
        # raw BM drawn in both modes, so that both share every later random draw
        tilt, jitter = tilt_for_visit(rng), rng.normal(0.0, 0.006, h)
        raw_bm = bm_surface(self.bm_shape, y, x, pt(self.undulation, motion), tilt, jitter, d, sd)
        bm = np.full((h, w), flat_bm_depth(d), dtype=np.float32) if flattened else raw_bm
        gain = np.exp(rng.normal(0.0, 0.06, h)) * np.where(rng.random(h) < 0.03, 0.6, 1.0)
        acq = Acquisition(
            looks=float(rng.uniform(3.0, 6.0)),
            noise_floor=float(rng.uniform(0.015, 0.03)),
            falloff=float(rng.uniform(0.2, 0.5)),
            bscan_gain=gain,
            lateral_vignetting=float(rng.uniform(0.05, 0.15)),
        )
        if quality is not None:
            acq = dataclasses.replace(
                acq,
                looks=quality.looks,
                bscan_gain=gain * quality.signal,
                lateral_vignetting=quality.vignetting,
                lateral_gradient=quality.lateral_gradient,
            )
        return render_oct(maps, bm, d, sd, acq, rng), bm.astype(np.float32)

    def _info(self, day: int, flattened: bool, lesions: _VisitLesions, masks: dict[str, np.ndarray]) -> dict[str, Any]:
        """Ground truth and settings of a visit (true areas, deposit count, fovea, ...)."""
        sh, sw, _ = self.grid.spacing
        info: dict[str, Any] = {
            "seed": self.seed,
            "flattened": bool(flattened),
            "fovea_mm": [round(self.fovea[0], 4), round(self.fovea[1], 4)],
            "bm_flat": flat_bm_depth(self.grid.shape[2]),
            "difficulty": self.realism.name,
        }
        if self.ga is not None:
            info["ga_area_mm2"] = round(self.ga.area(day), 4)
        elif "ga" in self.tasks and self.realism.enabled:
            info["ga_area_mm2"] = 0.0
        if isinstance(self.ga, MultifocalGA):
            info["ga_foci"] = len(self.ga.foci)
            info["ga_spares_fovea"] = self.ga.spares_fovea
        if self.mimics is not None:
            info["mimics"] = dict(self.mimics.counts)
        if self.rpd is not None:
            info["rpd_deposits"] = int((self.rpd.active(day) & self.rpd.in_fov).sum())
        if lesions.rpd is not None:
            fov = self.canvas.fov(self.grid)
            info["rpd_area_mm2"] = round(float(lesions.rpd.mask[fov].sum()) * self.canvas.cs**2, 4)
        for key, m in masks.items():
            if "." not in key:
                info[f"{key}_label_area_mm2"] = round(float(m.sum()) * sh * sw, 4)
        return info


@dataclass(frozen=True)
class _VisitLesions:
    """Canvas maps ``(ny, nx)`` of one visit's lesions (zeros where the eye has none); ``graded``:
    the two realistic graders' outlines (bool), None in the easy phantom."""

    ga: np.ndarray
    photoreceptor_loss: np.ndarray
    ga_grader2: np.ndarray
    faf_ga: np.ndarray
    junction: np.ndarray
    rpd: RPDMaps | None
    graded: tuple[np.ndarray, np.ndarray] | None = None


def generate_case(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    task: str = "ga",
    flattened: bool = True,
    spacing: tuple[float, float, float] | None = None,
    *,
    preset: str = "demo",
    eye: str | None = None,
    day: int = 0,
    drusen: bool | None = None,
    difficulty: str = "realistic",
) -> PhantomCase:
    """One phantom scan: the eye of ``seed`` at visit ``day``.

    Args:
        seed: non-negative integer; the same seed gives the same eye (and, for the same
            ``day``, bit-identical arrays).
        shape: ``(H, W, D)``; default: the preset's shape.
        task: ``"ga"``, ``"rpd"`` or ``"both"``.
        flattened: BM at a constant depth, or the raw curved/tilted BM.
        spacing: ``(sh, sw, sd)`` in mm; default: the preset's extent scaled to ``shape``.
        preset: acquisition preset.
        eye: ``"OD"``/``"OS"``; default: drawn from the seed.
        day: days since the first visit; lesions grow with it.
        drusen: render drusen (RPE lifted off BM); default: see :meth:`EyeModel.render`.
        difficulty: ``"realistic"`` (default) or ``"easy"`` (:mod:`enface.synth.realism`).

    Returns:
        The :class:`PhantomCase`.
    """
    grid = make_grid(shape, spacing, preset)
    model = EyeModel(seed, grid, task=task, eye=eye, difficulty=difficulty)
    return model.render(day=day, flattened=flattened, drusen=drusen)
