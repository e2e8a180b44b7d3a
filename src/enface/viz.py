"""Figures: plain functions that build matplotlib figures (Agg, no pyplot state) and save
them atomically.

* :func:`case_figure` / :func:`show_case` — one case like the paper's Fig. 1: a B-scan with
  the en-face mask overlaid in green, the mask, the SLO with the B-scan position in yellow,
  and the FAF.
* :func:`confusion_rgb` / :func:`plot_overlay_grid` — predictions like the paper's Fig. 5:
  true positives green, true negatives black, false positives red, false negatives blue.
* :func:`plot_metric_vs_fraction` — Dice and area difference vs label fraction (Fig. 4).
* :func:`plot_training_curves` — validation metric per epoch of several runs.
* :func:`mask_overlay` / :func:`scan_overlay` — a predicted mask tinted and outlined over the
  en-face OCT projection and the SLO (``enface predict``'s ``overlay.png``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import binary_erosion

from enface.data.folder import load_case
from enface.fileio import atomic_write_bytes
from enface.metrics import dice_score

__all__ = [
    "MASK_COLOR",
    "OVERLAY_MIN_SIZE",
    "case_figure",
    "confusion_rgb",
    "default_bscan",
    "enface_projection",
    "mask_overlay",
    "new_figure",
    "plot_active_learning",
    "plot_metric_vs_fraction",
    "plot_overlay_grid",
    "plot_training_curves",
    "save_figure",
    "scan_overlay",
    "show_case",
]

GREEN = (0.1, 0.9, 0.2)
MASK_COLOR: tuple[int, int, int] = (255, 40, 40)
"""RGB colour of the predicted lesion in ``overlay.png``."""
YELLOW = (1.0, 0.9, 0.0)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib figure attached to an Agg canvas (safe without a display)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: str | os.PathLike, dpi: int = 150) -> Path:
    """Render ``fig`` and write it atomically; the format follows the suffix (png, pdf, svg)."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(out, buf.getvalue())


def default_bscan(mask: np.ndarray | None, height: int) -> int:
    """The B-scan to show: the one crossing the most labeled pixels, else the middle one."""
    if mask is not None and mask.any():
        return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    return height // 2


def _display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [1.0, 99.7])
    return float(lo), float(max(hi, lo + 1e-6))


