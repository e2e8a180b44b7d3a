"""Fit one run: pre-training (reconstruction) or segmentation training, resumable.

``fit(config)`` resolves the run (:func:`resolve_run`: the dataset, the cases, the init
checkpoint read once, the run folder and the run's identity) before it touches the disk,
then, holding the run folder's lock, starts, resumes or skips the run, trains and writes
``done.json``.

Run folder contents::

    config.yaml            the resolved config (dataset path absolute)
    identity.json          what the run is (config + fingerprints of its cases and init weights)
    transfer.json          which weights were (not) loaded from the init checkpoint
    checkpoints/           top-k ``epoch=<e>-val_<metric>=<v>.ckpt`` and ``last.ckpt``
    logs/metrics.csv       one row per epoch: losses, validation metric, seconds; a resumed
                           run appends, so the history survives any number of interruptions
    done.json              summary written when training finished: epochs run, how the run
                           stopped (``plateau`` or ``max_epochs``), layout, precision, threads,
                           wall and CPU seconds

The same call on a finished run with the same identity returns it (``"skipped"``); with a
different identity it is refused, naming the fields that differ. A killed run continues
with ``resume=True`` from ``last.ckpt`` (or, when that file is unreadable, from the newest
readable checkpoint), losing at most the epoch that was running.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, RandomSampler

from enface.config import RunConfig
from enface.data.augment import AugmentConfig
from enface.data.dataset import EnfaceDataset
from enface.data.folder import is_dataset, load_case, read_dataset_info
from enface.data.splits import select_cases
from enface.engine.checkpoint import checkpoint_info, read_checkpoint, resumable_checkpoint
from enface.engine.fastpath import FastPath
from enface.engine.history import EpochLines, MetricsHistory
from enface.engine.launch import run_folder_lock
from enface.engine.module import TASK_METRIC, EnfaceModule
from enface.engine.prior import foreground_share, set_head_prior
from enface.engine.runs import RunSpec, dataset_fingerprint, file_sha256, identity_diff, run_identity
from enface.engine.stopping import MAX_EPOCHS, check_finished_run, how_stopped, plateau_stop
from enface.engine.transfer import TransferReport, transfer_weights
from enface.errors import CheckpointError, ConfigError, DatasetError, RunFolderError
from enface.fileio import atomic_write, atomic_write_json, atomic_write_text, writable_folder
from enface.models import create_model, list_models
from enface.progress import on_terminal

__all__ = [
    "AtomicCheckpointIO",
    "FitResult",
    "ResolvedRun",
    "fit",
    "resolve_run",
    "resolved_precision",
    "resumable_checkpoint",
    "run_device",
    "select_run_cases",
]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        run_dir: the run folder.
        status: ``"finished"``, ``"skipped"`` (already finished) or ``"interrupted"``.
        best: ``[(checkpoint path, metric value)]`` best first.
        metric: name of the ranking metric.
        epochs: epochs completed.
        stopped: how training ended: ``"plateau"`` (see :mod:`enface.engine.stopping`),
            ``"max_epochs"``, or ``""`` (interrupted).
    """

    run_dir: Path
    status: str
    best: list[tuple[str, float]]
    metric: str
    epochs: int
    stopped: str = ""


@dataclass
class ResolvedRun:
    """A run with everything it needs from the disk read once, before anything is written.

    Attributes:
        config: the config with the dataset path made absolute and the input channels filled in.
        spec: the run's name (:class:`~enface.engine.runs.RunSpec`).
        folder: the run folder.
        train_ids, val_ids: the cases it trains and validates on.
        identity: what the run is (see :func:`~enface.engine.runs.run_identity`).
        init_weights: the network's initial weights transferred from the init checkpoint
            (None from scratch), checked against the architecture before anything is written.
        transfer: what that transfer loaded and skipped.
    """

    config: RunConfig
    spec: RunSpec
    folder: Path
    train_ids: list[str]
    val_ids: list[str]
    identity: dict[str, Any]
    init_weights: dict[str, Any] | None = None
    transfer: TransferReport | None = None


