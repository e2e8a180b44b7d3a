"""Import weights trained with the paper's public code (j-morano/multimodal-ssl-fpn).

The paper code saves Lightning checkpoints (``{"state_dict": {"model.<key>": tensor}}``) of
its ``FPN``, ``ReSensNet`` and ``LachinovNet`` classes. :func:`map_paper_state_dict` turns
such a state dict into the state dict of the matching enface model, key by key:

* every source key is translated by an explicit rule of its model (by name, never by
  position) and every tensor's shape is checked against the enface model;
* the paper's 3D decoder/head kernels ``(..., kh, kw, 1)`` become enface's 2D kernels
  ``(..., kh, kw)``; Lachinov's kernels are over the paper's (B-scans, depth, A-scans) axes
  and are transposed to enface's (B-scans, A-scans, depth);
* ``in_channels``, ``out_channels``, the channel ``width`` and ReSensNet's ``depth`` are
  read from the tensor shapes;
* the only source tensors left out are those the paper code's own forward never uses
  (Lachinov's deepest decoder stage); they are listed in the report. Any other key left
  over on either side is an error that names it.

With the imported weights the enface model's logits equal the paper model's pre-sigmoid
output (the paper code applies a sigmoid inside its models; enface models return logits).

Files are read with ``torch.load(..., weights_only=True)``: pickled code is never executed.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from enface.engine.checkpoint import FORMAT_VERSION, read_checkpoint
from enface.errors import CheckpointError
from enface.fileio import atomic_write
from enface.models import create_model
from enface.targets import Target

__all__ = [
    "PAPER_MODELS",
    "ImportReport",
    "import_paper_weights",
    "map_paper_state_dict",
    "paper_checkpoint",
    "read_paper_state_dict",
]

log = logging.getLogger(__name__)

PAPER_MODELS: dict[str, str] = {"fpn": "FPN", "resensnet": "ReSensNet", "lachinov": "LachinovNet"}
"""enface model name -> class name in the paper code's ``models/fusion_nets.py``."""

STATE_DICT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model")
"""Where a checkpoint dict may keep its state dict (else the dict itself is one)."""

SOURCE_PREFIXES: dict[str, tuple[str, ...]] = {
    "fpn": ("module.", "model.", "_orig_mod.", "resensnet."),
    "resensnet": ("module.", "model.", "_orig_mod.", "resensnet."),
    "lachinov": ("module.", "model.", "_orig_mod."),
}
"""Wrapper prefixes stripped from source keys: DDP, Lightning's ``model.``, compile, and the
paper's own wrappers (``FPN.resensnet``, ``LachinovNet.model``)."""

_BASE_CHANNELS: dict[str, int] = {"fpn": 16, "resensnet": 16, "lachinov": 32}
_FIRST_CONV: dict[str, str] = {"fpn": "conv1.0.convBlock.0.0.weight", "lachinov": "conv_first.0.weight"}
_HEAD: dict[str, str] = {"fpn": "final1.0.weight", "lachinov": "conv_output.weight"}
_PROJECTION: str = "zdimRed1.1.convBlock.0.0.weight"
_PROJECTION_KERNEL: dict[str, int] = {"fpn": 4, "resensnet": 8}  # final_kernelsize in the paper code
_BOTTLENECK_PARTS: dict[str, int] = {"conv_pre": 0, "norm1": 1, "conv1": 3, "norm2": 4, "conv_post": 6, "norm_post": 7}
_PARTS = "|".join(_BOTTLENECK_PARTS)
UNUSED = "unused"
"""Marker of a source key the paper code's forward never uses."""


@dataclass
class ImportReport:
    """What :func:`map_paper_state_dict` did.

    Attributes:
        model: enface model name.
        spec: arguments of :func:`enface.models.create_model` (name, in_channels,
            out_channels, width, kwargs), as plain Python values.
        mapped: enface key -> source key (after prefix stripping), for every enface tensor.
        unused: source keys deliberately left out (never used by the paper code's forward).
        source: where the weights came from.
        out: the enface checkpoint written (empty until written).
    """

    model: str
    spec: dict[str, Any]
    mapped: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    source: str = "state dict"
    out: str = ""

    def summary(self) -> str:
        s = self.spec
        kw = "".join(f", {k}={v}" for k, v in s["kwargs"].items())
        text = (
            f"{self.model} ({s['in_channels']} in, {s['out_channels']} out, width {s['width']:g}{kw}): "
            f"{len(self.mapped)} tensors from {self.source}" + (f" -> {self.out}" if self.out else "")
        )
        return text + (f"; left out {len(self.unused)} tensors unused by the paper code" if self.unused else "")


# --------------------------------------------------------------------------- reading


