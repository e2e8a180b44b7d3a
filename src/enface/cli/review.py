"""``enface review``: the local web page to look at, correct and draw masks."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType


def add_review(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="local web page: look at, correct and draw masks, B-scan and en-face linked",
        description="Serve DATASET's cases on a local web page (127.0.0.1 unless --host): en-face layers "
        "(SLO, FAF, OCT projections, probability, uncertainty) with the reference, predicted and this grader's "
        "masks, the B-scan at the cursor, brush/eraser/B-scan extent editing. Saves write "
        "cases/<id>/mask_<task>.<grader>.png and append to DATASET/annotations.jsonl; nothing else is written "
        "unless a grader's mask is promoted to the reference from the page. Prints the URL (with its access "
        "token) on a line of its own; Ctrl+C (or SIGTERM) stops the server and lists what it wrote.",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder")
    p.add_argument("--predictions", metavar="DIR", help="output folder of `enface predict` on this dataset")
    p.add_argument("--queue", metavar="CSV", help="queue of cases to label (e.g. from `enface select`)")
    p.add_argument("--grader", help="your grader name: required to save (mask_<task>.<grader>.png)")
    p.add_argument("--task", default="ga", help="mask task (default ga)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); to serve other machines, this machine's "
        "address on their network (not 0.0.0.0)",
    )
    p.add_argument("--port", type=int, default=0, help="TCP port, 1..65535 (default: a free one)")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="do not open a browser")
    p.set_defaults(handler=_cmd_review)


def _cmd_review(args: argparse.Namespace) -> int:
    import webbrowser

    from enface.review import CaseService, ReviewServer

    service = CaseService(args.dataset, args.task, args.grader, args.predictions, args.queue)
    server = ReviewServer(service, host=args.host, port=args.port)
    mode = f"grader {args.grader}" if args.grader else "read-only (no --grader)"
    print(f"enface review: {len(service.ids)} case(s) of {args.dataset}, task {service.task}, {mode}", file=sys.stderr)
    print(server.url, flush=True)
    if args.browser:
        webbrowser.open(server.url)
    # uvicorn stops on SIGINT and SIGTERM alike, then raises the signal again under the handler
    # that was there before: for SIGTERM (the default would end the process silently) that
    # handler is this one, so both end with the summary below
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"enface review: stopped; {server.summary()}", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
