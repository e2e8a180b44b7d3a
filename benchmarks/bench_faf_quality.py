"""FAF -> SLO registration quality: does the score separate right from wrong registrations?

Phantom eyes give an SLO and a FAF (``--size`` pixels square, 6.7 mm field) whose true
misregistration is known (``PhantomCase.info["faf_misregistration"]``). Each eye makes:

* **right pairs**: its FAF moved by a random similarity transform (rotation up to
  ``--max-rotation`` degrees, shift up to 8 % of the field, scale 0.93-1.07) and resampled
  to another size (as a FAF of another device or field would be), registered to its SLO;
  the same once more **poor**: blurred, at half the contrast and noisy (weak vessels);
* **wrong pairs**, registered too: the FAF of **another eye**; its own FAF **rotated** by
  30, 90 or 180 degrees (outside the +-15 degree search) or **shifted** by 40 % of the field;
* **wrong transforms** (scored, not registered): the true transform of a right pair
  composed with a shift of 8, 16 or 32 pixels (of ``--size``) or a rotation of 3 or 6
  degrees.

A registration is right when it maps every point of a 5 x 5 grid over the SLO within 3
pixels of the truth, wrong when some point is more than 10 pixels off (in between: not
counted). For the old score (``--baseline-rev``, default ``93867eb``: ``register_images``
read from git, ``quality = NCC x min(1, compared / 0.4)``) and the new one (distinctiveness
of the NCC against deliberately wrong alignments), the script prints the score
distributions of both populations and, at the default threshold of ``enface prepare``
(``--faf-min-quality 0.3``) and at the best threshold, the rate of right registrations
rejected and of wrong ones accepted.

Run: ``.venv/bin/python benchmarks/bench_faf_quality.py`` (``--help`` for eyes and sizes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from enface.data.register import apply_matrix, register_images, registration_quality, warp_image
from enface.synth.eye import EyeModel, make_grid

RIGHT_PX, WRONG_PX = 3.0, 10.0
DEFAULT_THRESHOLD = 0.3


def _pixel_scale(src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    fx, fy = dst[1] / src[1], dst[0] / src[0]
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])


def _similarity(shape: tuple[int, int], deg: float, shift: tuple[float, float], scale: float) -> np.ndarray:
    h, w = shape
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.deg2rad(deg)
    lin = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c + np.asarray(shift) - lin @ c
    return m


def _faf_to_slo(info: dict[str, Any], grid: Any) -> np.ndarray:
    """True FAF pixel -> SLO pixel matrix of a phantom case (both on the grid)."""
    mis = info["faf_misregistration"]
    (h, w), (sh, sw) = grid.shape[:2], grid.spacing[:2]
    c, s = np.cos(np.deg2rad(mis["rot_deg"])), np.sin(np.deg2rad(mis["rot_deg"]))
    # (x, y) pixel -> mm -> misregistered mm -> pixel, as an affine map
    to_mm = np.array([[sw, 0, 0.5 * sw - w * sw / 2], [0, sh, 0.5 * sh - h * sh / 2], [0, 0, 1]])
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])  # Affine.apply rotates (y, x); in (x, y) order
    lin = np.diag([mis["scale"], mis["scale"], 1.0]) @ rot
    lin[0, 2], lin[1, 2] = mis["tx_mm"], mis["ty_mm"]
    return np.linalg.inv(to_mm) @ lin @ to_mm


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A poor FAF: blurred, low-contrast and noisy (weak vessels), as some devices give."""
    from scipy import ndimage

    img = ndimage.gaussian_filter(image, 1.5)
    img = 0.5 * img + 0.25 * float(np.median(img))
    return np.clip(img + rng.normal(0.0, 0.06, img.shape), 0, 1).astype(np.float32)


