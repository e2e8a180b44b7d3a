"""Inference: a checkpoint ensemble applied to whole volumes.

The paper averages the probabilities of a run's top-5 checkpoints (by validation metric)
to reduce inference variability. :class:`Ensemble` loads the members from their files
alone, checks that they agree on what they take (input channels, depth) and give, and
returns per volume the mean probability, the members' standard deviation (an uncertainty)
and, when asked, each member's probability map. ``evaluate`` and ``predict`` both use it.

By default the members run on the fast path (:class:`~enface.engine.fastpath.FastPath`):
BatchNorm folded into the convolutions, channels-last weights and inputs, bf16 where the
hardware computes it natively (``precision``: :data:`~enface.config.INFERENCE_PRECISIONS`),
and the parts of each network that it declares local along the A-scans run over slabs of
A-scans with exact halos (:mod:`enface.engine.streaming`), which keeps the peak memory of a
49 x 1024 x 128 volume under 1 GB. ``fast=False`` runs each member's own forward on the
volume as given (the plain path, float32); in float32 both give the same probabilities to
float32 rounding, and bf16 masks agree with float32's as ``docs/speed.md`` measures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enface.config import FAST_DEFAULT, INFERENCE_PRECISION_DEFAULT
from enface.engine.checkpoint import load_model, topk_checkpoints
from enface.engine.fastpath import FastPath
from enface.engine.precision import precision_name
from enface.errors import CheckpointError, ConfigError, DatasetError
from enface.fileio import load_npy, read_json_object

__all__ = [
    "Ensemble",
    "EnsembleOutput",
    "depth_note",
    "inference_device",
    "read_run_config",
    "training_preparation",
]

log = logging.getLogger(__name__)


def inference_device(device: str | torch.device) -> torch.device:
    """The torch device named ``device``, checked to exist on this machine.

    Raises:
        ConfigError: not a device name (``banana``), or a device this machine lacks (CUDA
            not available, an index past the GPUs present, no MPS).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {str(device)!r}: not a torch device (cpu, cuda, cuda:<index>, mps)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {str(device)!r}: this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError(f"device {str(device)!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {str(device)!r}: inference runs on cpu, cuda or mps")
    return dev


def depth_note(depth: int, training_depth: int | None) -> str | None:
    """A note when scans of ``depth`` samples meet a model trained on another depth (``None``
    when they agree or the training depth is unknown); ``predict`` and ``evaluate`` share it."""
    if training_depth is None or int(depth) == int(training_depth):
        return None
    return (
        f"scan depth {depth} differs from the training depth {training_depth}: predictions may be off "
        f"(prepare the scans with --depth {training_depth})"
    )


class EnsembleOutput:
    """What an :class:`Ensemble` returns for one volume.

    Attributes:
        members: ``(M, C_out, H, W)`` float32 probabilities of the M members.
    """

    def __init__(self, members: np.ndarray) -> None:
        self.members = members

    @property
    def mean(self) -> np.ndarray:
        """``(C_out, H, W)`` float32 mean probability (the prediction)."""
        return self.members.mean(axis=0, dtype=np.float64).astype(np.float32)

    @property
    def std(self) -> np.ndarray:
        """``(C_out, H, W)`` float32 standard deviation over members (0 for one member)."""
        return self.members.std(axis=0, dtype=np.float64).astype(np.float32)


