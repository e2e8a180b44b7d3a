"""The cases of one dataset as the page sees them: the list, en-face layers, B-scans, masks.

Every file is reached through a case id that must be one of the dataset's cases and a file
name this module chooses, joined with :func:`enface.fileio.path_under`: an id with ``..``,
a separator or a symbolic link that leaves ``cases/`` is refused, and so is a case file that
links out of its folder (``meta.json`` included): such a file is never read, the case opens
without it where it can (an SLO, FAF or mask that links out is left out and named in the
case's ``refused`` notes) and a request for it gets 403 naming the file.

B-scans are read from the memory-mapped ``oct.npy`` one at a time; the en-face projections
of the last few cases viewed are kept (a few MB at most), so the server's memory does not
grow with the number of cases viewed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from enface.data.folder import MODALITIES, Case, load_case, mask_filename, read_dataset_info
from enface.errors import DatasetError, UnsafePathError
from enface.fileio import load_npy, path_under
from enface.io.images import read_image
from enface.review.log import AnnotationLog
from enface.review.predictions import Prediction, PredictionFolder, QueueEntry, read_queue
from enface.review.render import EnfaceMaps, bscan_image, compute_maps, png_bytes, stretch_to_u8
from enface.review.store import MaskStore, ReadOnly
from enface.targets import Target

__all__ = ["LAYERS", "CaseService", "NotFound"]

LAYERS: tuple[str, ...] = ("slo", "faf", "mean", "sub_bm", "probability", "uncertainty")
"""En-face layers, in the order the page offers them (those a case lacks are left out)."""

log = logging.getLogger(__name__)

_CACHED_CASES = 4


class NotFound(Exception):
    """No such case, layer, B-scan or mask in this dataset."""


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


class CaseService:
    """Read access to a dataset's cases for review, and its mask store.

    Args:
        dataset: the dataset folder.
        task: the mask task under review.
        grader: the grader's name (None: read-only).
        predictions: an ``enface predict`` output folder, or None.
        queue: a queue CSV (``enface select``), or None.

    Raises:
        DatasetError: an unreadable dataset, predictions folder or queue (naming the file).
    """

    def __init__(
        self,
        dataset: str | Path,
        task: str = "ga",
        grader: str | None = None,
        predictions: str | Path | None = None,
        queue: str | Path | None = None,
    ) -> None:
        self.root = Path(dataset)
        self.info = read_dataset_info(self.root)
        self.cases_dir = self.root / "cases"
        self.task = Target.segment(task).name
        if not self.cases_dir.is_dir():
            raise DatasetError(f"{self.cases_dir}: folder not found (is {self.root} a dataset folder?)")
        folders = sorted(p.name for p in self.cases_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.ids = [name for name in folders if self._inside(name)]
        if not self.ids:
            raise DatasetError(f"{self.cases_dir}: no case")
        self.log = AnnotationLog(self.root)
        self.log.check()
        self.log.load()
        self.store = MaskStore(self.log, task, grader)
        self.predictions = None if predictions is None else PredictionFolder(predictions, task, self.ids)
        self.queue: list[QueueEntry] = [] if queue is None else read_queue(queue, set(self.ids))
        self._maps = _LRU(_CACHED_CASES)
        self._known = set(self.ids)
        self._warned: set[str] = set()

    def _inside(self, case_id: str) -> bool:
        try:
            path_under(self.cases_dir, case_id)
        except UnsafePathError:
            log.warning("%s links out of the dataset: not served", self.cases_dir / case_id)
            return False
        return True

    @property
    def grader(self) -> str | None:
        return self.store.grader

    # ------------------------------------------------------------------ cases

    def case(self, case_id: str) -> Case:
        """The case ``case_id`` of this dataset.

        Raises:
            NotFound: not a case of the dataset. UnsafePathError: its folder leads out of ``cases/``.
        """
        if case_id not in self._known:
            raise NotFound(f"no case {case_id!r} in this dataset")
        folder = path_under(self.cases_dir, case_id)
        note = self._refusal(folder, "meta.json")
        if note is not None:
            raise UnsafePathError(note)
        try:
            return load_case(folder)
        except DatasetError as e:
            raise NotFound(str(e)) from None

    def _refusal(self, folder: Path, name: str) -> str | None:
        """Why the file ``name`` of a case folder is not served (it links out of the folder), or None."""
        if not (folder / name).is_symlink():  # one lstat; only a link can lead out of the (checked) folder
            return None
        try:
            path_under(folder, name)
        except UnsafePathError:
            note = f"cases/{folder.name}/{name} is a symbolic link out of its case folder: not served"
            if note not in self._warned:
                self._warned.add(note)
                log.warning("%s", note)
            return note
        return None

    def file(self, case: Case, name: str) -> Path:
        """A file of the case folder.

        Raises:
            UnsafePathError: the file links out of the case folder (the message names it).
        """
        note = self._refusal(case.path, name)
        if note is not None:
            raise UnsafePathError(note)
        return case.path / name

    def volume(self, case: Case) -> np.ndarray:
        """The memory-mapped ``(H, W, D)`` volume."""
        vol = load_npy(self.file(case, "oct.npy"))
        if vol.ndim != 3:
            raise DatasetError(f"{case.path / 'oct.npy'}: volume must be 3D (H, W, D), got shape {vol.shape}")
        return vol

    def maps(self, case: Case) -> EnfaceMaps:
        """The case's projections and B-scan display range (cached for the last few cases)."""
        path = self.file(case, "oct.npy")
        key = (case.case_id, path.stat().st_mtime_ns)
        return self._maps.get(key, lambda: compute_maps(self.volume(case), case.spacing, case.meta.extra))

    def prediction(self, case: Case) -> Prediction | None:
        """The case's prediction, when there is one on its grid."""
        pred = None if self.predictions is None else self.predictions.get(case.case_id)
        if pred is None or pred.shape != tuple(self.volume(case).shape[:2]):
            return None
        return pred

    def layers(self, case: Case) -> list[str]:
        """The en-face layers this case can show."""
        have = {m for m in MODALITIES if not self._refusal(case.path, f"{m}.png")}
        have = {m for m in have if (case.path / f"{m}.png").is_file()} | {"mean"}
        if self.maps(case).sub_bm is not None:
            have.add("sub_bm")
        if self.prediction(case) is not None:
            have |= {"probability", "uncertainty"}
        return [name for name in LAYERS if name in have]

    # ------------------------------------------------------------------ what the page asks for

    def case_list(self) -> list[dict[str, Any]]:
        """One entry per case (queue order first when a queue is given), with its status."""
        saved = self.log.latest("save", self.grader, self.task) if self.grader else {}
        decided = self.log.latest("review", self.grader, self.task) if self.grader else {}
        queued = {e.case_id: e for e in self.queue}
        order = [e.case_id for e in self.queue] + [c for c in self.ids if c not in queued]
        out = []
        for cid in order:
            folder = self.cases_dir / cid
            entry: dict[str, Any] = {
                "case_id": cid,
                "labeled": (folder / mask_filename(self.task)).is_file(),
                "graded": bool(self.grader) and (folder / mask_filename(self.task, self.grader)).is_file(),
                "reviewed": cid in saved or cid in decided,
                "decision": decided.get(cid, {}).get("decision"),
            }
            if cid in queued:
                q = queued[cid]
                entry.update(rank=q.rank, score=_finite(q.score), strategy=q.strategy)
            pred = self.predictions.get(cid) if self.predictions is not None else None
            if pred is not None:
                entry.update(predicted_area_mm2=_finite(pred.area_mm2), area_sd_mm2=_finite(pred.area_sd_mm2))
            out.append(entry)
        return out

    def case_info(self, case_id: str) -> dict[str, Any]:
        """What the page needs to open a case: grid, spacing, layers, mask versions, prediction, decision."""
        case = self.case(case_id)
        h, w, d = self.volume(case).shape
        maps = self.maps(case)
        pred = self.prediction(case)
        decided = self.log.latest("review", self.grader, self.task).get(case_id) if self.grader else None
        meta = case.meta
        files = [f"{m}.png" for m in MODALITIES] + [mask_filename(self.task, g) for g in {None, self.grader}]
        refused = sorted({note for name in files if (note := self._refusal(case.path, name))})
        return {
            "case_id": case_id,
            "patient_id": meta.patient_id,
            "eye": meta.eye,
            "visit": meta.visit,
            "shape": [h, w, d],
            "spacing": list(case.spacing),
            "sub_bm_slab": None if maps.slab is None else list(maps.slab),
            "layers": self.layers(case),
            "masks": {
                "reference": self._mask_version(case, None),
                "grader": self._mask_version(case, self.grader) if self.grader else "none",
                "prediction": "none" if pred is None else "present",
            },
            "prediction": None
            if pred is None
            else {"area_mm2": _finite(pred.area_mm2), "area_sd_mm2": _finite(pred.area_sd_mm2)},
            "decision": None if decided is None else decided.get("decision"),
            "refused": refused,
        }

    def _mask_version(self, case: Case, grader: str | None) -> str:
        """The version of a mask of the case; ``"none"`` for one that links out of the case folder."""
        if self._refusal(case.path, mask_filename(self.task, grader)):
            return "none"
        return self.store.version(case.path, grader)

    def record_decision(self, case: Case, decision: str) -> dict[str, Any]:
        """Log this grader's ``accept`` / ``correct`` / ``reject`` of the case's prediction.

        Raises:
            ReadOnly: no grader. NotFound: the case has no prediction.
        """
        if self.grader is None:
            raise ReadOnly("read-only: start `enface review` with --grader NAME to record decisions")
        pred = self.prediction(case)
        if pred is None:
            raise NotFound(f"case {case.case_id} has no prediction to review")
        entry = {
            "event": "review",
            "case_id": case.case_id,
            "grader": self.grader,
            "task": self.task,
            "decision": decision,
            "predicted_area_mm2": pred.area_mm2,
            "area_sd_mm2": pred.area_sd_mm2,
        }
        return self.log.append(entry)

    def enface_png(self, case_id: str, layer: str) -> bytes:
        """An en-face layer as an 8-bit grey ``(H, W)`` PNG."""
        case = self.case(case_id)
        if layer in MODALITIES:
            self.file(case, f"{layer}.png")  # one that links out: 403 naming it
        if layer not in self.layers(case):
            raise NotFound(f"case {case_id} has no en-face layer {layer!r}")
        if layer in MODALITIES:
            return png_bytes(stretch_to_u8(read_image(self.file(case, f"{layer}.png")), (0.0, 1.0)))
        pred = self.prediction(case)
        if layer in ("probability", "uncertainty") and pred is not None:  # layers() offers them only then
            value = pred.load_map(layer)
            return png_bytes(stretch_to_u8(value, (0.0, 1.0 if layer == "probability" else 0.5)))
        maps = self.maps(case)
        image = maps.sub_bm if layer == "sub_bm" and maps.sub_bm is not None else maps.mean
        return png_bytes(image)

    def bscan_bytes(self, case_id: str, row: int) -> bytes:
        """B-scan ``row`` as ``D * W`` bytes of 8-bit grey, row-major ``(D, W)``, read from the memory map.

        Raw bytes, not PNG: Pillow spends ~15 ms encoding a 1024 x 128 B-scan, the page
        draws raw pixels directly.
        """
        case = self.case(case_id)
        vol = self.volume(case)
        if not 0 <= row < vol.shape[0]:
            raise NotFound(f"case {case_id} has B-scans 0..{vol.shape[0] - 1}, not {row}")
        return np.ascontiguousarray(bscan_image(vol, row, self.maps(case).display_range)).tobytes()

    def mask_bytes(self, case_id: str, which: str) -> bytes:
        """``reference``, ``grader`` or ``prediction`` mask as ``H * W`` bytes of 0/1 (row-major)."""
        case = self.case(case_id)
        if which == "prediction":
            pred = self.prediction(case)
            mask = None if pred is None else pred.load_mask()
        elif which in ("reference", "grader"):
            grader = None if which == "reference" else self.grader
            if not (which == "grader" and grader is None):
                self.file(case, mask_filename(self.task, grader))  # refuses one that links out, naming it
            mask = None if which == "grader" and grader is None else self.store.load(case.path, grader)
        else:
            raise NotFound(f"no mask {which!r} (reference, grader or prediction)")
        if mask is None:
            raise NotFound(f"case {case_id} has no {which} mask")
        h, w = self.volume(case).shape[:2]
        if mask.shape != (h, w):
            raise DatasetError(f"case {case_id}: the {which} mask has shape {mask.shape}, the grid is {(h, w)}")
        return np.ascontiguousarray(mask, dtype=np.uint8).tobytes()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