def make_pairs(
    n_eyes: int, size: int, max_rotation: float, seed: int, first_eye: int = 0
) -> tuple[list[dict], list[dict]]:
    """Registration trials ``{fixed, moving, truth (or None), kind}`` and wrong transforms
    ``{fixed, moving, matrix, kind}``."""
    rng = np.random.default_rng(seed)
    grid = make_grid((size, size, 16), None, "spectralis")
    eyes = []
    for s in range(first_eye, first_eye + n_eyes):
        case = EyeModel(s, grid, task="ga").render(day=365)
        eyes.append((case.slo, case.faf, _faf_to_slo(case.info, grid)))
    trials, perturbed = [], []
    shape = (size, size)
    for i, (slo, faf, truth0) in enumerate(eyes):
        t = _similarity(
            shape,
            rng.uniform(-max_rotation, max_rotation),
            tuple(rng.uniform(-0.08, 0.08, 2) * size),
            rng.uniform(0.93, 1.07),
        )
        out = int(round(size * rng.choice([0.75, 1.0, 1.25])))
        moved = np.nan_to_num(warp_image(faf, t, shape, cval=0.0))
        resized = np.nan_to_num(warp_image(moved, _pixel_scale(shape, (out, out)), (out, out), cval=0.0))
        truth = truth0 @ np.linalg.inv(t) @ np.linalg.inv(_pixel_scale(shape, (out, out)))
        trials.append({"fixed": slo, "moving": resized, "truth": truth, "kind": "right pair"})
        trials.append({"fixed": slo, "moving": _degrade(resized, rng), "truth": truth, "kind": "right, poor FAF"})
        other = eyes[(i + 1) % n_eyes][1]
        trials.append({"fixed": slo, "moving": other, "truth": None, "kind": "another eye"})
        deg = [30.0, 90.0, 180.0][i % 3]
        r = _similarity(shape, deg, (0.0, 0.0), 1.0)
        trials.append(
            {
                "fixed": slo,
                "moving": np.nan_to_num(warp_image(faf, r, shape, cval=0.0)),
                "truth": truth0 @ np.linalg.inv(r),
                "kind": f"rotated {deg:.0f} deg",
            }
        )
        sh = _similarity(shape, 0.0, (0.4 * size * (1 if i % 2 else -1), 0.0), 1.0)
        trials.append(
            {
                "fixed": slo,
                "moving": np.nan_to_num(warp_image(faf, sh, shape, cval=0.0)),
                "truth": truth0 @ np.linalg.inv(sh),
                "kind": "shifted 40 %",
            }
        )
        centre = np.array([(size - 1) / 2, (size - 1) / 2])
        for px in (8.0, 16.0, 32.0):
            off = np.eye(3)
            off[:2, 2] = px * np.array([np.cos(i), np.sin(i)])
            perturbed.append({"fixed": slo, "moving": resized, "matrix": off @ truth, "kind": f"shift {px:.0f} px"})
        for deg in (3.0, 6.0):
            rot = _similarity(shape, deg * (1 if i % 2 else -1), (0.0, 0.0), 1.0)
            rot[:2, 2] = centre - rot[:2, :2] @ centre
            perturbed.append(
                {"fixed": slo, "moving": resized, "matrix": rot @ truth, "kind": f"rotation {deg:.0f} deg"}
            )
    return trials, perturbed


def _error_px(matrix: np.ndarray, truth: np.ndarray | None, shape: tuple[int, int]) -> float:
    if truth is None:
        return float("inf")
    h, w = shape
    xs, ys = np.meshgrid(np.linspace(0.1 * w, 0.9 * w, 5), np.linspace(0.1 * h, 0.9 * h, 5))
    pts = apply_matrix(np.linalg.inv(truth), np.stack([xs, ys], -1).reshape(-1, 2))  # moving pixels
    return float(np.linalg.norm(apply_matrix(matrix, pts) - apply_matrix(truth, pts), axis=1).max())