class Ensemble:
    """Average the sigmoid probabilities of several checkpoints of the same task.

    Args:
        checkpoints: checkpoint files (each rebuilt from its own description).
        device: torch device for inference.
        fast: run the members on the fast path (see the module's description).
        precision: what the members compute in on the fast path (``"auto"``: bf16 where the
            device computes it natively; ``"bf16"``, ``"32"``).

    Attributes:
        precision: what the members compute in, ``"bf16"`` or ``"32"``.

    Raises:
        CheckpointError: no checkpoints, an unreadable one, or members that disagree on
            their task, input channels, output channels or fixed depth.
        ConfigError: an unknown device or precision, or bf16 asked of the plain path.
    """

    def __init__(
        self,
        checkpoints: Sequence[str | os.PathLike],
        device: str | torch.device = "cpu",
        fast: bool = FAST_DEFAULT,
        precision: str = INFERENCE_PRECISION_DEFAULT,
    ) -> None:
        if not checkpoints:
            raise CheckpointError("no checkpoints to ensemble")
        self.device = inference_device(device)
        self.fastpath = FastPath(fast, precision=precision)
        self.fastpath.tune_process("inference", self.device)  # slab activations are reused, not faulted in again
        self.paths = [Path(p) for p in checkpoints]
        self.models: list[torch.nn.Module] = []
        self.infos: list[dict[str, Any]] = []
        for p in self.paths:
            model, info = load_model(p)
            self.models.append(self.fastpath.inference_network(model.to(self.device)))
            self.infos.append(info)
        self.precision = precision_name(self.fastpath.dtype)
        self._check_members()

    def _check_members(self) -> None:
        def agreed(what: str, values: set) -> Any:
            if len(values) > 1:
                raise CheckpointError(
                    f"ensemble members disagree on {what}: {sorted(values, key=str)} "
                    f"({', '.join(p.name for p in self.paths)})"
                )
            return values.pop()

        self.task: str | None = agreed("the task", {i.get("task") for i in self.infos})
        self.in_channels: int = agreed("input channels", {int(i["model"]["in_channels"]) for i in self.infos})
        self.out_channels: int = agreed("output channels", {int(i["model"]["out_channels"]) for i in self.infos})
        self.fixed_depth: int | None = agreed("the fixed depth", {m.fixed_depth for m in self.models})
        self.min_depth: int = max(int(getattr(m, "min_depth")) for m in self.models)
        names = {i["model"]["name"] for i in self.infos}
        if len(names) > 1:
            log.info("ensembling different architectures: %s", sorted(names))
        if len(self.channels) != self.in_channels:
            raise CheckpointError(
                f"{self.paths[0]}: the run config lists input channels {list(self.channels)}, "
                f"but the model takes {self.in_channels}"
            )

    @classmethod
    def from_run(
        cls,
        run: str | os.PathLike,
        top_k: int = 5,
        device: str | torch.device = "cpu",
        fast: bool = FAST_DEFAULT,
        precision: str = INFERENCE_PRECISION_DEFAULT,
    ) -> Ensemble:
        """The top-k checkpoints of a run folder (the other arguments as for the class).

        A run that has not finished (no ``done.json``) is used with a warning; a run with no
        ranked checkpoint falls back to ``last.ckpt``, also with a warning.

        Raises:
            ValueError: ``top_k`` < 1.
            CheckpointError: the folder holds no checkpoint.
        """
        if int(top_k) < 1:
            raise ValueError(f"top-k must be >= 1, got {top_k}")
        run = Path(run)
        if not (run / "checkpoints").is_dir():
            if run.name == "checkpoints" or any(run.glob("*.ckpt")):
                raise CheckpointError(
                    f"{run}: this is a run's checkpoints folder, not a run folder; pass the run folder "
                    f"({run.parent}) or one of its .ckpt files"
                )
            raise CheckpointError(f"{run}: not a run folder (no checkpoints/ in it); pass a run folder or a .ckpt file")
        if not (run / "done.json").is_file():
            log.warning("%s: the run has not finished (no done.json): using the checkpoints it has so far", run)
        paths = topk_checkpoints(run, top_k)
        if not paths:
            last = run / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise CheckpointError(f"{run}: no checkpoints found")
            log.warning("%s: no ranked checkpoint; using last.ckpt", run)
            paths = [last]
        elif len(paths) < top_k:
            log.info("%s: %d checkpoint(s) available for a top-%d ensemble", run, len(paths), top_k)
        return cls(paths, device, fast, precision)

    @property
    def config(self) -> dict[str, Any]:
        """The run config of the first member (as stored in its checkpoint)."""
        return dict(self.infos[0].get("config") or {})

    @property
    def channels(self) -> tuple[str, ...]:
        """Input channels the members were trained on (``("oct",)`` for older checkpoints)."""
        return tuple(self.config.get("channels") or ("oct",))

    def check_input(self, volumes: np.ndarray | torch.Tensor, where: str = "scan") -> None:
        """Check a ``(C, H, W, D)`` input against what the members accept.

        Raises:
            DatasetError: wrong number of channels, a depth other than a fixed-depth
                network's, or a depth below the members' minimum.
        """
        c, _, _, d = tuple(volumes.shape)
        if c != self.in_channels:
            raise DatasetError(f"{where}: the model expects {self.in_channels} input channel(s), the scan has {c}")
        if self.fixed_depth is not None and d != self.fixed_depth:
            raise DatasetError(
                f"{where}: depth mismatch: the scan has depth {d}, the model only accepts depth {self.fixed_depth} "
                f"(re-prepare the scan with --depth {self.fixed_depth}, or give the raw export)"
            )
        if d < self.min_depth:
            raise DatasetError(f"{where}: depth {d} is below the model's minimum of {self.min_depth}")

    @torch.inference_mode()
    def run(self, volume: torch.Tensor) -> EnsembleOutput:
        """All members' probabilities for a normalised volume ``(1, C_in, H, W, D)``."""
        x = volume.to(self.device, torch.float32)
        probs = [torch.sigmoid(self.fastpath.logits(m, x))[0].cpu().numpy() for m in self.models]
        return EnsembleOutput(np.stack(probs))

    def __call__(self, volume: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of the members' probabilities, each ``(C_out, H, W)`` float32."""
        out = self.run(volume)
        return out.mean, out.std


def read_run_config(run: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``config.yaml`` as plain values.

    Raises:
        DatasetError: not a run folder (no ``config.yaml``) or an unreadable one.
    """
    import yaml

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise DatasetError(f"{run}: not a run folder (no config.yaml)")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{path}: expected a mapping")
    return cfg


def training_preparation(config: dict[str, Any]) -> tuple[int | None, tuple[float, float] | None, str]:
    """Depth and window the training dataset of a run config was prepared with, and where that was read.

    Returns:
        ``(depth, (above_mm, below_mm), where)``; ``None`` for what could not be found (the
        training dataset moved away, or was not made by ``enface prepare``).
    """
    ds = config.get("dataset")
    if not ds:
        return None, None, "no training dataset named in the checkpoint"
    root = Path(ds)
    info_path = root / "dataset.json"
    if not info_path.is_file():
        return None, None, f"training dataset {root} not found"
    try:
        info = read_json_object(info_path)
    except (DatasetError, OSError):
        return None, None, f"{info_path} unreadable"
    prep = info.get("preparation") or {}
    if prep.get("depth"):
        window = (
            (float(prep["above_mm"]), float(prep["below_mm"])) if "above_mm" in prep and "below_mm" in prep else None
        )
        return int(prep["depth"]), window, str(info_path)
    cases = root / "cases"
    for case_dir in sorted(cases.iterdir()) if cases.is_dir() else ():
        npy = case_dir / "oct.npy"
        if npy.is_file() and not case_dir.name.startswith("."):
            try:
                return int(load_npy(npy).shape[2]), None, str(npy)
            except (DatasetError, OSError, IndexError):
                continue
    return None, None, f"no readable case in {root}"
