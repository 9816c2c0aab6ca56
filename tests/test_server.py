"""`rnnexp server`: the command line it builds, and a real server that two clones share."""

from __future__ import annotations

import base64
import configparser
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    BIN,
    TINY_PIPELINE,
    free_port,
    make_git_project,
    project_env,
    run,
    start_server,
    stop_server,
)
from mlflow import MlflowClient

from rnnexp import cli
from rnnexp.commands.server import ServerOptions, server_command
from rnnexp.errors import RnnexpError


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_default_command_binds_localhost_with_sqlite_store_and_served_artifacts(tmp_path):
    cmd, env = server_command(ServerOptions(root=tmp_path / "srv", port=5123), {})
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert _arg(cmd, "--host") == "127.0.0.1"
    assert _arg(cmd, "--port") == "5123"
    assert _arg(cmd, "--backend-store-uri") == f"sqlite:///{tmp_path / 'srv/mlflow-server.db'}"
    assert _arg(cmd, "--artifacts-destination") == str(tmp_path / "srv/artifacts")
    assert "--serve-artifacts" in cmd and "--app-name" not in cmd
    assert "MLFLOW_AUTH_CONFIG_PATH" not in env
    assert not (tmp_path / "srv").exists()  # building the command writes nothing
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no GenAI job workers
    _, env = server_command(
        ServerOptions(root=tmp_path / "srv", port=5123), {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "1"}
    )
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "1"  # the user's choice wins


def test_postgres_backend_and_host_are_passed_through(tmp_path):
    url = "postgresql+psycopg://u:p@db/mlflow"
    options = ServerOptions(root=tmp_path, backend_store_uri=url, host="0.0.0.0", port=80)
    cmd, _ = server_command(options, {})
    assert _arg(cmd, "--backend-store-uri") == url and _arg(cmd, "--host") == "0.0.0.0"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"port": 0}, "--port must lie in 1..65535"),
        ({"workers": 0}, "--workers must be at least 1"),
        ({"backend_store_uri": "mlruns"}, "--backend-store-uri 'mlruns'"),
    ],
)
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(RnnexpError, match=message):
        server_command(ServerOptions(root=tmp_path, **options), {})


def test_auth_writes_a_config_with_users_in_the_root_and_a_stable_secret(tmp_path):
    options = ServerOptions(root=tmp_path / "srv", auth=True)
    cmd, env = server_command(options, {"MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-pw"})
    assert _arg(cmd, "--app-name") == "basic-auth"
    ini = configparser.ConfigParser()
    ini.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{tmp_path / 'srv/basic_auth.db'}"
    assert "admin_password" not in ini["mlflow"]  # the password stays in the environment
    secret = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert len(secret) == 64
    assert (tmp_path / "srv/flask_secret_key").stat().st_mode & 0o077 == 0
    _, again = server_command(options, {"MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-pw"})
    assert again["MLFLOW_FLASK_SERVER_SECRET_KEY"] == secret  # same key across restarts


def test_auth_without_an_admin_password_is_refused(tmp_path):
    with pytest.raises(RnnexpError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        server_command(ServerOptions(root=tmp_path, auth=True), {})


def test_cli_dry_run_prints_the_command_and_needs_no_params_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    assert cli.main(["server", "--root", str(tmp_path), "--port", "5999", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mlflow server" in out and "--port 5999" in out and "--host 127.0.0.1" in out


def test_cli_reports_bad_options_with_exit_2(tmp_path, capsys):
    status = cli.main(["server", "--root", str(tmp_path), "--backend-store-uri", "x", "--dry-run"])
    assert status == 2
    assert "rnnexp server: error: --backend-store-uri 'x'" in capsys.readouterr().err


# --- A real server -------------------------------------------------------------------------


def _serve(tmp_path: Path, *extra: str, env=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(BIN / "rnnexp"), "server", "--root", str(tmp_path / "srv"), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    return start_server([*cmd, *extra], tmp_path / "server.log", url, env=env), url


@pytest.mark.slow
def test_two_clones_log_their_pipelines_to_one_server(tmp_path):
    proc, url = _serve(tmp_path)
    try:
        clones = {}
        for name in ("alice", "bob"):
            env = project_env(MLFLOW_TRACKING_URI=url)
            repo = make_git_project(tmp_path / name, TINY_PIPELINE, env)
            run(["dvc", "repro", "train"], repo, env)
            clones[name] = run(["git", "rev-parse", "HEAD"], repo, env).strip()
            assert not (repo / "mlflow.db").exists()  # nothing went to a local store
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("rnnexp")
        runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
        assert sorted(r.data.tags["mlflow.source.git.commit"] for r in runs) == sorted(
            clones.values()
        )
        for r in runs:
            assert r.info.status == "FINISHED"
            assert len(client.get_metric_history(r.info.run_id, "val/bpd")) == 2
            # artifacts went through the server into its artifact root
            assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] == [
                "checkpoints/best.ckpt"
            ]
        assert list((tmp_path / "srv/artifacts").rglob("best.ckpt"))
    finally:
        stop_server(proc)


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            json.load(response)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_auth_server_refuses_anonymous_requests_and_takes_the_admins(tmp_path, monkeypatch):
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": "team-admin-pw-1"}
    proc, url = _serve(tmp_path, "--auth", env=env)
    try:
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
        assert _get(search) == 401
        assert _get(search, "admin", "wrong-password") == 401
        assert _get(search, "admin", "team-admin-pw-1") == 200
        # our own logging authenticates through MLflow's standard variables
        from rnnexp import tracking
        from rnnexp.config import Params

        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-admin-pw-1")
        monkeypatch.chdir(tmp_path)
        with tracking.tracked_run(Params(), "train") as handle:
            handle.log_metrics({"test/bpd": 1.5})
        run_ = MlflowClient(url).get_run(handle.run_id)
        assert run_.info.status == "FINISHED" and run_.data.metrics["test/bpd"] == 1.5
    finally:
        stop_server(proc)
