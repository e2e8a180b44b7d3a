"""The ``enface`` command line: one entry point with sub-commands.

Thin by design: each sub-command parses its arguments and calls the library. The parser,
error handling and exit statuses (2 for bad input, 3 for a non-finite loss, 130 for Ctrl+C)
are :mod:`enface.cli.main`; the sub-commands live in
:mod:`enface.cli.data` (models, import-weights, synth, show, prepare, check, split),
:mod:`enface.cli.training` (pretrain, train, evaluate), :mod:`enface.cli.study` (experiment,
demo), :mod:`enface.cli.apply` (predict, progression), :mod:`enface.cli.select` (select) and
:mod:`enface.cli.review` (review).
"""

from enface.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