def select_run_cases(config: RunConfig) -> tuple[list[str], list[str]]:
    """Training and validation case ids of a run.

    Pre-training uses the cases of the training (and, for validation, validation) patients
    that have the target modality, labeled or not; test patients are never seen.
    Segmentation uses the labeled cases, training patients restricted to the label fraction
    (or to the patients the config names).
    """
    target = config.target_spec
    if target.kind == "reconstruct":
        train = select_cases(config.dataset, "train", requires=target.requires)
    elif config.patients is not None:
        train = _patients_cases(config)
    else:
        fraction = None if config.fraction >= 1.0 else config.fraction  # 100 %: every labeled training case
        train = select_cases(config.dataset, "train", requires=target.requires, fraction=fraction, task=target.name)
    val = select_cases(config.dataset, "val", requires=target.requires)
    if not train:
        raise DatasetError(f"{config.dataset}: no training cases for {config.stage} target {config.target!r}")
    if not val:
        raise DatasetError(f"{config.dataset}: no validation cases for {config.stage} target {config.target!r}")
    return train, val


def _patients_cases(config: RunConfig) -> list[str]:
    """The labeled training cases of the patients a config names.

    Raises:
        DatasetError: a named patient is not a training patient with a mask of the task.
    """

    target = config.target_spec
    ids = select_cases(config.dataset, "train", requires=target.requires)
    by_patient: dict[str, list[str]] = {}
    for cid in ids:
        by_patient.setdefault(load_case(Path(config.dataset) / "cases" / cid).patient_id, []).append(cid)
    unknown = sorted(set(config.patients or ()) - set(by_patient))
    if unknown:
        raise DatasetError(
            f"{config.dataset}: config field 'patients' names {unknown}, which are not training patients "
            f"with a {target.filename}"
        )
    return sorted(cid for p in set(config.patients or ()) for cid in by_patient[p])


def resolve_run(config: RunConfig) -> ResolvedRun:
    """Check a config against the disk and read what the run needs; writes nothing.

    Raises:
        ConfigError: the dataset folder, the model or the init checkpoint does not exist.
        DatasetError: the dataset is unreadable, its name is unsafe, or it has no cases for the run.
        CheckpointError: the init checkpoint is unreadable or not an enface checkpoint.
    """
    config.validate()
    if config.model not in list_models():
        raise ConfigError(f"config field 'model': unknown model {config.model!r}; known: {', '.join(list_models())}")
    root = Path(config.dataset).expanduser()
    if not is_dataset(root):
        raise ConfigError(f"config field 'dataset': {config.dataset} is not a dataset folder (no dataset.json)")
    info = read_dataset_info(root)
    name = str(info["name"])
    channels = tuple(config.channels or info.get("channels") or ("oct",))
    config = dataclasses.replace(config, dataset=str(root.resolve()), channels=channels)
    init_ckpt, init_sha = None, None
    if config.init:
        init_path = Path(config.init).expanduser()
        if not init_path.is_file():
            raise ConfigError(f"config field 'init': checkpoint {config.init} not found")
        init_ckpt = read_checkpoint(init_path)
        init_sha = file_sha256(init_path)
        config = dataclasses.replace(config, init=str(init_path.resolve()))
    info_init = (
        checkpoint_info(init_ckpt, str(config.init)) if init_ckpt is not None and "enface" in init_ckpt else None
    )
    spec = RunSpec.from_config(config, name, RunSpec.init_label(info_init, config.init))
    folder = spec.folder(config.runs_dir)
    if RunSpec.parse(folder)[1] != spec:  # the folder must name the run unambiguously
        raise ConfigError(
            f"{folder}: this run's name does not read back as the same run ({spec}); use a width with fewer digits"
        )
    train_ids, val_ids = select_run_cases(config)
    fingerprint = dataset_fingerprint(root, [*train_ids, *val_ids])
    identity = run_identity(config.to_dict(), fingerprint, init_sha)
    run = ResolvedRun(config, spec, folder, train_ids, val_ids, identity)
    if init_ckpt is not None:
        run.init_weights, run.transfer = _transferred_weights(config, init_ckpt)
    return run


