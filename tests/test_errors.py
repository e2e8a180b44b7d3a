"""The error types (:mod:`enface.errors`): what they carry, across processes, and the one reason
a failed batch item gets."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest

from enface.errors import (
    DISK_FULL,
    CheckpointError,
    DatasetError,
    EnfaceError,
    ScanKindError,
    failure,
    is_disk_full,
)


@pytest.mark.parametrize(
    "error",
    [
        DatasetError("no spacing", path=Path("/x/a.npy")),
        DatasetError("mask is not binary", path="/x/m.png", kind="not a binary mask"),
        ScanKindError("line scan", "line scan (1 B-scan)", "/x/l.vol"),
        CheckpointError("refused"),
    ],
)
def test_an_error_carries_its_path_reason_and_kind_across_processes(error: EnfaceError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert (copy.path, copy.reason, copy.kind) == (error.path, error.reason, error.kind)
    assert str(error) == (f"{error.path}: {error.reason}" if error.path else error.reason)


def test_beside_leaves_out_only_the_path_it_is_shown_beside() -> None:
    e = DatasetError("spacing unknown", path=Path("/x/a.npy"))
    assert e.beside("/x/a.npy") == e.beside(Path("/x/a.npy")) == "spacing unknown"
    assert e.beside("/x/b.npy") == "/x/a.npy: spacing unknown"  # a companion's error names its file
    assert DatasetError("no path").beside("/x/a.npy") == "no path"


def test_failure_gives_one_reason_and_kind_for_each_sort_of_error() -> None:
    source = "/x/a.vol"
    assert failure(ScanKindError("line scan", "line scan (1 B-scan)", source), source) == (
        "line scan (1 B-scan)",
        "line scan",
    )
    full = OSError(errno.ENOSPC, "No space left on device", "/out/x.npy")
    assert is_disk_full(full) and failure(full, source, "case") == (
        "the disk is full (nothing of this case was kept)",
        DISK_FULL,
    )
    assert failure(ValueError("bad axes"), source) == ("bad axes", "error")
    assert failure(KeyError("k"), source) == ("KeyError: 'k'", "error")
    assert not is_disk_full(OSError("32768 requested and 2016 written"))  # no errno: no full disk by its text
