"""Bad-input setups for the MLflow store a stage logs to and the places it writes to.

A damaged ``mlflow.db`` in the workspace (the default store, ``MLFLOW_TRACKING_URI``
unset), and the cases' environments: a store that refuses, one whose host does not
resolve. Not collected by pytest; see ``bad_input_harness.Case``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient

DB = "mlflow.db"  # the default store of a workspace without MLFLOW_TRACKING_URI
# Nothing listens on port 9 (discard) here; .invalid never resolves (RFC 6761).
REFUSED = "http://127.0.0.1:9"
UNRESOLVABLE = "http://mlflow-server.invalid:5000"
REFUSED_TLS = "https://127.0.0.1:9"
REFUSED_POSTGRES = "postgresql+psycopg://rnnexp:s3cret-pw@127.0.0.1:9/mlflow"


def store_env(uri: str | None) -> tuple[tuple[str, str | None], ...]:
    """A case's environment: the tracking URI (None: unset, the workspace's mlflow.db)."""
    return (("MLFLOW_TRACKING_URI", uri),)


@functools.cache
def mlflow_db_bytes() -> bytes:
    """The bytes of a new, empty MLflow SQLite store of the installed MLflow (made once)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / DB
        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
        return db.read_bytes()


def db_file(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """Setup: the workspace's ``mlflow.db`` written by ``make(path)``."""

    def setup(ws: Path) -> list[str]:
        make(ws / DB)
        return []

    return setup


def random_bytes(path: Path) -> None:
    """Not a database at all: 8 KiB of random bytes."""
    path.write_bytes(os.urandom(8192))


def foreign_sqlite(path: Path) -> None:
    """A SQLite database of another program (MLflow would add its tables to it)."""
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE inventory (item TEXT, count INTEGER)")
        con.execute("INSERT INTO inventory VALUES ('bolts', 12)")
    con.close()


def without_table(table: str) -> Callable[[Path], None]:
    """An MLflow store with ``table`` dropped (MLflow would recreate it, empty)."""

    def make(path: Path) -> None:
        path.write_bytes(mlflow_db_bytes())
        with sqlite3.connect(path) as con:
            con.execute(f"DROP TABLE {table}")
        con.close()

    return make


def truncated_store(path: Path) -> None:
    """An MLflow store cut after its first 3 pages: a torn copy."""
    path.write_bytes(mlflow_db_bytes()[: 3 * 4096])


def a_file_at(path: str) -> Callable[[Path], list[str]]:
    """Setup: a regular file at ``path`` (where an output's folder would go)."""

    def setup(ws: Path) -> list[str]:
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text("a file, not a folder\n")
        return []

    return setup


def a_folder_at(path: str) -> Callable[[Path], list[str]]:
    """Setup: a folder (holding a file) at ``path``, where an output file goes."""

    def setup(ws: Path) -> list[str]:
        (ws / path).mkdir(parents=True)
        (ws / path / "keep.txt").write_text("the user's file\n")
        return []

    return setup
