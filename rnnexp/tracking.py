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
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

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


def source_tags() -> dict[str, str]:
    """Git commit and dirty flag, DVC experiment name, host and pid of this process."""
    tags = {"rnnexp.host": socket.gethostname(), "rnnexp.pid": str(os.getpid())}
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


@dataclass
class RunHandle:
    """An open MLflow run: the client, its id, and whether an interrupt arrived."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    interrupted: bool = field(default=False)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self.client.log_batch(self.run_id, tags=items)

    def log_image(self, image: Any, key: str, step: int | None = None) -> None:
        """A PIL image as an MLflow image series (``key``, ``step``) for the UI's slider."""
        self.client.log_image(self.run_id, image, key=key, step=step or 0)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


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


def connect(params: Params | None = None) -> tuple[MlflowClient, str]:
    """A client on the configured store and the store's URI."""
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        _init_sqlite_store(uri)
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as exc:  # e.g. an unknown scheme: a bad URI, the user's to fix
        source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RnnexpError(
            f"{source} {uri!r}: cannot open the MLflow tracking store: {first}"
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
) -> Iterator[RunHandle]:
    """Open an MLflow run for one stage execution and always close it.

    The run gets the flattened params, the source tags (:func:`source_tags`), the
    stage tag and ``tags``; with ``parent_run_id`` it is nested under that run. It
    ends FINISHED, FAILED (exception) or KILLED (Ctrl-C, SIGTERM); exceptions of
    the types in ``finished_on`` (a pruned trial) end it FINISHED. Exceptions
    propagate. With ``tracking.enabled`` false, and in every process of a
    distributed run but global rank 0, it yields a
    :class:`~rnnexp.distributed.NullRunHandle` and logs nothing.
    """
    if not params.tracking.enabled or not is_global_zero(params.train.devices):
        yield NullRunHandle()  # type: ignore[misc]
        return
    client, uri = connect(params)
    experiment_id = _experiment_id(client, params.tracking.experiment, uri)
    all_tags = {**source_tags(), "rnnexp.stage": stage, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(
        experiment_id, tags={k: str(v) for k, v in all_tags.items()}, run_name=run_name
    )
    handle = RunHandle(client, run.info.run_id, experiment_id)
    error: BaseException | None = None
    try:
        with _interrupts_raise(handle):
            handle.log_params(params.flat())
            yield handle
    except finished_on:
        raise
    except BaseException as exc:
        error = exc
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            handle.set_tags({"rnnexp.error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        client.set_terminated(handle.run_id, status=_end_status(error, handle))


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
    from rnnexp.errors import RnnexpError

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
    from rnnexp.errors import RnnexpError

    uri = tracking_uri(params)
    keys = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(timeout_s))
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, params.tracking.experiment, uri)
        client.set_experiment_tag(experiment_id, "rnnexp.last_probe", str(int(time.time())))
    except Exception as exc:  # MlflowException, connection errors, SQLAlchemy errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnexpError(f"{uri}: {first[:300]}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return f"{uri} (experiment {params.tracking.experiment!r} id {experiment_id}, writable)"
