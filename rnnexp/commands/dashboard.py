"""``rnnexp dashboard``: optuna-dashboard on the tune stage's study storage.

The storage is the tune stage's (``tune.storage``, see :func:`rnnexp.stages.tune.storage_url`):

- ``null``: ``sqlite:///<workspace root>/optuna.db``;
- ``journal:<file>``: Optuna's journal file (a relative path from the workspace root);
- an SQLAlchemy URL such as ``postgresql+psycopg://user:password@host/db``.

The storage must already hold a study store: a missing SQLite or journal file, or a
database without Optuna's tables, is an error before anything starts (the dashboard
would otherwise create an empty database). optuna-dashboard then replaces this
process (its own console script, in this interpreter), so Ctrl-C and SIGTERM reach
it directly. It binds 127.0.0.1 unless ``--host`` says otherwise.

Example:
    >>> cmd = dashboard_command(DashboardOptions("postgresql+psycopg://db/optuna"), check=False)
    >>> " ".join(cmd[3:])
    'postgresql+psycopg://db/optuna --storage-class RDBStorage --host 127.0.0.1 --port 8080'
"""

from __future__ import annotations

import shlex
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.util.servers import become_server, check_address, check_host_port

SCRIPT = "optuna-dashboard"  # the console script of the optuna-dashboard package
SQLITE = "sqlite:///"
JOURNAL = "journal:"
STUDY_TABLE = "studies"  # present in every Optuna RDB storage


@dataclass(frozen=True)
class DashboardOptions:
    """What ``rnnexp dashboard`` was asked for (see :func:`dashboard_command`)."""

    storage: str  # tune.storage as storage_url gives it
    host: str = "127.0.0.1"
    port: int = 8080


def _shown(url: str) -> str:
    """``url`` with any password masked, for messages."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: say it as given
        return url


def _check_sqlite(url: str) -> str:
    """The SQLite file of ``url`` exists and holds Optuna's tables (opened read-only).

    Returns ``url`` with the file's absolute path.
    """
    name, sep, query = url.removeprefix(SQLITE).partition("?")
    if not name or name == ":memory:":
        raise RnnexpError(f"tune.storage {url!r}: an in-memory SQLite database holds no study")
    path = Path(name).resolve()  # SQLAlchemy takes a relative path from the cwd
    if not path.is_file():
        raise RnnexpError(
            f"tune.storage {url!r}: no study storage at {path}; run the tune stage "
            "first (dvc repro tune) or set tune.storage to the study's storage"
        )
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (STUDY_TABLE,)
            ).fetchone()
    except sqlite3.Error as exc:
        raise RnnexpError(f"tune.storage {url!r}: {path} is not a SQLite database: {exc}") from None
    if not found:
        raise RnnexpError(f"tune.storage {url!r}: {path} holds no Optuna study storage")
    return f"{SQLITE}{path}{sep}{query}"


def _check_rdb(url: str) -> None:
    """The database of ``url`` answers and holds Optuna's tables (connects to it)."""
    from sqlalchemy import create_engine, inspect

    try:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                found = inspect(connection).has_table(STUDY_TABLE)
        finally:
            engine.dispose()
    except Exception as exc:  # bad URL, missing driver, server down, no access
        why = (str(exc).splitlines() or [type(exc).__name__])[0]  # one line
        raise RnnexpError(
            f"tune.storage {_shown(url)!r}: cannot open the study storage: {why}"
        ) from None
    if not found:
        raise RnnexpError(f"tune.storage {_shown(url)!r}: the database holds no Optuna study")


def _storage_args(url: str, connect: bool) -> list[str]:
    """optuna-dashboard's storage arguments for ``url``; checks that the storage exists.

    A server database (PostgreSQL, ...) is connected to only when ``connect``.
    """
    if url.startswith(JOURNAL):
        from rnnexp.stages.tune import journal_path  # the tune stage's own rule

        path = journal_path(url)
        if not path.is_file():
            raise RnnexpError(
                f"tune.storage {url!r}: no journal file at {path}; run the tune stage "
                "first (dvc repro tune) or set tune.storage to the study's storage"
            )
        return [str(path), "--storage-class", "JournalFileStorage"]
    if url.startswith(SQLITE):
        url = _check_sqlite(url)
    elif "://" in url and not url.startswith("sqlite"):
        if connect:
            _check_rdb(url)
    else:
        raise RnnexpError(
            f"tune.storage {url!r}: expected null, journal:<file>, sqlite:///<file> or "
            "postgresql+psycopg://user:password@host/db"
        )
    return [url, "--storage-class", "RDBStorage"]


def _script_argv() -> list[str]:
    """This interpreter running optuna-dashboard's console script (as its entry point names)."""
    found = entry_points(group="console_scripts", name=SCRIPT)
    if not found:
        raise RnnexpError(
            "optuna-dashboard is not installed in this environment: "
            "pip install 'optuna-dashboard>=0.21' (or scripts/setup)"
        )
    ep = next(iter(found))
    code = (
        f"import sys; from {ep.module} import {ep.attr}; "
        f'sys.argv[0] = "{SCRIPT}"; sys.exit({ep.attr}())'
    )
    return [sys.executable, "-c", code]


def dashboard_command(options: DashboardOptions, check: bool = True) -> list[str]:
    """The argv that runs optuna-dashboard on ``options.storage``.

    Checks the port range and that a SQLite or journal storage exists (``check``: that a
    server database answers too). Raises :class:`RnnexpError` on bad options.
    """
    check_host_port(options.host, options.port)
    storage = _storage_args(options.storage, connect=check)
    return _script_argv() + storage + ["--host", options.host, "--port", str(options.port)]


def run_dashboard(options: DashboardOptions, dry_run: bool = False) -> int:
    """Replace this process by optuna-dashboard (or, ``dry_run``, print its command)."""
    cmd = dashboard_command(options, check=not dry_run)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    check_address(options.host, options.port)
    where = f"http://{options.host}:{options.port}/"
    become_server(cmd, f"dashboard: optuna-dashboard at {where} on {_shown(options.storage)}")
    return 0  # not reached


def main(args: Any, params: Params) -> int:
    """Run (or, ``--dry-run``, print) optuna-dashboard on the tune stage's storage."""
    from rnnexp.stages.tune import storage_url

    options = DashboardOptions(storage=storage_url(params), host=args.host, port=args.port)
    return run_dashboard(options, dry_run=args.dry_run)
