"""Model registry: ``register_model`` / ``create_model`` / ``list_models``.

Every registered constructor has the signature
``fn(in_channels: int = 1, out_channels: int = 1, width: float = 1.0, **kwargs) -> nn.Module``
and returns a model mapping ``(N, in_channels, H, W, D)`` to logits ``(N, out_channels, H, W)``
(no sigmoid inside) for any ``H, W >= 1`` (it pads internally and crops its output back).

The model interface, checked by :func:`create_model` for every model it builds:

``head``
    the final layer, an ``nn.Module`` producing the ``out_channels`` logits; weight transfer
    skips exactly this layer when its shape differs (another number of output channels).
``min_depth``
    ``int``: the smallest accepted depth ``D``.
``fixed_depth``
    ``int`` or ``None``: the only accepted depth of a network built for one depth
    (ReSensNet, IPN-V2), else ``None``. Then ``min_depth == fixed_depth``.
``forward_features`` / ``forward_head``
    the network's two halves, as timm models expose them: a (padded) volume -> features,
    features -> (padded) logits; ``forward`` pads, runs both and crops.
``slab_stages``
    ``bool``: whether ``forward(x, run)`` marks the parts of its pass that are local along
    the A-scans as :class:`~enface.models.stages.SlabStage` (then inference may run them
    over slabs of A-scans: :mod:`enface.engine.streaming`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["count_parameters", "create_model", "list_models", "model_spec", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a model constructor under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str, in_channels: int = 1, out_channels: int = 1, width: float = 1.0, **kwargs: Any
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered model name (see :func:`list_models`).
        in_channels: channels of the input volume ``(N, in_channels, H, W, D)``.
        out_channels: channels of the output logits ``(N, out_channels, H, W)``.
        width: multiplier applied to every internal channel count (tests and CPU demos
            use small widths such as 0.25).
        **kwargs: model-specific options.

    Returns:
        The model, with ``model.spec`` set to ``{"name", "in_channels", "out_channels",
        "width", "kwargs"}`` so that it can be rebuilt with :func:`create_model` from a
        checkpoint alone.

    Raises:
        ValueError: unknown name (the message lists the known ones) or invalid arguments.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    model = _REGISTRY[name](in_channels=in_channels, out_channels=out_channels, width=width, **kwargs)
    _check_interface(model, name)
    spec = {
        "name": name,
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "width": float(width),
        "kwargs": dict(kwargs),
    }
    setattr(model, "spec", spec)
    return model


def _check_interface(model: nn.Module, name: str) -> None:
    """Raise TypeError when a registered model does not offer the interface of this module."""
    problems = []
    if not isinstance(getattr(model, "head", None), nn.Module):
        problems.append("no 'head' layer")
    min_depth = getattr(model, "min_depth", None)
    if not isinstance(min_depth, int) or min_depth < 1:
        problems.append(f"'min_depth' is {min_depth!r}, expected an int >= 1")
    if not hasattr(model, "fixed_depth"):
        problems.append("no 'fixed_depth' attribute")
    else:
        fixed = model.fixed_depth
        if fixed is not None and (not isinstance(fixed, int) or fixed != min_depth):
            problems.append(f"'fixed_depth' is {fixed!r}, expected None or an int equal to min_depth")
    for method in ("forward_features", "forward_head"):
        if not callable(getattr(model, method, None)):
            problems.append(f"no '{method}' method")
    slab_stages = getattr(model, "slab_stages", None)
    if not isinstance(slab_stages, bool):
        problems.append(f"'slab_stages' is {slab_stages!r}, expected True or False")
    elif slab_stages and "run" not in inspect.signature(model.forward).parameters:
        problems.append("'slab_stages' is True but forward() takes no 'run' argument")
    if problems:
        raise TypeError(f"model {name!r} does not offer the enface model interface: {'; '.join(problems)}")


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The spec :func:`create_model` attached to ``model`` (unwrapping DDP/compile wrappers)."""
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if m is not None and hasattr(m, "spec"):
            return dict(getattr(m, "spec"))
    raise ValueError("model was not built by enface.models.create_model (no .spec attribute)")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
