"""Image quality of one realistic visit: frames averaged, signal strength, motion, tilt, focus.

Drawn per visit from its own random stream (the ``easy`` phantom never draws it):

* **frames**: the number of B-scan frames the device averaged (speckle falls with it, by
  fewer than ``frames`` independent looks: frames of one tracked burst are correlated);
* **signal**: media opacities and poor fixation weaken the whole scan against the fixed
  noise floor;
* **motion**: the eye drifts between B-scans and now and then jumps (a saccade the tracker
  followed late): the B-scans sample the fundus off their nominal lines, while SLO and FAF
  (one snapshot) do not move;
* **tilt** and **vignetting**: a brightness gradient across the B-scans (oblique incidence
  on a tilted scan) and darker B-scan ends;
* **SLO focus**: now and then a defocused, low-contrast SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from enface.synth.realism import Realism

__all__ = ["VisitQuality"]


@dataclass(frozen=True)
class VisitQuality:
    """Acquisition effects of one visit.

    Attributes:
        frames: frames averaged per B-scan.
        looks: effective number of looks of the speckle (``frames ** frame_correlation``).
        signal: factor on the tissue signal (1: good scan).
        motion: ``(dy, dx)``, each ``(H,)`` mm: eye position at each B-scan.
        lateral_gradient: relative brightness change from one end of a B-scan to its centre.
        vignetting: brightness loss at the B-scan ends.
        slo_defocus_mm: extra blur of the SLO (0: in focus).
        faf_noise: noise level of the FAF.
    """

    frames: int
    looks: float
    signal: float
    motion: tuple[np.ndarray, np.ndarray]
    lateral_gradient: float
    vignetting: float
    slo_defocus_mm: float
    faf_noise: float

    @classmethod
    def random(cls, rng: np.random.Generator, n_bscans: int, realism: Realism) -> VisitQuality:
        """Draw the quality of one visit with ``n_bscans`` B-scans."""
        values, probs = zip(*realism.frames)
        frames = int(rng.choice(values, p=np.asarray(probs) / sum(probs)))
        weak = rng.random() < realism.weak_signal
        signal = rng.uniform(*realism.weak_signal_gain) if weak else float(np.exp(rng.normal(0.0, 0.15)))
        drift = np.cumsum(rng.normal(0.0, realism.motion_step_mm, (2, n_bscans)), axis=1)
        jumps = (rng.random((1, n_bscans)) < realism.saccade) * rng.normal(0.0, 0.06, (2, n_bscans))
        motion = drift + np.cumsum(jumps, axis=1)
        motion -= motion.mean(axis=1, keepdims=True)
        defocus = rng.uniform(0.04, 0.09) if rng.random() < realism.slo_defocus else 0.0
        return cls(
            frames=frames,
            looks=float(frames**realism.frame_correlation),
            signal=float(min(signal, 1.2)),
            motion=(motion[0], motion[1]),
            lateral_gradient=float(rng.normal(0.0, 0.12)),
            vignetting=float(rng.uniform(0.05, 0.35)),
            slo_defocus_mm=float(defocus),
            faf_noise=float(rng.uniform(0.02, 0.06)),
        )
