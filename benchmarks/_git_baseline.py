"""Load one module of enface as it was at an earlier commit, for side-by-side benchmarks.

The old source is read with ``git show <rev>:<path>`` from the repository this file lives
in and executed as a stand-alone module (it must import nothing of enface, which holds for
``data/preprocess.py`` and ``data/register.py``). Nothing is checked out or written.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_module_at(rev: str, path: str, name: str) -> types.ModuleType:
    """The module at ``path`` (relative to the repository root) as of commit ``rev``.

    Raises:
        RuntimeError: git is missing, ``rev`` is unknown, or the old module imports enface.
    """
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise RuntimeError(f"cannot read {path} at {rev}: {detail.strip()}") from None
    if "from enface" in source or "import enface" in source:
        raise RuntimeError(f"{path} at {rev} imports enface; it cannot be loaded stand-alone")
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module
