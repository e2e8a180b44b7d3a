"""The ``enface`` entry point: the parser of every sub-command, logging, errors and exit statuses.

Errors that concern the user's input (every :class:`enface.errors.EnfaceError`, and
:class:`ValueError` / :class:`FileNotFoundError` from argument checks) are printed as one
line naming the file or field, with exit status 2 and no traceback (``-v`` shows it); so
are a folder that cannot be written (permission denied, read-only, full). A
non-finite training loss exits with 3, an interruption (Ctrl+C) with 130.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from enface.cli import apply, data, review, select, study, training

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    data.add_models,
    data.add_synth,
    data.add_show,
    data.add_prepare,
    data.add_check,
    data.add_split,
    training.add_pretrain,
    training.add_train,
    training.add_evaluate,
    study.add_experiment,
    study.add_demo,
    apply.add_predict,
    apply.add_progression,
    select.add_select,
    data.add_import_weights,
    review.add_review,
]
"""Each entry adds one sub-command to the parser, in the order of the help text."""

_LIST_OPTIONS = frozenset({"--spacing", "--window-mm", "--ratios"})
"""Options whose one value is a comma-separated list of numbers, which may start with '-'."""

_TRAINING_COMMANDS = frozenset({"pretrain", "train", "experiment", "demo"})  # predict/evaluate do not load Lightning


def build_parser() -> argparse.ArgumentParser:
    """The ``enface`` argument parser with every sub-command."""
    from enface import __version__

    parser = argparse.ArgumentParser(
        prog="enface", description="Label-efficient 3D->2D segmentation of retinal OCT (FPN + inter-modal SSL)."
    )
    parser.add_argument("--version", action="version", version=f"enface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _quiet_third_party(command: str | None, verbose: bool) -> None:
    """Route Lightning's messages through our logging, without its start-up banners.

    Lightning sets its loggers' levels and adds its own handler when imported, so for the
    commands that use it, it is imported here first and then adjusted.
    """
    import warnings

    if command not in _TRAINING_COMMANDS:
        return
    import lightning  # noqa: F401  (its import configures the loggers we adjust)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()  # messages propagate to our handler: printed once
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def _attach_list_values(argv: Sequence[str]) -> list[str]:
    """``--spacing -1,0,1`` -> ``--spacing=-1,0,1``: argparse would take the value for an option;
    the library then says what is wrong with the numbers."""
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token in _LIST_OPTIONS:
            value = next(it, None)
            if value is not None and len(value) > 1 and value[0] == "-" and (value[1].isdigit() or value[1] == "."):
                out.append(f"{token}={value}")
                continue
            out += [token] if value is None else [token, value]
            continue
        out.append(token)
    return out


_WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
"""Errors of the file system that concern where the user asked to write (shown as one line)."""


def _write_error(e: OSError) -> str:
    """``"cannot write /ro/out/x.csv (folder /ro/out): Permission denied"``."""
    path = e.filename or ""
    folder = f" (folder {os.path.dirname(path)})" if path and os.path.dirname(path) else ""
    return f"cannot write {path}{folder}: {e.strerror or e}" if path else f"cannot write: {e.strerror or e}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``enface`` console script."""
    from enface.errors import EnfaceError, NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(_attach_list_values(sys.argv[1:] if argv is None else argv))
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    _quiet_third_party(args.command, args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except NonFiniteLossError as e:
        print(f"enface {args.command}: stopped: {e}", file=sys.stderr)
        return 3
    except (EnfaceError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"enface {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.verbose or e.errno not in _WRITE_ERRNOS:
            raise
        print(f"enface {args.command}: error: {_write_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"enface {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
