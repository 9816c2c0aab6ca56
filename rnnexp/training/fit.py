"""Training: ``run_training(params) -> TrainResult``.

The one training code path: the train stage calls it, and so does every tune trial
(with the trial's overrides). It opens the model's MLflow run, trains with Lightning, writes
``best.ckpt`` and ``last.ckpt`` and returns the best validation figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from rnnexp import tracking
from rnnexp.config import Params
from rnnexp.console import show_progress_bar
from rnnexp.data.datamodule import PreparedDataModule
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.tracking import MlflowRunLogger
from rnnexp.training.callbacks import (
    AtomicCheckpointIO,
    EpochProgress,
    NonFiniteLossGuard,
    RngState,
    SampleGrid,
)
from rnnexp.training.resume import adopt_checkpoints, fingerprint, plan_resume
from rnnexp.training.system import PixelRNNSystem
from rnnexp.util.allocator import allocator_in_use
from rnnexp.util.threads import torch_threads

log = logging.getLogger(__name__)

BEST, LAST = "best", "last"


@dataclass
class TrainResult:
    """What a training gave: its run, checkpoints (None when not saved), best
    figures, the epochs of the whole training and of this call (a training that
    continues a tune trial, or resumes, trains fewer), and whether it stopped early."""

    run_id: str
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float]
    epochs: int
    epochs_trained: int = 0
    stopped_early: bool = False


def build_generator(params: Params, meta: dict) -> PixelRNN:
    """The generator described by ``params.model`` for data described by ``meta``."""
    m = params.model
    config = GeneratorConfig(
        arch=m.arch,
        channels=meta["channels"],
        levels=meta["levels"],
        hidden=m.hidden,
        layers=m.layers,
        kernel=m.kernel,
        input_kernel=m.input_kernel,
        head_hidden=m.head_hidden,
        dropout=m.dropout,
        num_classes=(meta["num_classes"] or 0) if meta.get("task") == "class" else 0,
        source_channels=meta["source_shape"][0] if meta.get("source_shape") else 0,
    )
    return PixelRNN(config)


def run_training(
    params: Params,
    prepared_dir: str | Path = "data/prepared",
    out_dir: str | Path = "models",
    *,
    stage: str = "train",
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[pl.Callback] = (),
    on_run_start: Callable[[tracking.RunHandle], None] | None = None,
    finished_on: tuple[type[BaseException], ...] = (),
    save_checkpoints: bool = True,
    resume: bool = True,
    start_from: str | Path | None = None,
    progress: EpochProgress | None = None,
) -> TrainResult:
    """Train the generator of ``params`` on the prepared data, tracked in MLflow.

    The train stage calls it as is; the tune stage calls it per trial with the
    trial's params, a pruning callback, the study's run as ``parent_run_id``, and
    ``finished_on=(TrialPruned,)`` so that a pruned trial's run ends FINISHED.
    Without ``save_checkpoints`` no checkpoint is written (the result's paths are
    then None).

    With ``train.patience`` > 0 Lightning's ``EarlyStopping`` ends the training once
    ``tune.metric`` has not improved for that many epochs (trials and the final
    model follow the same rule); ``best.ckpt`` holds the best epoch, ``last.ckpt``
    the last one trained.

    Lightning's progress bar is drawn where ``train.progress_bar`` says (``auto``: on
    a terminal); where it is not, ``progress`` (default: ``EpochProgress("train:")``)
    logs one line per epoch.

    When ``out_dir/last.ckpt`` holds an unfinished training of the same params and
    data (see :mod:`rnnexp.training.resume`), training resumes from it and continues its
    MLflow run; ``resume=False`` always starts afresh. Otherwise ``start_from`` (a
    folder with the ``best.ckpt`` and ``last.ckpt`` of the same params and data: the
    tune stage's best trial) is continued in a new run linked to the trial's run
    (tag ``rnnexp.source_run``), or taken as it stands when it had finished.

    Example:
        >>> result = run_training(load_params("params.yaml"))  # doctest: +SKIP
        >>> result.metrics["val/bpd"]  # doctest: +SKIP
    """
    t = params.train
    out_dir = Path(out_dir)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    data = PreparedDataModule(prepared_dir, t.batch_size, t.num_workers, seed=t.seed)
    meta = data.meta
    data.setup()  # fail on unusable data before a run is opened
    generator = build_generator(params, meta)
    shape = (meta["channels"], meta["height"], meta["width"])
    data_info = {
        "content_hash": meta["content_hash"],
        "levels": meta["levels"],
        "shape": shape,
        "task": meta.get("task", "unconditional"),
        "occlusion": params.data.occlusion,
        "noise_level": params.data.noise_level,
    }
    system = PixelRNNSystem(generator, shape, t.lr, t.weight_decay, data_info, t.lr_schedule,
                            t.warmup_epochs, compile=t.compile)  # fmt: skip
    system.fingerprint = fingerprint(params, meta["content_hash"])
    source = Path(start_from) if start_from is not None else None
    enabled = resume and save_checkpoints
    plan = plan_resume(params, out_dir, system.fingerprint, stage, enabled, source)

    run_tags = {
        "rnnexp.data_hash": meta["content_hash"],
        "rnnexp.arch": params.model.arch,
        **plan.tags,
    }
    # torch's CPU threads (train.threads) for the run; the count and the allocator are
    # tagged, since the run's timings depend on them
    with (
        torch_threads(t.threads) as threads,
        tracking.tracked_run(
            params,
            stage,
            tags={
                **run_tags,
                "rnnexp.threads": str(threads),
                "rnnexp.allocator": allocator_in_use(),
                **(tags or {}),
            },
            parent_run_id=parent_run_id,
            finished_on=finished_on,
            resume_run_id=plan.run_id,
            system_metrics=params.tracking.system_metrics,
        ) as run,
    ):
        system.run_id = run.run_id
        run.log_dataset(meta, prepared_dir, "training", params.data.source)
        log.debug(
            f"{stage}: run {run.run_id}, accelerator {t.accelerator}, devices {t.devices}, "
            f"strategy {t.strategy}, {threads} torch threads, precision {t.precision}, "
            f"compile {t.compile}"
        )
        if plan.source is not None:
            inherited = adopt_checkpoints(plan.source, out_dir, run.run_id)
            _log_curve(run, inherited)  # the run shows the whole curve, trial epochs too
            left = 0 if plan.reuse else t.max_epochs - len(inherited)
            log.info(
                f"{stage}: continuing the best tune trial ({plan.source}, run "
                f"{plan.tags.get('rnnexp.source_run')}, {len(inherited)} epochs"
                f"{', finished' if plan.checkpoint.finished else ''}): {left} epochs left"
            )
        elif plan.checkpoint is not None:
            how = "continuing its run" if run.resumed else "its run is not in this store: new"
            log.info(
                f"{stage}: resuming from {plan.checkpoint.path} after epoch "
                f"{plan.checkpoint.epochs_done} ({how} run {run.run_id})"
            )
        if on_run_start is not None:
            on_run_start(run)
        if plan.reuse:
            system.history, trained, early = inherited, 0, plan.checkpoint.stopped_early
        else:
            done = plan.checkpoint.epochs_done if plan.checkpoint else 0
            trainer = _trainer(params, run, system, out_dir, save_checkpoints, stage,
                               progress, prepared_dir, callbacks)  # fmt: skip
            trainer.fit(system, datamodule=data, ckpt_path=plan.ckpt_path)
            trained = len(system.history) - done
            early = any(isinstance(c, EarlyStopping) and c.stopping_reason.value
                        for c in trainer.callbacks)  # fmt: skip
        best = min(system.history, key=lambda row: row[_HISTORY_KEY[params.tune.metric]])
        metrics = {
            "best/val_nll": best["val_nll"],
            "best/val_bpd": best["val_bpd"],
            "best/epoch": best["epoch"],
            "epochs": len(system.history),
        }
        run.log_metrics(metrics)
        if early:
            log.info(
                f"{stage}: stopped early after epoch {len(system.history)} of {t.max_epochs}: "
                f"no better {params.tune.metric} for {t.patience} epochs since epoch "
                f"{best['epoch'] + 1}"
            )
        best_path = last_path = None
        if save_checkpoints:
            best_path, last_path = out_dir / f"{BEST}.ckpt", out_dir / f"{LAST}.ckpt"
            # the model to load, register and serve; a trial's checkpoints stay on disk
            if params.tracking.log_checkpoint and stage == "train":
                run.log_artifact(best_path, "checkpoints")
                c = generator.config
                run.log_generator_model(
                    best_path,
                    {
                        **data_info,
                        "arch": c.arch,
                        "image_shape": list(shape),
                        "num_classes": c.num_classes,
                        "source_channels": c.source_channels,
                    },
                )
    return TrainResult(
        run.run_id, best_path, last_path, metrics, len(system.history), trained, early
    )


# tune.metric -> its column in PixelRNNSystem.history
_HISTORY_KEY = {"val/bpd": "val_bpd", "val/nll": "val_nll"}


def _log_curve(run: tracking.RunHandle, history: list[dict]) -> None:
    """Log the per-epoch figures of ``history`` (as PixelRNNSystem logs them live)."""
    for row in history:
        figures = {k.replace("_", "/"): v for k, v in row.items() if k != "epoch"}
        run.log_metrics(figures, step=int(row["epoch"]))


def _trainer(
    params: Params,
    run: tracking.RunHandle,
    system: PixelRNNSystem,
    out_dir: Path,
    save_checkpoints: bool,
    stage: str,
    progress: EpochProgress | None,
    prepared_dir: str | Path,
    callbacks: Sequence[pl.Callback],
) -> pl.Trainer:
    """The Lightning trainer of ``run_training``, with its callbacks."""
    t = params.train
    bar = show_progress_bar(t.progress_bar)
    extra: list[pl.Callback] = [] if bar else [progress or EpochProgress("train:")]
    if t.patience:
        monitor = params.tune.metric
        extra.append(EarlyStopping(monitor=monitor, mode="min", patience=t.patience))
    if save_checkpoints:
        # Two writers: the best epoch by val/bpd, and every epoch's state as last.ckpt
        # (ModelCheckpoint's own save_last refreshes last.ckpt only with a new best).
        extra.append(_checkpoint(out_dir, BEST, monitor="val/bpd"))
        extra.append(_checkpoint(out_dir, LAST, monitor=None))
    return pl.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        gradient_clip_val=t.grad_clip or None,
        logger=MlflowRunLogger(run, params.tracking.experiment),
        callbacks=[
            *extra,
            NonFiniteLossGuard(),
            RngState(),
            SampleGrid(t.sample_every, t.sample_grid, prepared_dir=str(prepared_dir)),
            *callbacks,
        ],
        enable_checkpointing=save_checkpoints,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # metrics are logged per epoch; silences a warning
        enable_progress_bar=bar,
        enable_model_summary=bar and stage == "train",  # not once per tune trial
        deterministic=True,
        default_root_dir=out_dir,
    )


def _checkpoint(out_dir: Path, name: str, monitor: str | None) -> ModelCheckpoint:
    """``out_dir/<name>.ckpt``: the best epoch by ``monitor``, or (None) the latest."""
    return ModelCheckpoint(
        dirpath=out_dir,
        filename=name,
        monitor=monitor,
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
