"""Where a study lives: its Optuna storage (SQLite, journal file or PostgreSQL, from
``tune.storage``) and the folder where its trials keep their checkpoints."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from rnnexp.config import Params
from rnnexp.errors import ConfigError, RnnexpError
from rnnexp.util.paths import workspace_root


def storage_url(params: Params) -> str:
    """The study storage: ``tune.storage`` or the workspace's SQLite file."""
    return params.tune.storage or f"sqlite:///{workspace_root() / 'optuna.db'}"


def journal_path(url: str) -> Path:
    """The file of a ``journal:<file>`` storage; a relative one is from the workspace root."""
    path = Path(url.removeprefix("journal:"))
    return path if path.is_absolute() else workspace_root() / path


def open_storage(params: Params, workers: int) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``workers`` processes; SQLite refuses more than one."""
    url = storage_url(params)
    if url.startswith("journal:"):
        path = journal_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite") and workers > 1:
        raise ConfigError(
            f"tune.storage: SQLite ({url}) takes one writer, but {workers} workers were asked "
            "for; use 'journal:optuna-journal.log' for workers on one machine, or "
            "'postgresql+psycopg://user:password@host/db' for workers on several machines"
        )
    try:
        return RDBStorage(
            url,
            heartbeat_interval=params.tune.heartbeat,
            grace_period=2 * params.tune.heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    except Exception as exc:  # SQLAlchemy: bad URL, missing driver, server down
        raise RnnexpError(f"tune.storage {url!r}: cannot open the study storage: {exc}") from None


def trials_dir(study_name: str) -> Path:
    """Where the trials of a study keep their checkpoints, one folder per trial number."""
    return workspace_root() / ".rnnexp" / "trials" / study_name
