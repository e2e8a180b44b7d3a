"""Sub-commands that train and evaluate: pretrain, train, evaluate."""

from __future__ import annotations

import argparse
from typing import Any

from enface.cli.apply import add_precision
from enface.targets import THRESHOLD

# --------------------------------------------------------------------------- pretrain / train


def _add_run_options(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", help="YAML config (sections common/pretrain/train; see configs/paper.yaml)")
    group = p.add_argument_group("config fields", "each sets the run config field of its name, over --config")
    fields: list[str] = []

    def field(*names: str, **kwargs: Any) -> None:  # given or absent: --config and the defaults decide
        fields.append(group.add_argument(*names, default=argparse.SUPPRESS, **kwargs).dest)

    field("--dataset", help="dataset folder")
    if stage == "pretrain":
        field("--target", choices=("slo", "faf", "faf_inv"), help="2D modality to reconstruct (default faf_inv)")
    else:
        field("--task", dest="target", help="mask task to segment, e.g. ga")
        field("--init", help="checkpoint to initialise from (e.g. a pre-training run's best)")
        field("--fraction", type=float, help="label fraction of the training patients, in (0, 1]")
    field("--model", help="registered model name (see `enface models`)")
    field("--width", type=float, help="channel multiplier")
    field("--seed", type=int)
    field("--epochs", type=int, help="training epochs (at most, with --patience)")
    field("--patience", type=int, help="stop after this many validations without a gain of --min-delta")
    field("--min-delta", type=float, help="the smallest validation gain that counts (with --patience)")
    field("--min-epochs", type=int, help="epochs before --patience may stop the run")
    field("--batch-size", type=int)
    field("--runs-dir", help="root of the run folders (default runs)")
    field("--accelerator", help="Lightning accelerator: auto, cpu, gpu, ...")
    field("--devices", help="Lightning devices: 1, 2, auto, ...")
    field("--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ...")
    field("--precision", help="Lightning precision: auto, 32-true, bf16-mixed, 16-mixed")
    field("--num-nodes", type=int)
    field("--compile", action="store_const", const=True, help="torch.compile the model")
    field(
        "--no-fast",
        dest="fast",
        action="store_const",
        const=False,
        help="plain path: eager float32, contiguous layout (default: the fast path, see docs/speed.md)",
    )
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config field")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_fit, stage=stage, config_fields=tuple(fields))


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    _add_run_options(
        sub.add_parser("pretrain", help="self-supervised reconstruction pre-training (OCT -> SLO/FAF)"), "pretrain"
    )


def add_train(sub: argparse._SubParsersAction) -> None:
    _add_run_options(sub.add_parser("train", help="segmentation training, from scratch or from a checkpoint"), "train")


def _cmd_fit(args: argparse.Namespace) -> int:
    from enface.config import load_config, parse_overrides
    from enface.engine.fit import fit

    overrides = parse_overrides(args.set)
    overrides.update({name: getattr(args, name) for name in args.config_fields if hasattr(args, name)})
    config = load_config(args.config, args.stage, overrides)
    result = fit(config, resume=args.resume, progress=not args.no_progress)  # NaN loss: exit 3 (main)
    best = f"{result.best[0][1]:.4f}" if result.best else "n/a"
    print(f"{args.stage} {result.status}: best {result.metric} {best} after {result.epochs} epochs")
    print(f"run folder: {result.run_dir}")
    if result.best:
        print(f"best checkpoint: {result.best[0][0]}")
    return 0 if result.status in ("finished", "skipped") else 1


# --------------------------------------------------------------------------- evaluate


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-k ensemble of a run on a split: per-case CSV + summary")
    p.add_argument("run", help="segmentation run folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--dataset", help="evaluate on another dataset folder (default: the run's)")
    p.add_argument("--task", help="mask task (default: the run's)")
    p.add_argument("--top-k", type=int, default=5, help="checkpoints averaged (default 5)")
    p.add_argument(
        "--threshold", type=float, default=THRESHOLD, help=f"probability threshold of the mask (default {THRESHOLD:g})"
    )
    p.add_argument("--out", help="output folder (default <run>/eval/<dataset>-<split>)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--no-fast",
        dest="fast",
        action="store_false",
        help="plain inference path (each network's own forward, BatchNorm unfolded)",
    )
    add_precision(p)
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from enface.evaluate import evaluate

    res = evaluate(
        args.run,
        split=args.split,
        dataset=args.dataset,
        task=args.task,
        top_k=args.top_k,
        threshold=args.threshold,
        out_dir=args.out,
        device=args.device,
        fast=args.fast,
        precision=args.precision,
    )
    m = res.summary["metrics"]
    print(f"{res.summary['n_cases']} cases, {len(res.summary['checkpoints'])} checkpoints averaged")
    for name in ("dice", "area_diff_mm2", "hd95_mm"):
        extra = f" ({m[name]['n_undefined']} undefined)" if m[name]["n_undefined"] else ""
        print(
            f"  {name:<14} mean {m[name]['mean']:.4f}  std {m[name]['std']:.4f}  median {m[name]['median']:.4f}{extra}"
        )
    print(f"per-case table: {res.out_dir / 'cases.csv'}")
    print(f"summary: {res.out_dir / 'summary.json'}")
    return 0
