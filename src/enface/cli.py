"""The ``enface`` command line: one entry point with sub-commands.

Thin by design: each sub-command parses its arguments and calls the library. Library
errors that concern the user's input (:class:`ValueError`, :class:`FileNotFoundError`,
:class:`enface.data.folder.DatasetError`) are printed as one clear line with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

log = logging.getLogger("enface")

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- models


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models with their parameter counts")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--out-channels", type=int, default=1)
    p.set_defaults(handler=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from enface.models import count_parameters, create_model, list_models

    print(f"{'model':<12} {'parameters':>12}   (width {args.width:g}, 1 in, {args.out_channels} out)")
    for name in list_models():
        n = count_parameters(create_model(name, out_channels=args.out_channels, width=args.width))
        print(f"{name:<12} {n:>12,}")
    return 0


# --------------------------------------------------------------------------- parser

# Each entry adds one sub-command to the parser; keep them in the order of DESIGN.md.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``enface`` argument parser with every sub-command."""
    from enface import __version__

    parser = argparse.ArgumentParser(
        prog="enface",
        description="Label-efficient 3D->2D segmentation of retinal OCT (FPN + inter-modal SSL).",
    )
    parser.add_argument("--version", action="version", version=f"enface {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``enface`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    from enface.data.folder import DatasetError

    try:
        return int(args.handler(args) or 0)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"enface {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"enface {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
