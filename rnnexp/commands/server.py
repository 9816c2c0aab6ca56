"""``rnnexp server``: the team's shared MLflow tracking server.

Builds the ``mlflow server`` command line and runs it (MLflow as a subprocess, so
this module imports no mlflow): a SQLite (default ``<root>/mlflow-server.db``) or
PostgreSQL backend store, artifacts served by the server from ``<root>/artifacts``
(clients upload through HTTP, so they need no shared disk), bound to 127.0.0.1
unless ``--host`` says otherwise.

With ``--auth`` MLflow's ``basic-auth`` app guards every request. MLflow ships no
admin password: the first start against an empty user store creates the admin
from ``MLFLOW_AUTH_ADMIN_PASSWORD`` (user ``admin`` unless
``MLFLOW_AUTH_ADMIN_USERNAME``). The auth config (``<root>/basic_auth.ini``, users
in ``<root>/basic_auth.db``) and a CSRF secret key (``<root>/flask_secret_key``,
or ``MLFLOW_FLASK_SERVER_SECRET_KEY``) are written on first use. Clients
authenticate with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.

Example:
    >>> cmd, env = server_command(ServerOptions(root=Path("/srv/mlflow"), port=5001), {})
    >>> " ".join(cmd[1:6])
    '-m mlflow server --backend-store-uri sqlite:////srv/mlflow/mlflow-server.db'
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.util.atomic import atomic_write_text
from rnnexp.util.servers import become_server, check_host_port

BACKEND_DB = "mlflow-server.db"
ARTIFACTS = "artifacts"
AUTH_INI = "basic_auth.ini"
AUTH_DB = "basic_auth.db"
SECRET_FILE = "flask_secret_key"
BACKEND_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://")


@dataclass(frozen=True)
class ServerOptions:
    """What ``rnnexp server`` was asked for (see :func:`server_command`)."""

    root: Path
    backend_store_uri: str | None = None  # default: sqlite:///<root>/mlflow-server.db
    artifacts_destination: str | None = None  # default: <root>/artifacts
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    auth: bool = False
    allowed_hosts: str | None = None  # MLflow's default: localhost and private addresses


def _check(options: ServerOptions) -> None:
    check_host_port(options.host, options.port)
    if options.workers < 1:
        raise RnnexpError(f"--workers must be at least 1, got {options.workers}")
    uri = options.backend_store_uri
    if uri is not None and not uri.startswith(BACKEND_SCHEMES):
        raise RnnexpError(
            f"--backend-store-uri {uri!r}: expected sqlite:///<absolute path> or "
            "postgresql+psycopg://user:password@host/db"
        )


def _auth_files(root: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Write the basic-auth config (once) and return the env vars the server needs."""
    root.mkdir(parents=True, exist_ok=True)
    ini = root / AUTH_INI
    if not ini.is_file():
        atomic_write_text(
            ini,
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{root / AUTH_DB}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        )
    if not (root / AUTH_DB).is_file() and not env.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise RnnexpError(
            "--auth: the first start creates the admin user; set its password in "
            "MLFLOW_AUTH_ADMIN_PASSWORD (MLflow ships no default password)"
        )
    extra = {"MLFLOW_AUTH_CONFIG_PATH": str(ini)}
    if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        secret = root / SECRET_FILE
        if not secret.is_file():
            atomic_write_text(secret, secrets.token_hex(32))
            secret.chmod(0o600)
        extra["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret.read_text().strip()
    return extra


def server_command(
    options: ServerOptions, env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` argv and environment for ``options``.

    With ``auth`` it writes the auth config and secret key into ``options.root``.
    Raises :class:`RnnexpError` on bad options.
    """
    _check(options)
    env = dict(os.environ if env is None else env)
    # MLflow 3 starts a job runner and seven huey consumers for its GenAI jobs,
    # which experiment tracking never uses: ~20 s of CPU at start, nine processes.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    root = options.root.resolve()
    backend = options.backend_store_uri or f"sqlite:///{root / BACKEND_DB}"
    artifacts = options.artifacts_destination or str(root / ARTIFACTS)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", options.host,
        "--port", str(options.port),
        "--workers", str(options.workers),
    ]  # fmt: skip
    if options.allowed_hosts:
        cmd += ["--allowed-hosts", options.allowed_hosts]
    if options.auth:
        cmd += ["--app-name", "basic-auth"]
        env.update(_auth_files(root, env))
    return cmd, env


def run_server(options: ServerOptions, dry_run: bool = False) -> int:
    """Replace this process by ``mlflow server`` (or, ``dry_run``, print its command)."""
    cmd, env = server_command(options)
    options.root.mkdir(parents=True, exist_ok=True)
    where = f"http://{options.host}:{options.port}"
    if dry_run:
        print(" ".join(cmd))
        return 0
    banner = f"server: MLflow tracking server at {where}; clients: MLFLOW_TRACKING_URI={where}"
    become_server(cmd, banner, env)
    return 0  # not reached


def main(args: Any, params: Params | None) -> int:
    """Run (or, ``--dry-run``, print) the team's ``mlflow server``."""
    from rnnexp.util.paths import workspace_root

    root = Path(args.root) if args.root else workspace_root() / "mlflow-server"
    options = ServerOptions(
        root=root,
        backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination,
        host=args.host,
        port=args.port,
        workers=args.workers,
        auth=args.auth,
        allowed_hosts=args.allowed_hosts,
    )
    return run_server(options, dry_run=args.dry_run)
