"""Resume a killed or interrupted training from its last checkpoint.

The train stage writes ``last.ckpt`` atomically at the end of every epoch. Each
checkpoint carries a *fingerprint* of what determines the weights: the ``model.*``
and ``train.*`` params (minus display and speed settings) and the hash of the
prepared data. When the stage starts and ``last.ckpt`` has the same fingerprint
and its training is unfinished, training resumes from it (Lightning restores the
weights, optimizer and loops; :class:`rnnexp.training.callbacks.RngState` the random
generators; the sampler's order depends on ``(seed, epoch)`` only) and continues
the checkpoint's MLflow run. Since nothing else carries state from epoch to epoch,
the final weights equal those of an uninterrupted run.

Under ``dvc repro`` the checkpoints are ``persist: true`` outputs, so DVC does not
delete them before rerunning the stage.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnexp import tracking
from rnnexp.config import Params
from rnnexp.util.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

# Train params that change neither the weights nor the curves: changing them keeps
# a checkpoint resumable. train.threads is not one: torch's CPU kernels sum in a
# thread-dependent order, so 1 and 2 threads give weights ~1e-7 apart.
NON_SEMANTIC = frozenset(
    {
        "train.progress_bar",
        "train.num_workers",
        "train.sample_every",
        "train.sample_grid",
        "train.use_tuned",
    }
)


def fingerprint(params: Params, data_hash: str) -> str:
    """A short hash of everything that determines the trained weights.

    ``train.max_epochs`` counts only under a schedule that depends on it (cosine):
    with a constant or plateau learning rate the first N epochs of a longer training
    are the same epochs, so a shorter training (a tune trial) can be continued to more.
    """
    relevant = {
        k: v
        for k, v in params.flat().items()
        if k.startswith(("model.", "train.")) and k not in NON_SEMANTIC
    }
    if params.train.lr_schedule != "cosine":
        relevant.pop("train.max_epochs")
    payload = json.dumps({"params": relevant, "data": data_hash}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stopped_early(raw: dict) -> bool:
    """Whether a checkpoint was written by a training that Lightning's ``EarlyStopping``
    stopped (its state, saved in the checkpoint, records why it stopped)."""
    states = raw.get("callbacks", {})
    return any(
        key.startswith("EarlyStopping") and state.get("stopping_reason", 0) != 0
        for key, state in states.items()
    )


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to start from: its path, MLflow run, epochs completed, and whether
    its training is finished (the epoch budget reached, or stopped early)."""

    path: Path
    run_id: str | None
    epochs_done: int
    finished: bool = False
    stopped_early: bool = False


def _note(message: str) -> None:
    """A checkpoint that is not used: a warning, since the user may have expected it."""
    log.warning(f"train: {message}")


def read_point(last: str | Path, fingerprint_: str, max_epochs: int) -> ResumePoint | None:
    """The training state in ``last``, or None (with a warning saying why) when it
    cannot be read or was written for other params or data."""
    last = Path(last)
    if not last.is_file():
        return None
    try:
        raw = torch.load(last, map_location="cpu", weights_only=True)
        info = raw["rnnexp"]
        epochs_done = int(raw["epoch"]) + 1  # saved at the end of epoch `epoch` (0-based)
    except Exception as exc:  # truncated, corrupt, or not one of ours
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        _note(f"{last}: not resumable ({type(exc).__name__}: {first}); training from scratch")
        return None
    if info.get("fingerprint") != fingerprint_:
        _note(f"{last}: written for other params or data; training from scratch")
        return None
    early = stopped_early(raw)
    return ResumePoint(
        last, info.get("run_id"), epochs_done, early or epochs_done >= max_epochs, early
    )


def find_resume_point(
    last: str | Path, best: str | Path, fingerprint_: str, max_epochs: int
) -> ResumePoint | None:
    """The resumable state in ``last`` (with ``best`` beside it), or None to start fresh.

    A checkpoint is ignored (with a warning saying why) when it cannot be
    read, was written for other params or data, or has finished training; and
    when ``best`` is missing (the best epoch so far would be lost).
    """
    point = read_point(last, fingerprint_, max_epochs)
    if point is None or point.finished:
        return None  # a finished training: rerunning the stage means a new one
    if not Path(best).is_file():
        _note(f"{last}: {best} is missing; training from scratch")
        return None
    return point


