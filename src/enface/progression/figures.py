"""Figures and the HTML report of ``enface progression``.

* :func:`plot_sqrt_area` — square root of the lesion area over time, one line per eye, the
  ensemble spread as a band, the reference dashed when it is shown beside predictions;
* :func:`plot_bland_altman` — difference of the growth rates (predicted − reference)
  against their mean, with the bias and the 95 % limits of agreement;
* :func:`progression_html` — a self-contained page: text, tables and inline PNG figures.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps

from enface.viz import new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from enface.progression.core import EyeRates

__all__ = ["LEGEND_MAX_EYES", "figure_png", "plot_bland_altman", "plot_sqrt_area", "progression_html"]

LEGEND_MAX_EYES = 12
"""Eyes are named in the legend only up to this many."""


def plot_sqrt_area(eyes: Sequence[EyeRates], reference: Sequence[EyeRates] | None = None, title: str = "") -> Figure:
    """Square root of the lesion area (mm) against years since each eye's first visit.

    Args:
        eyes: the eyes to draw (one line each; a single visit is a dot). Visits with an
            ensemble spread get a band of ± the SD of the members' sqrt areas.
        reference: the same eyes measured on the reference masks, drawn dashed in the same
            colour (optional).
        title: figure title.
    """
    fig = new_figure((7.5, 4.8))
    ax = fig.subplots()

    cmap = colormaps["tab10" if len(eyes) <= 10 else "tab20"]
    colours = [cmap(i % cmap.N) for i in range(len(eyes))]
    ref_by_eye = {(e.patient_id, e.eye): e for e in reference or ()}
    for eye, colour in zip(eyes, colours):
        t0 = eye.visits[0].day
        years = np.array([(v.day - t0) / 365.25 for v in eye.visits])
        sqrt_area = np.array([v.features.sqrt_area_mm for v in eye.visits])
        label = f"{eye.patient_id} {eye.eye}" if len(eyes) <= LEGEND_MAX_EYES else None
        ax.plot(years, sqrt_area, "-o", color=colour, ms=3.5, lw=1.4, label=label)
        sd = np.array([v.sqrt_area_sd_mm for v in eye.visits])
        if np.isfinite(sd).any():
            sd = np.nan_to_num(sd)
            ax.fill_between(years, sqrt_area - sd, sqrt_area + sd, color=colour, alpha=0.2, lw=0)
        ref = ref_by_eye.get((eye.patient_id, eye.eye))
        if ref is not None:
            ry = np.array([(v.day - t0) / 365.25 for v in ref.visits])
            ax.plot(ry, [v.features.sqrt_area_mm for v in ref.visits], "--", color=colour, lw=1.0, alpha=0.8)
    ax.set_xlabel("years since the first visit")
    ax.set_ylabel("√area (mm)")
    notes = []
    if reference:
        notes.append("dashed: reference")
    if any(len(v.member_areas_mm2) > 1 for e in eyes for v in e.visits):
        notes.append("band: ± SD over ensemble members")
    ax.set_title(title + (f" ({'; '.join(notes)})" if notes else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if eyes and len(eyes) <= LEGEND_MAX_EYES:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


_RATES: tuple[tuple[str, str], ...] = (
    ("sqrt_growth_mm_per_year", "√area growth (mm/year)"),
    ("growth_mm2_per_year", "area growth (mm²/year)"),
)


def plot_bland_altman(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> Figure:
    """Bland–Altman plots of both growth rates (predicted − reference vs their mean).

    Args:
        rows: per-eye rows of :func:`enface.progression.rate_agreement`.
        summary: its summary (bias, limits of agreement, ICC per rate).
    """
    fig = new_figure((10.0, 4.2))
    for ax, (rate, label) in zip(fig.subplots(1, 2), _RATES):
        ref = np.array([r[f"reference_{rate}"] for r in rows], dtype=np.float64)
        pred = np.array([r[f"predicted_{rate}"] for r in rows], dtype=np.float64)
        ax.scatter((ref + pred) / 2.0, pred - ref, s=18, color="C0")
        s = summary[rate]
        for value, style, name in (
            (s["bias"], "-", "bias"),
            (s["loa_low"], "--", "95 % LoA"),
            (s["loa_high"], "--", None),
        ):
            if value is not None and math.isfinite(value):
                ax.axhline(value, color="C3", ls=style, lw=1.0, label=name)
        ax.axhline(0.0, color="0.6", lw=0.8)
        icc = s.get("icc")
        icc_text = f"{icc:.2f}" if icc is not None and math.isfinite(icc) else "n/a"
        ax.set_title(f"{label}\nbias {s['bias']:.3g}, ICC(A,1) {icc_text}, n = {s['n']}", fontsize=9)
        ax.set_xlabel("mean of predicted and reference")
        ax.set_ylabel("predicted − reference")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="best")
    return fig


def figure_png(fig: Figure, dpi: int = 120) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def progression_html(title: str, sections: Sequence[tuple[str, Sequence[Any]]]) -> str:
    """A self-contained HTML page.

    Args:
        title: page title (also the first heading).
        sections: ``(heading, parts)``; a part is a string (a paragraph), a ``bytes`` PNG
            (an inline figure), or a ``(rows, columns)`` pair (a table).
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, parts in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for part in parts:
            if isinstance(part, bytes):
                data = base64.b64encode(part).decode("ascii")
                body.append(
                    f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{data}" style="max-width:100%">'
                )
            elif isinstance(part, str):
                body.append(f"<p>{html.escape(part)}</p>")
            else:
                rows, columns = part
                body.append(_table(rows, columns))
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