def _empty_panel(ax, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def case_figure(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    bscan: int,
    mask: np.ndarray | None = None,
    slo: np.ndarray | None = None,
    faf: np.ndarray | None = None,
    task: str = "mask",
    title: str | None = None,
) -> Figure:
    """The four-panel figure of one case.

    Args:
        volume: ``(H, W, D)`` OCT volume.
        spacing: ``(sh, sw, sd)`` in mm (axes are in mm; en-face panels keep the physical
            aspect ratio).
        bscan: index of the B-scan to show (0 <= bscan < H).
        mask: ``(H, W)`` en-face mask, or None for an unlabeled case.
        slo: ``(H, W)`` SLO in [0, 1], or None.
        faf: ``(H, W)`` FAF in [0, 1], or None.
        task: mask name for the titles.
        title: figure title.

    Returns:
        The figure (not saved).

    Raises:
        ValueError: ``bscan`` out of range or en-face images not on the volume's grid.
    """
    h, w, d = volume.shape
    if not 0 <= bscan < h:
        raise ValueError(f"B-scan index {bscan} out of range: the volume has {h} B-scans (0..{h - 1})")
    for label, img in (("mask", mask), ("slo", slo), ("faf", faf)):
        if img is not None and img.shape != (h, w):
            raise ValueError(f"{label} has shape {img.shape}, expected the en-face grid {(h, w)}")
    sh, sw, sd = spacing
    ew, eh, ed = w * sw, h * sh, d * sd
    enface_extent = (0.0, ew, eh, 0.0)
    y_line = (bscan + 0.5) * sh

    fig = new_figure((16.0, 3.8))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})

    ax = axes[0]
    img = np.asarray(volume[bscan], dtype=np.float32).T
    vmin, vmax = _display_range(img)
    ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=(0.0, ew, ed, 0.0), aspect="auto", interpolation="nearest")
    if mask is not None:
        overlay = np.zeros((1, w, 4), dtype=np.float32)
        overlay[0, :, :3] = GREEN
        overlay[0, :, 3] = 0.35 * (np.asarray(mask[bscan]) > 0)
        ax.imshow(overlay, extent=(0.0, ew, ed, 0.0), aspect="auto", interpolation="nearest")
    ax.set_title(f"B-scan {bscan} / {h}" + (f" with {task}" if mask is not None else ""))
    ax.set_xlabel("mm")
    ax.set_ylabel("depth (mm)")

    if mask is not None:
        axes[1].imshow(np.asarray(mask) > 0, cmap="gray", vmin=0, vmax=1, extent=enface_extent, interpolation="nearest")
        axes[1].set_title(f"{task} mask")
    else:
        _empty_panel(axes[1], "mask", "unlabeled")

    for ax, image, name in ((axes[2], slo, "SLO"), (axes[3], faf, "FAF")):
        if image is None:
            _empty_panel(ax, name, f"no {name}")
            continue
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, extent=enface_extent, interpolation="nearest")
        ax.set_title(name)
    if slo is not None:
        axes[2].axhline(y_line, color=YELLOW, linewidth=1.5)
    for ax, image in zip(axes[1:], (mask, slo, faf)):
        if image is not None:
            ax.set_xlabel("mm")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_case(
    case_dir: str | os.PathLike,
    out: str | os.PathLike,
    bscan: int | None = None,
    task: str | None = None,
    dpi: int = 150,
) -> Path:
    """Write the figure of a dataset case folder (see :func:`case_figure`).

    Args:
        case_dir: ``<dataset>/cases/<case_id>``.
        out: image file to write (png, pdf or svg).
        bscan: B-scan index; default: the one crossing the most labeled pixels.
        task: mask to show; default: the case's first task (none for unlabeled cases).
        dpi: resolution.

    Returns:
        The written file.

    Raises:
        DatasetError: unreadable case; ValueError: unknown task, bad B-scan index, or ``out``
            is a folder.
    """
    if Path(out).is_dir():
        raise ValueError(
            f"--out {out}: is a folder; give the image file to write, e.g. {Path(out) / (Path(case_dir).name + '.png')}"
        )
    case = load_case(case_dir)
    volume = case.load_oct(mmap=True)
    tasks = case.tasks()
    if task is not None and task not in tasks:
        raise ValueError(f"case {case.case_id}: no mask for task {task!r} (has: {tasks or 'none'})")
    task = task or (tasks[0] if tasks else None)
    mask = case.load_mask(task) if task else None
    index = default_bscan(mask, volume.shape[0]) if bscan is None else int(bscan)
    fig = case_figure(
        volume,
        case.spacing,
        index,
        mask=mask,
        slo=case.load_image("slo") if case.has_image("slo") else None,
        faf=case.load_image("faf") if case.has_image("faf") else None,
        task=task or "mask",
        title=f"{case.case_id}  ({case.meta.eye}, day {case.meta.visit})",
    )
    return save_figure(fig, out, dpi=dpi)


# --------------------------------------------------------------------------- study figures

TP_COLOR = (0.0, 0.8, 0.0)
FP_COLOR = (0.9, 0.0, 0.0)
FN_COLOR = (0.0, 0.3, 1.0)


