"""GA progression: lesion features of known geometry, growth rates, agreement, bad input, CLI."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import linregress
from scipy.stats import t as student_t

from enface.cli import main
from enface.data.folder import CaseMeta, write_case, write_dataset_info
from enface.errors import DatasetError
from enface.progression import (
    DAYS_PER_YEAR,
    EYE_COLUMNS,
    VISIT_COLUMNS,
    LesionFeatures,
    Visit,
    crofton_perimeter,
    eye_rates,
    lesion_features,
    rate_agreement,
)
from enface.progression.run import run_progression
from enface.progression.stats import bland_altman, fit_rate, icc_a1
from tiny_data import disc_dataset

SPACING = (0.03, 0.01)
"""Anisotropic (3:1) en-face grid of the geometry tests, mm."""


# --------------------------------------------------------------------------- quantisation bounds


def _crofton_step(sh: float, sw: float) -> float:
    """Σ_k w_k d_k of the four Crofton directions: the perimeter change of one line more or
    less per direction and side (a digital disc's count of lines is off by at most that)."""
    a = math.atan2(sh, sw)
    angles = np.array([0.0, a, math.pi / 2, math.pi - a])
    order = np.argsort(angles)
    s = angles[order]
    ext = np.concatenate([s[-1:] - math.pi, s, s[:1] + math.pi])
    w = np.empty(4)
    w[order] = (ext[2:] - ext[:-2]) / 2
    d = sh * sw / math.hypot(sh, sw)
    return float((w * np.array([sh, d, sw, d])).sum())


def _area_bound(radius: float, spacing: tuple[float, float]) -> float:
    """Largest |digital − true| area of a disc: pixels counted wrongly lie within half a pixel
    diagonal δ of the circle, on one side of it: |ΔA| <= π (2 R δ + δ²)."""
    delta = math.hypot(*spacing) / 2
    return math.pi * (2 * radius * delta + delta**2)


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float, spacing=SPACING) -> np.ndarray:
    """Pixels whose centre lies in the disc (centre in mm from the grid's corner)."""
    y = (np.arange(shape[0]) + 0.5) * spacing[0]
    x = (np.arange(shape[1]) + 0.5) * spacing[1]
    return ((y[:, None] - centre[0]) ** 2 + (x[None, :] - centre[1]) ** 2 <= radius**2).astype(np.uint8)


# --------------------------------------------------------------------------- one mask


@pytest.mark.parametrize("radius", (0.4, 0.75, 1.2))
def test_disc_features_on_an_anisotropic_grid(radius: float) -> None:
    rng = np.random.default_rng(int(radius * 100))
    step = _crofton_step(*SPACING)
    for _ in range(5):
        centre = (1.5 + rng.uniform(0, SPACING[0]), 1.5 + rng.uniform(0, SPACING[1]))
        f = lesion_features(_disc((100, 300), centre, radius), SPACING)
        da, dp = _area_bound(radius, SPACING), 2 * step
        assert abs(f.area_mm2 - math.pi * radius**2) <= da
        assert f.sqrt_area_mm == pytest.approx(math.sqrt(f.area_mm2))
        assert abs(f.perimeter_mm - 2 * math.pi * radius) <= dp
        assert f.foci == 1
        a, p = math.pi * radius**2, 2 * math.pi * radius
        assert 4 * math.pi * (a - da) / (p + dp) ** 2 <= f.circularity <= 4 * math.pi * (a + da) / (p - dp) ** 2


def test_crofton_is_unbiased_where_marching_squares_is_not() -> None:
    """Mean relative perimeter error over discs at random offsets, on a 4:1 OCT-like grid."""
    from skimage.measure import find_contours

    sp, radius = (0.1875, 0.046875), 1.0
    rng = np.random.default_rng(0)
    crofton, contour = [], []
    for _ in range(20):
        m = _disc((20, 70), (1.9 + rng.uniform(0, sp[0]), 1.6 + rng.uniform(0, sp[1])), radius, sp)
        crofton.append(crofton_perimeter(m, sp) / (2 * math.pi * radius) - 1)
        c = find_contours(np.pad(m.astype(float), 1), 0.5)[0] * sp
        contour.append(np.hypot(*np.diff(c, axis=0).T).sum() / (2 * math.pi * radius) - 1)
    assert abs(np.mean(crofton)) < 0.01
    assert np.mean(contour) > 0.10  # the staircase of a 4:1 grid


