"""How ``enface predict`` goes through its scans: one process, or several.

* **One process** (``workers=1``, the default): the scans one after the other, each through
  :func:`enface.predict.scan.attempt`; with ``overlap`` (the default) the next scan is read
  and prepared (BM, flattening) in a background thread while the current one runs through
  the ensemble and is written. Preparing a device export is mostly single-threaded NumPy and
  SciPy and the ensemble uses every core, so the two fill the cores between them; at most
  two scans are in memory.
* **Worker processes** (``workers=N``): N spawned processes, each with its own copy of the
  ensemble and ``cores // N`` torch threads, take the scans in turn; results come back in
  input order. Every worker writes whole scan folders into the output folder (the lock
  stays with the parent); what they compute does not depend on the number of workers,
  except that each process sums in the order its thread count gives.

Either way a full disk stops the batch: the scans not reached are reported as such.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from enface.data.options import FlattenParams
from enface.engine.inference import Ensemble
from enface.engine.precision import precision_name
from enface.engine.predictor import Predictor
from enface.errors import DISK_FULL
from enface.predict.inputs import PredictInput, PreparedScan
from enface.predict.options import PredictOptions
from enface.predict.output import OutputFolder
from enface.predict.scan import ScanResult, attempt, not_reached

__all__ = ["cores", "run_batch"]

log = logging.getLogger(__name__)


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _log_result(i: int, n: int, item: PredictInput, res: ScanResult, notes: Sequence[str], progress: bool) -> None:
    if res.status != "ok":
        log.warning("[%d/%d] %s: failed: %s (%s)", i, n, item.scan_id, res.reason, item.source)
        return
    for note in notes:
        log.warning("%s: %s", item.scan_id, note)
    if progress:
        unc = "" if res.n_pixels == 0 else f", mean uncertainty {res.mean_uncertainty_in_mask:.3f}"
        log.info("[%d/%d] %s: %.3f mm² (%d px)%s", i, n, item.scan_id, res.area_mm2, res.n_pixels, unc)


# --------------------------------------------------------------------------- one process


def _loads(items: list[PredictInput], overlap: bool) -> Iterator[Callable[[], PreparedScan]]:
    """Per item, how to get its loaded scan: its own ``load``, or (``overlap``) the result of
    a load started in a background thread while the caller worked on the item before."""
    if not overlap or len(items) < 2:
        yield from (item.load for item in items)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="enface-load") as pool:
        pending: Future[PreparedScan] = pool.submit(items[0].load)
        for i in range(len(items)):
            current = pending
            if i + 1 < len(items):
                pending = pool.submit(items[i + 1].load)
            yield current.result
        # leaving early (a full disk) cancels what has not started yet


def _run_here(
    items: list[PredictInput], predictor: Predictor, folder: OutputFolder, options: PredictOptions, progress: bool
) -> list[ScanResult]:
    results: list[ScanResult] = []
    loads = _loads(items, options.overlap)
    try:
        for i, (item, load) in enumerate(zip(items, loads), 1):
            res, notes = attempt(item, load, predictor, folder, options)
            _log_result(i, len(items), item, res, notes, progress)
            results.append(res)
            if res.kind == DISK_FULL:
                return results + not_reached(items[i:])
    finally:
        loads.close()  # type: ignore[attr-defined]
    return results


# --------------------------------------------------------------------------- worker processes


@dataclass(frozen=True)
class _Model:
    """What a worker process needs to build the same predictor (it cannot be sent as it is)."""

    checkpoints: tuple[Path, ...]
    fast: bool
    precision: str
    flatten: FlattenParams
    threads: int


_worker: dict[str, object] = {}


def _start_worker(model: _Model, options: PredictOptions, out: Path, overwrite: bool) -> None:
    torch.set_num_threads(model.threads)
    ensemble = Ensemble(list(model.checkpoints), options.device, model.fast, model.precision)
    _worker.update(predictor=Predictor(ensemble, model.flatten), options=options, folder=OutputFolder(out, overwrite))


def _in_worker(item: PredictInput) -> tuple[ScanResult, list[str]]:
    predictor, options, folder = _worker["predictor"], _worker["options"], _worker["folder"]
    return attempt(item, item.load, predictor, folder, options)  # type: ignore[arg-type]


def _run_in_workers(
    items: list[PredictInput], predictor: Predictor, folder: OutputFolder, options: PredictOptions, progress: bool
) -> list[ScanResult]:
    workers = min(options.workers, len(items))
    fastpath = predictor.ensemble.fastpath
    model = _Model(
        tuple(predictor.checkpoints),
        fastpath.enabled,
        precision_name(fastpath.dtype),
        predictor.flatten,
        max(1, cores() // workers),
    )
    log.info("%d worker processes, %d torch thread(s) each", workers, model.threads)
    results: list[ScanResult | None] = [None] * len(items)
    ctx = mp.get_context("spawn")
    initargs = (model, options, folder.out, folder.overwrite)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=initargs) as pool:
        futures = {pool.submit(_in_worker, item): i for i, item in enumerate(items)}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            res, notes = future.result()  # a bug in a worker surfaces here
            results[i] = res
            _log_result(done, len(items), items[i], res, notes, progress)
            if res.kind == DISK_FULL:
                for f in futures:
                    f.cancel()
                break
    for future, i in futures.items():  # after a full disk: the scans that were running finished
        if results[i] is None and not future.cancelled() and future.exception() is None:
            results[i] = future.result()[0]
    left = [i for i, r in enumerate(results) if r is None]
    for i, res in zip(left, not_reached([items[i] for i in left])):
        results[i] = res
    return [r for r in results if r is not None]


def run_batch(
    items: list[PredictInput], predictor: Predictor, folder: OutputFolder, options: PredictOptions, progress: bool
) -> list[ScanResult]:
    """Predict every scan, in this process or in ``options.workers`` processes (see the
    module's description); one result per scan, in input order."""
    if options.workers > 1 and len(items) > 1:
        return _run_in_workers(items, predictor, folder, options, progress)
    return _run_here(items, predictor, folder, options, progress)
