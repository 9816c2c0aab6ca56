"""Reaching the MLflow store: its URI, a client on it, its experiment, and a probe.

The default store is ``sqlite:///<workspace root>/mlflow.db``, where the workspace
root is resolved *out of* DVC's temporary experiment copies under ``<repo>/.dvc/tmp/``
(:func:`rnnexp.util.paths.workspace_root`), so queued experiments log to the main
workspace's store. ``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) points it at a
team's server. A new SQLite store is created under a file lock, and the experiment's
artifacts live beside the database. This module also says what "unreachable" means
(:data:`UNREACHABLE`) and how requests fail fast (:func:`fail_fast`). Every client
starts with one fail-fast request (:func:`connect`): a store that does not answer,
or a database file that is not an MLflow store (:func:`check_sqlite_file`), stops
the command within seconds with one message naming the setting or the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


_fast_lock = threading.Lock()
_fast_depth = 0  # fail_fast blocks open, over all threads
_fast_saved: dict[str, Any] = {}


@contextlib.contextmanager
def fail_fast(timeout_s: float = FAIL_FAST_TIMEOUT_S) -> Iterator[None]:
    """MLflow requests inside fail at once: HTTP with no retries and ``timeout_s`` seconds
    each; a database store's first connection with one attempt (MLflow's own schedule
    retries it for about 100 s).

    The settings are process-wide (environment variables, a module constant of
    MLflow's): the first block to open saves them and the last to close restores
    them, so blocks overlapping in several threads (training and the system-metrics
    monitor) never leave them changed.
    """
    import mlflow.store.db.utils as db_utils  # read by MLflow at each engine creation

    global _fast_depth
    fast = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(int(timeout_s), 1)),
    }
    with _fast_lock:
        if _fast_depth == 0:
            _fast_saved.clear()
            _fast_saved.update({k: os.environ.get(k) for k in fast})
            _fast_saved["MAX_RETRY_COUNT"] = db_utils.MAX_RETRY_COUNT
        _fast_depth += 1
        os.environ.update(fast)
        db_utils.MAX_RETRY_COUNT = 1
    try:
        yield
    finally:
        with _fast_lock:
            _fast_depth -= 1
            if _fast_depth == 0:
                db_utils.MAX_RETRY_COUNT = _fast_saved.pop("MAX_RETRY_COUNT")
                for k, v in _fast_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def reason(exc: BaseException) -> str:
    """Why a request failed, in a few words: the system's reason when a message buries it.

    MLflow wraps a refused connection in three layers of urllib3 text; the reason
    (``Connection refused``, ``Name or service not known``, ``Read timed out``) is
    what a person needs.

    Example:
        >>> reason(OSError("...NewConnectionError(... [Errno 111] Connection refused'))"))
        'Connection refused'
    """
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(
        r"(Read timed out|timed out|certificate verify failed|wrong version number)", text
    )
    if found:
        return found.group(1).strip()
    return re.sub(r"^\([\w.]+\) ", "", first_line(exc))  # SQLAlchemy's "(psycopg.Error) "


def shown(uri: str) -> str:
    """``uri`` for messages: a password in it replaced by ``***``.

    Example:
        >>> shown("postgresql+psycopg://ann:secret@db:5432/mlflow")
        'postgresql+psycopg://ann:***@db:5432/mlflow'
    """
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", uri)


def store_setting(params: Params | None) -> str:
    """What chose the store, for messages: the variable, the key, or the default."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    if params is not None and params.tracking.uri:
        return "tracking.uri"
    return "the default tracking store"


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (relative URIs: from the cwd)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def check_sqlite_file(db: Path) -> None:
    """Refuse a file that is not an MLflow store before MLflow opens (and changes) it.

    A missing or empty file is a new store. MLflow itself would fail with a SQLAlchemy
    traceback on a file that is not SQLite, and would quietly add its tables to
    another program's database or recreate the missing tables of a damaged store
    (whose runs are then lost without a word); these raise :class:`TrackingError`
    naming the file instead. The file is opened read-only and left as it was.
    """
    hint = "move it away (a new store is created) or point MLFLOW_TRACKING_URI at the right one"
    if db.is_dir():
        raise TrackingError(f"{db}: the MLflow store is a folder, not a SQLite file; {hint}")
    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        ) as con:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {name for (name,) in rows} - {"sqlite_sequence"}
            version = None
            if "alembic_version" in tables:
                version = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as exc:
        raise TrackingError(f"{db}: not a usable MLflow store: {exc}; {hint}") from None
    if not tables:
        return  # an empty database: MLflow creates its tables
    if not {"alembic_version", "experiments", "runs"} & tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise TrackingError(f"{db}: not an MLflow tracking store (tables {shown}); {hint}")
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.store.tracking.dbmodels import models  # noqa: F401 - fills Base's tables

    missing = sorted(set(Base.metadata.tables) - tables)
    if "alembic_version" not in tables or (missing and version == (_get_latest_schema_revision(),)):
        missing = ["alembic_version"] if "alembic_version" not in tables else missing
        raise TrackingError(
            f"{db}: a damaged MLflow store: table(s) {', '.join(missing[:5])} missing; "
            "restore it from a backup, or move it away to start a new store"
        )