def read_paper_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint or state dict saved by the paper code, without executing pickled code.

    Returns:
        ``(state_dict, extra)``: the tensors, and the checkpoint's other plain entries
        (e.g. Lightning's ``epoch``) — empty for a bare state dict.

    Raises:
        CheckpointError: missing or unreadable file, pickled objects other than tensors and
            plain containers, or no state dict inside.
    """
    p = Path(path)
    obj = read_checkpoint(p)  # weights only: pickled code is refused, never run
    return extract_state_dict(obj, str(p))


def extract_state_dict(obj: Any, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the tensor state dict in a loaded checkpoint (see :data:`STATE_DICT_KEYS`)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict, found {type(obj).__name__}")
    extra: dict[str, Any] = {}
    state: Any = obj
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            extra = {k: v for k, v in obj.items() if k != key}
            break
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or bad:
        what = f"non-tensor entries {bad[:5]}" if bad else "no entries"
        raise CheckpointError(
            f"{where}: not a state dict ({what}); expected one of the keys {list(STATE_DICT_KEYS)} or a dict of tensors"
        )
    return {str(k): v for k, v in state.items()}, extra


def _strip(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...], where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        short = key
        while any(short.startswith(p) for p in prefixes):
            short = next(short[len(p) :] for p in prefixes if short.startswith(p))
        if short in out:
            raise CheckpointError(f"{where}: keys collide after removing wrapper prefixes: {short!r}")
        out[short] = value
    return out


# --------------------------------------------------------------------------- key rules

Rule = tuple[re.Pattern[str], Callable[..., str]]


def _fpn_rules() -> list[Rule]:
    """Paper ``ModifiedUnet3D`` key -> enface ``FeatureProjectionNetwork`` key."""

    def body(j: str, t: str) -> int:  # enface residual bodies are conv, BN, ReLU, conv, BN, ...
        return 3 * int(j) + int(t)

    def projection(level: str, part: str, j: str, t: str, rest: str) -> str:
        lv = int(level) - 1
        strided = lv < 4  # zdimRed5 has no strided depth convs: its only part is the projection
        if strided and part == "0":
            return f"projections.{lv}.downsample.body.{body(j, t)}.{rest}"
        if (part == "1" if strided else part == "0") and j == "0":
            return f"projections.{lv}.project.{t}.{rest}"
        return ""

    return [
        (
            re.compile(r"conv([1-5])\.([01])\.convBlock\.(\d+)\.([01])\.(.+)"),
            lambda lv, u, j, t, rest: f"encoder.{int(lv) - 1}.unit{int(u) + 1}.body.{body(j, t)}.{rest}",
        ),
        (
            re.compile(r"conv([1-5])\.0\.downsample\.([01])\.(.+)"),
            lambda lv, t, rest: f"encoder.{int(lv) - 1}.unit1.shortcut.{t}.{rest}",
        ),
        (re.compile(r"zdimRed([1-5])\.([01])\.convBlock\.(\d+)\.([01])\.(.+)"), projection),
        (
            re.compile(r"zdimRed([1-4])\.0\.downsample\.([01])\.(.+)"),
            lambda lv, t, rest: f"projections.{int(lv) - 1}.downsample.shortcut.{t}.{rest}",
        ),
        (
            re.compile(r"up_concat([1-4])\.conv\.convBlock\.([01])\.([01])\.(.+)"),
            lambda k, j, t, rest: f"decoder.{4 - int(k)}.body.{body(j, t)}.{rest}",
        ),
        (
            re.compile(r"up_concat([1-4])\.conv\.downsample\.([01])\.(.+)"),
            lambda k, t, rest: f"decoder.{4 - int(k)}.shortcut.{t}.{rest}",
        ),
        (re.compile(r"final1\.0\.(weight|bias)"), lambda p: f"head.{p}"),
    ]


def _lachinov_rules(levels: int) -> list[Rule]:
    """Paper ``CustomNet`` key -> enface ``LachinovNet`` key (``levels`` = depth of the net)."""

    def part(name: str) -> int:
        return _BOTTLENECK_PARTS[name]

    def decoder_block(i: str, b: str, name: str, p: str) -> str:
        return UNUSED if int(i) == levels - 1 else f"decoder.{i}.body.{2 + int(b)}.body.{part(name)}.{p}"

    def decoder_conv(i: str, j: str, p: str) -> str:
        return UNUSED if int(i) == levels - 1 else f"decoder.{i}.body.{j}.{p}"

    return [
        (re.compile(r"conv_first\.([01])\.(weight|bias)"), lambda j, p: f"stem.{j}.{p}"),
        (
            re.compile(rf"conv_first\.(\d+)\.({_PARTS})\.(weight|bias)"),
            lambda b, name, p: f"stem.{b}.body.{part(name)}.{p}" if int(b) >= 2 else "",
        ),
        (re.compile(r"encoder_convs\.(\d+)\.0\.downsample\.0\.weight"), lambda i: f"encoder.{i}.0.weight"),
        (
            re.compile(rf"encoder_convs\.(\d+)\.(\d+)\.({_PARTS})\.(weight|bias)"),
            lambda i, b, name, p: f"encoder.{i}.{int(b) + 1}.body.{part(name)}.{p}",
        ),
        (re.compile(r"upsampling\.(\d+)\.1\.weight"), lambda i: f"upsample.{i}.conv.weight"),
        (re.compile(r"decoder_convs\.(\d+)\.([01])\.(weight|bias)"), decoder_conv),
        (re.compile(rf"decoder_convs\.(\d+)\.2\.(\d+)\.({_PARTS})\.(weight|bias)"), decoder_block),
        (re.compile(r"conv_output\.(weight|bias)"), lambda p: f"head.{p}"),
    ]


def _translate(key: str, rules: list[Rule]) -> str:
    """The enface key of a source key, :data:`UNUSED`, or ``""`` when no rule applies."""
    for pattern, target in rules:
        m = pattern.fullmatch(key)
        if m:
            return target(*m.groups())
    return ""


def _convert(tensor: torch.Tensor, model: str, target_shape: torch.Size) -> torch.Tensor:
    """Source tensor -> enface layout: Lachinov's kernels (H, D, W) -> (H, W, D); 3D -> 2D convs."""
    t = tensor
    if model == "lachinov" and t.dim() == 5:
        t = t.permute(0, 1, 2, 4, 3)
    if t.dim() == 5 and len(target_shape) == 4 and t.shape[-1] == 1:
        t = t[..., 0]
    return t.contiguous()


# --------------------------------------------------------------------------- mapping


def _shape(state: Mapping[str, torch.Tensor], key: str, model: str, where: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(
            f"{where}: no {key!r} in the state dict; is it a {PAPER_MODELS[model]} "
            f"checkpoint of the paper code? (first keys: {sorted(state)[:3]})"
        )
    return tuple(state[key].shape)


def infer_spec(state: Mapping[str, torch.Tensor], model: str, where: str = "state dict") -> dict[str, Any]:
    """The enface model spec that the (prefix-stripped) paper state dict describes."""
    family = "lachinov" if model == "lachinov" else "fpn"
    first = _shape(state, _FIRST_CONV[family], model, where)
    head = _shape(state, _HEAD[family], model, where)
    kwargs: dict[str, Any] = {}
    kernel = _shape(state, _PROJECTION, model, where)[-1] if family == "fpn" else None
    if kernel is not None and kernel != _PROJECTION_KERNEL[model]:
        other = "resensnet" if model == "fpn" else "fpn"
        raise CheckpointError(
            f"{where}: projection kernel {kernel} along depth ({_PROJECTION!r}), but the paper code's "
            f"{PAPER_MODELS[model]} has {_PROJECTION_KERNEL[model]}; is it a {PAPER_MODELS[other]} "
            f"checkpoint (kernel {_PROJECTION_KERNEL[other]})? try --model {other}"
        )
    if model == "resensnet":
        kwargs["depth"] = 16 * _PROJECTION_KERNEL[model]  # the depth its projection spans exactly
    return {
        "name": model,
        "in_channels": int(first[1]),
        "out_channels": int(head[0]),
        "width": first[0] / _BASE_CHANNELS[model],
        "kwargs": kwargs,
    }


def map_paper_state_dict(
    state: Mapping[str, torch.Tensor], model: str, where: str = "state dict"
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Translate a state dict of the paper code into the state dict of an enface model.

    Args:
        state: the paper model's state dict (any wrapper prefixes).
        model: ``"fpn"``, ``"resensnet"`` or ``"lachinov"``.
        where: name of the source, for messages.

    Returns:
        ``(enface_state, report)``: the tensors keep the source's dtype; the model built from
        ``report.spec`` loads ``enface_state`` with ``strict=True``.

    Raises:
        CheckpointError: a source key no rule maps, an enface key nothing maps to, two keys
            mapped to one, or a shape mismatch; the message names the keys.
    """
    if model not in PAPER_MODELS:
        raise ValueError(f"model must be one of {tuple(PAPER_MODELS)}, got {model!r}")
    source = _strip(state, SOURCE_PREFIXES[model], where)
    spec = infer_spec(source, model, where)
    try:
        target = create_model(
            spec["name"], spec["in_channels"], spec["out_channels"], spec["width"], **spec["kwargs"]
        ).state_dict()
    except ValueError as e:
        raise CheckpointError(f"{where}: cannot build {model} for these tensors ({e})") from None
    levels = len({k.split(".")[1] for k in source if k.startswith("encoder_convs.")}) + 1
    rules = _lachinov_rules(levels) if model == "lachinov" else _fpn_rules()
    report = ImportReport(model=model, spec=spec, source=where)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in source.items():
        dest = _translate(key, rules)
        if dest == UNUSED:
            report.unused.append(key)
        elif dest not in target:
            unknown.append(key if not dest else f"{key} (-> {dest}, not in enface's {model})")
        elif dest in out:
            raise CheckpointError(f"{where}: {key!r} and {report.mapped[dest]!r} both map to {dest!r}")
        else:
            out[dest] = _convert(tensor, model, target[dest].shape)
            report.mapped[dest] = key
            if out[dest].shape != target[dest].shape:
                raise CheckpointError(
                    f"{where}: {key!r} has shape {tuple(tensor.shape)}, enface's {dest!r} needs "
                    f"{tuple(target[dest].shape)}"
                )
    missing = [k for k in target if k not in out]
    if unknown or missing:
        raise CheckpointError(
            f"{where}: does not match the paper code's {PAPER_MODELS[model]}: "
            f"{len(unknown)} source keys not mapped {unknown[:8]}; "
            f"{len(missing)} enface keys without a source {missing[:8]}"
        )
    report.mapped = {k: report.mapped[k] for k in target}
    return {k: out[k] for k in target}, report


# --------------------------------------------------------------------------- writing


def _check_task(task: str, target: str | None) -> None:
    from enface.engine.module import TASK_METRIC

    if task not in TASK_METRIC:
        raise ValueError(f"task must be one of {tuple(TASK_METRIC)}, got {task!r}")
    if target is not None:
        Target(task, target)  # raises naming a target that does not fit the task


def paper_checkpoint(
    state: Mapping[str, torch.Tensor],
    report: ImportReport,
    task: str = "segment",
    target: str | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """An enface checkpoint dict (plain Python values and tensors only) for imported weights.

    Floating-point tensors are stored as float32, the dtype of enface's models.

    Args:
        state: the enface model's state dict (from :func:`map_paper_state_dict`).
        report: its report (model spec and source).
        task: ``"segment"`` or ``"reconstruct"`` (a reconstruction checkpoint can serve
            ``enface train --init``).
        target: mask task (segment) or reconstructed modality (reconstruct), if known.
        epoch: the source checkpoint's epoch, if known.
    """
    _check_task(task, target)
    spec = report.spec
    config = {
        "stage": "pretrain" if task == "reconstruct" else "train",
        "target": target,
        "model": spec["name"],
        "width": float(spec["width"]),
        "model_kwargs": dict(spec["kwargs"]),
        "channels": ["oct"] if spec["in_channels"] == 1 else None,
    }
    return {
        "state_dict": {
            f"model.{k}": v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).clone()
            for k, v in state.items()
        },
        "enface": {
            "model": {**spec, "kwargs": dict(spec["kwargs"])},
            "task": task,
            "config": config,
            "metric": None,
            "epoch": epoch,
            "format_version": FORMAT_VERSION,
            "imported_from": {
                "source": report.source,
                "code": "j-morano/multimodal-ssl-fpn",
                "class": PAPER_MODELS[report.model],
                "unused_keys": list(report.unused),
            },
        },
    }


def import_paper_weights(
    source: str | os.PathLike, out: str | os.PathLike, model: str, task: str = "segment", target: str | None = None
) -> ImportReport:
    """Convert a checkpoint of the paper code into an enface checkpoint (written atomically).

    Args:
        source: checkpoint (Lightning's or a bare state dict) saved by the paper code.
        out: enface checkpoint to write; :func:`enface.engine.checkpoint.load_model` rebuilds it.
        model: ``"fpn"``, ``"resensnet"`` or ``"lachinov"``.
        task: ``"segment"`` or ``"reconstruct"``.
        target: mask task or reconstructed modality, if known.

    Returns:
        The :class:`ImportReport`.

    Raises:
        CheckpointError: unreadable source or keys/shapes that do not match (see
            :func:`map_paper_state_dict`).
        ValueError: bad ``model``, ``task`` or ``target``.
    """
    _check_task(task, target)
    if model not in PAPER_MODELS:
        raise ValueError(f"model must be one of {tuple(PAPER_MODELS)}, got {model!r}")
    state, extra = read_paper_state_dict(source)
    mapped, report = map_paper_state_dict(state, model, where=str(source))
    epoch = extra.get("epoch") if isinstance(extra.get("epoch"), int) else None
    ckpt = paper_checkpoint(mapped, report, task=task, target=target, epoch=epoch)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write(out, lambda f: f.write(buf.getbuffer()))
    report.out = str(out)
    log.debug("imported %s", report.summary())
    return report
