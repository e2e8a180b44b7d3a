"""Why from-scratch FPN collapses with few labels: the first epochs under each loss setting.

Trains FPN from scratch on a label fraction of a phantom dataset with the study's settings
(SGD lr 0.1, momentum 0.9, random crops, ``samples_per_epoch`` crops per epoch) and prints,
per epoch, the training loss, the mean predicted probability and the Dice on the validation
cases, the share of validation cases with a lesion that get an empty prediction, and the
head's bias. Settings compared (each against the first, in the same run):

* ``sample-dice``: soft Dice per crop + BCE, head bias 0 (enface before issue 18): the network
  starts at probability 0.5 everywhere;
* ``batch-dice``: soft Dice pooled over the batch + BCE, head bias 0;
* ``sample-dice+prior``: soft Dice per crop + BCE, the head's bias started at the log-odds of
  the training masks' foreground share (:mod:`enface.engine.prior`; enface's default for
  from-scratch segmentation since issue 18).

Usage::

    flock /tmp/enface-cpu.lock .venv/bin/python benchmarks/bench_convergence.py data/phantom-study \\
        --fraction 0.05 --epochs 12 --seeds 0
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from enface.data.augment import AugmentConfig
from enface.data.dataset import EnfaceDataset
from enface.data.splits import select_cases
from enface.engine.prior import foreground_share, set_head_prior
from enface.losses import DiceBCELoss
from enface.metrics import dice_per_sample
from enface.models import create_model

SETTINGS = ("sample-dice", "batch-dice", "sample-dice+prior")


def run(root: str, setting: str, fraction: float, seed: int, epochs: int, samples: int, width: float) -> list[dict]:
    torch.manual_seed(seed)
    train_ids = select_cases(root, "train", requires=("mask:ga",), fraction=fraction, task="ga")
    val_ids = select_cases(root, "val", requires=("mask:ga",))
    train = EnfaceDataset(root, train_ids, "mask:ga", augment=AugmentConfig(crop=(32, 64)), seed=seed)
    val = EnfaceDataset(root, val_ids, "mask:ga", augment=None)
    loader = DataLoader(train, batch_size=8, sampler=RandomSampler(train, replacement=True, num_samples=samples))
    net = create_model("fpn", 1, 1, width)
    if setting.endswith("+prior"):
        set_head_prior(net, foreground_share(root, train_ids, "ga"))
    loss_fn = DiceBCELoss(batch_dice=setting.startswith("batch-dice"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    history = []
    for epoch in range(epochs):
        net.train()
        losses = []
        for batch in loader:
            loss = loss_fn(net(batch["volume"]), batch["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        net.eval()
        dices, probs, empty = [], [], []
        with torch.no_grad():
            for i in range(len(val)):
                item = val[i]
                p = torch.sigmoid(net(item["volume"][None]))
                t = item["target"][None]
                dices.append(float(dice_per_sample(p > 0.5, t > 0.5)))
                probs.append(float(p.mean()))
                if t.sum() > 0:
                    empty.append(bool((p > 0.5).sum() == 0))
        history.append(
            row := dict(
                epoch=epoch,
                loss=float(np.mean(losses)),
                p_mean=float(np.mean(probs)),
                dice=float(np.mean(dices)),
                empty=float(np.mean(empty)) if empty else math.nan,
                bias=float(net.head.bias.detach().mean()),
            )
        )
        print(
            f"  {setting} seed {seed} epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True
        )
    return history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for setting in args.settings:
        for seed in args.seeds:
            t0 = time.perf_counter()
            h = run(args.dataset, setting, args.fraction, seed, args.epochs, args.samples, args.width)
            first = next((r["epoch"] for r in h if r["empty"] < 0.5), None)
            print(
                f"{setting:<17} seed {seed}: first epoch predicting lesions {first}; "
                f"val Dice at epochs 5/10/last: {h[min(4, len(h) - 1)]['dice']:.3f} / "
                f"{h[min(9, len(h) - 1)]['dice']:.3f} / {h[-1]['dice']:.3f}; best {max(r['dice'] for r in h):.3f}; "
                f"({time.perf_counter() - t0:.0f} s)"
            )
            print(
                "   per epoch (p_mean, empty share, bias): "
                + " ".join(f"{r['p_mean']:.2f}/{r['empty']:.1f}/{r['bias']:+.1f}" for r in h)
            )


if __name__ == "__main__":
    main()
