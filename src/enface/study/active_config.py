"""The ``active:`` block of a study YAML: simulated active learning (see :mod:`enface.study.active`)::

active:
  strategies: [random, uncertainty, diverse]   # random is the reference of the paired tests
  start_patients: 2          # labeled patients of round 0 (drawn per seed, the same for every strategy)
  patients_per_round: 2      # patients each strategy adds per round
  rounds: 4                  # rounds after round 0
  init: ssl-faf_inv          # scratch or ssl-<target>; every round trains from it
  model: fpn                 # one of the study's models (default: the reference model)
  tta: true                  # mirrored views in the ensemble's samples
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enface.errors import ConfigError
from enface.targets import Target

__all__ = ["ACTIVE_KEYS", "ActiveConfig", "parse_active"]

ACTIVE_KEYS: tuple[str, ...] = ("strategies", "start_patients", "patients_per_round", "rounds", "init", "model", "tta")
"""Keys of the ``active:`` block."""

START = "start"
"""The strategy label of round 0, shared by every strategy."""


@dataclass(frozen=True)
class ActiveConfig:
    """Simulated active learning (see the module docstring for the YAML form)."""

    strategies: tuple[str, ...] = ("random", "uncertainty", "diverse")
    start_patients: int = 2
    patients_per_round: int = 2
    rounds: int = 4
    init: str = "ssl-faf_inv"
    model: str = "fpn"
    tta: bool = True

    @property
    def final_patients(self) -> int:
        """Labeled patients after the last round."""
        return self.start_patients + self.rounds * self.patients_per_round

    def patients_at(self, round_index: int) -> int:
        """Labeled patients of round ``round_index``."""
        return self.start_patients + round_index * self.patients_per_round


def parse_active(block: Any, models: tuple[str, ...], reference_model: str) -> ActiveConfig:
    """Check and read a study's ``active:`` block.

    Args:
        block: the block's value (a mapping).
        models: the study's models (the active model must be one of them: it is pre-trained with them).
        reference_model: the default model.

    Raises:
        ConfigError: naming the first bad key or value.
    """
    from enface.select.strategies import STRATEGIES

    if not isinstance(block, Mapping):
        raise ConfigError(f"study: 'active' must be a mapping with keys {list(ACTIVE_KEYS)}")
    extra = set(block) - set(ACTIVE_KEYS)
    if extra:
        raise ConfigError(f"study: unknown keys in 'active': {sorted(extra)}; known: {list(ACTIVE_KEYS)}")
    try:
        cfg = ActiveConfig(
            strategies=tuple(str(s) for s in block.get("strategies", ActiveConfig.strategies)),
            start_patients=int(block.get("start_patients", ActiveConfig.start_patients)),
            patients_per_round=int(block.get("patients_per_round", ActiveConfig.patients_per_round)),
            rounds=int(block.get("rounds", ActiveConfig.rounds)),
            init=str(block.get("init", ActiveConfig.init)),
            model=str(block.get("model", reference_model)),
            tta=bool(block.get("tta", ActiveConfig.tta)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"study: invalid value in 'active' ({e})") from None
    unknown = [s for s in cfg.strategies if s not in STRATEGIES]
    if unknown or len(set(cfg.strategies)) != len(cfg.strategies):
        raise ConfigError(f"study: active strategies {list(cfg.strategies)}: each once, from {list(STRATEGIES)}")
    if "random" not in cfg.strategies:
        raise ConfigError("study: active strategies must include 'random' (the reference of the paired tests)")
    for key in ("start_patients", "patients_per_round", "rounds"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"study: active {key} must be >= 1, got {getattr(cfg, key)}")
    Target.from_init_label(cfg.init)  # raises naming the init
    if cfg.model not in models:
        raise ConfigError(f"study: active model {cfg.model!r} must be one of the study's models {list(models)}")
    return cfg
