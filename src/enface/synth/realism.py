"""How hard the phantom is: the ``realistic`` default and the ``easy`` setting for unit tests.

Every number that makes the ``realistic`` phantom as hard and as varied as clinical GA data
lives here, in one place, with where it comes from (``docs/phantom.md`` gives the sources
in full). ``easy`` turns every one of those phenomena off and renders exactly the phantom
of earlier enface versions: one textured GA field per eye, labels equal to the truth, a
second grader that only moves the boundary a little, clean acquisitions. Unit tests that
need a clear signal on a tiny grid use it; nothing else should.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIFFICULTIES", "Realism", "get_difficulty"]


@dataclass(frozen=True)
class Realism:
    """Switches and calibrated numbers of one difficulty.

    Lesions (:mod:`enface.synth.atrophy`):

    Attributes:
        name: ``"realistic"`` or ``"easy"``.
        enabled: False for ``easy``: every field below is then ignored.
        ga_free_eye: probability that an eye has no GA (its labeled visits carry empty masks).
        area_median_mm2, area_sigma: log-normal total GA area in the field at the first
            visit (median, sigma of the log); clinic cohort of mean 2.8, SD 2.9 mm².
        area_range_mm2: clip of that total area.
        multifocal: probability that an eye's GA is multifocal (satellite foci).
        satellites_mean: mean number of satellites beyond the first (Poisson), at most 6 in all.
        satellite_median_mm2: log-normal median area of a satellite focus (sigma 0.8).
        centre_sd_mm: spread of the main focus centre around the fovea (half-normal).
        foveal_sparing: probability that the atrophy spares the foveal centre.
        ber_mm_per_year: border expansion rate at the fovea and its increase per mm of
            eccentricity (local BER 0.10 mm/y at the fovea to 0.24 mm/y at 3.5 mm).

    Mimics (:mod:`enface.synth.mimics`):

    Attributes:
        irora_mean: mean number of iRORA spots (incomplete RPE loss, < 250 µm) per eye.
        pigment_mean: mean number of pigment clumps (hyperreflective foci) per eye.
        hypertransmission: probability of a patch of hypertransmission through a thin
            choroid with the RPE intact.
        drusen_flattened: render drusen (and their shadows) in flattened scans too.

    Graders (:func:`enface.synth.atrophy.grade`):

    Attributes:
        boundary_bias_mm: SD of a grader's systematic boundary offset per eye.
        boundary_noise_mm: SD of the smooth boundary offset along the border per visit.
        miss_area_mm2: foci below this area may be missed ...
        miss_probability: ... with this probability for a vanishing focus (falling
            linearly to 0 at ``miss_area_mm2``).
        merge_probability: probability that a grader (per eye) bridges nearby foci ...
        merge_gap_mm: ... closer than a gap drawn up to this width.

    Acquisition (:mod:`enface.synth.quality`):

    Attributes:
        frames: averaged frames per B-scan the device may use, and their probabilities.
        frame_correlation: exponent of the effective number of looks (``frames**x``):
            frames taken in one tracked burst are not independent.
        weak_signal: probability of a scan with weak signal (media opacity) ...
        weak_signal_gain: ... and its signal factor range.
        motion_step_mm: SD of the lateral drift between consecutive B-scans.
        saccade: probability that a B-scan follows a saccade (jump of SD 0.06 mm).
        slo_defocus: probability of a defocused SLO.
    """

    name: str
    enabled: bool = True
    ga_free_eye: float = 0.2
    area_median_mm2: float = 1.3
    area_sigma: float = 1.1
    area_range_mm2: tuple[float, float] = (0.05, 20.0)
    multifocal: float = 0.5
    satellites_mean: float = 1.5
    satellite_median_mm2: float = 0.12
    centre_sd_mm: float = 1.1
    foveal_sparing: float = 0.4
    ber_mm_per_year: tuple[float, float] = (0.10, 0.04)
    irora_mean: float = 2.5
    pigment_mean: float = 3.0
    hypertransmission: float = 0.35
    drusen_flattened: bool = True
    boundary_bias_mm: float = 0.035
    boundary_noise_mm: float = 0.04
    miss_area_mm2: float = 0.3
    miss_probability: float = 0.5
    merge_probability: float = 0.5
    merge_gap_mm: float = 0.15
    frames: tuple[tuple[int, float], ...] = ((1, 0.1), (3, 0.2), (5, 0.25), (9, 0.3), (16, 0.15))
    frame_correlation: float = 0.6
    weak_signal: float = 0.15
    weak_signal_gain: tuple[float, float] = (0.3, 0.6)
    motion_step_mm: float = 0.006
    saccade: float = 0.03
    slo_defocus: float = 0.1


DIFFICULTIES: dict[str, Realism] = {
    "realistic": Realism("realistic"),
    "easy": Realism("easy", enabled=False, drusen_flattened=False),
}
"""Known difficulties by name; ``realistic`` is the default everywhere."""


def get_difficulty(name: str) -> Realism:
    """The difficulty called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise ValueError(f"unknown phantom difficulty {name!r} (known: {', '.join(DIFFICULTIES)})") from None
