"""The one module that talks to MLflow.

Every stage execution is an MLflow run in experiment ``tracking.experiment`` (see
DESIGN.md, "MLflow run model"). :func:`tracked_run` opens a run, tags it, and
always closes it: FINISHED on success, FAILED on an exception, KILLED on Ctrl-C or
SIGTERM, never left RUNNING. Logging goes through :class:`MlflowClient` with an
explicit run id (the fluent API is not thread-safe), so the same code serves
workers and Lightning's logger (:class:`rnnexp.logger.MlflowRunLogger`).

The default store is ``sqlite:///<workspace root>/mlflow.db`` where the workspace
root is resolved *out of* DVC's temporary experiment copies under
``<repo>/.dvc/tmp/``, so queued experiments log to the main workspace's store.
``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) points it at a team's server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from rnnexp.atomic import atomic_write_text
from rnnexp.config import Params
from rnnexp.distributed import NullRunHandle, is_global_zero
from rnnexp.errors import RnnexpError

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def workspace_root(start: str | Path | None = None) -> Path:
    """The project root that owns the stores, seen from ``start`` (default: cwd).

    Inside a DVC experiment copy (``<repo>/.dvc/tmp/exps/...``) this is ``<repo>``,
    so that queued experiments share the main workspace's MLflow store.
    """
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 1):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri(params: Params | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``tracking.uri``, else the workspace's SQLite file."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if params is not None and params.tracking.uri:
        return params.tracking.uri
    return f"sqlite:///{workspace_root() / DEFAULT_DB}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None.

    Together with the pid it names a process uniquely: a pid reused by a later
    process has a later start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, given ``start``, is that process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    if start is not None:
        now = _process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


def source_tags() -> dict[str, str]:
    """Git commit and dirty flag, DVC experiment name, host and pid of this process."""
    tags = {"rnnexp.host": socket.gethostname(), "rnnexp.pid": str(os.getpid())}
    start = _process_start(os.getpid())
    if start is not None:
        tags["rnnexp.pid_start"] = start
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["rnnexp.git_dirty"] = str(bool(status)).lower()
    if os.environ.get("DVC_EXP_NAME"):
        tags["rnnexp.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Artifacts beside the database, not relative to a (possibly temporary) cwd.
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent / ARTIFACTS_DIR).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created by a concurrent process in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# While training, one quick try per request: a dead server must not stall training
# for MLflow's default retry schedule (about 4 minutes per request). The final
# delivery at the end of the run uses the user's MLFLOW_HTTP_REQUEST_* settings.
FAIL_FAST_TIMEOUT_S = 10
RETRY_EVERY_S = 10.0  # while undelivered items wait, retry at most this often
UNDELIVERED_DIR = "mlflow-undelivered"


@contextlib.contextmanager
def _fail_fast(timeout_s: float = FAIL_FAST_TIMEOUT_S) -> Iterator[None]:
    """MLflow HTTP requests inside: no retries, ``timeout_s`` seconds each."""
    fast = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout_s)),
    }
    saved = {k: os.environ.get(k) for k in fast}
    os.environ.update(fast)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TrackingError(RnnexpError):
    """The MLflow store could not be reached: a run not opened, or logging not delivered."""


_UNREACHABLE = (MlflowException, OSError)  # requests' errors are OSErrors


@dataclass
class _Pending:
    """A logging call that failed and waits to be retried, with what it carried."""

    what: str  # for people: "metrics val/bpd, val/nll (step 3)"
    send: Any  # () -> None
    record: dict[str, Any]  # for the undelivered file: the values themselves


@dataclass
class RunHandle:
    """An open MLflow run: the client, its id, and whether an interrupt arrived.

    With ``buffered`` (runs opened by :func:`tracked_run`), metrics, tags, images
    and artifacts that cannot be delivered (the tracking server is down) are kept
    in order and retried with the next logging call and when the run ends; see
    :meth:`flush`. Without it, logging errors raise at once.
    """

    client: MlflowClient
    run_id: str
    experiment_id: str
    interrupted: bool = field(default=False)
    resumed: bool = field(default=False)
    buffered: bool = field(default=False)
    pending: list[_Pending] = field(default_factory=list)
    _last_try: float = field(default=0.0)

    def _deliver(self, what: str, send: Any, record: dict[str, Any]) -> None:
        if not self.buffered:
            send()
            return
        if self.pending and time.monotonic() - self._last_try >= RETRY_EVERY_S:
            self._retry(fast=True)
        if not self.pending:
            try:
                with _fail_fast():
                    send()
                return
            except _UNREACHABLE as exc:
                self._last_try = time.monotonic()
                _note(f"MLflow store unreachable, keeping {what} to retry: {_first_line(exc)}")
        self.pending.append(_Pending(what, send, record))

    def _retry(self, fast: bool) -> None:
        """Send pending items in order; stop at the first failure."""
        self._last_try = time.monotonic()
        while self.pending:
            try:
                if fast:
                    with _fail_fast():
                        self.pending[0].send()
                else:
                    self.pending[0].send()
            except _UNREACHABLE:
                return
            self.pending.pop(0)
        _note(f"MLflow store reachable again: delivered what run {self.run_id} kept")

    def flush(self) -> list[_Pending]:
        """Deliver what is pending, with MLflow's own retries; return what is still not."""
        if self.pending:
            self._retry(fast=False)
        return list(self.pending)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._deliver(
            f"metrics {', '.join(metrics)} (step {step or 0})",
            lambda: self.client.log_batch(self.run_id, metrics=items),
            {"metrics": [[m.key, m.value, m.step, m.timestamp] for m in items]},
        )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._deliver(
            f"tags {', '.join(tags)}",
            lambda: self.client.log_batch(self.run_id, tags=items),
            {"tags": {t.key: t.value for t in items}},
        )

    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        """A PIL image as an MLflow image series (``key``, ``step``) for the UI's slider."""
        self._deliver(
            f"image {key} (step {step or 0})",
            lambda: self.client.log_image(self.run_id, image, key=key, step=step or 0),
            {"image": key, "step": step or 0},
        )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._deliver(
            f"artifact {path}",
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
            {"artifact": str(path), "artifact_path": artifact_path},
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self._deliver(
            f"text {artifact_file}",
            lambda: self.client.log_text(self.run_id, text, artifact_file),
            {"text": text, "artifact_file": artifact_file},
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _note(message: str) -> None:
    print(f"rnnexp: {message}", file=sys.stderr, flush=True)


def _report_undelivered(handle: RunHandle, uri: str, status: str, items: list[_Pending]) -> str:
    """Save what the store never got to a JSON file; return a message saying what and where."""
    path = workspace_root() / UNDELIVERED_DIR / f"{handle.run_id}.json"
    record = {
        "tracking_uri": uri,
        "run_id": handle.run_id,
        "status": status,
        "undelivered": [{"what": p.what, **p.record} for p in items],
    }
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    whats = "; ".join(p.what for p in items)
    return (
        f"the MLflow store {uri} could not be reached: {len(items)} item(s) of run "
        f"{handle.run_id} were not logged ({whats}); they are saved in {path}"
    )


@contextlib.contextmanager
def _interrupts_raise(handle: RunHandle) -> Iterator[None]:
    """SIGTERM (and SIGINT) raise KeyboardInterrupt and mark the run interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
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
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or handle.interrupted:
        return "KILLED"  # Lightning turns KeyboardInterrupt into SystemExit(1)
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return "FINISHED"
    return "FAILED"


def _init_sqlite_store(uri: str) -> None:
    """Create (or migrate) a SQLite store under a file lock.

    Two processes opening a new store at once (``dvc queue start -j 2`` on a fresh
    clone) race MLflow's table migrations and both fail; the lock lets one create
    the tables while the other waits, then finds them.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def mark_stale_runs_killed(client: MlflowClient, experiment_id: str) -> list[str]:
    """End KILLED the RUNNING runs of the experiment whose process died; return their ids.

    A process killed with SIGKILL (or by the OOM killer, or a power cut) cannot end
    its run, which then stays RUNNING forever. A run is stale when its tags name
    this host and a pid that no longer runs (or now runs another process, told
    apart by its start time). Runs of live processes and of other hosts are never
    touched: on another host we cannot tell. Each stale run gets the tag
    ``rnnexp.stale`` saying why.
    """
    host = socket.gethostname()
    stale, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`rnnexp.host` = '{host}'"
            if "'" not in host
            else "attributes.status = 'RUNNING'",
            max_results=_SEARCH_PAGE,
            page_token=token,
        )
        for run in page:
            tags = run.data.tags
            if run.info.status != "RUNNING" or tags.get("rnnexp.host") != host:
                continue
            try:
                pid = int(tags.get("rnnexp.pid", ""))
            except ValueError:
                continue
            if process_alive(pid, tags.get("rnnexp.pid_start")):
                continue
            note = f"process {pid} on {host} died without ending the run"
            try:
                client.set_tag(run.info.run_id, "rnnexp.stale", note)
                client.set_terminated(run.info.run_id, status="KILLED")
            except MlflowException:  # ended or deleted by someone else meanwhile
                continue
            stale.append(run.info.run_id)
        token = page.token
        if not token:
            return stale


def _reopen_run(
    client: MlflowClient, run_id: str, experiment_id: str, tags: Mapping[str, str]
) -> RunHandle | None:
    """Set an ended run of ``experiment_id`` RUNNING again, for a resumed training.

    Returns None when the run is not in this store, is deleted, belongs to another
    experiment, or is still owned by a live process.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    info = run.info
    if info.lifecycle_stage == "deleted" or info.experiment_id != experiment_id:
        return None
    if info.status == "RUNNING":
        old = run.data.tags
        if old.get("rnnexp.host") != socket.gethostname():
            return None  # perhaps still running elsewhere: do not steal it
        try:
            pid = int(old.get("rnnexp.pid", ""))
        except ValueError:
            pid = -1
        if process_alive(pid, old.get("rnnexp.pid_start")):
            return None
    resumes = int(run.data.tags.get("rnnexp.resumes", "0")) + 1
    client.update_run(run_id, status="RUNNING")
    handle = RunHandle(client, run_id, experiment_id)
    more: dict[str, Any] = {"rnnexp.resumes": resumes}
    if "rnnexp.error" in run.data.tags:  # the error that stopped it is history now
        more["rnnexp.previous_error"] = run.data.tags["rnnexp.error"]
        client.delete_tag(run_id, "rnnexp.error")
    handle.set_tags({**tags, **more})
    return handle


def killed_run_to_continue(params: Params, tags: Mapping[str, str]) -> str | None:
    """The run to continue for a training killed with no checkpoint to resume, if any.

    That is the newest run of the experiment carrying all of ``tags`` (stage, output
    folder, fingerprint), when it ended KILLED, or is RUNNING for a dead process.
    A kill before the first checkpoint, or between logging an epoch's metrics and
    writing its checkpoint, leaves no checkpoint naming the run, so without this
    the rerun would open a second run for the same model. The rerun starts from
    scratch in that run (deterministic: epochs it logged again repeat their values).
    """
    if not params.tracking.enabled or not is_global_zero(params.train.devices):
        return None  # this process opens no run, so it continues none
    client, _ = connect(params)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    if experiment is None or any(set("'\"\\`") & set(v) for v in tags.values()):
        return None
    clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=clauses,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    run = found[0]
    if run.info.status == "KILLED":
        return run.info.run_id
    if run.info.status == "RUNNING" and run.data.tags.get("rnnexp.host") == socket.gethostname():
        try:
            pid = int(run.data.tags.get("rnnexp.pid", ""))
        except ValueError:
            return None
        if not process_alive(pid, run.data.tags.get("rnnexp.pid_start")):
            return run.info.run_id
    return None


def connect(params: Params | None = None) -> tuple[MlflowClient, str]:
    """A client on the configured store and the store's URI."""
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        _init_sqlite_store(uri)
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as exc:  # e.g. an unknown scheme: a bad URI, the user's to fix
        source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
        raise RnnexpError(
            f"{source} {uri!r}: cannot open the MLflow tracking store: {_first_line(exc)}"
        ) from None


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
) -> Iterator[RunHandle]:
    """Open an MLflow run for one stage execution and always close it.

    The run gets the flattened params, the source tags (:func:`source_tags`), the
    stage tag and ``tags``; with ``parent_run_id`` it is nested under that run. It
    ends FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM); exceptions of
    the types in ``finished_on`` (a pruned trial) end it FINISHED. Exceptions
    propagate. With ``tracking.enabled`` false, and in every process of a
    distributed run but global rank 0, it yields a
    :class:`~rnnexp.distributed.NullRunHandle` and logs nothing.

    Before opening, runs of the experiment left RUNNING by dead processes of this
    host are ended KILLED (:func:`mark_stale_runs_killed`). With ``resume_run_id``
    (a training resumed from its checkpoint) that run is set RUNNING again and
    continued, with ``handle.resumed`` true, instead of creating a new run; when
    it is not in this store (or still owned by a live process) a new run is made.
    """
    if not params.tracking.enabled or not is_global_zero(params.train.devices):
        yield NullRunHandle()  # type: ignore[misc]
        return
    client, uri = connect(params)
    all_tags = {**source_tags(), "rnnexp.stage": stage, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags = {k: str(v) for k, v in all_tags.items()}
    try:
        experiment_id = _experiment_id(client, params.tracking.experiment, uri)
        mark_stale_runs_killed(client, experiment_id)
        handle = None
        if resume_run_id:
            handle = _reopen_run(client, resume_run_id, experiment_id, all_tags)
        if handle is None:
            run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
            handle = RunHandle(client, run.info.run_id, experiment_id)
        else:
            handle.resumed = True
    except _UNREACHABLE as exc:
        raise TrackingError(
            f"cannot open a {stage} run in the MLflow store {uri}: {_first_line(exc)}"
        ) from exc
    handle.buffered = True
    error: BaseException | None = None
    try:
        with _interrupts_raise(handle):
            flat = params.flat()
            if handle.resumed:
                # MLflow refuses to change a logged param; log only the new ones
                # (the checkpoint's fingerprint already vouches for the rest).
                logged = client.get_run(handle.run_id).data.params
                flat = {k: v for k, v in flat.items() if k not in logged}
            handle.log_params(flat)
            yield handle
    except finished_on:
        raise
    except BaseException as exc:
        error = exc
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            handle.set_tags({"rnnexp.error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        status = _end_status(error, handle)
        undelivered = handle.flush()
        if undelivered:
            undelivered.append(_Pending(f"run status {status}", None, {"status": status}))
        else:
            try:
                client.set_terminated(handle.run_id, status=status)
            except _UNREACHABLE:
                undelivered.append(_Pending(f"run status {status}", None, {"status": status}))
        if undelivered:
            message = _report_undelivered(handle, uri, status, undelivered)
            if error is None:
                raise TrackingError(message)
            _note(message)  # the stage failed anyway; do not hide its error


def open_existing_run(params: Params, run_id: str | None) -> RunHandle | None:
    """A handle on an existing run of this store, or None if it is not here.

    A stage restored from DVC's run-cache logs no run, and a checkpoint may come
    from another store, so callers must cope with None.
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


def image_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- Reading runs back (rnnexp.compare): plain dicts, so callers need no mlflow import.

_SEARCH_PAGE = 1000  # the most runs one search_runs call may return


def _run_dict(run: Any) -> dict[str, Any]:
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name or "",
        "experiment_id": info.experiment_id,
        "status": info.status,
        "start_time": info.start_time,  # ms since the epoch
        "end_time": info.end_time,
        "tags": dict(data.tags),
        "params": dict(data.params),
        "metrics": dict(data.metrics),  # latest value of each metric
    }


def find_runs(
    params_or_uri: Params | str,
    run_ids: list[str] | None = None,
    experiment: str | None = None,
    dvc_exp: str | None = None,
    stage: str | None = "train",
) -> list[dict[str, Any]]:
    """Runs of a store as plain dicts, for comparison tables.

    Each dict has ``run_id``, ``run_name``, ``experiment_id``, ``status``,
    ``start_time``/``end_time`` (ms since the epoch), ``tags``, ``params`` (strings,
    as logged) and ``metrics`` (latest value of each key).

    Args:
        params_or_uri: params (their store: :func:`tracking_uri`; their experiment
            ``tracking.experiment`` is the default) or a tracking URI (default
            experiment: ``rnnexp``).
        run_ids: exactly these runs, in this order, whatever their stage or
            experiment; an unknown or deleted id raises :class:`RnnexpError`.
            Cannot be combined with ``experiment`` or ``dvc_exp``.
        experiment: the experiment to search (default: see ``params_or_uri``).
        dvc_exp: only runs tagged ``rnnexp.dvc_exp`` with this DVC experiment name.
        stage: only runs tagged ``rnnexp.stage`` with this stage (None: any stage).

    Returns:
        The selected runs; without ``run_ids``, the active runs of the experiment,
        newest first.

    Example:
        >>> runs = find_runs("sqlite:///mlflow.db", dvc_exp="gawky-bump")  # doctest: +SKIP
        >>> [r["metrics"].get("test/bpd") for r in runs]  # doctest: +SKIP
    """
    if isinstance(params_or_uri, Params):
        uri = tracking_uri(params_or_uri)
        default_experiment = params_or_uri.tracking.experiment
    else:
        uri = params_or_uri
        default_experiment = Params().tracking.experiment
    client = MlflowClient(tracking_uri=uri)

    if run_ids:
        if experiment is not None or dvc_exp is not None:
            raise RnnexpError("select runs by run id or by experiment/DVC experiment, not both")
        runs = []
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise RnnexpError(f"run {run_id!r} not found in the MLflow store {uri}") from None
            if run.info.lifecycle_stage == "deleted":
                raise RnnexpError(f"run {run_id!r} is deleted in the MLflow store {uri}")
            runs.append(_run_dict(run))
        return runs

    name = experiment or default_experiment
    found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        raise RnnexpError(f"experiment {name!r} not found in the MLflow store {uri}")
    wanted = {"rnnexp.stage": stage, "rnnexp.dvc_exp": dvc_exp}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    # The store filters on values a filter string can quote; all are checked again below.
    clauses = [f"tags.`{k}` = '{v}'" for k, v in wanted.items() if not set("'\"\\`") & set(v)]
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            filter_string=" and ".join(clauses),
            order_by=["attributes.start_time DESC"],
            max_results=_SEARCH_PAGE,
            page_token=token,
        )
        for run in page:
            if all(run.data.tags.get(k) == v for k, v in wanted.items()):
                runs.append(_run_dict(run))
        token = page.token
        if not token:
            return runs


def probe_store(params: Params, timeout_s: float = 10.0) -> str:
    """Check that the configured store answers and takes writes; a one-line summary.

    Finds (or creates) the experiment ``tracking.experiment`` and sets its tag
    ``rnnexp.last_probe``: a write that leaves no run behind. HTTP retries are
    turned off for the probe, so an unreachable server fails within ``timeout_s``.
    Raises :class:`RnnexpError` saying what failed.
    """
    uri = tracking_uri(params)
    try:
        with _fail_fast(timeout_s):
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, params.tracking.experiment, uri)
            client.set_experiment_tag(experiment_id, "rnnexp.last_probe", str(int(time.time())))
    except Exception as exc:  # MlflowException, connection errors, SQLAlchemy errors
        raise RnnexpError(f"{uri}: {_first_line(exc)}") from None
    return f"{uri} (experiment {params.tracking.experiment!r} id {experiment_id}, writable)"
