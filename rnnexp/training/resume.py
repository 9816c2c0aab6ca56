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
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnexp import tracking
from rnnexp.config import Params

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
    """A short hash of everything that determines the trained weights."""
    relevant = {
        k: v
        for k, v in params.flat().items()
        if k.startswith(("model.", "train.")) and k not in NON_SEMANTIC
    }
    payload = json.dumps({"params": relevant, "data": data_hash}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to resume from: its path, MLflow run and epochs completed."""

    path: Path
    run_id: str | None
    epochs_done: int


def _note(message: str) -> None:
    """A checkpoint that is not used: a warning, since the user may have expected it."""
    log.warning(f"train: {message}")


def find_resume_point(
    last: str | Path, best: str | Path, fingerprint_: str, max_epochs: int
) -> ResumePoint | None:
    """The resumable state in ``last`` (with ``best`` beside it), or None to start fresh.

    A checkpoint is ignored (with a warning saying why) when it cannot be
    read, was written for other params or data, or has finished training; and
    when ``best`` is missing (the best epoch so far would be lost).
    """
    last, best = Path(last), Path(best)
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
    if epochs_done >= max_epochs:
        return None  # a finished training: rerunning the stage means a new one
    if not best.is_file():
        _note(f"{last}: {best} is missing; training from scratch")
        return None
    return ResumePoint(last, info.get("run_id"), epochs_done)


@dataclass(frozen=True)
class ResumePlan:
    """How a training starts: from which checkpoint, in which MLflow run, with which tags."""

    checkpoint: ResumePoint | None  # None: from scratch
    run_id: str | None  # the MLflow run to continue (None: a new run)
    tags: dict[str, str]  # for the run: fingerprint, output folder

    @property
    def ckpt_path(self) -> str | None:
        return str(self.checkpoint.path) if self.checkpoint else None


def plan_resume(
    params: Params, out_dir: Path, fingerprint_: str, stage: str, enabled: bool
) -> ResumePlan:
    """Decide whether a training in ``out_dir`` resumes, and which run it continues.

    From ``out_dir/last.ckpt`` when it is resumable (:func:`find_resume_point`),
    continuing the run it names. Otherwise, when an earlier attempt of the same
    training (same fingerprint, output folder and stage) was killed with no
    checkpoint to resume from, that run is continued from scratch
    (:func:`rnnexp.tracking.killed_run_to_continue`), so that one model keeps
    one run. Disabled (tuning trials, ``resume=False``): a fresh run.
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
    run_id = tracking.killed_run_to_continue(params, {**tags, "rnnexp.stage": stage})
    return ResumePlan(None, run_id, tags)
