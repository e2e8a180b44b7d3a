"""Checkpoints: atomic writes, self-describing contents, rebuilding a model from a file.

Every checkpoint written by the engine holds, besides Lightning's own keys, an ``"enface"``
entry::

    {"model": {"name", "in_channels", "out_channels", "width", "kwargs"},
     "config": <the resolved RunConfig as a dict>,
     "metric": {"name": "val_dice", "value": 0.83} | None,
     "epoch": 12, "format_version": 2,
     "precision": "bf16-mixed" | "32-true" | ..., "layout": "contiguous" | "channels-last"}

so :func:`load_model` can rebuild the network from the file alone. Everything in it is plain
data (tensors, numbers, strings, lists, dicts), and every checkpoint is read with
``torch.load(weights_only=True)``: a file whose pickle would run code is refused, never run
(Lightning's own resume goes through :class:`enface.engine.fit.AtomicCheckpointIO`, which reads
the same way). This module does not import Lightning, so inference (``evaluate``, ``predict``)
does not load it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from enface.errors import CheckpointError, RunFolderError
from enface.models import create_model

__all__ = [
    "FORMAT_VERSION",
    "checkpoint_info",
    "load_model",
    "model_state_dict",
    "read_checkpoint",
    "resumable_checkpoint",
    "strip_prefixes",
    "topk_checkpoints",
    "upgraded_state_dict",
]

log = logging.getLogger(__name__)

WRAPPER_PREFIXES: tuple[str, ...] = ("model.", "module.", "_orig_mod.")

FORMAT_VERSION = 2
"""Format of the ``"enface"`` entry and of the weights' layout. 2: FPN decoders concatenate
``[skip, upsampled]`` like the paper's code (1 had ``[upsampled, skip]``; such checkpoints are
converted when read, see ``FeatureProjectionNetwork.upgrade_state_dict``)."""


def _torch_reason(e: BaseException) -> str:
    """What went wrong in ``torch.load``, without torch's advice to load with
    ``weights_only=False`` (that would run whatever code the file holds: never do it)."""
    text = str(e)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|\nCheck the documentation|$)", text, re.DOTALL)
    if found:
        text = found.group(1)
    keep = [
        s
        for s in re.split(r"(?<=[.!?])\s+|\n+", text)
        if s.strip() and not re.search(r"weights_only|trusted source|file an issue|torch\.load", s)
    ]
    return " ".join(s.strip() for s in keep) or type(e).__name__


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a checkpoint's pickle names that ``weights_only`` does not allow (torch lists
    them without unpickling); none for a file it cannot list (not a zip checkpoint, damaged)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # torch raises many types for foreign files
        return []


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU, without executing any code it may hold.

    Raises:
        CheckpointError: missing or unreadable file, or a file whose pickle holds anything
            but plain data (it is refused, not run). The message never suggests loading the
            file without ``weights_only``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError("checkpoint not found", path=p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(p)
        if not unsafe:  # not a refused object: a corrupt or foreign file
            raise CheckpointError(
                f"unreadable checkpoint (not a PyTorch checkpoint, or a damaged one: {_torch_reason(e)})", path=p
            ) from None
        raise CheckpointError(
            f"refused: it names {unsafe[0]}, and loading it could run code; only checkpoints written by "
            "enface (or plain state dicts) are read",
            path=p,
        ) from None
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"unreadable checkpoint (not a PyTorch checkpoint, or a damaged one: "
            f"{type(e).__name__}: {_torch_reason(e)})",
            path=p,
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"not a checkpoint (a {type(ckpt).__name__}, expected a dict)", path=p)
    return ckpt


def strip_prefixes(
    state: dict[str, torch.Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES
) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (Lightning's ``model.``, DDP's ``module.``, compile's ``_orig_mod.``)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for pre in prefixes:
                if k.startswith(pre):
                    k = k[len(pre) :]
                    changed = True
        out[k] = v
    return out


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict from a checkpoint (Lightning's or a plain one), prefixes stripped."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("checkpoint has no tensor state dict")
    return strip_prefixes(state)


def upgraded_state_dict(model: torch.nn.Module, ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's weights in the layout of the current code of ``model``.

    Checkpoints written by older enface versions (``format_version`` < :data:`FORMAT_VERSION`)
    are converted by the model's ``upgrade_state_dict`` when it has one; plain state dicts
    (no ``"enface"`` entry) are taken as they are.
    """
    state = model_state_dict(ckpt)
    info = ckpt.get("enface")
    version = int(info.get("format_version", FORMAT_VERSION)) if isinstance(info, dict) else FORMAT_VERSION
    upgrade = getattr(model, "upgrade_state_dict", None)
    return upgrade(state, version) if upgrade is not None and version < FORMAT_VERSION else state