def confusion_rgb(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Colour a binary prediction against the reference (the paper's Fig. 5 convention).

    Args:
        pred: ``(H, W)`` binary prediction.
        truth: ``(H, W)`` binary reference.

    Returns:
        ``(H, W, 3)`` float RGB: TP green, TN black, FP red, FN blue.
    """
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and reference {t.shape} differ in shape")
    rgb = np.zeros((*p.shape, 3), dtype=np.float32)
    rgb[p & t] = TP_COLOR
    rgb[p & ~t] = FP_COLOR
    rgb[~p & t] = FN_COLOR
    return rgb


def plot_overlay_grid(
    panels: dict[str, dict[str, np.ndarray]],
    truths: dict[str, np.ndarray],
    out: str | os.PathLike,
    title: str = "",
    spacings: dict[str, tuple[float, ...]] | None = None,
    images: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Grid of prediction overlays: one row per case; its SLO/FAF, the reference, then one
    column per configuration.

    Args:
        panels: ``{config label: {case id: (H, W) binary prediction}}``.
        truths: ``{case id: (H, W) binary reference}``.
        out: output image path.
        title: figure title.
        spacings: ``{case id: (sh, sw, ...)}`` in mm, to draw pixels at their physical
            aspect ratio (B-scans are usually much farther apart than A-scans).
        images: ``{case id: {"SLO": (H, W), "FAF": (H, W)}}`` shown before the reference.
    """
    cases = list(truths)
    labels = list(panels)
    names = sorted({n for imgs in (images or {}).values() for n in imgs}, key=lambda n: (n != "SLO", n))
    n_cols = len(names) + 1 + len(labels)
    fig = new_figure((2.6 * n_cols, 2.4 * len(cases) + 0.8))
    axes = fig.subplots(len(cases), n_cols, squeeze=False)
    for i, cid in enumerate(cases):
        truth = truths[cid]
        sp = (spacings or {}).get(cid)
        aspect = float(sp[0]) / float(sp[1]) if sp else 1.0
        for j, name in enumerate(names):
            img = (images or {}).get(cid, {}).get(name)
            if img is None:
                _empty_panel(axes[i, j], name, "not acquired")
                continue
            vmin, vmax = _display_range(img)
            axes[i, j].imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect=aspect)
            axes[i, j].set_title(f"{cid}\n{name}" if j == 0 else name, fontsize=8)
        ref = axes[i, len(names)]
        ref.imshow(truth, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect=aspect)
        ref.set_title("reference" if names else f"{cid}\nreference", fontsize=8)
        for j, label in enumerate(labels, len(names) + 1):
            ax = axes[i, j]
            pred = panels[label].get(cid)
            if pred is None:
                _empty_panel(ax, label, "no prediction")
                continue
            ax.imshow(confusion_rgb(pred, truth), interpolation="nearest", aspect=aspect)
            ax.set_title(f"{label}\nDice {dice_score(pred, truth):.2f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def _metric_lines(axes: Any, x: Sequence[float], rows: Sequence[Mapping[str, Any]], label: str, style: str) -> None:
    """One line with seed-spread error bars per metric: Dice on ``axes[0]``, area difference on ``axes[1]``."""
    for ax, metric in zip(axes, ("dice", "area_diff_mm2")):
        ax.errorbar(
            x,
            [r[f"{metric}_mean"] for r in rows],
            yerr=[r[f"{metric}_seed_std"] for r in rows],
            label=label,
            linestyle=style,
            marker="o",
            capsize=3,
        )


def _finish_metric_figure(fig: Any, axes: Any, out: str | os.PathLike, title: str) -> Path:
    """Labels, axes from zero (Dice 0-1: differences of a few thousandths must not fill the axis),
    grid, legend and title of a Dice / area-difference figure; saved to ``out``."""
    for ax, ylabel in zip(axes, ("Dice", "absolute area difference (mm²)")):
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0.0, 1.0)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def plot_metric_vs_fraction(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike, title: str = "") -> Path:
    """Dice and absolute area difference vs label fraction, one line per model + init.

    Args:
        rows: study table rows with ``model``, ``init``, ``fraction``, ``dice_mean``,
            ``dice_seed_std``, ``area_diff_mm2_mean``, ``area_diff_mm2_seed_std``.
        out: output image path.
        title: figure title (e.g. the test set).
    """
    fig = new_figure((10, 4))
    axes = fig.subplots(1, 2)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        label = r["model"] + (" (scratch)" if r["init"] == "scratch" else f" (SSL {r['init'][4:]})")
        groups.setdefault(label, []).append(r)
    for label, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rs]
        _metric_lines(axes, x, rs, label, "--" if all(r["init"] == "scratch" for r in rs) else "-")
    ticks = sorted({100 * r["fraction"] for r in rows})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("labeled training data (%)")
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
    return _finish_metric_figure(fig, axes, out, title)


def plot_active_learning(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike, title: str = "") -> Path:
    """Dice and absolute area difference vs labeled patients, one line per selection strategy.

    Args:
        rows: active-learning table rows with ``strategy``, ``n_patients``, ``dice_mean``,
            ``dice_seed_std``, ``area_diff_mm2_mean``, ``area_diff_mm2_seed_std``.
        out: output image path.
        title: figure title (e.g. the test set).
    """
    fig = new_figure((10, 4))
    axes = fig.subplots(1, 2)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], []).append(r)
    for label, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["n_patients"])
        _metric_lines(axes, [r["n_patients"] for r in rs], rs, label, "--" if label == "random" else "-")
    for ax in axes:
        ax.set_xlabel("labeled training patients")
        ax.set_xticks(sorted({r["n_patients"] for r in rows}))
    return _finish_metric_figure(fig, axes, out, title)