def _transferred_weights(config: RunConfig, ckpt: dict[str, Any]) -> tuple[dict[str, Any], TransferReport]:
    """The run's network with the init checkpoint's weights transferred (refused: CheckpointError)."""
    net = create_model(config.model, len(config.channels or ("oct",)), 1, config.width, **config.model_kwargs)
    report = transfer_weights(net, ckpt, where=str(config.init))
    return net.state_dict(), report


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes (temporary file + rename), safe reads (weights only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write(Path(path), lambda f: f.write(buf.getbuffer()))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)


def _existing_state(run: ResolvedRun, resume: bool) -> tuple[str, Path | None]:
    """``("new" | "finished" | "resume", checkpoint)`` of the run folder, checked against the run.

    Raises:
        RunFolderError: the folder holds another run (differing fields named), or holds
            checkpoints and ``resume`` is False, or nothing readable to resume from.
    """
    folder = run.folder
    ident_path = folder / "identity.json"
    ckpts = list((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    done = (folder / "done.json").is_file()
    if not (done or ckpts):
        return "new", None  # nothing learned yet: (re)start
    stored = json.loads(ident_path.read_text(encoding="utf-8")) if ident_path.is_file() else None
    if stored is None:
        raise RunFolderError(
            f"{folder}: run folder without identity.json (written by an older enface?); "
            "use another --runs-dir, or remove the folder to start over"
        )
    diff = identity_diff(stored, run.identity)
    if diff:
        raise RunFolderError(
            f"{folder}: this run folder holds a different run ({'; '.join(diff)}); "
            "use another --runs-dir for the new run, or remove the folder to start over"
        )
    if done:
        return "finished", None
    if not resume:
        raise RunFolderError(f"{folder}: run folder already holds checkpoints; pass --resume to continue it")
    return "resume", resumable_checkpoint(folder)


def _start_folder(run: ResolvedRun, module: EnfaceModule) -> None:
    """Start a new run's network from the init weights (from scratch, a segmentation head at the
    masks' foreground share: :mod:`enface.engine.prior`), then write its config and identity.

    Raises:
        CheckpointError: the init weights do not load as :func:`resolve_run` checked they
            would (nothing is written).
    """
    if run.init_weights is not None and run.transfer is not None:
        loaded = {k: run.init_weights[k] for k in run.transfer.loaded}  # skipped keys keep the seeded init
        missing, unexpected = module.network.load_state_dict(loaded, strict=False)
        if sorted(missing) != sorted(run.transfer.skipped) or unexpected:
            raise CheckpointError(
                f"{run.config.init}: the init weights do not load as checked (not loaded: {sorted(missing)}, "
                f"expected {sorted(run.transfer.skipped)}; unexpected: {sorted(unexpected)})"
            )
    if run.init_weights is None and run.config.task == "segment":
        set_head_prior(module.network, foreground_share(run.config.dataset, run.train_ids, run.config.target))
    atomic_write_text(run.folder / "config.yaml", yaml.safe_dump(run.config.to_dict(), sort_keys=False))
    atomic_write_json(run.folder / "identity.json", run.identity)
    if run.transfer is not None:
        atomic_write_json(
            run.folder / "transfer.json",
            {"source": run.config.init, "loaded": len(run.transfer.loaded), "not_loaded": run.transfer.not_loaded},
        )


def _loaders(
    config: RunConfig, fastpath: FastPath, train_ids: Sequence[str], val_ids: Sequence[str]
) -> tuple[DataLoader, DataLoader]:

    aug = AugmentConfig(crop=(config.crop[0], config.crop[1]))
    if not config.augment:  # random crops only
        aug = dataclasses.replace(
            aug, rotate180=False, flip=False, noise_std=0.0, contrast=(1.0, 1.0), shift=(0.0, 0.0)
        )
    target, channels = config.target_spec, tuple(config.channels or ("oct",))
    train_ds = EnfaceDataset(config.dataset, train_ids, target, augment=aug, seed=config.seed, channels=channels)
    val_ds = EnfaceDataset(config.dataset, val_ids, target, augment=None, seed=config.seed, channels=channels)
    sampler = (
        RandomSampler(train_ds, replacement=True, num_samples=config.samples_per_epoch)
        if config.samples_per_epoch
        else None
    )
    common: dict[str, Any] = dict(
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=fastpath.pin_memory(_on_gpu(config)),
    )
    train_dl = DataLoader(
        train_ds, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False, **common
    )
    val_dl = DataLoader(val_ds, batch_size=1, shuffle=False, **common)
    return train_dl, val_dl


def run_device(config: RunConfig) -> str:
    """The torch device a run trains on, for inference after it: ``"cuda"`` or ``"cpu"``."""
    return "cuda" if _on_gpu(config) else "cpu"


def _on_gpu(config: RunConfig) -> bool:
    """Whether the run trains on CUDA GPUs (``accelerator`` gpu/cuda, or auto with one present)."""
    name = str(config.accelerator).lower()
    return name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())


def resolved_precision(config: RunConfig) -> str:
    """Lightning precision of a run: ``precision`` as given, or for ``"auto"`` the fast path's
    choice (:meth:`~enface.engine.fastpath.FastPath.precision`), ``"32-true"`` on the plain path."""
    return FastPath(config.fast).precision(config.precision, config.accelerator, config.crop[0])


def _build_module(config: RunConfig) -> EnfaceModule:
    return EnfaceModule(
        model_name=config.model,
        task=config.task,
        in_channels=len(config.channels or ("oct",)),
        width=config.width,
        model_kwargs=config.model_kwargs,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        config=config.to_dict(),
        compile=config.compile,
        fast=config.fast,
    )


def _checkpoint_callbacks(ckdir: Path, metric: str, top_k: int) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    best = ModelCheckpoint(
        dirpath=str(ckdir),
        filename="epoch={epoch:04d}-" + metric + "={" + metric + ":.4f}",
        auto_insert_metric_name=False,
        monitor=metric,
        mode="max",
        save_top_k=top_k,
        save_last=False,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=str(ckdir),
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return best, last


def crop_bscans(config: RunConfig, case_ids: Sequence[str]) -> int:
    """B-scans of the run's training crops: ``crop[0]``, clipped to the thinnest volume."""
    heights = [load_case(Path(config.dataset) / "cases" / c).oct_shape()[0] for c in case_ids]
    return min([int(config.crop[0]), *heights])


def _trainer(
    config: RunConfig,
    fastpath: FastPath,
    folder: Path,
    callbacks: Sequence[Callback],
    progress: bool,
    bscans: int | None = None,
) -> L.Trainer:
    loggers: list[Any] = []
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(folder), name="tb", version="", default_hp_metric=False))
    return L.Trainer(
        default_root_dir=str(folder),
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=cast(Any, fastpath.precision(config.precision, config.accelerator, bscans or config.crop[0])),
        accumulate_grad_batches=config.accumulate,
        check_val_every_n_epoch=config.val_every,
        deterministic=config.deterministic,
        callbacks=list(callbacks),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=progress,
        enable_model_summary=False,
        benchmark=fastpath.cudnn_benchmark(_on_gpu(config), config.deterministic),
    )


