"""`rnnexp dashboard`: the optuna-dashboard command line per storage kind, the
refusals of storages that do not exist, and a real dashboard serving a study."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers import BIN, free_port, project_env, stop_server
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from rnnexp import cli
from rnnexp.util import servers

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
STUDY = "dashboard-toy"
START_S = 120  # a busy 2-core machine: the dashboard answers in ~3 s, allow far more


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A workspace root (it holds dvc.yaml) as the cwd; os.execve must not be reached."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)

    def no_exec(*args):
        raise AssertionError(f"the dashboard was started: {args}")

    monkeypatch.setattr(servers.os, "execve", no_exec)
    return tmp_path


def _make_study(storage) -> None:
    """A study named STUDY with two finished trials of a toy objective."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    study.optimize(lambda trial: (trial.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=2)


def _journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def rnnexp(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``rnnexp dashboard --params params.yaml argv...``."""
    code = cli.main(["dashboard", "--params", str(PARAMS_YAML), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _dry_run(capsys, *argv: str) -> list[str]:
    code, out, err = rnnexp(capsys, "--dry-run", *argv)
    assert code == 0, err
    return shlex.split(out.strip())


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_default_storage_is_the_workspace_sqlite_file_on_localhost(workspace, capsys):
    _make_study(f"sqlite:///{workspace / 'optuna.db'}")
    cmd = _dry_run(capsys, "--set", "tune.storage=null")
    assert cmd[:2] == [sys.executable, "-c"] and "optuna_dashboard" in cmd[2]
    assert cmd[3] == f"sqlite:///{workspace / 'optuna.db'}"
    assert _after(cmd, "--storage-class") == "RDBStorage"
    assert (_after(cmd, "--host"), _after(cmd, "--port")) == ("127.0.0.1", "8080")


def test_relative_sqlite_url_is_made_absolute(workspace, capsys):
    _make_study(f"sqlite:///{workspace / 'study.db'}")
    cmd = _dry_run(capsys, "--set", "tune.storage=sqlite:///study.db", "--port", "9123")
    assert cmd[3] == f"sqlite:///{workspace / 'study.db'}"
    assert _after(cmd, "--port") == "9123"


def test_journal_file_is_taken_from_the_workspace_root(workspace, capsys, monkeypatch):
    _make_study(_journal(workspace / "journal.log"))
    (workspace / "sub").mkdir()
    monkeypatch.chdir(workspace / "sub")  # the root, not the cwd, anchors the path
    cmd = _dry_run(capsys, "--set", "tune.storage=journal:journal.log")
    assert cmd[3] == str(workspace / "journal.log")
    assert _after(cmd, "--storage-class") == "JournalFileStorage"


def test_postgres_url_and_host_are_passed_through_without_connecting(workspace, capsys):
    url = "postgresql+psycopg://user:pw@127.0.0.1:1/optuna"  # nothing listens on port 1
    cmd = _dry_run(capsys, "--set", f"tune.storage={url}", "--host", "0.0.0.0")
    assert cmd[3] == url and _after(cmd, "--storage-class") == "RDBStorage"
    assert _after(cmd, "--host") == "0.0.0.0"


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_missing_sqlite_file_is_refused_and_not_created(workspace, capsys, dry_run):
    code, out, err = rnnexp(capsys, "--set", "tune.storage=null", *dry_run)
    assert code == 2 and out == ""
    assert f"no study storage at {workspace / 'optuna.db'}" in err
    assert not (workspace / "optuna.db").exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_missing_journal_file_is_refused_and_not_created(workspace, capsys, dry_run):
    code, out, err = rnnexp(capsys, "--set", "tune.storage=journal:logs/j.log", *dry_run)
    assert code == 2 and out == ""
    assert f"no journal file at {workspace / 'logs/j.log'}" in err
    assert not (workspace / "logs").exists()


def test_sqlite_file_without_optuna_tables_is_refused(workspace, capsys):
    import sqlite3

    with sqlite3.connect(workspace / "other.db") as db:
        db.execute("CREATE TABLE runs (id INTEGER)")
    db.close()
    (workspace / "text.db").write_text("not a database\n")
    code, _, err = rnnexp(capsys, "--set", "tune.storage=sqlite:///other.db")
    assert code == 2 and f"{workspace / 'other.db'} holds no Optuna study storage" in err
    code, _, err = rnnexp(capsys, "--set", "tune.storage=sqlite:///text.db")
    assert code == 2 and f"{workspace / 'text.db'} is not a SQLite database" in err


def test_unreachable_postgres_is_refused_with_the_password_hidden(workspace, capsys):
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/optuna"
    code, out, err = rnnexp(capsys, "--set", f"tune.storage={url}")
    assert code == 2 and out == ""
    assert "cannot open the study storage" in err and "127.0.0.1:1/optuna" in err
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1


def test_port_in_use_is_refused_before_starting(workspace, capsys):
    _make_study(f"sqlite:///{workspace / 'optuna.db'}")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, out, err = rnnexp(capsys, "--set", "tune.storage=null", "--port", str(port))
    assert code == 2 and out == ""
    assert f"--port {port}: the address is in use" in err


def test_bad_port_and_unknown_storage_are_refused(workspace, capsys):
    code, _, err = rnnexp(capsys, "--dry-run", "--port", "70000")
    assert code == 2 and "--port must lie in 1..65535, got 70000" in err
    code, _, err = rnnexp(capsys, "--dry-run", "--set", "tune.storage=optuna.db")
    assert code == 2 and "tune.storage 'optuna.db': expected null, journal:<file>" in err


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_for_studies(proc: subprocess.Popen, base: str, log: Path) -> dict:
    """The first answer of ``base``/api/studies; fails if the process exits or START_S passes."""
    deadline = time.monotonic() + START_S
    while True:
        try:
            return _get_json(f"{base}/api/studies")
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited ({proc.returncode})" if proc.poll() is not None else "no answer"
            raise AssertionError(f"dashboard {why}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_dashboard_serves_the_study(tmp_path, kind):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    if kind == "sqlite":
        setting = "null"
        _make_study(f"sqlite:///{tmp_path / 'optuna.db'}")
    else:
        setting = "journal:optuna-journal.log"
        _make_study(_journal(tmp_path / "optuna-journal.log"))
    port, log = free_port(), tmp_path / "dashboard.log"
    cmd = [str(BIN / "rnnexp"), "dashboard", "--params", str(PARAMS_YAML)]
    cmd += ["--set", f"tune.storage={setting}", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=project_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        summaries = _wait_for_studies(proc, base, log)["study_summaries"]
        assert [s["study_name"] for s in summaries] == [STUDY]
        detail = _get_json(f"{base}/api/studies/{summaries[0]['study_id']}")
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
    finally:
        stop_server(proc)
    assert f"optuna-dashboard at {base}/" in log.read_text()
