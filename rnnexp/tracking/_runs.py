"""The life of a run: open it for one stage execution, always close it with the right status.

Every stage execution is an MLflow run in experiment ``tracking.experiment``
(README, "Looking at results in MLflow"). :func:`tracked_run` opens (or continues)
a run, tags it, turns SIGTERM into an interrupt, and always closes it: FINISHED on
success, FAILED on an exception, KILLED on Ctrl-C or SIGTERM, never left RUNNING.
What the store never got is saved to a file and named in a :class:`TrackingError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from mlflow.exceptions import MlflowException

from rnnexp.config import Params
from rnnexp.tracking._buffer import Pending, RetryBuffer, save_undelivered
from rnnexp.tracking._handle import NullRunHandle, RunHandle
from rnnexp.tracking._liveness import mark_stale_runs_killed
from rnnexp.tracking._names import stage_run_name, with_exp
from rnnexp.tracking._resume import reopen_run
from rnnexp.tracking._store import UNREACHABLE, TrackingError, connect, experiment_id, first_line
from rnnexp.tracking._sysmetrics import start_monitor, stop_monitor
from rnnexp.tracking._tags import source_tags
from rnnexp.util.atomic import unguarded
from rnnexp.util.distributed import is_global_zero

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _interrupts_raise(handle: RunHandle) -> Iterator[None]:
    """SIGTERM (and SIGINT) raise KeyboardInterrupt and mark the run interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        handle.interrupted = True
        raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _end_status(exc: BaseException | None, handle: RunHandle) -> str:
    """The status a run ends with, given the exception that ended its block (if any)."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or handle.interrupted:
        return "KILLED"  # Lightning turns KeyboardInterrupt into SystemExit(1)
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "FINISHED"
    return "FAILED"


def _close(handle: RunHandle, uri: str, status: str, error: BaseException | None) -> None:
    """Deliver what waits, end the run ``status``; save and report what the store never got.

    Raises :class:`TrackingError` when something was not delivered and the block
    succeeded; when the block failed, a warning, so that its error is not hidden.
    """
    undelivered = handle.flush()
    if not undelivered:
        try:
            handle.client.set_terminated(handle.run_id, status=status)
            return
        except UNREACHABLE:
            pass
    undelivered.append(Pending(f"run status {status}", None, {"status": status}))
    with unguarded():  # a record of the run, not a stage output: kept even if params changed
        message = save_undelivered(handle.run_id, uri, status, undelivered)
    if error is None:
        raise TrackingError(message)
    log.warning("%s", message)  # the stage failed anyway; do not hide its error


@contextlib.contextmanager
def tracked_run(
    params: Params,
    stage: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    finished_on: tuple[type[BaseException], ...] = (),
    resume_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[RunHandle]:
    """Open an MLflow run for one stage execution and always close it.

    The run gets the flattened params, the source tags (host, pid, git commit and
    dirty flag, DVC experiment), the stage tag and ``tags``; with ``parent_run_id``
    it is nested under that run. Its name is ``run_name`` as given, else one built
    from the stage, params and tags (``train row_lstm h48x3 lr8.5e-3``, see
    ``rnnexp.tracking._names``) with ``[exp <name>]`` appended inside a DVC
    experiment; MLflow never draws a random one. It ends FINISHED, FAILED (exception) or KILLED
    (Ctrl-C, SIGTERM); exceptions of the types in ``finished_on`` (a pruned trial)
    end it FINISHED. Exceptions propagate. With ``tracking.enabled`` false, and in
    every process of a distributed run but global rank 0, it yields a
    :class:`NullRunHandle` and logs nothing.

    Before opening, runs of the experiment left RUNNING by dead processes of this
    host are ended KILLED. With ``resume_run_id`` (a training resumed from its
    checkpoint) that run is set RUNNING again and continued, with ``handle.resumed``
    true, instead of creating a new run; when it is not in this store (or still
    owned by a live process) a new run is made.

    Logging that cannot reach the store is kept and retried; what is still not
    delivered when the block ends is saved to ``mlflow-undelivered/<run_id>.json``
    and raises :class:`TrackingError` (or, when the block failed, a warning).

    With ``system_metrics``, MLflow's system metrics (``system/cpu_utilization_percentage``
    and the like) are sampled into the run while it is open: the monitor starts once
    the run is open and is stopped before the run ends, whatever ends the block.
    """
    if not params.tracking.enabled or not is_global_zero(params.train.devices):
        yield NullRunHandle()  # type: ignore[misc]
        return
    client, uri = connect(params)
    # mlflow.source.*: the UI's Source column names the command that made the run
    source = {"mlflow.source.name": f"rnnexp {stage}", "mlflow.source.type": "LOCAL"}
    all_tags = {**source_tags(), **source, "rnnexp.stage": stage, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags = {k: str(v) for k, v in all_tags.items()}
    exp = os.environ.get("DVC_EXP_NAME")
    name = run_name or with_exp(stage_run_name(stage, params, all_tags), exp)
    try:
        experiment = experiment_id(client, params.tracking.experiment, uri)
        mark_stale_runs_killed(client, experiment)
        handle = None
        if resume_run_id:
            handle = reopen_run(client, resume_run_id, experiment, all_tags)
        if handle is None:
            run = client.create_run(experiment, tags=all_tags, run_name=name)
            handle = RunHandle(client, run.info.run_id, experiment)
        else:
            handle.resumed = True
    except UNREACHABLE as exc:
        raise TrackingError(
            f"cannot open a {stage} run in the MLflow store {uri}: {first_line(exc)}"
        ) from exc
    handle.buffer = RetryBuffer(handle.run_id)
    error: BaseException | None = None
    monitor = None
    try:
        with _interrupts_raise(handle):
            flat = params.flat()
            if handle.resumed:
                # MLflow refuses to change a logged param; log only the new ones
                # (the checkpoint's fingerprint already vouches for the rest).
                logged = client.get_run(handle.run_id).data.params
                flat = {k: v for k, v in flat.items() if k not in logged}
            handle.log_params(flat)
            if system_metrics:
                monitor = start_monitor(client, handle.run_id, uri, handle.resumed)
            yield handle
    except finished_on:
        raise
    except BaseException as exc:
        error = exc
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            handle.set_tags({"rnnexp.error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        stop_monitor(monitor)  # before the run ends: nothing is logged after its end
        _close(handle, uri, _end_status(error, handle), error)


def open_existing_run(params: Params, run_id: str | None) -> RunHandle | None:
    """A handle on an existing run of this store, or None if it is not here.

    A stage restored from DVC's run-cache logs no run, and a checkpoint may come
    from another store, so callers must cope with None. Its logging is not buffered:
    errors raise at once.
    """
    if not run_id or not params.tracking.enabled or not is_global_zero(params.train.devices):
        return None
    client, _ = connect(params)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage == "deleted":
        return None
    return RunHandle(client, run_id, run.info.experiment_id)
