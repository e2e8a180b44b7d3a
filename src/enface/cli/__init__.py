"""The ``enface`` command line: one entry point with sub-commands.

Thin by design: each sub-command parses its arguments and calls the library. The parser,
error handling and exit statuses are :mod:`enface.cli.main`; the sub-commands live in
:mod:`enface.cli.data` (models, import-weights, synth, show, prepare, check, split),
:mod:`enface.cli.training` (pretrain, train, evaluate), :mod:`enface.cli.study` (experiment,
demo), :mod:`enface.cli.apply` (predict, progression), :mod:`enface.cli.select` (select) and
:mod:`enface.cli.review` (review).

Errors that concern the user's input (every :class:`enface.errors.EnfaceError`, and
:class:`ValueError` / :class:`FileNotFoundError` from argument checks) are printed as one
line naming the file or field, with exit status 2 and no traceback (``-v`` shows it); so
are a folder that cannot be written (permission denied, read-only, full). A
non-finite training loss exits with 3, an interruption (Ctrl+C) with 130.
"""

from enface.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
