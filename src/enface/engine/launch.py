"""Which process of a (possibly distributed) training run holds the run folder's lock.

Rank 0, the process the user started, locks the run folder before any other rank exists
(Lightning's launcher starts them inside ``trainer.fit``, after the lock is taken) and
holds the lock for all of them. A ``RANK``, ``LOCAL_RANK`` or ``NODE_RANK`` variable alone
does not make a process a worker: it is trusted only when a distributed launch is really set
up (``torch.distributed`` initialised, or ``WORLD_SIZE`` > 1 with ``MASTER_ADDR`` and
``MASTER_PORT``) for a run that asks for more than one process. A stray ``RANK=1`` in the
environment therefore locks the folder like any other run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from enface.errors import RunFolderError
from enface.fileio import FolderLock

__all__ = ["RANK_VARIABLES", "launched_worker", "run_folder_lock"]

log = logging.getLogger(__name__)

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


def _torch_rank() -> int | None:
    """This process's rank in an initialised ``torch.distributed`` process group, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return None


def _single_process(config: Any) -> bool:
    """Whether ``config`` asks for one training process (one device on one node)."""
    devices = getattr(config, "devices", 1)
    return int(getattr(config, "num_nodes", 1) or 1) == 1 and (devices in (1, "1") or devices == [0])


def launched_worker(config: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a non-zero rank of a real distributed launch.

    Args:
        config: the run's config (``devices``, ``num_nodes``); a run on one process has no
            workers whatever the environment says. None: not checked.
        environ: the environment (default ``os.environ``).
    """
    rank = _torch_rank()
    if rank is not None:
        return rank != 0
    env = os.environ if environ is None else environ
    ranks = {v: env[v] for v in RANK_VARIABLES if env.get(v, "0").strip() not in ("", "0")}
    if not ranks:
        return False
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    launch = world > 1 and bool(env.get("MASTER_ADDR")) and bool(env.get("MASTER_PORT"))
    if launch and (config is None or not _single_process(config)):
        return True
    given = ", ".join(f"{k}={v}" for k, v in ranks.items())
    log.warning(
        "ignoring %s in the environment: no distributed launch is set up (WORLD_SIZE > 1 with MASTER_ADDR "
        "and MASTER_PORT, for a run on more than one device); this process locks the run folder",
        given,
    )
    return False


@contextlib.contextmanager
def _held_by_rank_zero(folder: Path, wait_s: float) -> Iterator[None]:
    """A worker's side of the lock: rank 0 must hold it (waits up to ``wait_s`` for it)."""
    lock = folder / ".lock"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = lock.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            holder = ""
        if holder:
            break
        if time.monotonic() >= deadline:
            raise RunFolderError(
                f"{folder}: this worker process of a distributed run found the run folder not locked by rank 0; "
                "start the run from rank 0 (enface train), not a worker alone"
            )
        time.sleep(0.2)
    yield


def run_folder_lock(folder: str | os.PathLike, config: Any = None, wait_s: float = 120.0) -> Any:
    """The context that guards ``folder`` for this process (see the module docstring).

    Rank 0 (and any process that is not a worker of a real distributed launch) takes the
    folder's :class:`~enface.fileio.FolderLock`; a worker checks that rank 0 holds it.

    Raises:
        RunFolderError: (on entering) another process holds the lock, or, in a worker, rank
            0 does not hold it within ``wait_s`` seconds.
    """
    folder = Path(folder)
    if launched_worker(config):
        return _held_by_rank_zero(folder, wait_s)
    return FolderLock(folder, "run folder")
