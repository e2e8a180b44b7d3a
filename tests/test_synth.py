"""Phantom generator: contract, determinism, lesion evidence in each modality, BM truth,
cohort structure, dataset layout and the ``enface synth`` command."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from enface.cli import main
from enface.data.folder import list_cases, read_dataset_info, read_splits
from enface.synth import PRESETS
from enface.synth.anatomy import flat_bm_depth
from enface.synth.cohort import plan_cohort, synthesize_dataset
from enface.synth.eye import EyeModel, generate_case, make_grid

SHAPE = (16, 64, 64)
N_STAT = 8


# --------------------------------------------------------------------------- single cases


def test_generate_case_contract() -> None:
    c = generate_case(1, SHAPE, task="ga")
    h, w, _ = SHAPE
    assert c.oct.shape == SHAPE and c.oct.dtype == np.float32
    assert np.isfinite(c.oct).all() and c.oct.min() >= 0 and c.oct.max() > 0.5
    for img in (c.slo, c.faf):
        assert img.shape == (h, w) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
    assert set(c.masks) == {"ga", "ga.grader2"}
    for m in c.masks.values():
        assert m.shape == (h, w) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert c.bm.shape == (h, w) and c.bm.dtype == np.float32
    extent = PRESETS["demo"].extent_mm
    assert c.spacing == pytest.approx(tuple(e / n for e, n in zip(extent, SHAPE)))
    assert c.eye in ("OD", "OS")
    both = generate_case(1, SHAPE, task="both")
    assert set(both.masks) == {"ga", "ga.grader2", "rpd", "rpd.grader2"}


def test_same_seed_identical_and_seeds_differ() -> None:
    a = generate_case(7, SHAPE, task="both")
    b = generate_case(7, SHAPE, task="both")
    for name in ("oct", "bm", "slo", "faf"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    c = generate_case(8, SHAPE, task="both")
    assert not np.allclose(a.oct, c.oct)
    assert not np.allclose(a.faf, c.faf)
    assert not np.allclose(a.slo, c.slo)


def test_presets_and_grid_validation() -> None:
    spec = PRESETS["spectralis"]
    assert spec.shape == (49, 1024, 128)
    assert spec.spacing() == pytest.approx((6.68 / 49, 6.68 / 1024, 1.92 / 128))
    scaled = make_grid((25, 256, 64), preset="spectralis")
    assert scaled.spacing == pytest.approx((6.68 / 25, 6.68 / 256, 1.92 / 64))
    assert make_grid(preset="tiny").shape == PRESETS["tiny"].shape
    assert PRESETS["demo"].shape[2] >= 64
    with pytest.raises(ValueError, match="unknown phantom preset"):
        make_grid(preset="nope")
    with pytest.raises(ValueError, match="too shallow"):
        make_grid((8, 32, 64), spacing=(0.5, 0.1, 0.005))
    with pytest.raises(ValueError, match="depth samples"):
        make_grid((8, 32, 8))
    with pytest.raises(ValueError, match="task"):
        generate_case(0, SHAPE, task="drusen")
    with pytest.raises(ValueError, match="seed"):
        generate_case(-1, SHAPE)


def test_spectralis_like_grid_renders() -> None:
    c = generate_case(3, (49, 256, 128), preset="spectralis")
    assert c.oct.shape == (49, 256, 128)
    assert c.spacing[0] == pytest.approx(6.68 / 49)


# --------------------------------------------------------------------------- lesion evidence


@pytest.fixture(scope="module")
def ga_cases() -> list:
    cases = [generate_case(s, SHAPE, task="ga") for s in range(N_STAT)]
    return [c for c in cases if 3 <= c.masks["ga"].sum() <= c.masks["ga"].size - 3]


def _inside_outside(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    m = mask.astype(bool)
    return float(image[m].mean()), float(image[~m].mean())


def test_faf_darker_inside_ga(ga_cases: list) -> None:
    assert len(ga_cases) >= N_STAT - 2
    for c in ga_cases:
        inside, outside = _inside_outside(c.faf, c.masks["ga"])
        assert inside < 0.8 * outside


def test_oct_rpe_loss_and_hypertransmission_inside_ga(ga_cases: list) -> None:
    for c in ga_cases:
        b = c.bm[0, 0]
        rpe = c.oct[..., int(math.floor(b)) - 1 : int(math.floor(b)) + 1].mean(-1)
        sub = c.oct[..., int(math.ceil(b)) : int(math.ceil(b)) + 8].mean(-1)
        rin, rout = _inside_outside(rpe, c.masks["ga"])
        sin, sout = _inside_outside(sub, c.masks["ga"])
        assert rin < 0.7 * rout, "RPE band should be darker inside GA"
        assert sin > 1.3 * sout, "signal below BM should be brighter inside GA (hypertransmission)"


def test_slo_slightly_brighter_inside_ga(ga_cases: list) -> None:
    slo = np.array([(lambda i, o: (i - o) / o)(*_inside_outside(c.slo, c.masks["ga"])) for c in ga_cases])
    faf = np.array([(lambda i, o: (o - i) / o)(*_inside_outside(c.faf, c.masks["ga"])) for c in ga_cases])
    assert slo.mean() > 0.02 and (slo > 0).mean() >= 0.75
    assert slo.mean() < 0.5 * faf.mean(), "GA must be much weaker in SLO than in FAF"


def test_faf_is_not_a_copy_of_the_mask(ga_cases: list) -> None:
    from skimage.filters import threshold_otsu

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))

    otsu, best = [], []
    for c in ga_cases:
        inv, m = 1.0 - c.faf, c.masks["ga"].astype(bool)
        otsu.append(dice(inv > threshold_otsu(inv), m))
        best.append(max(dice(inv > t, m) for t in np.linspace(0.0, 1.0, 101)))
    assert np.mean(otsu) < 0.85
    assert np.mean(best) < 0.95
    assert np.mean(best) > 0.5, "FAF should still show GA clearly"


def test_rpd_mounds_above_rpe() -> None:
    ratios = []
    for s in range(6):
        c = generate_case(s, SHAPE, task="rpd")
        m = c.masks["rpd"].astype(bool)
        if m.sum() < 5:
            continue
        above = c.oct[..., int(math.floor(c.bm[0, 0])) - 1]
        inside, outside = _inside_outside(above, m)
        ratios.append(inside / outside)
    assert len(ratios) >= 4
    assert min(ratios) > 1.1, "hyperreflective deposits just above the RPE inside RPD"


def test_second_grader_differs_but_agrees() -> None:
    dices = []
    for s in range(6):
        c = generate_case(s, SHAPE, task="ga")
        a, b = c.masks["ga"].astype(bool), c.masks["ga.grader2"].astype(bool)
        if a.sum() >= 10:
            dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert dices and 0.6 < np.mean(dices) < 0.99


def test_lesions_grow_between_visits() -> None:
    eye = EyeModel(4, make_grid(SHAPE), task="ga")
    v0, v1 = eye.render(day=0), eye.render(day=500)
    m0, m1 = v0.masks["ga"].astype(bool), v1.masks["ga"].astype(bool)
    assert v1.info["ga_area_mm2"] > v0.info["ga_area_mm2"]
    assert m1.sum() > m0.sum()
    assert (m0 & m1).sum() >= 0.9 * m0.sum(), "later lesions contain the earlier ones"
    assert not np.allclose(v0.oct, v1.oct)


# --------------------------------------------------------------------------- Bruch's membrane


def test_bm_truth_curved_raw_and_constant_flattened() -> None:
    for seed in (0, 1, 2):
        raw = generate_case(seed, SHAPE, flattened=False)
        flat = generate_case(seed, SHAPE, flattened=True)
        d = SHAPE[2]
        assert np.all(flat.bm == flat_bm_depth(d))
        assert np.ptp(raw.bm) > 3.0
        assert raw.bm.min() >= 0 and raw.bm.max() < d - 1
        # curved (bowl), not only tilted: a plane leaves a clear residual
        y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
        design = np.stack([np.ones(y.size), y.ravel(), x.ravel()], axis=1)
        coef, *_ = np.linalg.lstsq(design, raw.bm.ravel(), rcond=None)
        assert np.std(raw.bm.ravel() - design @ coef) > 0.5
        # same anatomy and en-face images; only the geometry differs
        assert np.array_equal(raw.faf, flat.faf) and np.array_equal(raw.masks["ga"], flat.masks["ga"])

        healthy = flat.masks["ga"] == 0
        profile = flat.oct[healthy].mean(0)
        assert int(np.argmax(profile)) == int(math.floor(flat_bm_depth(d))), "RPE peak at the flat BM"

        # the brightest voxel around the raw BM truth is the RPE voxel just above it
        ks = np.arange(-6, 7)
        idx = np.clip(np.rint(raw.bm - 0.6)[..., None].astype(int) + ks, 0, d - 1)
        aligned = np.take_along_axis(raw.oct, idx, axis=-1)[healthy].mean(0)
        assert ks[int(np.argmax(aligned))] in (-1, 0)

        # re-flattening the raw volume with its BM reproduces the flattened one
        grid = np.arange(d, dtype=np.float64)
        shift = raw.bm - flat.bm
        reflat = np.stack(
            [[np.interp(grid + shift[i, j], grid, raw.oct[i, j]) for j in range(SHAPE[1])] for i in range(SHAPE[0])]
        )
        band = slice(int(flat.bm[0, 0]) - 20, int(flat.bm[0, 0]) + 5)
        r = np.corrcoef(reflat[..., band].mean((0, 1)), flat.oct[..., band].mean((0, 1)))[0, 1]
        assert r > 0.95


def test_drusen_lift_the_rpe_off_bm_in_raw_scans() -> None:
    assert generate_case(2, SHAPE, flattened=True).drusen is not None, "realistic flattened scans have drusen"
    raw = generate_case(2, SHAPE, flattened=False, difficulty="easy")
    flat = generate_case(2, SHAPE, flattened=True, difficulty="easy")
    assert flat.drusen is None, "easy flattened scans stay without drusen"
    assert raw.drusen is not None and raw.drusen.shape == SHAPE[:2] and (raw.drusen > 0.02).sum() > 5
    assert np.array_equal(raw.drusen, generate_case(2, SHAPE, flattened=False, difficulty="easy").drusen)
    assert raw.drusen[raw.masks["ga"] > 0].max(initial=0.0) < 0.005, "drusen regress inside GA"
    with_drusen = generate_case(2, SHAPE, flattened=True, drusen=True, difficulty="easy")
    sd = with_drusen.spacing[2]
    lifted = with_drusen.drusen > 0.04
    plain = with_drusen.drusen == 0
    # the same scan elsewhere; over a druse the RPE (brightest voxel above BM) rises off BM
    np.testing.assert_allclose(with_drusen.oct[plain], flat.oct[plain], rtol=1e-4, atol=1e-5)
    bm = int(flat_bm_depth(SHAPE[2]) + 0.5)
    window = slice(bm - 8, bm)
    rise = 8 - np.argmax(with_drusen.oct[..., window], axis=-1)
    rise_flat = 8 - np.argmax(flat.oct[..., window], axis=-1)
    assert lifted.sum() > 10
    assert np.median(rise[lifted] - rise_flat[lifted]) >= np.median(with_drusen.drusen[lifted] / sd) - 1.0


# --------------------------------------------------------------------------- cohort & dataset


def test_plan_cohort_structure() -> None:
    plan = plan_cohort(12, seed=3, label_fraction=0.5, faf_fraction=0.7, grader2_fraction=0.5)
    by_patient: dict[str, list] = {}
    for c in plan:
        by_patient.setdefault(c.patient_id, []).append(c)
    assert len(by_patient) == 12
    for cases in by_patient.values():
        assert {c.eye for c in cases} <= {"OD", "OS"}
        assert any(c.labeled for c in cases)
        for eye in {c.eye for c in cases}:
            visits = [c for c in cases if c.eye == eye]
            assert 1 <= len(visits) <= 3
            assert [c.day for c in visits] == sorted({c.day for c in visits}) and visits[0].day == 0
            assert len({c.eye_seed for c in visits}) == 1
    assert any(len({c.eye for c in cs}) == 2 for cs in by_patient.values())
    assert any(not c.labeled for c in plan) and any(not c.has_faf for c in plan)
    assert all(c.labeled for c in plan if c.grader2)
    assert len({c.case_id for c in plan}) == len(plan)
    # patients are independent of the cohort size
    assert plan_cohort(4, seed=3, label_fraction=0.5, faf_fraction=0.7, grader2_fraction=0.5) == [
        c for c in plan if c.patient_id <= "P0004"
    ]


def test_phantom_dataset_layout(phantom_dataset: Path) -> None:
    info = read_dataset_info(phantom_dataset)
    assert info["tasks"] == ["ga", "rpd"]
    assert set(info["modalities"]) == {"oct", "slo", "faf"}
    gen = info["generator"]
    assert gen["seed"] == 0 and gen["preset"] == "tiny" and gen["shape"] == [8, 32, 64]
    cases = list_cases(phantom_dataset)
    assert info["counts"]["cases"] == len(cases) >= 6
    splits = read_splits(phantom_dataset)
    patients = {c.patient_id for c in cases}
    assert set(splits["train"]) | set(splits["val"]) | set(splits["test"]) == patients
    assert all(splits[k] for k in ("train", "val", "test"))
    assert info["spacing"] == pytest.approx([6.0 / 8, 6.0 / 32, 1.2 / 64])
    for c in cases:
        vol = c.load_oct()
        assert vol.shape == (8, 32, 64) and vol.dtype == np.float32
        assert c.spacing == pytest.approx(tuple(info["spacing"]))
        assert c.meta.extra["bm_depth"] == flat_bm_depth(64)
        assert c.has_image("slo")
        for task in c.tasks():
            assert c.load_mask(task).shape == (8, 32)
    labeled = [c for c in cases if c.tasks()]
    assert 0 < len(labeled) < len(cases), "labeled cases and an unlabeled pool"
    assert all(c.tasks() == ["ga", "rpd"] for c in labeled)
    assert any(not c.has_image("faf") for c in cases) and any(c.has_image("faf") for c in cases)
    assert any("grader2" in c.graders("ga") for c in labeled)
    for split in ("train", "val", "test"):
        assert any(c.patient_id in splits[split] for c in labeled), f"{split} has labeled cases"


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthesize_dataset_deterministic_files(tmp_path: Path) -> None:
    kw = dict(patients=2, shape=(8, 32, 64), preset="tiny", task="ga", progress=False)
    a = synthesize_dataset(tmp_path / "a", seed=5, **kw)
    b = synthesize_dataset(tmp_path / "b", seed=5, **kw)
    c = synthesize_dataset(tmp_path / "c", seed=6, **kw)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db
    assert da != dc
    assert not any(".tmp" in name for name in da)


def test_output_folder_rules(tmp_path: Path) -> None:
    kw = dict(shape=(8, 32, 64), preset="tiny", progress=False)
    out = synthesize_dataset(tmp_path / "ds", patients=3, seed=0, **kw)
    with pytest.raises(ValueError, match="already holds a dataset"):
        synthesize_dataset(out, patients=1, seed=0, **kw)
    synthesize_dataset(out, patients=1, seed=0, overwrite=True, **kw)
    assert {c.patient_id for c in list_cases(out)} == {"P0001"}, "no stale cases after overwrite"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a dataset folder"):
        synthesize_dataset(other, patients=1, seed=0, overwrite=True, **kw)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patients=0), "patients"),
        (dict(task="drusen"), "task"),
        (dict(preset="oct-x"), "preset"),
        (dict(label_fraction=1.5), "label_fraction"),
        (dict(shape=(8, 32)), "shape"),
    ],
)
def test_synthesize_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = dict(patients=1, seed=0, shape=(8, 32, 64), preset="tiny", progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        synthesize_dataset(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_cli_synth_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rpd"
    rc = main(
        [
            "synth",
            str(out),
            "--patients",
            "3",
            "--seed",
            "2",
            "--preset",
            "tiny",
            "--shape",
            "8",
            "32",
            "64",
            "--task",
            "rpd",
            "--no-progress",
        ]
    )
    assert rc == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["tasks"] == ["rpd"] and info["generator"]["task"] == "rpd"
    assert len(list_cases(out)) == info["counts"]["cases"] >= 3
    assert read_splits(out)
    assert main(["synth", str(tmp_path / "bad"), "--patients", "0", "--no-progress"]) == 2
    assert "patients" in capsys.readouterr().err


# --------------------------------------------------------------------------- realistic phantom


def test_easy_phantom_labels_the_truth_and_draws_nothing_realistic() -> None:
    c = generate_case(3, SHAPE, difficulty="easy")
    assert c.regions == {} and "quality" not in c.info and c.info["difficulty"] == "easy"
    with pytest.raises(ValueError, match="unknown phantom difficulty"):
        generate_case(3, SHAPE, difficulty="hard")


def test_realistic_eyes_vary_like_clinical_ga() -> None:
    grid = make_grid(SHAPE)
    eyes = [EyeModel(s, grid, task="ga") for s in range(24)]
    with_ga = [e for e in eyes if e.ga is not None]
    assert 1 <= len(eyes) - len(with_ga) <= 12, "some eyes have no GA at all"
    assert any(len(e.ga.foci) > 1 for e in with_ga) and any(len(e.ga.foci) == 1 for e in with_ga)
    assert any(e.ga.spares_fovea for e in with_ga)
    areas = [e.ga.area(0) for e in with_ga]
    assert min(areas) < 0.7 and max(areas) > 3.0, "tiny to large lesions"
    free = next(e for e in eyes if e.ga is None).render(day=0)
    assert free.masks["ga"].sum() == 0 and free.masks["ga.grader2"].sum() == 0, "an eye without GA: empty labels"
    e = with_ga[0]
    assert e.ga.area(400) > e.ga.area(0) and (e.ga.lesion(400) | ~e.ga.lesion(0)).all(), "lesions grow, contain"


def test_realistic_graders_disagree_and_the_reference_is_not_the_truth() -> None:
    dices, off_truth = [], []
    for s in range(10):
        c = generate_case(s, SHAPE)
        a, b = c.masks["ga"].astype(bool), c.masks["ga.grader2"].astype(bool)
        truth = c.regions["ga_truth"] >= 0.5
        if truth.sum() >= 10:
            dices.append(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
            off_truth.append((a != truth).sum())
    assert dices and 0.6 < np.mean(dices) < 0.97
    assert all(n > 0 for n in off_truth), "the reference grader does not copy the truth"


def test_grader_misses_small_foci_and_merges_close_ones() -> None:
    from enface.synth.atrophy import GraderStyle, grade
    from enface.synth.canvas import Canvas
    from enface.synth.realism import Realism

    canvas = Canvas(y0=-1.0, x0=-1.0, cs=0.01, shape=(200, 200))
    y, x = canvas.coords()
    truth = (np.hypot(y, x + 0.35) < 0.3) | (np.hypot(y, x - 0.35) < 0.3) | (np.hypot(y - 0.8, x) < 0.05)
    strict = Realism("t", boundary_bias_mm=0.0, boundary_noise_mm=0.0, miss_probability=1.0, miss_area_mm2=0.05)
    rng = np.random.default_rng(0)
    kept = grade(truth, canvas, GraderStyle(0.0, 0.0), strict, rng)
    assert not kept[180:, 100].any() and kept[100, 65], "the small focus is missed, the large ones kept"
    merged = grade(truth, canvas, GraderStyle(0.0, 0.15), strict, rng)
    assert merged[100, 100] and not kept[100, 100], "the 0.1 mm gap is bridged"


def test_realistic_mimics_and_acquisition_are_rendered() -> None:
    c = generate_case(5, SHAPE)
    assert {"irora", "pigment", "hypertransmission", "junction", "vessel", "ga_truth"} <= set(c.regions)
    q = c.info["quality"]
    assert q["frames"] >= 1 and q["signal"] > 0 and q["motion_rms_mm"] > 0
    assert set(c.info["mimics"]) == {"irora", "pigment_clumps", "hypertransmission_patch"}
    # pigment clumps shadow the choroid: darker below BM than the rest
    shadows, irora = [], []
    for s in range(6):
        c = generate_case(s, SHAPE)
        b = int(math.floor(c.bm[0, 0]))
        sub = c.oct[..., b + 1 : b + 8].mean(-1)
        ga = c.regions["ga_truth"] >= 0.5
        bg = ~ga & (c.regions["pigment"] < 0.05) & (c.regions["irora"] < 0.05) & (c.regions["vessel"] < 0.2)
        for name, out in (("pigment", shadows), ("irora", irora)):
            m = (c.regions[name] > 0.3) & ~ga
            if m.sum() >= 2:
                out.append(sub[m].mean() / sub[bg].mean())
    assert shadows and np.mean(shadows) < 0.95
    assert irora and np.mean(irora) > 1.05, "iRORA lets some light through"
