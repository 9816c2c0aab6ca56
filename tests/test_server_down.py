"""The MLflow tracking server dies in the middle of a training run.

A real ``mlflow server`` (SQLite backend in a temporary folder) on a free localhost
port; ``rnnexp train`` runs in a subprocess whose callback asks the test to kill
the server after epoch 0 and (or not) to start it again after epoch 2. Training
must finish and write its checkpoints either way; the metrics logged while the
server was down are delivered when it comes back, or the command exits non-zero
naming what was not logged and saving it to a file — never silently lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import PARAMS_YAML
from helpers import TRAINED, free_port, set_args, start_server, tiny
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


TRAINER = textwrap.dedent(
    """
    import pathlib, sys, time
    import lightning.pytorch as pl
    import rnnexp.training.fit as train
    from rnnexp import cli

    class Handshake(pl.Callback):
        # After epoch 0 ask for the server to go down; after epoch 2 for it to come back.
        def on_validation_end(self, trainer, module):
            name = {0: "down", 2: "up"}.get(trainer.current_epoch)
            if name:
                folder = pathlib.Path(sys.argv[1])
                (folder / f"{name}.request").touch()
                while not (folder / f"{name}.done").exists():
                    time.sleep(0.1)

    original = train.run_training
    train.run_training = lambda *a, **k: original(*a, callbacks=[Handshake()], **k)
    sys.exit(cli.main(sys.argv[2:]))
    """
)


class Server:
    """``mlflow server`` over a SQLite file, startable again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self.proc = start_server(cmd, self.root / "server.log", self.url)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would, and wait until it is gone."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    s = Server(root)
    s.start()
    yield s
    s.kill()


def train_through_outage(server: Server, work: Path, comes_back: bool):
    """Run `rnnexp train` (4 epochs) while the server dies after epoch 0."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        # The final delivery: one retry, no backoff (the default retries for ~4 min).
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    changes = {"train.max_epochs": 4, "train.sample_every": 1, "train.use_tuned": False}
    args = ["train", "--params", str(PARAMS_YAML), "--prepared", str(work / "prepared")]
    args += ["--out", str(work / "models"), *set_args(tiny(TRAINED, changes))]
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(work), *args],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if (work / "down.request").exists() and not (work / "down.done").exists():
            server.kill()
            (work / "down.done").touch()
        if (work / "up.request").exists() and not (work / "up.done").exists():
            if comes_back:
                server.start()
            (work / "up.done").touch()
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60)
    assert (work / "down.done").exists() and (work / "up.done").exists(), err
    return proc.returncode, out, err


@pytest.fixture
def work(tmp_path, prepared_dir):
    work = tmp_path / "work"
    work.mkdir()
    (work / "prepared").symlink_to(prepared_dir)
    return work


def history(work: Path) -> list[dict]:
    return torch.load(work / "models" / "last.ckpt", weights_only=True)["rnnexp"]["history"]


def test_metrics_logged_while_server_down_are_delivered_when_it_returns(server, work):
    code, out, err = train_through_outage(server, work, comes_back=True)
    assert code == 0, err
    assert "MLflow store unreachable" in err and "reachable again" in err
    (summary,) = [line for line in err.splitlines() if ", run " in line]
    run_id = summary.split(", run ")[-1].split()[0]  # "train: 4 epochs, ..., run <id>"
    client = MlflowClient(server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    rows = history(work)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/bpd"))
    assert logged == [(r["epoch"], r["val_bpd"]) for r in rows]  # every epoch, once
    artifacts = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.ckpt"]
    assert not (work / "mlflow-undelivered").exists()


def test_server_that_never_returns_fails_the_command_naming_what_was_not_logged(server, work):
    code, out, err = train_through_outage(server, work, comes_back=False)
    assert code == 2, err
    assert "rnnexp train: error: the MLflow store" in err
    assert "were not logged" in err and "val/bpd" in err and "run status FINISHED" in err
    # Training itself finished: both checkpoints are whole and hold all 4 epochs.
    rows = history(work)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert torch.load(work / "models" / "best.ckpt", weights_only=True)["state_dict"]
    # What the store never got is on disk, values included.
    (saved,) = (work / "mlflow-undelivered").iterdir()
    record = json.loads(saved.read_text())
    assert record["status"] == "FINISHED" and record["tracking_uri"] == server.url
    sent = {
        (key, step): value
        for item in record["undelivered"]
        for key, value, step, _ in item.get("metrics", [])
    }
    for r in rows[1:]:  # epochs after the server died
        assert sent[("val/bpd", r["epoch"])] == r["val_bpd"]
    assert saved.stem in err