def _finished(run: ResolvedRun, trainer: L.Trainer, module: EnfaceModule, best: list, clock: tuple) -> str:
    """Write ``done.json``; return how training ended (``plateau`` or ``max_epochs``)."""
    stopped = how_stopped(trainer.callbacks)  # type: ignore[attr-defined]
    if not trainer.is_global_zero:
        return stopped
    wall, cpu = time.time() - clock[0], time.process_time() - clock[1]
    atomic_write_json(
        run.folder / "done.json",
        {
            "run": str(run.folder),
            "spec": run.spec.label,
            "metric": TASK_METRIC[run.config.task],
            "best": best,
            "epochs": int(trainer.current_epoch),
            "epochs_run": int(trainer.current_epoch),
            "stopped": stopped,
            "world_size": int(trainer.world_size),
            "train_cases": list(run.train_ids),
            "val_cases": list(run.val_ids),
            "precision": str(trainer.precision),
            "layout": module.fastpath.layout,
            "threads": torch.get_num_threads(),
            "seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
        },
    )
    return stopped


def fit(
    config: RunConfig, resume: bool = False, callbacks: Sequence[Callback] = (), progress: bool = True
) -> FitResult:
    """Train one run described by ``config``.

    Args:
        config: a :class:`RunConfig`.
        resume: continue a killed run from its checkpoints. Without it, a run folder that
            already holds checkpoints is an error (nothing is overwritten).
        callbacks: extra Lightning callbacks (e.g. for tests).
        progress: show Lightning's progress bar.

    Raises:
        ConfigError, DatasetError, CheckpointError: the run cannot start (nothing written).
        RunFolderError: the folder holds another run, is locked by another process, or
            holds checkpoints and ``resume`` is False.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint remains).
        KeyboardInterrupt: training was interrupted (Ctrl+C); ``last.ckpt`` remains.
    """
    run = resolve_run(config)
    metric = TASK_METRIC[run.config.task]
    with run_folder_lock(writable_folder(run.folder, "run folder (--runs-dir)"), run.config):
        state, resume_from = _existing_state(run, resume)
        if state == "finished":
            summary = json.loads((run.folder / "done.json").read_text(encoding="utf-8"))
            check_finished_run(run.config, TASK_METRIC[run.config.task], run.folder, summary)
            log.info("run already finished: %s", run.folder)
            best = [tuple(b) for b in summary.get("best", [])]
            epochs, stopped = summary.get("epochs", 0), summary.get("stopped", MAX_EPOCHS)
            return FitResult(run.folder, "skipped", best, metric, epochs, stopped)
        return _train(run, resume_from, callbacks, progress)