def init_sqlite_store(uri: str) -> None:
    """Check the database file, then create (or open) the store under a file lock.

    Two processes opening a new store at once (``dvc queue start -j 2`` on a fresh
    clone) race MLflow's table migrations and both fail; the lock lets one create
    the tables while the other waits, then finds them. A file that is not an MLflow
    store raises :class:`TrackingError` naming it (:func:`check_sqlite_file`).
    """
    db = sqlite_path(uri)
    check_sqlite_file(db)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None  # type: ignore[assignment]
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            with fail_fast():
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as exc:  # sqlite3/SQLAlchemy errors, an out-of-date schema, no access
        raise TrackingError(f"{db}: cannot open the MLflow store: {reason(exc)}") from None


def reach(client: MlflowClient, uri: str, setting: str, timeout_s: float) -> None:
    """One read request, failing fast: raises :class:`TrackingError` when the store does
    not answer (nothing listens, an unknown host, a server that never replies)."""
    try:
        with fail_fast(timeout_s):
            client.search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, requests' and SQLAlchemy's errors
        raise TrackingError(
            f"{setting} {shown(uri)}: the MLflow tracking store does not answer ({reason(exc)}); "
            "start it, or point MLFLOW_TRACKING_URI at one that runs"
        ) from None


def connect(params: Params | None = None) -> tuple[MlflowClient, str]:
    """A client on the configured store, which has just answered, and the store's URI.

    The store is contacted once, failing fast (:func:`fail_fast`): an unreachable
    server, a database that refuses the connection or a file that is not an MLflow
    store raises :class:`TrackingError` within seconds, naming the setting or the
    file, before any work starts. A URI that cannot be opened at all raises
    :class:`RnnexpError` naming the setting.
    """
    uri = tracking_uri(params)
    setting = store_setting(params)
    if uri.startswith("sqlite:///"):
        init_sqlite_store(uri)
    try:
        with fail_fast():  # a database store connects here
            client = MlflowClient(tracking_uri=uri)
    except Exception as exc:  # e.g. an unknown scheme: a bad URI, the user's to fix
        raise TrackingError(
            f"{setting} {shown(uri)!r}: cannot open the MLflow tracking store: {reason(exc)}"
        ) from None
    if not uri.startswith("sqlite:///"):  # a SQLite store has just answered, under its lock
        reach(client, uri, setting, FAIL_FAST_TIMEOUT_S)
    return client, uri


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


def probe_store(params: Params, timeout_s: float = 10.0, write: bool = True) -> str:
    """Check that the configured store answers (and takes writes); a one-line summary.

    With ``write`` it finds (or creates) the experiment ``tracking.experiment`` and
    sets its tag ``rnnexp.last_probe``: a write that leaves no run behind. Without,
    it only reads (``rnnexp compare``, and stages before their work: nothing is
    created). Requests fail fast (:func:`fail_fast`), so an unreachable server fails
    within ``timeout_s``. Raises :class:`RnnexpError` (a :class:`TrackingError`)
    saying what failed and naming the setting or the database file.
    """
    uri = tracking_uri(params)
    setting = store_setting(params)
    if uri.startswith("sqlite:///"):
        init_sqlite_store(uri)
    try:
        with fail_fast(timeout_s):
            client = MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(
            f"{setting} {shown(uri)!r}: cannot open the MLflow tracking store: {reason(exc)}"
        ) from None
    reach(client, uri, setting, timeout_s)
    if not write:
        return f"{shown(uri)} (answers)"
    try:
        with fail_fast(timeout_s):
            found = experiment_id(client, params.tracking.experiment, uri)
            client.set_experiment_tag(found, "rnnexp.last_probe", str(int(time.time())))
    except Exception as exc:  # MlflowException, connection errors, SQLAlchemy errors
        raise TrackingError(f"{shown(uri)}: {reason(exc)}") from None
    return f"{shown(uri)} (experiment {params.tracking.experiment!r} id {found}, writable)"


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
