"""Hand-made engine checkpoints for the tests of inference, predict and what reads its output,
and a training run killed on purpose (:class:`KillAt`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from enface.data.normalize import zscore_per_bscan
from enface.models import create_model, model_spec

WIDTH = 0.125
CASE = "P0001_OD_V1"
"""The phantom case whose logits a saved FPN's head bias centres."""


class KillAt(Callback):
    """The process dies at the start of epoch ``at`` (after the epoch before was checkpointed):
    ``fit`` raises ``RuntimeError("simulated kill")``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.at:
            raise RuntimeError("simulated kill")


def save_checkpoint(path: Path, dataset: Path, seed: int, name: str = "fpn", task: str = "segment", **kwargs) -> Path:
    """A hand-made engine checkpoint whose head bias centres the logits on a phantom case."""
    torch.manual_seed(seed)
    model = create_model(name, width=WIDTH, **kwargs).eval()
    if name == "fpn":
        vol = np.load(dataset / "cases" / CASE / "oct.npy").astype(np.float32)
        with torch.no_grad():
            logits = model(torch.from_numpy(zscore_per_bscan(vol))[None, None])
            model.head.bias -= logits.median()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "enface": {
                "model": model_spec(model),
                "task": task,
                "metric": None,
                "epoch": 0,
                "format_version": 1,
                "config": {"dataset": str(dataset), "target": "ga" if task == "segment" else "faf_inv"},
            },
        },
        path,
    )
    return path


def ranked_run(root: Path, dataset: Path) -> Path:
    """A run folder ``root`` with two ranked checkpoints of different weights (val Dice 0.40, 0.60)."""
    save_checkpoint(root / "checkpoints" / "epoch=1-val_dice=0.40.ckpt", dataset, seed=1)
    save_checkpoint(root / "checkpoints" / "epoch=2-val_dice=0.60.ckpt", dataset, seed=2)
    return root


def tiny_run(root: Path) -> dict[str, Path]:
    """A two-case dataset of depth 64 and a finished run folder with one hand-made checkpoint of
    it: ``{"ds": dataset, "run": run folder, "ckpt": its checkpoint}``."""
    import yaml

    from tiny_data import make_tiny_dataset

    ds = make_tiny_dataset(root / "ds", patients=2)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    net = create_model("fpn", width=0.125).eval()
    config = {"dataset": str(ds), "target": "ga", "stage": "train"}
    ckpt = run / "checkpoints" / "epoch=1-val_dice=0.50.ckpt"
    enface = {"model": model_spec(net), "task": "segment", "metric": None, "epoch": 1, "config": config}
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "enface": enface}, ckpt)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "done.json").write_text("{}")
    return {"ds": ds, "run": run, "ckpt": ckpt}
