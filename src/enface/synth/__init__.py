"""The phantom generator: OCT volumes with co-registered SLO, FAF and GA/RPD labels.

No public OCT data can be downloaded everywhere, so ``enface synth`` writes a dataset
folder of phantom eyes that exercises the whole pipeline on a laptop. Lesion evidence is
carried by the OCT in 3D (GA: RPE/EZ loss, outer-retina thinning, choroidal
hypertransmission; RPD: hyperreflective mounds above the RPE); FAF shows GA clearly but
with confounders; SLO shows it weakly; labels are en-face masks on the OCT grid, graded
along the B-scans.

Modules: :mod:`~enface.synth.presets` (device-like grids), :mod:`~enface.synth.canvas`
(en-face geometry), :mod:`~enface.synth.vessels`, :mod:`~enface.synth.lesions`,
:mod:`~enface.synth.anatomy` and :mod:`~enface.synth.oct` (the volume),
:mod:`~enface.synth.fundus` (SLO/FAF), :mod:`~enface.synth.eye` (one eye over visits),
:mod:`~enface.synth.cohort` (patients, visits and the dataset writer).

The face re-exports the presets only: the command line lists them when it builds its parser,
which must not load the generator (NumPy rendering, SciPy). The generator is imported from its
modules: :func:`enface.synth.cohort.synthesize_dataset`, :func:`enface.synth.eye.generate_case`,
:class:`enface.synth.eye.EyeModel`.
"""

from enface.synth.presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
