"""Fit one run: pre-training (reconstruction) or segmentation training, resumable.

``fit(config)`` resolves the run folder, selects the cases, builds data loaders, the
Lightning module and trainer, optionally transfers weights from ``config.init``, trains,
and writes ``done.json``. A killed run resumes from ``checkpoints/last.ckpt`` (saved every
epoch) with ``resume=True``; a finished run is skipped.

Run folder contents::

    config.yaml            the resolved config
    transfer.json          which weights were (not) loaded from the init checkpoint
    checkpoints/           top-k ``epoch=<e>-val_<metric>=<v>.ckpt`` and ``last.ckpt``
    logs/metrics.csv       per-epoch train/val curves (and tb/ when TensorBoard is installed)
    done.json              summary written when training finished
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, RandomSampler

from enface.config import RunConfig
from enface.errors import ConfigError
from enface.data.folder import read_dataset_info
from enface.errors import DatasetError
from enface.engine.checkpoint import AtomicCheckpointIO, checkpoint_info, read_checkpoint
from enface.engine.module import TASK_METRIC, EnfaceModule
from enface.engine.runs import RunKey, run_dir
from enface.engine.transfer import transfer_weights
from enface.fileio import atomic_write_json, atomic_write_text

__all__ = ["FitResult", "fit", "run_key", "select_run_cases", "init_name"]

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
    """

    run_dir: Path
    status: str
    best: list[tuple[str, float]]
    metric: str
    epochs: int


def init_name(init: str | None) -> str:
    """Run-folder label of an initialisation: ``scratch`` or ``ssl-<target>`` from the checkpoint."""
    if not init:
        return "scratch"
    info = checkpoint_info(read_checkpoint(init), init)
    cfg = info.get("config") or {}
    if info.get("task") == "reconstruct" and cfg.get("target"):
        return f"ssl-{cfg['target']}"
    return f"init-{Path(init).stem.replace('=', '').replace('.', '_')}"


def run_key(config: RunConfig, dataset_name: str | None = None) -> RunKey:
    """The :class:`RunKey` of a config (reads the init checkpoint to name the init)."""
    name = dataset_name or read_dataset_info(config.dataset)["name"]
    task = f"recon-{config.target}" if config.stage == "pretrain" else config.target
    return RunKey(name, task, config.model, init_name(config.init), config.fraction, config.seed, config.width)


def select_run_cases(config: RunConfig) -> tuple[list[str], list[str]]:
    """Training and validation case ids of a run.

    Pre-training uses the cases of the training (and, for validation, validation) patients
    that have the target modality, labeled or not; test patients are never seen.
    Segmentation uses the labeled cases, training patients restricted to the label fraction.
    """
    from enface.data.splits import select_cases

    if config.stage == "pretrain":
        modality = "faf" if config.target == "faf_inv" else config.target
        train = select_cases(config.dataset, "train", requires=(modality,))
        val = select_cases(config.dataset, "val", requires=(modality,))
    else:
        req = (f"mask:{config.target}",)
        fraction = None if config.fraction >= 1.0 else config.fraction  # 100 %: every labeled training case
        train = select_cases(config.dataset, "train", requires=req, fraction=fraction, task=config.target)
        val = select_cases(config.dataset, "val", requires=req)
    if not train:
        raise DatasetError(f"{config.dataset}: no training cases for {config.stage} target {config.target!r}")
    if not val:
        raise DatasetError(f"{config.dataset}: no validation cases for {config.stage} target {config.target!r}")
    return train, val


def _dataset_target(config: RunConfig) -> str:
    return config.target if config.stage == "pretrain" else f"mask:{config.target}"


def _loaders(config: RunConfig, train_ids: Sequence[str], val_ids: Sequence[str]) -> tuple[DataLoader, DataLoader]:
    from enface.data.augment import AugmentConfig
    from enface.data.dataset import EnfaceDataset

    aug = AugmentConfig(crop=tuple(config.crop))
    if not config.augment:  # random crops only
        aug = dataclasses.replace(aug, rotate180=False, flip=False, noise_std=0.0, contrast=(1.0, 1.0), shift=(0.0, 0.0))
    target = _dataset_target(config)
    channels = config.input_channels()
    train_ds = EnfaceDataset(config.dataset, train_ids, target, augment=aug, seed=config.seed, channels=channels)
    val_ds = EnfaceDataset(config.dataset, val_ids, target, augment=None, seed=config.seed, channels=channels)
    sampler = (
        RandomSampler(train_ds, replacement=True, num_samples=config.samples_per_epoch)
        if config.samples_per_epoch
        else None
    )
    common: dict[str, Any] = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0)
    train_dl = DataLoader(train_ds, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False, **common)
    val_dl = DataLoader(val_ds, batch_size=1, shuffle=False, **common)
    return train_dl, val_dl


