"""Lightning module for the two tasks: ``reconstruct`` (pre-training) and ``segment``."""

from __future__ import annotations

import logging
from typing import Any, cast

import lightning as L
import torch

from enface.config import FAST_DEFAULT
from enface.engine.checkpoint import FORMAT_VERSION
from enface.engine.fastpath import FastPath
from enface.errors import NonFiniteLossError
from enface.losses import DiceBCELoss, NegativeSSIMLoss
from enface.metrics import dice_per_sample, ssim
from enface.models import create_model, model_spec
from enface.targets import binary

__all__ = ["TASK_METRIC", "EnfaceModule"]

log = logging.getLogger(__name__)

TASK_METRIC: dict[str, str] = {"segment": "val_dice", "reconstruct": "val_ssim"}
"""Validation metric (higher is better) that ranks the checkpoints of each task."""


class EnfaceModule(L.LightningModule):
    """Train any registered model on a segmentation or reconstruction task.

    Args:
        model_name: registered model name (the network itself is :attr:`model`).
        task: ``"segment"`` (Dice + BCE; metric Dice at 0.5) or ``"reconstruct"``
            (negative mean SSIM of sigmoid(logits); metric SSIM).
        in_channels, out_channels, width, model_kwargs: passed to ``create_model``.
        lr, momentum, weight_decay: SGD settings.
        config: the resolved run config (stored in every checkpoint).
        compile: wrap the network in ``torch.compile``.
        fast: the fast path or the plain path (:class:`~enface.engine.fastpath.FastPath`
            owns the training layout, the validation copy and how checkpoints are written;
            checkpoints of both paths are the same keys and layout).

    Batches are dicts with ``volume (N, C_in, H, W, D)`` and ``target (N, C_out, H, W)``.
    """

    def __init__(
        self,
        model_name: str = "fpn",
        task: str = "segment",
        in_channels: int = 1,
        out_channels: int = 1,
        width: float = 1.0,
        model_kwargs: dict[str, Any] | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        config: dict[str, Any] | None = None,
        compile: bool = False,
        fast: bool = FAST_DEFAULT,
    ) -> None:
        super().__init__()
        if task not in TASK_METRIC:
            raise ValueError(f"task must be one of {tuple(TASK_METRIC)}, got {task!r}")
        self.save_hyperparameters()
        self.task = task
        self.metric_name = TASK_METRIC[task]
        net = create_model(model_name, in_channels, out_channels, width, **(model_kwargs or {}))
        self.spec = model_spec(net)
        self.fastpath = FastPath(fast)
        self.fastpath.training_network(net, rule=not compile)
        self.model: torch.nn.Module = cast(torch.nn.Module, torch.compile(net)) if compile else net
        self.loss = DiceBCELoss() if task == "segment" else NegativeSSIMLoss()

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W, D)`` -> logits ``(N, C_out, H, W)``."""
        return self.model(self.fastpath.training_input(volume))

    @property
    def network(self) -> torch.nn.Module:
        """The network itself (unwrapped from ``torch.compile``)."""
        return getattr(self.model, "_orig_mod", self.model)

    def on_validation_epoch_start(self) -> None:
        self.fastpath.begin_validation(self.network)

    def on_validation_epoch_end(self) -> None:
        self.fastpath.end_validation()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        world_size = self.trainer.world_size if self._trainer is not None else 1
        self.fastpath.settle_layout(self.model, batch["volume"], world_size)
        logits = self(batch["volume"])
        loss = self.loss(logits, batch["target"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(cases {list(batch.get('case_id', []))}); stopping. The last good checkpoint is kept."
            )
        n = logits.shape[0]
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        volume, target = batch["volume"], batch["target"]
        logits = self.fastpath.validation_logits(volume)
        if logits is None:
            logits = self(volume)
        n = logits.shape[0]
        self.log("val_loss", self.loss(logits, target), on_epoch=True, batch_size=n, sync_dist=True)
        probs = torch.sigmoid(logits.float())
        if self.task == "segment":
            value = dice_per_sample(binary(probs), binary(target)).mean()
        else:
            value = ssim(probs, target.float())
        self.log(self.metric_name, value, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(
            self.parameters(),
            lr=float(hp["lr"]),
            momentum=float(hp["momentum"]),
            weight_decay=float(hp["weight_decay"]),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.fastpath.write_checkpoint(checkpoint)
        value = self.trainer.callback_metrics.get(self.metric_name) if self._trainer is not None else None
        checkpoint["enface"] = {
            "model": dict(self.spec),
            "task": self.task,
            "config": self.hparams.get("config"),
            "metric": None if value is None else {"name": self.metric_name, "value": float(value)},
            "epoch": int(self.current_epoch),
            "format_version": FORMAT_VERSION,
            # how it was computed (does not change what the checkpoint is): Lightning's
            # precision (e.g. "bf16-mixed" on the fast path where native) and the layout
            "precision": str(self.trainer.precision) if self._trainer is not None else None,
            "layout": self.fastpath.layout,
            "layout_choice": self.fastpath.layout_choice,
            # the random state after this epoch: a resumed run draws the crops it would have drawn
            "rng_state": torch.get_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the random stream where the checkpoint's epoch left it (when it recorded it)."""
        state = (checkpoint.get("enface") or {}).get("rng_state")
        if isinstance(state, torch.Tensor):
            torch.set_rng_state(state)