def checkpoint_info(ckpt: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """The ``"enface"`` entry of a checkpoint (model spec, config, metric)."""
    info = ckpt.get("enface")
    if not isinstance(info, dict) or "model" not in info:
        raise CheckpointError("not an enface checkpoint (no model description inside)", path=where)
    return info


def load_model(path: str | os.PathLike, eval_mode: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint, from the file alone.

    Returns:
        ``(model, info)`` where ``info`` is the checkpoint's ``"enface"`` entry.
    """
    ckpt = read_checkpoint(path)
    info = checkpoint_info(ckpt, str(path))
    spec = info["model"]
    model = create_model(
        spec["name"], spec["in_channels"], spec["out_channels"], spec["width"], **spec.get("kwargs", {})
    )
    model.load_state_dict(upgraded_state_dict(model, ckpt), strict=True)
    return (model.eval() if eval_mode else model), info


_METRIC_RE = re.compile(r"(?P<name>val_[a-z]+)=(?P<value>-?[0-9.]+)")


def topk_checkpoints(run: str | os.PathLike, k: int | None = None) -> list[Path]:
    """The best ``k`` checkpoints of a run folder, best first (by the metric in their names).

    Checkpoint files are ``checkpoints/epoch=<e>-val_<metric>=<value>.ckpt``; ``last.ckpt``
    is not ranked.
    """
    ckdir = Path(run) / "checkpoints"
    scored = []
    for p in ckdir.glob("epoch=*.ckpt"):
        m = _METRIC_RE.search(p.stem)
        if m:
            scored.append((float(m.group("value").rstrip(".")), p))
    scored.sort(key=lambda t: (-t[0], t[1].name))
    paths = [p for _, p in scored]
    return paths if k is None else paths[:k]


def _checkpoint_usable(path: Path) -> str | None:
    """None if ``path`` is a complete training checkpoint, else why not."""
    try:
        ckpt = read_checkpoint(path)
        checkpoint_info(ckpt, str(path))
    except CheckpointError as e:
        return e.beside(path)
    missing = [k for k in ("state_dict", "optimizer_states", "loops", "epoch") if k not in ckpt]
    return f"incomplete (no {', '.join(missing)})" if missing else None


def resumable_checkpoint(folder: Path) -> Path:
    """The checkpoint a killed run continues from: ``last.ckpt``, else the newest readable one.

    Raises:
        RunFolderError: no readable checkpoint (the folder is left as it is).
    """
    ckdir = folder / "checkpoints"
    candidates = [ckdir / "last.ckpt"] + sorted(ckdir.glob("epoch=*.ckpt"), key=lambda p: p.name, reverse=True)
    problems: list[str] = []
    for path in candidates:
        if not path.is_file():
            continue
        why = _checkpoint_usable(path)
        if why is None:
            if problems:
                log.warning("%s; resuming from %s instead", "; ".join(problems), path.name)
            return path
        problems.append(f"{path.name} unusable: {why}")
    raise RunFolderError(
        f"{folder}: no readable checkpoint to resume from ({'; '.join(problems) or 'none written'}); "
        "the folder was left as it is (remove it to start the run again)"
    )
