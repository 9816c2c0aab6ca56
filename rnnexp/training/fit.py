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
from lightning.pytorch.callbacks import ModelCheckpoint

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
from rnnexp.training.resume import fingerprint, plan_resume
from rnnexp.training.system import PixelRNNSystem
from rnnexp.util.threads import torch_threads

log = logging.getLogger(__name__)

BEST, LAST = "best", "last"


@dataclass
class TrainResult:
    run_id: str
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float]
    epochs: int


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
    progress: EpochProgress | None = None,
) -> TrainResult:
    """Train the generator of ``params`` on the prepared data, tracked in MLflow.

    The train stage calls it as is; the tune stage calls it per trial with the
    trial's params, a pruning callback, the study's run as ``parent_run_id``, and
    ``finished_on=(TrialPruned,)`` so that a pruned trial's run ends FINISHED.
    Without ``save_checkpoints`` no checkpoint is written (the result's paths are
    then None).

    Lightning's progress bar is drawn where ``train.progress_bar`` says (``auto``: on
    a terminal); where it is not, ``progress`` (default: ``EpochProgress("train:")``)
    logs one line per epoch.

    When ``out_dir/last.ckpt`` holds an unfinished training of the same params and
    data (see :mod:`rnnexp.training.resume`), training resumes from it and continues its
    MLflow run; ``resume=False`` always starts afresh.

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
    system = PixelRNNSystem(generator, shape, t.lr, t.weight_decay, data_info)
    system.fingerprint = fingerprint(params, meta["content_hash"])
    plan = plan_resume(params, out_dir, system.fingerprint, stage, resume and save_checkpoints)

    run_tags = {
        "rnnexp.data_hash": meta["content_hash"],
        "rnnexp.arch": params.model.arch,
        **plan.tags,
    }
    # torch's CPU threads (train.threads) for the run; the count is tagged, since the
    # run's timings depend on it
    with (
        torch_threads(t.threads) as threads,
        tracking.tracked_run(
            params,
            stage,
            tags={**run_tags, "rnnexp.threads": str(threads), **(tags or {})},
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
            f"strategy {t.strategy}, {threads} torch threads, precision {t.precision}"
        )
        if plan.checkpoint is not None:
            how = "continuing its run" if run.resumed else "its run is not in this store: new"
            log.info(
                f"train: resuming from {plan.checkpoint.path} after epoch "
                f"{plan.checkpoint.epochs_done} ({how} run {run.run_id})"
            )
        if on_run_start is not None:
            on_run_start(run)
        bar = show_progress_bar(t.progress_bar)
        extra: list[pl.Callback] = [] if bar else [progress or EpochProgress("train:")]
        if save_checkpoints:
            extra.append(
                ModelCheckpoint(
                    dirpath=out_dir,
                    filename=BEST,
                    monitor="val/bpd",
                    mode="min",
                    save_top_k=1,
                    save_last=True,
                    enable_version_counter=False,
                )
            )
        trainer = pl.Trainer(
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
        trainer.fit(system, datamodule=data, ckpt_path=plan.ckpt_path)
        best = min(system.history, key=lambda row: row["val_bpd"])
        metrics = {
            "best/val_nll": best["val_nll"],
            "best/val_bpd": best["val_bpd"],
            "best/epoch": best["epoch"],
        }
        run.log_metrics(metrics)
        best_path = last_path = None
        if save_checkpoints:
            best_path, last_path = out_dir / f"{BEST}.ckpt", out_dir / f"{LAST}.ckpt"
            if params.tracking.log_checkpoint:
                run.log_artifact(best_path, "checkpoints")
                if stage == "train":  # the model to load, register and serve; not trials
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
    return TrainResult(run.run_id, best_path, last_path, metrics, len(system.history))
