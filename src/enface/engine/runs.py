"""The identity of a run: one value object, its folder, and the record that guards it.

A run folder is ``<runs>/<dataset>/<task>/<model>[-w<width>]/<init>/frac-<f>/seed-<s>/``:

* ``task`` is :attr:`enface.targets.Target.folder_name` (``ga``, ``recon-faf_inv``);
* ``init`` is ``scratch``, ``ssl-<target>`` (initialised from a reconstruction run), or
  ``init-<checkpoint stem>`` (any other checkpoint);
* ``f`` is the label fraction in percent (:func:`enface.data.splits.fraction_key`).

:class:`RunSpec` builds that path and parses it back. The path names the run; what the
run *is* is its whole config, the content of the cases it trains on and the init weights:
:func:`run_identity` records them in ``identity.json`` when the run starts, and a later
call with a different identity is refused with the differing fields (:func:`identity_diff`)
instead of silently reusing the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enface.data.splits import fraction_key
from enface.errors import RunFolderError
from enface.targets import SCRATCH, Target, check_name

__all__ = ["OPERATIONAL_FIELDS", "RunSpec", "dataset_fingerprint", "file_sha256", "identity_diff", "run_identity"]

OPERATIONAL_FIELDS: frozenset[str] = frozenset(
    {
        "runs_dir",
        "num_workers",
        "accelerator",
        "devices",
        "strategy",
        "num_nodes",
        "compile",
        "dataset",
        "init",
        "precision",
        "fast",
    }
)
"""Config fields that do not change what a run learns (where and how fast it runs: the
hardware, and whether it computes in bf16 or float32 rounding), plus the dataset and init
*paths*, which are replaced in the identity by fingerprints of their content."""

_MODEL_DIR_RE = re.compile(r"(?P<model>.+)-w(?P<width>[0-9.]+)")
_INIT_RE = re.compile(r"^(scratch|ssl-[A-Za-z0-9_]+|init-[A-Za-z0-9_.-]+)$")


@dataclass(frozen=True)
class RunSpec:
    """What names a run: dataset, target, model, width, initialisation, label fraction, seed.

    Attributes:
        dataset: the dataset's name (``dataset.json`` ``name``).
        target: what the run learns.
        model: registered model name.
        width: channel multiplier.
        init: ``scratch``, ``ssl-<target>`` or ``init-<checkpoint stem>``.
        fraction: label fraction in (0, 1].
        seed: random seed.
    """

    dataset: str
    target: Target
    model: str
    width: float = 1.0
    init: str = SCRATCH
    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_name(self.dataset, "dataset name")
        check_name(self.model, "model name")
        if not _INIT_RE.match(self.init):
            raise RunFolderError(f"init label {self.init!r} cannot name a run folder")

    @classmethod
    def from_config(cls, config: Any, dataset_name: str, init: str = SCRATCH) -> RunSpec:
        """The spec of a :class:`~enface.config.RunConfig` (``init`` from :func:`init_label`)."""
        return cls(
            dataset_name,
            config.target_spec,
            config.model,
            float(config.width),
            init,
            float(config.fraction),
            int(config.seed),
        )

    @staticmethod
    def init_label(info: Mapping[str, Any] | None, path: str | os.PathLike | None) -> str:
        """The init label of a run started from a checkpoint with ``"enface"`` entry ``info``.

        ``scratch`` without a checkpoint; ``ssl-<target>`` for a reconstruction checkpoint;
        else ``init-<stem of the file>``.
        """
        if path is None:
            return SCRATCH
        cfg = (info or {}).get("config") or {}
        if (info or {}).get("task") == "reconstruct" and cfg.get("target"):
            return Target.reconstruct(str(cfg["target"])).init_label
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem.replace("=", ""))
        return f"init-{stem.replace('.', '_')}"

    @property
    def model_dir(self) -> str:
        return self.model if self.width == 1.0 else f"{self.model}-w{self.width:g}"

    @property
    def label(self) -> str:
        """A short human-readable label: ``train fpn ssl-faf_inv 5% seed 0``."""
        if self.target.kind == "reconstruct":
            return f"pretrain {self.model_dir} -> {self.target.name} (seed {self.seed})"
        return f"train {self.model_dir} {self.init} {fraction_key(self.fraction)}% seed {self.seed}"

    def folder(self, root: str | os.PathLike) -> Path:
        """The run folder under ``root``."""
        parts = (
            self.dataset,
            self.target.folder_name,
            self.model_dir,
            self.init,
            f"frac-{fraction_key(self.fraction)}",
            f"seed-{self.seed}",
        )
        return Path(root, *parts)

    @classmethod
    def parse(cls, path: str | os.PathLike) -> tuple[Path, RunSpec]:
        """Inverse of :meth:`folder`: ``(root, spec)`` from a run folder path.

        Raises:
            RunFolderError: the path does not end in a run folder's six components.
        """
        parts = Path(path).parts
        expected = ".../<dataset>/<task>/<model>/<init>/frac-<f>/seed-<s>"
        if len(parts) < 6:
            raise RunFolderError(f"{path}: not a run folder (expected {expected})")
        dataset, task, model_dir, init, frac, seed = parts[-6:]
        mf = re.fullmatch(r"frac-([0-9.]+)", frac)
        ms = re.fullmatch(r"seed-(-?[0-9]+)", seed)
        if not (mf and ms):
            raise RunFolderError(f"{path}: not a run folder (expected {expected})")
        mw = _MODEL_DIR_RE.fullmatch(model_dir)
        model, width = (mw.group("model"), float(mw.group("width"))) if mw else (model_dir, 1.0)
        try:
            spec = cls(
                dataset, Target.from_folder_name(task), model, width, init, float(mf.group(1)) / 100.0, int(ms.group(1))
            )
        except ValueError as e:
            raise RunFolderError(f"{path}: not a run folder ({e})") from None
        return (Path(*parts[:-6]) if len(parts) > 6 else Path(".")), spec


# --------------------------------------------------------------------------- identity


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(root: str | os.PathLike, case_ids: Iterable[str], sample: int = 1 << 16) -> str:
    """A digest of what a run reads from a dataset: its cases' ids, metadata and voxels.

    Hashes ``dataset.json``'s name, and per case its id, ``meta.json`` and the size plus
    three ``sample``-byte blocks (start, middle, end) of every ``.npy`` volume: cheap on
    large datasets, yet another phantom or another export with the same names differs.
    """
    root = Path(root)
    h = hashlib.sha256()
    for cid in sorted(case_ids):
        folder = root / "cases" / cid
        h.update(cid.encode())
        h.update((folder / "meta.json").read_bytes())
        for npy in sorted(folder.glob("*.npy")):
            size = npy.stat().st_size
            h.update(f"{npy.name}:{size}".encode())
            with open(npy, "rb") as f:
                for offset in (0, max(0, size // 2 - sample // 2), max(0, size - sample)):
                    f.seek(offset)
                    h.update(f.read(sample))
    return h.hexdigest()


def run_identity(config: Mapping[str, Any], dataset: str, init: str | None) -> dict[str, Any]:
    """What a run is: its config without the operational fields, plus content fingerprints.

    Args:
        config: the resolved config as plain values (``RunConfig.to_dict()``).
        dataset: :func:`dataset_fingerprint` of the cases it trains and validates on.
        init: :func:`file_sha256` of the init checkpoint, or None.
    """
    ident = {k: v for k, v in config.items() if k not in OPERATIONAL_FIELDS}
    ident["dataset_fingerprint"] = dataset
    ident["init_sha256"] = init
    return ident


def identity_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["lr: 0.1 -> 0.01", ...]``: the fields in which two identities differ."""
    out = []
    for key in sorted((set(stored) | set(new)) - OPERATIONAL_FIELDS):  # older identities may hold some
        a, b = stored.get(key), new.get(key)
        if a != b:
            if key.endswith(("fingerprint", "sha256")):
                out.append(f"{key}: content differs")
            else:
                out.append(f"{key}: {a!r} -> {b!r}")
    return out
