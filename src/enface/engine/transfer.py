"""Weight transfer: initialise a segmentation model from a reconstruction checkpoint.

Rules (the nnU-Net way: explicit about what was not loaded):
    * wrapper prefixes are stripped (``model.``, ``module.``, ``_orig_mod.``);
    * a checkpoint of another architecture, width or input channel count is refused;
    * the head (the module named ``head``) is skipped only when its shape differs (e.g.
      a different number of output channels); any other mismatch is refused;
    * the report lists exactly which keys were not loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from enface.engine.checkpoint import read_checkpoint, upgraded_state_dict
from enface.errors import CheckpointError
from enface.models import model_spec

__all__ = ["HEAD_PREFIX", "TransferReport", "transfer_weights"]

log = logging.getLogger(__name__)

HEAD_PREFIX = "head."
"""Every registered model names its final layer ``head``; only it may be skipped."""


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did.

    Attributes:
        loaded: keys copied from the checkpoint.
        skipped: keys present in both but not loaded because their shapes differ (head only).
        source: the checkpoint path.
        source_model: the model spec stored in the checkpoint (None for plain state dicts).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    source: str = ""
    source_model: dict[str, Any] | None = None

    @property
    def not_loaded(self) -> list[str]:
        """Keys of the target model that kept their initial values."""
        return list(self.skipped)

    def summary(self) -> str:
        s = f"loaded {len(self.loaded)} tensors from {self.source}"
        return s + (f"; not loaded (shape differs): {', '.join(self.skipped)}" if self.skipped else "; nothing skipped")


def transfer_weights(
    model: nn.Module, checkpoint: str | os.PathLike | dict[str, Any], where: str | None = None
) -> TransferReport:
    """Load a checkpoint's weights into ``model`` (in place).

    Args:
        model: target model built by :func:`enface.models.create_model`.
        checkpoint: path to, or already-loaded dict of, a checkpoint (an enface/Lightning
            checkpoint, or a plain state dict).
        where: the checkpoint's name in messages (default: its path).

    Returns:
        A :class:`TransferReport`.

    Raises:
        CheckpointError: the checkpoint is of another architecture, width or input channel
            count, or keys other than the head do not match.
    """
    where = where or (str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint")
    ckpt = read_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    target_spec = model_spec(model)
    info = ckpt.get("enface") if isinstance(ckpt.get("enface"), dict) else None
    source_spec = info["model"] if info else None
    if source_spec is not None:
        for key in ("name", "width", "in_channels"):
            if source_spec.get(key) != target_spec.get(key):
                raise CheckpointError(
                    f"{where}: checkpoint is {source_spec['name']} (width {source_spec.get('width')}, "
                    f"{source_spec.get('in_channels')} in), the model is {target_spec['name']} "
                    f"(width {target_spec['width']}, {target_spec['in_channels']} in); "
                    f"weights can only be transferred between the same architecture, width and inputs"
                )
    source = upgraded_state_dict(model, ckpt)
    target = model.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: keys do not match the model {target_spec['name']} "
            f"(missing {len(missing)}: {missing[:5]}; unexpected {len(unexpected)}: {unexpected[:5]}); "
            "is it a checkpoint of another architecture?"
        )
    report = TransferReport(source=where, source_model=source_spec)
    new_state: dict[str, torch.Tensor] = {}
    for k, v in target.items():
        if source[k].shape == v.shape:
            new_state[k] = source[k]
            report.loaded.append(k)
        elif k.startswith(HEAD_PREFIX):
            new_state[k] = v
            report.skipped.append(k)
        else:
            raise CheckpointError(
                f"{where}: tensor {k!r} has shape {tuple(source[k].shape)} in the checkpoint but "
                f"{tuple(v.shape)} in the model; only the head may differ"
            )
    model.load_state_dict(new_state, strict=True)
    log.info("weight transfer: %s", report.summary())
    return report
