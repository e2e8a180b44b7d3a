"""Faults the tests inject into the writers: a disk that is full, or fills while a file is written."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest


def disk_fills_after(monkeypatch: pytest.MonkeyPatch, allowed: str) -> None:
    """Every atomic write fails as on a full disk, except those under a folder named ``allowed``."""
    import enface.fileio as fileio

    real = fileio.atomic_write

    def write(path, writer):
        if allowed in Path(path).parts or any(p.startswith(f".{allowed}.") for p in Path(path).parts):
            return real(path, writer)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "atomic_write", write)


class FillingDisk:
    """A file on a disk that fills after ``room`` bytes: then every write fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)
