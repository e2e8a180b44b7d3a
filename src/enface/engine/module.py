"""Lightning module for the two tasks: ``reconstruct`` (pre-training) and ``segment``."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from enface.engine.checkpoint import FORMAT_VERSION
from enface.engine.fastpath import (
    channels_last_input,
    channels_last_is_faster,
    contiguous_state,
    inference_network,
    to_channels_last,
    to_contiguous,
)
from enface.engine.inference import predict_logits
from enface.errors import NonFiniteLossError
from enface.losses import DiceBCELoss, NegativeSSIMLoss
from enface.metrics import dice_per_sample, ssim
from enface.models import create_model, model_spec

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
        fast: the fast path (:mod:`enface.engine.fastpath`): channels-last weights and inputs
            for training (on a CPU, the first training batch times both layouts and keeps
            the faster: :func:`~enface.engine.fastpath.channels_last_is_faster`); validation
            in float32 on a BatchNorm-folded copy of the network, over slabs of A-scans where
            the network allows it. Checkpoints are written as the plain path writes them
            (contiguous tensors, BatchNorm layers, same keys).

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
        fast: bool = False,
    ) -> None:
        super().__init__()
        if task not in TASK_METRIC:
            raise ValueError(f"task must be one of {tuple(TASK_METRIC)}, got {task!r}")
        self.save_hyperparameters()
        self.task = task
        self.metric_name = TASK_METRIC[task]
        net = create_model(model_name, in_channels, out_channels, width, **(model_kwargs or {}))
        self.spec = model_spec(net)
        self.fast = bool(fast)
        self.channels_last = self.fast
        self._layout_pending = self.fast and not compile  # measured on the first CPU training batch
        if self.fast:
            to_channels_last(net)
        self.model: torch.nn.Module = torch.compile(net) if compile else net
        self.loss = DiceBCELoss() if task == "segment" else NegativeSSIMLoss()
        self._val_net: dict[str, torch.nn.Module] = {}  # a dict: not a registered sub-module

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W, D)`` -> logits ``(N, C_out, H, W)``."""
        return self.model(channels_last_input(volume) if self.channels_last else volume)

    def _choose_layout(self, volume: torch.Tensor) -> None:
        """On a CPU, keep the training layout that runs this batch shape faster."""
        self._layout_pending = False
        if volume.device.type != "cpu":
            return
        faster, t_last, t_contiguous = channels_last_is_faster(self.model, volume)
        self.channels_last = faster
        if not faster:
            to_contiguous(self.model)
        log.info(
            "training layout: %s (a step %.2f s channels-last, %.2f s contiguous)",
            "channels-last" if faster else "contiguous",
            t_last,
            t_contiguous,
        )

    def on_validation_epoch_start(self) -> None:
        if self.fast:  # a BatchNorm-folded copy of this epoch's weights
            self._val_net["net"] = inference_network(getattr(self.model, "_orig_mod", self.model))

    def on_validation_epoch_end(self) -> None:
        self._val_net.clear()

    def _validation_logits(self, volume: torch.Tensor) -> torch.Tensor:
        net = self._val_net.get("net")
        if net is None:
            return self(volume)
        with torch.autocast(volume.device.type, enabled=False):  # validation in float32
            return predict_logits(net, volume.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self._layout_pending:
            self._choose_layout(batch["volume"])
        logits = self(batch["volume"])
        loss = self.loss(logits, batch["target"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(cases {list(batch.get('case_id', []))}); stopping. The last good checkpoint is kept."
            )
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=logits.shape[0], sync_dist=True
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self._validation_logits(batch["volume"])
        target = batch["target"]
        n = logits.shape[0]
        self.log("val_loss", self.loss(logits, target), on_epoch=True, batch_size=n, sync_dist=True)
        probs = torch.sigmoid(logits.float())
        if self.task == "segment":
            value = dice_per_sample(probs > 0.5, target > 0.5).mean()
        else:
            value = ssim(probs, target.float())
        self.log(self.metric_name, value, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.fast:  # written as the plain path writes them
            for key in ("state_dict", "optimizer_states"):
                if key in checkpoint:
                    checkpoint[key] = contiguous_state(checkpoint[key])
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
            "layout": "channels-last" if self.channels_last else "contiguous",
        }