def test_two_foci_a_speck_and_diagonal_contact() -> None:
    shape = (100, 400)
    a = _disc(shape, (1.5, 1.0), 0.5)
    b = _disc(shape, (1.5, 3.0), 0.7)
    speck = np.zeros(shape, np.uint8)
    speck[5, 390] = 1  # 0.0003 mm², far below the 0.05 mm² of a focus
    f = lesion_features(a | b | speck, SPACING)
    fa, fb = lesion_features(a, SPACING), lesion_features(b, SPACING)
    assert f.foci == 2
    assert f.area_mm2 == pytest.approx(fa.area_mm2 + fb.area_mm2 + SPACING[0] * SPACING[1])
    assert f.perimeter_mm == pytest.approx(fa.perimeter_mm + fb.perimeter_mm + crofton_perimeter(speck, SPACING))
    assert abs(f.perimeter_mm - 2 * math.pi * 1.2) <= 4 * _crofton_step(*SPACING) + crofton_perimeter(speck, SPACING)
    assert lesion_features(a | b | speck, SPACING, min_focus_mm2=0.0).foci == 3
    # two squares touching at a corner are one focus (8-connectivity)
    sq = np.zeros((40, 40), np.uint8)
    sq[5:15, 5:15] = 1
    sq[15:25, 15:25] = 1
    assert lesion_features(sq, (0.1, 0.1)).foci == 1
    empty = lesion_features(np.zeros((4, 4)), (0.1, 0.1))
    assert (empty.area_mm2, empty.foci, empty.perimeter_mm) == (0.0, 0, 0.0) and math.isnan(empty.circularity)


def test_ring() -> None:
    outer, inner = 1.0, 0.5
    ring = _disc((100, 300), (1.5, 1.5), outer) & ~_disc((100, 300), (1.5, 1.5), inner).astype(bool)
    f = lesion_features(ring, SPACING)
    assert abs(f.area_mm2 - math.pi * (outer**2 - inner**2)) <= _area_bound(outer, SPACING) + _area_bound(
        inner, SPACING
    )
    assert abs(f.perimeter_mm - 2 * math.pi * (outer + inner)) <= 4 * _crofton_step(*SPACING)
    assert f.circularity == pytest.approx((outer - inner) / (outer + inner), abs=0.03)
    assert f.foci == 1


# --------------------------------------------------------------------------- rates


def test_growing_disc_recovers_the_sqrt_area_rate() -> None:
    """√area grows 0.3 mm/year from 1.0 mm; 7 visits over 3 years on the 3:1 grid.

    Tolerance: each visit's √area is off by at most ε_i = ΔA_i / (√A_i + √(A_i - ΔA_i)),
    with ΔA_i the area bound of a digital disc; the least-squares slope is a fixed linear
    combination Σ w_i y_i, so it is off by at most Σ |w_i| ε_i.
    """
    rate, s0 = 0.3, 1.0
    days = np.array([0, 182, 365, 547, 730, 913, 1095])
    years = days / DAYS_PER_YEAR
    visits = []
    for i, day in enumerate(days):
        radius = (s0 + rate * years[i]) / math.sqrt(math.pi)
        mask = _disc((90, 260), (1.31, 1.297), radius)
        visits.append(Visit(f"c{i}", "P1", "OD", int(day), SPACING, lesion_features(mask, SPACING)))
    (eye,) = eye_rates(visits)
    w = (years - years.mean()) / ((years - years.mean()) ** 2).sum()
    true_sqrt = s0 + rate * years
    d_area = np.array([_area_bound(s / math.sqrt(math.pi), SPACING) for s in true_sqrt])
    eps = d_area / (true_sqrt + np.sqrt(true_sqrt**2 - d_area))
    assert abs(eye.sqrt_area.slope - rate) <= float(np.abs(w) @ eps)
    true_area_slope = float(w @ true_sqrt**2)
    assert abs(eye.area.slope - true_area_slope) <= float(np.abs(w) @ d_area)
    assert eye.sqrt_area.lo <= eye.sqrt_area.slope <= eye.sqrt_area.hi
    assert eye.years == pytest.approx(1095 / 365.25)
    assert eye.focality == "unifocal"