def run_trials(register: Callable, trials: list[dict]) -> list[dict]:
    """Register every trial; label it right / wrong / marginal by its geometric error."""
    rows = []
    for t in trials:
        t0 = time.perf_counter()
        reg = register(t["fixed"], t["moving"])
        err = _error_px(reg.matrix, t["truth"], t["fixed"].shape)
        label = "right" if err <= RIGHT_PX else ("wrong" if err > WRONG_PX else "marginal")
        rows.append(
            {
                "kind": t["kind"],
                "error": err,
                "label": label,
                "quality": float(reg.quality),
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def old_quality_of(old: Any, fixed: np.ndarray, moving: np.ndarray, matrix: np.ndarray) -> float:
    """The old score (NCC x min(1, compared / 0.4)) of a given transform, with the old code."""
    wshape = tuple(max(16, int(round(n * min(1.0, 256 / max(fixed.shape))))) for n in fixed.shape)
    sf, sm = _pixel_scale(fixed.shape, wshape), _pixel_scale(moving.shape, wshape)
    fw, mw = old._resize(fixed, wshape), old._resize(moving, wshape)
    fm, mm = old.informative_mask(fw), old.informative_mask(mw)
    ncc, compared = old._Similarity(old.vessel_map(fw, fm), fm, old.vessel_map(mw, mm), mm)(
        sf @ matrix @ np.linalg.inv(sm)
    )
    return max(0.0, ncc) * min(1.0, compared / 0.4)


def error_rates(right: np.ndarray, wrong: np.ndarray, threshold: float) -> tuple[float, float]:
    """(right rejected, wrong accepted) fractions at ``threshold``."""
    return float((right < threshold).mean()) if right.size else float("nan"), float(
        (wrong >= threshold).mean()
    ) if wrong.size else float("nan")


def best_threshold(right: np.ndarray, wrong: np.ndarray) -> tuple[float, float, float]:
    """Threshold minimising the sum of both error rates (midpoint of the best gap)."""
    cands = np.unique(np.concatenate([right, wrong, [0.0, 1.0]]))
    mids = (cands[:-1] + cands[1:]) / 2
    costs = [sum(error_rates(right, wrong, t)) for t in mids]
    k = int(np.argmin(costs))
    return (float(mids[k]), *error_rates(right, wrong, mids[k]))


def _describe(name: str, values: np.ndarray) -> str:
    if values.size == 0:
        return f"{name}: none"
    q = np.percentile(values, [0, 5, 50, 95, 100])
    return f"{name} (n={values.size}): min {q[0]:.3f}  p5 {q[1]:.3f}  median {q[2]:.3f}  p95 {q[3]:.3f}  max {q[4]:.3f}"


def report(name: str, rows: list[dict], perturbed_scores: list[tuple[str, float]]) -> None:
    right = np.array([r["quality"] for r in rows if r["label"] == "right"])
    wrong = np.array([r["quality"] for r in rows if r["label"] == "wrong"] + [q for _, q in perturbed_scores])
    print(f"== {name} score")
    print("  " + _describe("right registrations", right))
    print("  " + _describe("wrong registrations + wrong transforms", wrong))
    kinds = sorted({r["kind"] for r in rows} | {k for k, _ in perturbed_scores})
    for kind in kinds:
        vals = [(r["quality"], r["label"]) for r in rows if r["kind"] == kind] + [
            (q, "wrong") for k, q in perturbed_scores if k == kind
        ]
        cells = ", ".join(f"{q:.2f}{'' if lab == 'right' else ('*' if lab == 'wrong' else '?')}" for q, lab in vals)
        print(f"    {kind:<16} {cells}")
    rej, acc = error_rates(right, wrong, DEFAULT_THRESHOLD)
    print(
        f"  at {DEFAULT_THRESHOLD}: {100 * rej:.0f}% of right registrations rejected, "
        f"{100 * acc:.0f}% of wrong accepted"
    )
    t, rej, acc = best_threshold(right, wrong)
    print(
        f"  best threshold {t:.3f}: {100 * rej:.0f}% rejected, {100 * acc:.0f}% accepted; "
        f"gap (min right - max wrong) {right.min() - wrong.max():+.3f}"
        if right.size and wrong.size
        else ""
    )
    n_marg = sum(r["label"] == "marginal" for r in rows)
    print(
        f"  ({n_marg} marginal registrations (3-10 px) not counted; * = wrong, ? = marginal; "
        f"{np.mean([r['seconds'] for r in rows]):.2f} s per registration)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eyes", type=int, default=6)
    p.add_argument("--size", type=int, default=384, help="SLO / FAF size in pixels (square)")
    p.add_argument("--max-rotation", type=float, default=10.0, help="rotation of the right pairs (degrees)")
    p.add_argument("--seed", type=int, default=0, help="seed of the transforms")
    p.add_argument("--first-eye", type=int, default=0, help="eye seeds first-eye .. first-eye + eyes - 1")
    p.add_argument("--baseline-rev", default="93867eb", help="git revision of the old score ('' to skip)")
    args = p.parse_args(argv)
    trials, perturbed = make_pairs(args.eyes, args.size, args.max_rotation, args.seed, args.first_eye)
    print(
        f"{args.eyes} phantom eyes (seeds {args.first_eye}-{args.first_eye + args.eyes - 1}), SLO {args.size}^2; "
        f"{len(trials)} registrations, {len(perturbed)} wrong transforms"
    )
    if args.baseline_rev:
        from _git_baseline import load_module_at

        try:
            old = load_module_at(args.baseline_rev, "src/enface/data/register.py", "enface_old_register")
        except RuntimeError as e:
            print(f"baseline skipped: {e}", file=sys.stderr)
        else:
            rows = run_trials(old.register_images, trials)
            report(
                f"old ({args.baseline_rev[:7]})",
                rows,
                [(t["kind"], old_quality_of(old, t["fixed"], t["moving"], t["matrix"])) for t in perturbed],
            )
    rows = run_trials(register_images, trials)
    report(
        "new",
        rows,
        [(t["kind"], registration_quality(t["fixed"], t["moving"], t["matrix"]).quality) for t in perturbed],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