@dataclass(frozen=True)
class ResumePlan:
    """How a training starts: from which checkpoint, in which MLflow run, with which tags.

    ``source`` is set when the training starts from another training's checkpoints
    (the tune stage's best trial): they are copied into the output folder first
    (:func:`adopt_checkpoints`); when that training had finished, nothing is trained.
    """

    checkpoint: ResumePoint | None  # None: from scratch
    run_id: str | None  # the MLflow run to continue (None: a new run)
    tags: dict[str, str]  # for the run: fingerprint, output folder
    source: Path | None = None  # folder of the checkpoints to start from

    @property
    def ckpt_path(self) -> str | None:
        return str(self.checkpoint.path) if self.checkpoint else None

    @property
    def reuse(self) -> bool:
        """The source's training is finished: its checkpoints are the result."""
        return self.source is not None and self.checkpoint is not None and self.checkpoint.finished


def plan_resume(
    params: Params,
    out_dir: Path,
    fingerprint_: str,
    stage: str,
    enabled: bool,
    start_from: Path | None = None,
) -> ResumePlan:
    """Decide whether a training in ``out_dir`` resumes, and which run it continues.

    From ``out_dir/last.ckpt`` when it is resumable (:func:`find_resume_point`),
    continuing the run it names. Else from ``start_from`` (the tune stage's best
    trial) when its checkpoints were written for the same params and data: a new run
    that continues that training, or takes it as it stands when it had finished.
    Otherwise, when an earlier attempt of the same training (same fingerprint,
    output folder and stage) was killed with no checkpoint to resume from, that run
    is continued from scratch (:func:`rnnexp.tracking.killed_run_to_continue`), so
    that one model keeps one run. Disabled (tuning trials, ``resume=False``): a fresh
    run.
    """
    tags = {"rnnexp.fingerprint": fingerprint_}
    if not enabled:
        return ResumePlan(None, None, tags)
    tags["rnnexp.out_dir"] = str(Path(out_dir).resolve())
    max_epochs = params.train.max_epochs
    start = find_resume_point(
        out_dir / "last.ckpt", out_dir / "best.ckpt", fingerprint_, max_epochs
    )
    if start is not None:
        return ResumePlan(start, start.run_id, tags)
    if start_from is not None and (start_from / "best.ckpt").is_file():
        source = read_point(start_from / "last.ckpt", fingerprint_, max_epochs)
        if source is not None and source.epochs_done > max_epochs:
            _note(f"{start_from}: trained {source.epochs_done} epochs, more than "
                  f"train.max_epochs ({max_epochs}); training from scratch")  # fmt: skip
        elif source is not None:
            if source.run_id:
                tags["rnnexp.source_run"] = source.run_id
            point = ResumePoint(
                out_dir / "last.ckpt",
                None,
                source.epochs_done,
                source.finished,
                source.stopped_early,
            )
            return ResumePlan(point, None, tags, Path(start_from))
    run_id = tracking.killed_run_to_continue(params, {**tags, "rnnexp.stage": stage})
    return ResumePlan(None, run_id, tags)


def adopt_checkpoints(source: Path, out_dir: Path, run_id: str) -> list[dict]:
    """Copy ``source``'s best and last checkpoints into ``out_dir``, now of ``run_id``.

    The copies name the new run (the evaluate stage logs to the run a checkpoint
    names) and the run they came from (``source_run_id``), and their
    ``ModelCheckpoint`` states name ``out_dir`` (Lightning forgets the best score of
    a checkpoint written to another folder). Returns the history of the copied
    training, one row per epoch.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    for name in ("best.ckpt", "last.ckpt"):
        raw = torch.load(source / name, map_location="cpu", weights_only=True)
        info = raw["rnnexp"]
        info["source_run_id"], info["run_id"] = info.get("run_id"), run_id
        for key, state in raw.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and state.get("dirpath"):
                # the folder the trial wrote to (not the tune stage's copy of it)
                raw["callbacks"][key] = _moved(state, state["dirpath"], str(out_dir.resolve()))
        buffer = io.BytesIO()
        torch.save(raw, buffer)
        atomic_write_bytes(out_dir / name, buffer.getvalue())
        history = list(info.get("history", []))  # the last one's: every epoch
    return history


def _moved(state: object, old: str, new: str) -> object:
    """``state`` with every path under the folder ``old`` (keys too) under ``new``."""
    if isinstance(state, str):
        return new + state[len(old) :] if state == old or state.startswith(old + "/") else state
    if isinstance(state, dict):
        return {_moved(k, old, new): _moved(v, old, new) for k, v in state.items()}
    return state
