"""Reaching the MLflow store: its URI, a client on it, its experiment, and a probe.

The default store is ``sqlite:///<workspace root>/mlflow.db``, where the workspace
root is resolved *out of* DVC's temporary experiment copies under ``<repo>/.dvc/tmp/``
(:func:`rnnexp.util.paths.workspace_root`), so queued experiments log to the main
workspace's store. ``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) points it at a
team's server. A new SQLite store is created under a file lock, and the experiment's
artifacts live beside the database. This module also says what "unreachable" means
(:data:`UNREACHABLE`) and how requests fail fast (:func:`fail_fast`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.tracking._names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from rnnexp.util.paths import workspace_root

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# While training, one quick try per request: a dead server must not stall training
# for MLflow's default retry schedule (about 4 minutes per request). The final
# delivery at the end of the run uses the user's MLFLOW_HTTP_REQUEST_* settings.
FAIL_FAST_TIMEOUT_S = 10

UNREACHABLE = (MlflowException, OSError)  # requests' errors are OSErrors


class TrackingError(RnnexpError):
    """The MLflow store could not be reached: a run not opened, or logging not delivered."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line notes."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def tracking_uri(params: Params | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``tracking.uri``, else the workspace's SQLite file."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if params is not None and params.tracking.uri:
        return params.tracking.uri
    return f"sqlite:///{workspace_root() / DEFAULT_DB}"


@contextlib.contextmanager
def fail_fast(timeout_s: float = FAIL_FAST_TIMEOUT_S) -> Iterator[None]:
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


def init_sqlite_store(uri: str) -> None:
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
    """A client on the configured store and the store's URI.

    Raises :class:`RnnexpError` naming the setting when the URI cannot be opened.
    """
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        init_sqlite_store(uri)
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as exc:  # e.g. an unknown scheme: a bad URI, the user's to fix
        source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
        raise RnnexpError(
            f"{source} {uri!r}: cannot open the MLflow tracking store: {first_line(exc)}"
        ) from None


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, restored if deleted, created if missing.

    The experiment declares model training (tag :data:`EXPERIMENT_KIND_TAG` =
    :data:`EXPERIMENT_KIND`, so that MLflow 3's UI opens on its runs table, not on
    the GenAI overview): set when it is created, or when first used without one
    (or with only the UI's inferred guess).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        kind = experiment.tags.get(EXPERIMENT_KIND_TAG, "")
        if not kind or kind.endswith("_inferred"):  # unset, or only the UI's guess
            client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Artifacts beside the database, not relative to a (possibly temporary) cwd.
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent / ARTIFACTS_DIR).as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except MlflowException:  # created by a concurrent process in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment_id(client, name, uri)  # and its kind tag, if it has none yet


def probe_store(params: Params, timeout_s: float = 10.0) -> str:
    """Check that the configured store answers and takes writes; a one-line summary.

    Finds (or creates) the experiment ``tracking.experiment`` and sets its tag
    ``rnnexp.last_probe``: a write that leaves no run behind. HTTP retries are
    turned off for the probe, so an unreachable server fails within ``timeout_s``.
    Raises :class:`RnnexpError` saying what failed.
    """
    uri = tracking_uri(params)
    try:
        with fail_fast(timeout_s):
            client = MlflowClient(tracking_uri=uri)
            found = experiment_id(client, params.tracking.experiment, uri)
            client.set_experiment_tag(found, "rnnexp.last_probe", str(int(time.time())))
    except Exception as exc:  # MlflowException, connection errors, SQLAlchemy errors
        raise RnnexpError(f"{uri}: {first_line(exc)}") from None
    return f"{uri} (experiment {params.tracking.experiment!r} id {found}, writable)"


@contextlib.contextmanager
def global_store(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI is ``uri`` inside (for its fluent model calls).

    MLflow's own ``_use_tracking_uri`` restores the URI but unsets
    ``MLFLOW_TRACKING_URI`` on the way out when no global URI was set; the variable
    is restored here too.
    """
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
