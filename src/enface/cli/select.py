"""Sub-command ``select``: which unlabeled scans to label next (active learning)."""

from __future__ import annotations

import argparse


def add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="rank unlabeled scans by what a label would teach (active learning) -> queue CSV",
        description="Score the cases of a split that have no mask of the run's task with the run's top-k "
        "ensemble (plus mirrored views) and write the first N as a CSV: rank, case_id, patient_id, eye, visit, "
        "score, predicted_area_mm2, area_sd_mm2, strategy. See docs/active-learning.md.",
    )
    p.add_argument("run", metavar="RUN", help="segmentation run folder (its top-k checkpoints are the ensemble)")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder whose unlabeled cases are ranked")
    p.add_argument("--n", type=int, required=True, help="cases to queue (more than the pool: all of them)")
    p.add_argument("--out", required=True, help="queue CSV to write (never a file of the dataset)")
    p.add_argument(
        "--strategy",
        default="uncertainty",
        help="random, uncertainty (ensemble disagreement per lesion area) or diverse (k-center on features); "
        "default uncertainty",
    )
    p.add_argument("--split", default="train", help="split whose unlabeled cases form the pool (default train)")
    p.add_argument("--per", default="case", help="case, or patient: at most one case per patient (default case)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default 0)")
    p.add_argument("--task", help="the task the labels are for (default: the run's; another one is refused)")
    p.add_argument("--top-k", type=int, default=5, help="checkpoints of the run in the ensemble (default 5)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="members only, without mirrored views")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-fast", dest="fast", action="store_false", help="plain inference path")
    p.set_defaults(handler=_cmd_select)


def _cmd_select(args: argparse.Namespace) -> int:
    from enface.select import select_queue

    result = select_queue(
        args.run,
        args.dataset,
        args.n,
        args.out,
        strategy=args.strategy,
        split=args.split,
        per=args.per,
        seed=args.seed,
        task=args.task,
        top_k=args.top_k,
        tta=args.tta,
        device=args.device,
        fast=args.fast,
    )
    print(result.summary())
    return 0
