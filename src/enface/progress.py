"""Progress of long work, suited to where it is written.

On a terminal a bar redraws in place (tqdm, on standard error). Written to a file or a pipe
(``enface prepare ... 2> prepare.log``), the same work reports one line per step instead
(per scan, per case), through :mod:`logging`, with what that step gave. Training's bar is
Lightning's, on standard output; its per-epoch line is
:class:`enface.engine.history.EpochLines`.

Imports nothing of enface.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import IO

from tqdm.auto import tqdm

__all__ = ["Progress", "on_terminal"]

log = logging.getLogger(__name__)


def on_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (standard error when not given) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class Progress:
    """``total`` steps of some work: a bar on a terminal, else one logged line per step.

    Args:
        total: the number of steps.
        desc: what the work is (the bar's title, each line's start).
        unit: what a step is (``scan``, ``case``).
        enabled: False shows nothing at all.
        logger: where the lines go (this module's logger when not given).
    """

    def __init__(
        self, total: int, desc: str, unit: str, enabled: bool = True, logger: logging.Logger | None = None
    ) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self._log = logger or log
        self._bar = tqdm(total=total, desc=desc, unit=unit) if enabled and on_terminal() else None
        self._lines = enabled and self._bar is None

    def working_on(self, what: str) -> None:
        """Show what the next step works on (the bar's postfix; no line)."""
        if self._bar is not None:
            self._bar.set_postfix_str(what, refresh=False)

    def step(self, result: str, postfix: str | None = None) -> None:
        """One step done: the bar advances (``postfix`` beside it), or a line ``desc [i/n] result``."""
        self.done += 1
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(1)
        elif self._lines:
            self._log.info("%s [%d/%d] %s", self.desc, self.done, self.total, result)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
