"""The ground floor's file writers (:mod:`enface.fileio`): what they leave behind on failure."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

_SHORT_WRITE = """
import resource, signal, sys
import numpy as np
from enface.fileio import atomic_save_npy
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
try:
    atomic_save_npy(sys.argv[1], np.zeros(100_000))
except OSError as e:
    print(e.errno)
"""


def test_a_short_write_of_a_volume_keeps_the_file_systems_errno(tmp_path: Path) -> None:
    """Regression: NumPy writes an array to a real file with ``tofile``, whose short write raised an
    ``OSError`` without an errno ("800000 requested and 65408 written"), so a full disk could only
    be recognised by that text. A file size limit makes the same short write happen here."""
    out = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path / "v.npy")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(errno.EFBIG)
    assert not list(tmp_path.iterdir())  # the temporary file is gone too