def plot_training_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], out: str | os.PathLike) -> Path:
    """Validation metric (``val_dice`` or ``val_ssim``) per epoch of several runs.

    Args:
        curves: ``{run label: [{"epoch": e, "val_dice" or "val_ssim": value, ...}, ...]}`` (the
            rows of a run's ``logs/metrics.csv``, or the history a study's ledger keeps).
        out: output image path.
    """
    fig = new_figure((10, 4))
    axes = fig.subplots(1, 2)
    for label, rows in curves.items():
        for ax, metric in zip(axes, ("val_ssim", "val_dice")):
            pts = sorted(
                {int(float(r["epoch"])): float(r[metric]) for r in rows if r.get(metric) not in (None, "")}.items()
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, linewidth=1)
    for ax, name in zip(axes, ("pre-training: validation SSIM", "segmentation: validation Dice")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    return save_figure(fig, out)


# --------------------------------------------------------------------------- prediction overlays


def _stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1.0, 99.5])
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def enface_projection(volume: np.ndarray) -> np.ndarray:
    """Mean-intensity projection of a ``(H, W, D)`` volume along depth, stretched to [0, 1]."""
    return _stretch(np.asarray(volume, dtype=np.float32).mean(axis=-1))


def _square_pixels(image: np.ndarray, spacing: tuple[float, float], max_factor: int = 16) -> np.ndarray:
    """Repeat rows (or columns) so that a pixel covers about the same length on both axes."""
    sh, sw = spacing
    ratio = sh / sw
    if ratio >= 1.5:
        return np.repeat(image, min(max_factor, int(round(ratio))), axis=0)
    if ratio <= 1 / 1.5:
        return np.repeat(image, min(max_factor, int(round(1 / ratio))), axis=1)
    return image


def mask_overlay(
    background: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float] = (1.0, 1.0),
    color: tuple[int, int, int] = MASK_COLOR,
    alpha: float = 0.3,
) -> np.ndarray:
    """The mask tinted and outlined over a grayscale image.

    Args:
        background: ``(H, W)`` image in [0, 1].
        mask: ``(H, W)`` binary mask on the same grid.
        spacing: ``(sh, sw)`` in mm; rows or columns are repeated for square pixels.
        color: RGB of the tint and outline.
        alpha: opacity of the tint inside the mask (the outline is opaque).

    Returns:
        ``(H', W', 3)`` uint8 RGB image.
    """
    bg = _square_pixels(np.clip(np.asarray(background, dtype=np.float32), 0, 1), spacing)
    m = _square_pixels(np.asarray(mask).astype(bool), spacing)
    rgb = np.repeat(bg[..., None] * 255.0, 3, axis=-1)
    col = np.asarray(color, dtype=np.float32)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * col
    edge = m & ~binary_erosion(m, border_value=0)
    rgb[edge] = col
    return np.round(rgb).clip(0, 255).astype(np.uint8)


OVERLAY_MIN_SIZE = 384
"""Overlay panels smaller than this (longer side, px) are enlarged by an integer factor."""


def scan_overlay(
    volume: np.ndarray, mask: np.ndarray, spacing: tuple[float, float], slo: np.ndarray | None = None
) -> np.ndarray:
    """A predicted mask over the scan's en-face OCT projection (and over its SLO, side by side).

    Args:
        volume: ``(H, W, D)`` OCT volume.
        mask: ``(H, W)`` binary mask.
        spacing: ``(sh, sw)`` in mm (pixels are shown physically square).
        slo: ``(H, W)`` SLO on the same grid, or None.

    Returns:
        ``(H', W', 3)`` uint8 RGB image, enlarged to at least :data:`OVERLAY_MIN_SIZE` pixels.
    """
    sp = (float(spacing[0]), float(spacing[1]))
    panels = [mask_overlay(enface_projection(volume), mask, sp)]
    if slo is not None:
        panels.append(mask_overlay(_stretch(slo), mask, sp))
    factor = max(1, -(-OVERLAY_MIN_SIZE // max(panels[0].shape[:2])))
    panels = [p.repeat(factor, axis=0).repeat(factor, axis=1) for p in panels]
    if len(panels) == 1:
        return panels[0]
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)
