"""What a few labels cannot tell apart from GA: unlabeled lesions that look partly like it.

* **iRORA** (incomplete RPE and outer retinal atrophy): spots under 250 µm where the RPE is
  attenuated and light partly passes to the choroid (partial hypertransmission), with
  photoreceptor thinning above; mildly hypo-autofluorescent, slightly bright in SLO.
* **Pigment clumps** (intraretinal hyperreflective foci): small bright deposits in the outer
  retina that shadow what lies below them; dark (most) or bright in FAF, bright in
  near-infrared SLO.
* **Hypertransmission without RPE loss**: a patch where more light reaches the choroid
  (thin choroid, thin RPE) while the RPE band stays intact.

Drusen (:class:`~enface.synth.lesions.Drusen`) and vessel shadows are drawn elsewhere. All
are fixed per eye (they do not change over the visits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from enface.synth.canvas import Canvas
from enface.synth.realism import Realism

__all__ = ["Mimics"]


def _spots(canvas: Canvas, centres: np.ndarray, radii: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Upper envelope of round spots with a soft edge: ``(ny, nx)`` float32."""
    y, x = canvas.coords()
    out = np.zeros(canvas.shape, dtype=np.float32)
    for (cy, cx), r, a in zip(centres, radii, amps):
        rho = np.hypot(y - cy, x - cx) / r
        out = np.maximum(out, (a * np.clip(1.5 - rho, 0.0, 1.0)).astype(np.float32))
    return out


@dataclass(frozen=True)
class Mimics:
    """GA mimics of one eye on its canvas; every map is ``(ny, nx)`` float32.

    Attributes:
        irora: RPE attenuation in [0, 1) of the iRORA spots (0 elsewhere).
        pigment: pigment-clump density in [0, 1].
        pigment_af: relative FAF change of each clump (negative: hypo-autofluorescent).
        hypertransmission: extra fraction of light passing an intact RPE.
        counts: how many of each the eye has (for the phantom's statistics).
    """

    irora: np.ndarray
    pigment: np.ndarray
    pigment_af: np.ndarray
    hypertransmission: np.ndarray
    counts: dict[str, int]

    @classmethod
    def random(cls, rng: np.random.Generator, canvas: Canvas, fovea: tuple[float, float], realism: Realism) -> Mimics:
        """Draw the mimics of one eye, clustered in the central macula around ``fovea``."""
        f = np.asarray(fovea)[None, :]
        n_irora = int(rng.poisson(realism.irora_mean))
        c = f + rng.normal(0.0, 1.2, (n_irora, 2))
        irora = _spots(canvas, c, rng.uniform(0.05, 0.12, n_irora), rng.uniform(0.35, 0.7, n_irora))
        n_pig = int(rng.poisson(realism.pigment_mean))
        c = f + rng.normal(0.0, 1.2, (n_pig, 2))
        radii = rng.uniform(0.02, 0.06, n_pig)
        pigment = _spots(canvas, c, radii, np.ones(n_pig))
        signs = np.where(rng.random(n_pig) < 0.7, -rng.uniform(0.3, 0.6, n_pig), rng.uniform(0.2, 0.4, n_pig))
        pigment_af = np.zeros(canvas.shape, dtype=np.float32)
        for (cy, cx), r, s in zip(c, radii, signs):
            pigment_af += (s * _spots(canvas, np.array([[cy, cx]]), np.array([r]), np.ones(1))).astype(np.float32)
        hyper = np.zeros(canvas.shape, dtype=np.float32)
        has_patch = rng.random() < realism.hypertransmission
        if has_patch:
            y, x = canvas.coords()
            r = rng.uniform(0.4, 1.2)
            a = rng.uniform(0, 2 * math.pi)
            d = rng.uniform(0.5, 2.2)
            cy, cx = fovea[0] + d * math.sin(a), fovea[1] + d * math.cos(a)
            bump = np.exp(-((np.hypot(y - cy, x - cx) / r) ** 2)) * np.exp(0.4 * canvas.smooth_noise(rng, 0.4))
            hyper = (rng.uniform(0.15, 0.35) * np.clip(bump, 0.0, 1.0)).astype(np.float32)
        return cls(
            irora=irora,
            pigment=pigment,
            pigment_af=np.clip(pigment_af, -0.8, 0.5),
            hypertransmission=hyper,
            counts={"irora": n_irora, "pigment_clumps": n_pig, "hypertransmission_patch": int(has_patch)},
        )
