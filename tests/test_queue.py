"""Queued experiments run in parallel: `dvc exp run --queue` x2, `dvc queue start -j 2`.

DVC runs queued experiments in temporary copies under ``<repo>/.dvc/tmp/exps``; the
MLflow store must still be the main workspace's ``mlflow.db``, each run tagged with
its DVC experiment's name, and ``rnnexp compare --dvc-exp`` must find it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import TINY_PIPELINE, make_git_project, project_env, run
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

QUEUE_TIMEOUT_S = 900
TINY_PIPELINE = {**TINY_PIPELINE, "train.sample_every": 0}
LRS = {"exp-lr-a": 0.002, "exp-lr-b": 0.008}


def _wait_for_queue(repo, env) -> str:
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = run(["dvc", "queue", "status"], repo, env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"queue not done in {QUEUE_TIMEOUT_S} s:\n{status}"
        time.sleep(3)


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    env = project_env()
    env.pop("OMP_NUM_THREADS", None)  # train.threads alone must bring each to one thread
    repo = make_git_project(tmp_path_factory.mktemp("queue") / "repo", TINY_PIPELINE, env)
    for name, lr in LRS.items():
        # two experiments share the cores: one thread each
        sets = ["-S", f"train.lr={lr}", "-S", "train.threads=1", "-S", "evaluate.threads=1"]
        run(["dvc", "exp", "run", "--queue", "-n", name, *sets], repo, env)
    run(["dvc", "queue", "start", "-j", "2"], repo, env)
    try:
        status = _wait_for_queue(repo, env)
    finally:
        run(["dvc", "queue", "stop", "--kill"], repo, env)
    if "Failed" in status:
        logs = [run(["dvc", "queue", "logs", name], repo, env)[-4000:] for name in LRS]
        pytest.fail(status + "\n".join(logs))
    return repo, env


def test_two_queued_experiments_finish_as_dvc_experiments(queued):
    repo, env = queued
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    exps = {
        e["name"]: e["revs"][0]["data"]
        for baseline in shown
        for e in baseline.get("experiments") or []
    }
    assert set(exps) == set(LRS)
    for name, data in exps.items():
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == LRS[name]
        assert "test" in data["metrics"]["reports/metrics.json"]["data"]


def test_each_experiment_is_one_mlflow_run_in_the_main_workspace_store(queued):
    repo, env = queued
    assert not list((repo / ".dvc/tmp").rglob("mlflow.db"))  # nothing in the temp copies
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
    by_exp = {r.data.tags.get("rnnexp.dvc_exp"): r for r in runs}
    assert set(by_exp) == set(LRS) and len(runs) == 2
    head = run(["git", "rev-parse", "HEAD"], repo, env).strip()
    for name, r in by_exp.items():
        assert r.info.status == "FINISHED"
        assert float(r.data.params["train.lr"]) == pytest.approx(LRS[name])
        assert r.data.tags["mlflow.source.git.commit"] == head
        assert r.data.tags["rnnexp.evaluated"] == "true"  # evaluate joined the same run
        assert r.data.tags["rnnexp.threads"] == "1"  # the -S reached the queue's worker
    # both experiments trained on the same prepared data, and say which
    (data_hash,) = {r.data.tags["rnnexp.data_hash"] for r in runs}
    assert len(data_hash) == 64


def test_compare_finds_the_runs_of_a_dvc_experiment(queued):
    repo, env = queued
    out = run(["rnnexp", "compare", "--dvc-exp", "exp-lr-b", "--format", "csv"], repo, env)
    rows = out.strip().splitlines()
    header, (row,) = rows[0].split(","), rows[1:]
    cells = dict(zip(header, row.split(","), strict=True))
    assert cells["dvc_exp"] == "exp-lr-b"
    assert float(cells["train.lr"]) == pytest.approx(LRS["exp-lr-b"])


RACE = """
import sys, time
from pathlib import Path
from rnnexp import tracking
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
client, uri = tracking._store.connect()
print(len(client.search_experiments()))
"""


def test_processes_creating_one_new_store_at_once_both_succeed(tmp_path):
    # Two queued experiments on a fresh clone open the workspace's new mlflow.db
    # together; unserialised, MLflow's table migrations race and both die.
    go = tmp_path / "go"
    env = project_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(go)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]  # fmt: skip
    time.sleep(8)  # let all three import mlflow and wait at the start line
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == "1"  # the Default experiment, created once