def _loggers(folder: Path) -> list[Any]:
    loggers: list[Any] = [CSVLogger(save_dir=str(folder), name="logs", version="")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(save_dir=str(folder), name="tb", version="", default_hp_metric=False))
    return loggers


def fit(
    config: RunConfig,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> FitResult:
    """Train one run described by ``config``.

    Args:
        config: a validated :class:`RunConfig`.
        resume: continue from ``checkpoints/last.ckpt`` when it exists. Without it, a run
            folder that already holds checkpoints is an error (nothing is overwritten).
        callbacks: extra Lightning callbacks (e.g. for tests).
        progress: show Lightning's progress bar.

    Returns:
        A :class:`FitResult`.

    Raises:
        ConfigError: the run folder holds another run's checkpoints and ``resume`` is False.
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint remains).
    """
    config.validate()
    key = run_key(config)
    folder = run_dir(config.runs_dir, key)
    metric = TASK_METRIC[config.task]
    done = folder / "done.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        log.info("run already finished: %s", folder)
        return FitResult(folder, "skipped", [tuple(b) for b in summary.get("best", [])], metric, summary.get("epochs", 0))
    ckdir = folder / "checkpoints"
    last = ckdir / "last.ckpt"
    if ckdir.is_dir() and any(ckdir.glob("*.ckpt")) and not resume:
        raise ConfigError(f"{folder}: run folder already holds checkpoints; pass --resume to continue it")
    resume_from = str(last) if resume and last.is_file() else None

    train_ids, val_ids = select_run_cases(config)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    log.info(
        "%s %s: %d training / %d validation cases -> %s%s",
        config.stage, key.task, len(train_ids), len(val_ids), folder,
        f" (resuming from {last})" if resume_from else "",
    )

    L.seed_everything(config.seed, workers=True, verbose=False)
    module = EnfaceModule(
        model=config.model,
        task=config.task,
        in_channels=len(config.input_channels()),
        width=config.width,
        model_kwargs=config.model_kwargs,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        config=config.to_dict(),
        compile=config.compile,
    )
    if config.init and not resume_from:
        report = transfer_weights(module.model, config.init)
        atomic_write_json(
            folder / "transfer.json",
            {"source": config.init, "loaded": len(report.loaded), "not_loaded": report.not_loaded},
        )

    best_cb = ModelCheckpoint(
        dirpath=str(ckdir),
        filename="epoch={epoch:04d}-" + metric + "={" + metric + ":.4f}",
        auto_insert_metric_name=False,
        monitor=metric,
        mode="max",
        save_top_k=config.top_k,
        save_last=False,
        enable_version_counter=False,
    )
    last_cb = ModelCheckpoint(
        dirpath=str(ckdir),
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        default_root_dir=str(folder),
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        accumulate_grad_batches=config.accumulate,
        check_val_every_n_epoch=config.val_every,
        deterministic=config.deterministic,
        callbacks=[best_cb, last_cb, *callbacks],
        logger=_loggers(folder),
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    train_dl, val_dl = _loaders(config, train_ids, val_ids)
    t0 = time.time()
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=resume_from)
    except SystemExit:  # Lightning exits on Ctrl+C after a graceful shutdown
        log.warning("interrupted: %s keeps its last checkpoint; continue with --resume (or re-run the study)", folder)
        raise
    best = sorted(((str(p), float(v)) for p, v in best_cb.best_k_models.items()), key=lambda t: -t[1])
    epochs = int(trainer.current_epoch)
    if trainer.interrupted:
        return FitResult(folder, "interrupted", best, metric, epochs)
    if trainer.is_global_zero:
        atomic_write_json(
            done,
            {
                "run": str(folder),
                "key": dataclasses.asdict(key),
                "metric": metric,
                "best": best,
                "epochs": epochs,
                "world_size": int(trainer.world_size),
                "train_cases": list(train_ids),
                "val_cases": list(val_ids),
                "seconds": round(time.time() - t0, 1),
            },
        )
    log.info("finished %s: best %s %s; checkpoints in %s", folder, metric, f"{best[0][1]:.4f}" if best else "n/a", ckdir)
    return FitResult(folder, "finished", best, metric, epochs)