def _train(run: ResolvedRun, resume_from: Path | None, callbacks: Sequence[Callback], progress: bool) -> FitResult:
    config, folder = run.config, run.folder
    metric = TASK_METRIC[config.task]
    log.info(
        "%s: %d training / %d validation cases -> %s%s",
        run.spec.label,
        len(run.train_ids),
        len(run.val_ids),
        folder,
        f" (resuming from {resume_from.name})" if resume_from else "",
    )
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = _build_module(config)
    module.fastpath.tune_process("training", run_device(config))
    if resume_from is None:
        _start_folder(run, module)
    else:  # the numbers of a resumed run are computed as before it was killed
        module.fastpath.keep_layout(checkpoint_info(read_checkpoint(resume_from), str(resume_from)).get("layout"))
    best_cb, last_cb = _checkpoint_callbacks(folder / "checkpoints", metric, config.top_k)
    history = MetricsHistory(folder / "logs" / "metrics.csv", metric)
    lines = [EpochLines(run.spec.label, config.epochs)] if progress and not on_terminal(sys.stdout) else []
    everything = [history, *plateau_stop(config, metric), best_cb, last_cb, *callbacks, *lines]
    trainer = _trainer(config, module.fastpath, folder, everything, progress, crop_bscans(config, run.train_ids))
    train_dl, val_dl = _loaders(config, module.fastpath, run.train_ids, run.val_ids)
    clock = (time.time(), time.process_time())
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    except SystemExit:  # Lightning exits after a graceful shutdown on Ctrl+C
        if trainer.interrupted:
            log.warning(
                "interrupted: %s keeps its last checkpoint; continue with --resume (or re-run the study)", folder
            )
            raise KeyboardInterrupt from None
        raise
    best = sorted(((str(p), float(v)) for p, v in best_cb.best_k_models.items()), key=lambda t: -t[1])
    if trainer.interrupted:
        return FitResult(folder, "interrupted", best, metric, int(trainer.current_epoch))
    stopped = _finished(run, trainer, module, best, clock)
    log.info(
        "finished %s after %d epochs (%s): best %s %s; checkpoints in %s",
        folder,
        trainer.current_epoch,
        stopped,
        metric,
        f"{best[0][1]:.4f}" if best else "n/a",
        folder / "checkpoints",
    )
    return FitResult(folder, "finished", best, metric, int(trainer.current_epoch), stopped)
