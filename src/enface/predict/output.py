"""The output folder of ``enface predict``: where it may lie, one writer at a time, what an
earlier run left in it.

* ``--out`` may not be, or lie inside, an input folder (a dataset, its ``cases`` folder, a
  case folder, a folder of exports), nor hold an input folder: predictions would land among
  the cases or exports, and a later run would read them as scans.
* One ``predict`` at a time writes a folder (:class:`~enface.fileio.FolderLock`); the folder
  is created only once the model and the inputs are known to be usable, and removed again
  when the run is refused before anything is written.
* An earlier run's outputs are kept: ``summary.csv`` is merged (this run's rows replace
  those of the same scan ids, the others stay), and a scan whose folder is already there is
  refused unless ``overwrite``.
* Each scan's folder is written into a hidden temporary folder and renamed into place, so it
  is complete or absent (a full disk leaves nothing half-written).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from enface.data.folder import dataset_of
from enface.data.predictions import SUMMARY_FILE, read_summary
from enface.errors import DatasetError, UnsafePathError
from enface.fileio import FolderLock, atomic_write_csv, path_under, replace_folder, temp_dir

__all__ = ["OutputFolder", "check_out_placement"]

log = logging.getLogger(__name__)


def _input_roots(path: Path) -> list[Path]:
    """The folders an input folder belongs to: itself, and the dataset of a case or ``cases`` folder."""
    dataset = dataset_of(path)
    return [path] if dataset is None or dataset == path else [path, dataset]


def check_out_placement(out: Path, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output folder that is an input folder, lies inside one (or inside the dataset
    of an input case), or holds one.

    Raises:
        DatasetError: naming ``--out`` and the input.
    """
    o = out.resolve()
    for raw in inputs:
        path = Path(raw)
        if not path.is_dir():
            continue  # files: their folder may hold the outputs (`--out .` beside scan.vol)
        real = path.resolve()
        for root in _input_roots(real):
            if o == root or root in o.parents:
                raise DatasetError(
                    f"--out lies inside the input {root} (predictions would be written among its "
                    "cases or exports, and read back as scans); choose a folder outside it",
                    path=out,
                )
        if o in real.parents:
            raise DatasetError(
                f"--out holds the input {path} (a scan's output folder could replace it); "
                "choose a folder that does not contain the inputs",
                path=out,
            )


class OutputFolder:
    """The ``--out`` folder of one ``predict`` run, locked while it is written.

    Args:
        out: the folder (created on entering when missing).
        overwrite: replace scan folders an earlier run wrote (otherwise they are refused).

    Raises:
        DatasetError: (on entering) ``out`` is a file or cannot be written, or its
            ``summary.csv`` is not one of ``enface predict`` (without ``overwrite``).
        RunFolderError: (on entering) another ``predict`` is writing the folder.
    """

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = out
        self.overwrite = overwrite
        self._created = False
        self._lock: FolderLock | None = None
        self._earlier: list[dict[str, str]] = []

    def __enter__(self) -> OutputFolder:
        if self.out.exists() and not self.out.is_dir():
            raise DatasetError("--out is a file, not a folder", path=self.out)
        self._created = not self.out.exists()
        lock = FolderLock(self.out, "predictions folder")
        try:
            lock.__enter__()
        except OSError as e:
            self._remove_if_created()
            raise DatasetError(f"cannot write predictions there ({e.strerror or e})", path=self.out) from None
        self._lock = lock
        try:
            probe = self.out / f".write-test-{os.getpid()}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise DatasetError(f"cannot write predictions there ({e.strerror or e})", path=self.out) from None
            self._earlier = self._earlier_rows()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.__exit__()
            self._lock = None
        self._remove_if_created()

    def _remove_if_created(self) -> None:
        """Remove the folder this run created when nothing but the lock file is in it."""
        if not self._created or not self.out.is_dir():
            return
        if {p.name for p in self.out.iterdir()} <= {".lock"}:
            with contextlib.suppress(OSError):
                (self.out / ".lock").unlink(missing_ok=True)
                self.out.rmdir()

    def _earlier_rows(self) -> list[dict[str, str]]:
        path = self.out / SUMMARY_FILE
        if not path.is_file():
            return []
        try:
            return read_summary(path)
        except DatasetError as e:
            if not self.overwrite:
                raise DatasetError(f"{e}; pass --overwrite to replace it, or choose another --out") from None
            log.warning("%s; it is replaced", e)
            return []

    def check_free(self, scan_ids: Sequence[str]) -> None:
        """Refuse scan ids whose folder an earlier run wrote (unless ``overwrite``).

        Raises:
            DatasetError: listing the scan ids and the folder.
        """
        if self.overwrite:
            return
        taken = []
        for sid in scan_ids:
            try:
                if path_under(self.out, sid).exists():
                    taken.append(sid)
            except UnsafePathError:
                continue  # the scan fails with that reason when it is written
        if taken:
            shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
            raise DatasetError(
                f"already holds predictions of {len(taken)} scan(s) of this run ({shown}); "
                "pass --overwrite to replace them, or choose another --out",
                path=self.out,
            )

    @contextlib.contextmanager
    def scan_folder(self, scan_id: str) -> Iterator[Path]:
        """A temporary folder to write one scan's outputs into, renamed to ``<out>/<scan id>``
        when the block ends without an error (removed otherwise)."""
        final = path_under(self.out, scan_id)
        tmp = temp_dir(self.out, f".{scan_id}.")
        try:
            yield tmp
            replace_folder(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def write_summary(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
        """Write ``summary.csv``: the earlier runs' rows of scans not in ``rows``, then ``rows``."""
        now = {str(r["scan_id"]) for r in rows}
        kept = [r for r in self._earlier if r.get("scan_id") not in now]
        if kept:
            log.info("summary.csv keeps %d row(s) of earlier runs", len(kept))
        return atomic_write_csv(self.out / SUMMARY_FILE, [*kept, *rows], columns)