def test_fit_rate_matches_linregress() -> None:
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 3, 6))
    y = 1.0 + 0.4 * t + rng.normal(0, 0.05, 6)
    fit, ref = fit_rate(t, y), linregress(t, y)
    half = student_t.ppf(0.975, len(t) - 2) * ref.stderr
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-12)
    assert fit.se == pytest.approx(ref.stderr, rel=1e-10)
    assert (fit.lo, fit.hi) == pytest.approx((ref.slope - half, ref.slope + half), rel=1e-10)
    assert fit.slope == pytest.approx(np.polyfit(t, y, 1)[0], rel=1e-10)
    two = fit_rate([0.0, 2.0], [1.0, 2.0])
    assert two.slope == 0.5 and math.isnan(two.lo) and math.isnan(two.hi)
    assert math.isnan(fit_rate([1.0], [2.0]).slope)
    with pytest.raises(ValueError, match="same time"):
        fit_rate([1.0, 1.0], [2.0, 3.0])


def test_bland_altman_and_icc_by_hand() -> None:
    # d = test - ref = [-0.5, 0.5, 1, -1]: mean 0, SD sqrt(2.5 / 3)
    ba = bland_altman([1.0, 2.0, 3.0, 4.0], [1.5, 1.5, 2.0, 5.0])
    sd = math.sqrt(2.5 / 3)
    assert (ba.n, ba.bias, ba.sd) == (4, pytest.approx(0.0), pytest.approx(sd))
    assert (ba.loa_low, ba.loa_high) == (pytest.approx(-1.96 * sd), pytest.approx(1.96 * sd))
    # 3 subjects x 2 raters [[1,2],[2,3],[3,5]]: MSR = 19/6, MSC = 8/3, MSE = 1/6
    # ICC = (19/6 - 1/6) / (19/6 + 1/6 + 2 (8/3 - 1/6) / 3) = 3 / 5
    assert icc_a1(np.array([[1, 2], [2, 3], [3, 5]])) == pytest.approx(0.6)
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges, ICC(2,1) = 0.29
    sf = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert icc_a1(sf) == pytest.approx(0.29, abs=0.005)
    assert icc_a1(np.array([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(1.0)
    assert math.isnan(icc_a1(np.array([[1.0, 2.0]])))


def test_rate_agreement_pairs_visits_by_day() -> None:
    def f(a: float) -> LesionFeatures:
        return LesionFeatures(a, math.sqrt(a), 1, 1.0, 1.0)

    ref = [Visit(f"r{d}", "P", "OD", d, (0.1, 0.1), f(1.0 + d / 365.25)) for d in (0, 365, 730)]
    ref += [Visit(f"q{d}", "Q", "OS", d, (0.1, 0.1), f(2.0 + 2 * d / 365.25)) for d in (0, 365)]
    test = [Visit(f"t{d}", "P", "OD", d, (0.1, 0.1), f(1.0 + 1.5 * d / 365.25)) for d in (0, 365, 730, 1095)]
    test += [Visit(f"u{d}", "Q", "OS", d, (0.1, 0.1), f(2.0 + 2 * d / 365.25)) for d in (0, 365)]
    rows, summary = rate_agreement(test, ref)
    by_eye = {r["patient_id"]: r for r in rows}
    assert by_eye["P"]["visits"] == 3  # day 1095 has no reference
    assert by_eye["P"]["diff_growth_mm2_per_year"] == pytest.approx(0.5)
    assert by_eye["Q"]["diff_growth_mm2_per_year"] == pytest.approx(0.0)
    assert summary["growth_mm2_per_year"]["bias"] == pytest.approx(0.25)
    assert summary["growth_mm2_per_year"]["n"] == 2


# --------------------------------------------------------------------------- dataset and predictions folders

GRID = (24, 72)
SP3 = (0.06, 0.02, 0.01)
EYES = {  # patient, eye -> [(day, radius mm)]
    ("P1", "OD"): [(0, 0.30), (180, 0.36), (365, 0.42), (730, 0.52)],
    ("P1", "OS"): [(0, 0.25), (400, 0.33)],
    ("P2", "OD"): [(0, 0.40), (200, 0.45), (500, 0.50)],
    ("P3", "OS"): [(30, 0.35)],
}


def _make_dataset(root: Path, eyes=EYES, spacing=SP3, tasks=("ga",)) -> Path:
    """A dataset of discs: one case per visit, ``mask_<task>.png`` for each task."""
    for (patient, eye), visits in eyes.items():
        for i, (day, radius) in enumerate(visits):
            sp = spacing(patient, i) if callable(spacing) else spacing
            mask = _disc(GRID, (0.72, 0.72), radius, sp[:2])
            meta = CaseMeta(f"{patient}_{eye}_V{i + 1}", patient, eye, day, tuple(sp))
            write_case(root, meta, np.zeros((*GRID, 4), np.float32), masks={t: mask for t in tasks})
    write_dataset_info(root, "discs", ["oct"], list(tasks), spacing("", 0) if callable(spacing) else spacing)
    return root


@pytest.fixture()
def discs(tmp_path: Path) -> Path:
    return _make_dataset(tmp_path / "discs")


def _predict_by_hand(pred: Path, dataset: Path | None, scans: dict, task: str = "ga", failed=()) -> Path:
    """A predictions folder following the contract of ``enface predict``.

    ``scans``: scan id -> dict(mask=, spacing=, optional patient_id/eye/visit/member_areas_mm2/source).
    """
    rows = []
    for scan_id, s in scans.items():
        folder = pred / scan_id
        folder.mkdir(parents=True)
        Image.fromarray((np.asarray(s["mask"]) > 0).astype(np.uint8) * 255).save(folder / "mask.png")
        source = s.get("source", str(dataset / "cases" / scan_id) if dataset else f"/exports/{scan_id}.vol")
        pj = {
            "scan_id": scan_id,
            "source": source,
            "task": s.get("task", task),
            "spacing": list(s["spacing"]),
            **{k: s[k] for k in ("patient_id", "eye", "visit", "member_areas_mm2") if k in s},
        }
        (folder / "prediction.json").write_text(json.dumps(pj))
        rows.append({"scan_id": scan_id, "source": source, "status": "ok", "reason": ""})
    rows += [{"scan_id": f, "source": f"/exports/{f}.vol", "status": "failed", "reason": "unreadable"} for f in failed]
    with (pred / "summary.csv").open("w", newline="") as fh:
        w = csv.DictWriter(
            fh, ["scan_id", "source", "status", "area_mm2", "n_pixels", "mean_uncertainty_in_mask", "reason"]
        )
        w.writeheader()
        w.writerows(rows)
    return pred


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _dilated_predictions(dataset: Path, pred: Path, grow_px: int = 1, **extra) -> Path:
    """Predictions = the reference masks dilated by ``grow_px`` (grows more at later visits: none)."""
    from scipy.ndimage import binary_dilation

    scans = {}
    for case_dir in sorted((dataset / "cases").iterdir()):
        mask = np.asarray(Image.open(case_dir / "mask_ga.png")) > 0
        scans[case_dir.name] = {"mask": binary_dilation(mask, iterations=grow_px), "spacing": SP3, **extra}
    return _predict_by_hand(pred, dataset, scans)


def test_reference_rates_and_outputs(discs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_progression(discs, out)
    visits = _read_csv(out / "visits.csv")
    assert list(visits[0])[: len(VISIT_COLUMNS)] == list(VISIT_COLUMNS)
    assert "area_sd_mm2" not in visits[0]
    eyes = {(r["patient_id"], r["eye"]): r for r in _read_csv(out / "eyes.csv")}
    assert list(next(iter(eyes.values()))) == list(EYE_COLUMNS)
    p1 = eyes[("P1", "OD")]
    t = np.array([d for d, _ in EYES[("P1", "OD")]]) / 365.25
    areas = [float(v["area_mm2"]) for v in visits if (v["patient_id"], v["eye"]) == ("P1", "OD")]
    ref = linregress(t, np.sqrt(areas))
    assert float(p1["sqrt_growth_mm_per_year"]) == pytest.approx(ref.slope, rel=1e-4)
    half = student_t.ppf(0.975, 2) * ref.stderr
    assert float(p1["sqrt_growth_mm_per_year_ci_low"]) == pytest.approx(ref.slope - half, rel=1e-4)
    assert float(p1["years"]) == pytest.approx(730 / 365.25, rel=1e-5)
    assert eyes[("P1", "OS")]["sqrt_growth_mm_per_year_ci_low"] == ""  # two visits: no interval
    assert eyes[("P3", "OS")]["growth_mm2_per_year"] == "" and eyes[("P3", "OS")]["visits"] == "1"
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["eyes"] == 4 and cohort["eyes_with_rate"] == 3 and cohort["agreement"] is None
    rates = [e.sqrt_area.slope for e in res.eyes if len(e.visits) > 1]
    assert cohort["sqrt_growth_mm_per_year"]["mean"] == pytest.approx(np.mean(rates))
    assert cohort["sqrt_growth_mm_per_year"]["sd"] == pytest.approx(np.std(rates, ddof=1))
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "P2" in html
    assert sorted(p.name for p in out.iterdir()) == [
        "cohort.json",
        "eyes.csv",
        "report.html",
        "skipped.csv",
        "sqrt_area.png",
        "visits.csv",
    ]
    run_progression(discs, out)  # a previous output is replaced
    with pytest.raises(ValueError, match="not an output folder"):
        run_progression(discs, tmp_path)  # a folder with other things in it


def test_predictions_with_ensemble_agreement_and_failed_scan(discs: Path, tmp_path: Path) -> None:
    pred = _dilated_predictions(discs, tmp_path / "pred", member_areas_mm2=[1.0, 1.2, 1.4])
    with (pred / "summary.csv").open("a") as f:
        f.write("broken_scan,/x/broken.vol,failed,,,,cannot read\n")
    out = tmp_path / "out"
    res = run_progression(discs, out, predictions=pred)
    skipped = _read_csv(out / "skipped.csv")
    assert [(s["case_id"], s["reason"]) for s in skipped] == [("broken_scan", "prediction failed: cannot read")]
    visits = _read_csv(out / "visits.csv")
    assert float(visits[0]["area_sd_mm2"]) == pytest.approx(np.std([1.0, 1.2, 1.4]), rel=1e-5)
    assert float(visits[0]["sqrt_area_sd_mm"]) == pytest.approx(np.std(np.sqrt([1.0, 1.2, 1.4])), rel=1e-5)
    agree = {(r["patient_id"], r["eye"]): r for r in _read_csv(out / "agreement.csv")}
    assert set(agree) == {("P1", "OD"), ("P1", "OS"), ("P2", "OD")}
    pe = {(e.patient_id, e.eye): e for e in res.eyes}
    re_ = {(e.patient_id, e.eye): e for e in eye_rates(res.reference.visits)}
    for key, row in agree.items():
        assert float(row["diff_growth_mm2_per_year"]) == pytest.approx(
            pe[key].area.slope - re_[key].area.slope, rel=1e-4, abs=1e-6
        )
    diffs = [pe[k].sqrt_area.slope - re_[k].sqrt_area.slope for k in agree]
    a = json.loads((out / "cohort.json").read_text())["agreement"]["sqrt_growth_mm_per_year"]
    assert a["bias"] == pytest.approx(np.mean(diffs)) and a["n"] == 3
    assert a["loa_high"] == pytest.approx(np.mean(diffs) + 1.96 * np.std(diffs, ddof=1))
    ratings = np.array([[re_[k].sqrt_area.slope, pe[k].sqrt_area.slope] for k in agree])
    assert a["icc"] == pytest.approx(icc_a1(ratings))
    # a rim of constant width w keeps the growth of sqrt(A) ~ sqrt(pi) (R + w), raises that of A
    assert abs(a["bias"]) < 0.02
    assert json.loads((out / "cohort.json").read_text())["agreement"]["growth_mm2_per_year"]["bias"] > 0.01
    for name in ("bland_altman.png", "reference_visits.csv", "reference_eyes.csv", "sqrt_area.png"):
        assert (out / name).is_file()
    assert main(["progression", str(discs), "--predictions", str(pred), "--out", str(tmp_path / "cli")]) == 0


def test_predictions_of_device_exports_carry_their_own_visits(discs: Path, tmp_path: Path) -> None:
    scans = {
        f"exp{i}": {"mask": _disc(GRID, (0.7, 0.7), r), "spacing": SP3, "patient_id": "X9", "eye": "OS", "visit": d}
        for i, (d, r) in enumerate([(0, 0.3), (365, 0.4), (730, 0.5)])
    }
    res = run_progression(discs, tmp_path / "out", predictions=_predict_by_hand(tmp_path / "pred", None, scans))
    (eye,) = res.eyes
    assert (eye.patient_id, eye.eye, len(eye.visits)) == ("X9", "OS", 3)
    assert res.agreement is None and res.reference is not None  # no reference visit of X9
    assert any("no agreement" in n for n in res.cohort["notes"])


# --------------------------------------------------------------------------- bad input


def _refused(dataset: Path, out: Path, match: str, **kwargs) -> None:
    with pytest.raises(DatasetError, match=match):
        run_progression(dataset, out, **kwargs)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing written, no temp left


def test_same_day_twice_and_missing_visit(tmp_path: Path) -> None:
    same = _make_dataset(tmp_path / "same", {("P1", "OD"): [(0, 0.3), (90, 0.35), (90, 0.4)]})
    _refused(same, tmp_path / "o1", r"same day.*P1 OD day 90: P1_OD_V2, P1_OD_V3")
    missing = _make_dataset(tmp_path / "missing", {("P1", "OD"): [(0, 0.3), (90, 0.35)]})
    meta = missing / "cases" / "P1_OD_V2" / "meta.json"
    obj = json.loads(meta.read_text())
    del obj["visit"]
    meta.write_text(json.dumps(obj))
    _refused(missing, tmp_path / "o2", r"P1_OD_V2/meta.json: no 'visit'")
    assert main(["progression", str(missing), "--reference", "--out", str(tmp_path / "o3")]) == 2
    assert not (tmp_path / "o3").exists()


def test_mixed_spacing_is_accepted_and_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = _make_dataset(
        tmp_path / "mixed",
        {("P1", "OD"): [(0, 0.3), (365, 0.4)]},
        spacing=lambda patient, i: (0.06, 0.02, 0.01) if i == 0 else (0.05, 0.025, 0.01),
    )
    with caplog.at_level(logging.INFO, logger="enface.progression"):
        res = run_progression(ds, tmp_path / "out")
    assert "different en-face spacings" in caplog.text and "comparable" in caplog.text
    notes = json.loads((tmp_path / "out" / "cohort.json").read_text())["notes"]
    assert any("0.06 x 0.02, 0.05 x 0.025" in n for n in notes)
    assert res.eyes[0].area.slope > 0


def test_predictions_of_another_dataset_are_refused(discs: Path, tmp_path: Path) -> None:
    other = _make_dataset(tmp_path / "other", {("Q1", "OD"): [(0, 0.3), (90, 0.4)]})
    unknown = {"Q1_OD_V1": {"mask": np.zeros(GRID), "spacing": SP3, "source": "/gone/Q1_OD_V1"}}
    _refused(
        discs,
        tmp_path / "o1",
        r"not a case of .*discs.*another dataset",
        predictions=_predict_by_hand(tmp_path / "p1", None, unknown),
    )
    # predicted from the case folders of another (existing) dataset
    _refused(
        discs,
        tmp_path / "o2",
        r"a case of the dataset .*other, not of",
        predictions=_dilated_predictions(other, tmp_path / "p2"),
    )
    # same case id, but another patient / day / spacing
    for i, (key, value, match) in enumerate(
        (("patient_id", "Z", "patient Z"), ("visit", 999, "day 999"), ("spacing", (0.05, 0.02, 0.01), "spacing"))
    ):
        scan = {"mask": np.zeros(GRID), "spacing": SP3, "source": "/gone", key: value}
        _refused(
            discs,
            tmp_path / f"o3{i}",
            match,
            predictions=_predict_by_hand(tmp_path / f"p3{i}", None, {"P1_OD_V1": scan}),
        )
    with pytest.raises(DatasetError, match="summary.csv: file not found"):
        run_progression(discs, tmp_path / "o4", predictions=tmp_path)
    no_visit = {"exp": {"mask": np.zeros(GRID), "spacing": SP3, "patient_id": "X", "eye": "OD", "visit": None}}
    _refused(discs, tmp_path / "o5", "has no visit", predictions=_predict_by_hand(tmp_path / "p5", None, no_visit))


def test_mixed_tasks_are_refused(discs: Path, tmp_path: Path) -> None:
    mixed = {f"P1_OD_V{i}": {"mask": np.zeros(GRID), "spacing": SP3, "task": t} for i, t in ((1, "ga"), (2, "rpd"))}
    _refused(
        discs,
        tmp_path / "o1",
        r"several tasks \(ga: P1_OD_V1; rpd: P1_OD_V2\)",
        predictions=_predict_by_hand(tmp_path / "p1", discs, mixed),
    )
    pred = _dilated_predictions(discs, tmp_path / "p2")
    _refused(discs, tmp_path / "o2", "of task 'ga', not 'rpd'", predictions=pred, task="rpd")
    both = _make_dataset(tmp_path / "both", {("P1", "OD"): [(0, 0.3), (90, 0.4)]}, tasks=("ga", "rpd"))
    _refused(both, tmp_path / "o3", "tasks ga, rpd; choose one with --task")
    assert run_progression(both, tmp_path / "o4", task="rpd").visits.task == "rpd"


# --------------------------------------------------------------------------- the phantom, the real predict


def _independent_sqrt_rates(dataset: Path, task: str) -> dict[tuple[str, str], float]:
    """√area growth per eye straight from the mask PNGs and meta.json (PIL + numpy.polyfit)."""
    per_eye: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for case in sorted((dataset / "cases").iterdir()):
        if not (case / f"mask_{task}.png").is_file():
            continue
        meta = json.loads((case / "meta.json").read_text())
        pixels = int((np.asarray(Image.open(case / f"mask_{task}.png")) > 0).sum())
        area = pixels * meta["spacing"][0] * meta["spacing"][1]
        per_eye.setdefault((meta["patient_id"], meta["eye"]), []).append((meta["visit"], area))
    return {
        k: float(np.polyfit(np.array([d for d, _ in v]) / 365.25, np.sqrt([a for _, a in v]), 1)[0])
        for k, v in per_eye.items()
        if len(v) > 1
    }


def test_cli_reference_on_the_phantom_equals_an_independent_computation(
    phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert main(["progression", str(phantom_dataset), "--reference", "--task", "ga", "--out", str(out)]) == 0
    assert "√area growth" in capsys.readouterr().out
    expected = _independent_sqrt_rates(phantom_dataset, "ga")
    got = {(r["patient_id"], r["eye"]): r["sqrt_growth_mm_per_year"] for r in _read_csv(out / "eyes.csv")}
    assert len(expected) >= 3
    for key, rate in expected.items():
        assert float(got[key]) == pytest.approx(rate, rel=1e-4, abs=1e-6)
    assert {k for k, v in got.items() if v} == set(expected)
    # the second grader's masks
    assert (
        main(
            [
                "progression",
                str(phantom_dataset),
                "--reference",
                "--task",
                "ga",
                "--grader",
                "grader2",
                "--out",
                str(tmp_path / "g2"),
            ]
        )
        == 0
    )
    assert "grader2" in json.loads((tmp_path / "g2" / "cohort.json").read_text())["source"]
    # several tasks and no --task: a clear message, nothing written
    assert main(["progression", str(phantom_dataset), "--reference", "--out", str(tmp_path / "none")]) == 2
    assert "choose one with --task" in capsys.readouterr().err and not (tmp_path / "none").exists()


def _checkpoint(path: Path, dataset: Path, seed: int) -> None:
    """A hand-made engine checkpoint of a small FPN (untrained: its masks are arbitrary)."""
    import torch

    from enface.models import create_model, model_spec

    torch.manual_seed(seed)
    model = create_model("fpn", width=0.125).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "enface": {
                "model": model_spec(model),
                "task": "segment",
                "metric": None,
                "epoch": 0,
                "format_version": 1,
                "config": {"dataset": str(dataset), "target": "ga"},
            },
        },
        path,
    )


def test_real_predict_output_is_read(phantom_dataset: Path, tmp_path: Path) -> None:
    """``enface predict`` on the phantom's cases, then ``progression --predictions`` (the contract)."""
    from enface.predict import predict

    run = tmp_path / "run"
    for seed, dice in ((1, "0.40"), (2, "0.60")):
        _checkpoint(run / "checkpoints" / f"epoch={seed}-val_dice={dice}.ckpt", phantom_dataset, seed)
    pred = tmp_path / "pred"
    eyes = sorted(_independent_sqrt_rates(phantom_dataset, "ga"))[:1]  # an eye with >= 2 labeled visits
    cases = [
        c
        for c in sorted((phantom_dataset / "cases").iterdir())
        if tuple(json.loads((c / "meta.json").read_text())[k] for k in ("patient_id", "eye")) in eyes
    ]
    report = predict(run, [*cases, tmp_path / "missing.vol"], pred, top_k=2, progress=False)
    assert len(report.failed) == 1
    res = run_progression(phantom_dataset, tmp_path / "out", predictions=pred)
    visits = _read_csv(tmp_path / "out" / "visits.csv")
    assert len(visits) == len(report.results) - 1
    for v in visits:
        pj = json.loads((pred / v["case_id"] / "prediction.json").read_text())
        meta = json.loads((phantom_dataset / "cases" / v["case_id"] / "meta.json").read_text())
        assert float(v["area_mm2"]) == pytest.approx(pj["area_mm2"], rel=1e-5, abs=1e-9)
        assert (v["patient_id"], v["eye"], int(v["day"])) == (meta["patient_id"], meta["eye"], meta["visit"])
    assert [s["reason"].startswith("prediction failed") for s in _read_csv(tmp_path / "out" / "skipped.csv")] == [True]
    assert res.agreement and [(r["patient_id"], r["eye"]) for r in res.agreement] == eyes
    assert (tmp_path / "out" / "bland_altman.png").is_file()


def test_split_restricts_the_patients(discs: Path, tmp_path: Path) -> None:
    from enface.data.folder import write_splits

    write_splits(discs, {"train": ["P1"], "val": ["P3"], "test": ["P2"]})
    res = run_progression(
        discs, tmp_path / "out", predictions=_dilated_predictions(discs, tmp_path / "pred"), split="test"
    )
    assert [(e.patient_id, e.eye) for e in res.eyes] == [("P2", "OD")]
    assert [(r["patient_id"], r["eye"]) for r in res.agreement] == [("P2", "OD")]
    assert res.cohort["split"] == "test" and "split 'test'" in res.cohort["source"]
    write_splits(discs, {"train": ["P1", "P2", "P3"], "val": [], "test": []})
    _refused(discs, tmp_path / "o2", "no visit of the 0 patients of split 'test'", split="test")


def _predictions(pred: Path, ds: Path, **per_scan: dict) -> Path:
    """A predictions folder as `enface predict` writes it, for the cases named in ``per_scan``."""
    rows = ["scan_id,source,status"]
    for scan_id, extra in per_scan.items():
        (pred / scan_id).mkdir(parents=True)
        case = ds / "cases" / scan_id
        shutil.copy(case / "mask_ga.png", pred / scan_id / "mask.png")
        pj = {"scan_id": scan_id, "source": str(case), "task": "ga", "spacing": [0.05, 0.05, 0.01], **extra}
        (pred / scan_id / "prediction.json").write_text(json.dumps(pj))
        rows.append(f"{scan_id},{case},ok")
    (pred / "summary.csv").write_text("\n".join(rows) + "\n")
    return pred


def test_progression_keeps_a_users_files_in_its_earlier_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds, out = disc_dataset(tmp_path / "ds"), tmp_path / "out"
    run_progression(ds, out)
    with caplog.at_level(logging.INFO, logger="enface.progression"):
        run_progression(ds, out)  # an earlier output alone is replaced, and said so
    assert "replacing the earlier progression output" in caplog.text and "cohort.json" in caplog.text
    (out / "notes.txt").write_text("my notes")
    (out / "figs").mkdir()
    with pytest.raises(ValueError, match=r"also holds files it did not write \(figs/, notes.txt\)"):
        run_progression(ds, out)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "figs").is_dir()


def test_one_rated_eye_prints_no_nan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["progression", str(disc_dataset(tmp_path / "ds")), "--reference", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "mm²/year (n = 1, no spread)" in out
    assert "nan" not in (tmp_path / "o" / "report.html").read_text()


def test_predictions_of_two_models_in_one_folder_are_refused(tmp_path: Path) -> None:
    ds = disc_dataset(tmp_path / "ds")
    a, b = {"checkpoints": ["/runs/a/best.ckpt"]}, {"checkpoints": ["/runs/b/best.ckpt"]}
    pred = _predictions(tmp_path / "pred", ds, P1_OD_V1=a, P1_OD_V2=b)
    with pytest.raises(DatasetError, match=r"different models .*/runs/a/best.ckpt: P1_OD_V1; /runs/b/best.ckpt: P1"):
        run_progression(ds, tmp_path / "out", predictions=pred)
    same = _predictions(tmp_path / "same", ds, P1_OD_V1=a, P1_OD_V2=a)
    assert run_progression(ds, tmp_path / "out", predictions=same).cohort["eyes"] == 1


def test_hand_edited_member_areas_are_refused(tmp_path: Path) -> None:
    ds = disc_dataset(tmp_path / "ds")
    huge = {"member_areas_mm2": [1e308, 0.1]}
    pred = _predictions(tmp_path / "pred", ds, P1_OD_V1=huge, P1_OD_V2={})
    with pytest.raises(DatasetError, match=r"'member_areas_mm2' 1e\+308 exceeds the scan's whole en-face field"):
        run_progression(ds, tmp_path / "out", predictions=pred)
