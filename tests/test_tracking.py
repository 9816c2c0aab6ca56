"""MLflow run lifecycle: never left RUNNING; stores resolve to the main workspace."""

import os
import signal
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from rnnexp import tracking
from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.util.paths import workspace_root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield MlflowClient(uri)
    if old is None:
        del os.environ["MLFLOW_TRACKING_URI"]
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def status(client, run_id):
    return client.get_run(run_id).info.status


def test_finished_run_has_params_and_tags(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    with tracking.tracked_run(Params(), "train", tags={"rnnexp.data_hash": "h1"}) as run:
        run.log_metrics({"val/bpd": 1.5}, step=3)
    data = store.get_run(run.run_id).data
    assert status(store, run.run_id) == "FINISHED"
    assert data.params["train.lr"] == str(Params().train.lr)
    assert data.params["data.path"] == "None"
    assert data.tags["rnnexp.stage"] == "train"
    assert data.tags["rnnexp.dvc_exp"] == "exp-abc"
    assert data.tags["rnnexp.data_hash"] == "h1"
    assert data.tags["rnnexp.pid"] == str(os.getpid())
    assert data.tags["mlflow.source.name"] == "rnnexp train"  # the UI's Source column
    history = store.get_metric_history(run.run_id, "val/bpd")
    assert [(m.step, m.value) for m in history] == [(3, 1.5)]


def test_exception_ends_failed_with_message(store):
    with pytest.raises(RnnexpError):
        with tracking.tracked_run(Params(), "train") as run:
            raise RnnexpError("bad data in x.npz")
    assert status(store, run.run_id) == "FAILED"
    assert "bad data in x.npz" in store.get_run(run.run_id).data.tags["rnnexp.error"]


def test_keyboard_interrupt_ends_killed(store):
    with pytest.raises(KeyboardInterrupt):
        with tracking.tracked_run(Params(), "train") as run:
            raise KeyboardInterrupt
    assert status(store, run.run_id) == "KILLED"


def test_sigterm_ends_killed_and_restores_handler(store):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with tracking.tracked_run(Params(), "train") as run:
            os.kill(os.getpid(), signal.SIGTERM)
    assert status(store, run.run_id) == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_interrupt_turned_into_system_exit_ends_killed(store):
    # Lightning catches KeyboardInterrupt and calls sys.exit(1).
    with pytest.raises(SystemExit):
        with tracking.tracked_run(Params(), "train") as run:
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                raise SystemExit(1) from None
    assert status(store, run.run_id) == "KILLED"


def test_plain_system_exit_1_is_failed(store):
    with pytest.raises(SystemExit):
        with tracking.tracked_run(Params(), "train") as run:
            raise SystemExit(1)
    assert status(store, run.run_id) == "FAILED"


def test_open_existing_run_copes_with_unknown_id(store):
    assert tracking.open_existing_run(Params(), "0" * 32) is None
    assert tracking.open_existing_run(Params(), None) is None
    with tracking.tracked_run(Params(), "train") as run:
        pass
    assert tracking.open_existing_run(Params(), run.run_id).run_id == run.run_id


def test_workspace_root_leaves_dvc_experiment_copies(tmp_path):
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    copy.mkdir(parents=True)
    assert workspace_root(copy) == repo
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "rnnexp").mkdir()
    assert workspace_root(repo / "rnnexp") == repo


def test_default_uri_is_absolute_sqlite_at_workspace_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path / "models")
    assert tracking.tracking_uri(Params()) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(Params()) == "http://127.0.0.1:5000"


def test_artifacts_live_beside_the_sqlite_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path.parent)
    with tracking.tracked_run(Params(), "train") as run:
        run.log_text("hello", "note.txt")
    assert (tmp_path / "mlartifacts").is_dir()
    found = list((tmp_path / "mlartifacts").rglob("note.txt"))
    assert len(found) == 1 and found[0].read_text() == "hello"


def test_public_api_is_small_and_every_name_resolves():
    assert len(tracking.__all__) <= 12  # 11, and find_served_model for `rnnexp serve`
    assert len(set(tracking.__all__)) == len(tracking.__all__)
    missing = [name for name in tracking.__all__ if getattr(tracking, name, None) is None]
    assert missing == []
    assert tracking.MlflowRunLogger.__module__ == "rnnexp.tracking._lightning"
    with pytest.raises(AttributeError, match="no_such_name"):
        tracking.no_such_name  # noqa: B018


def test_importing_tracking_does_not_load_lightning_until_the_logger_is_used():
    code = (
        "import sys, rnnexp.tracking as t\n"
        "print(any(m.startswith('lightning') for m in sys.modules))\n"
        "t.MlflowRunLogger\n"
        "print(any(m.startswith('lightning') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
