"""Optuna's RDB storage on PostgreSQL, shared by worker processes (as across machines).

Each test gets a fresh database from the ``postgres_url`` fixture (conftest.py), which
skips where no server runs (start one: ``sudo bash scripts/postgres``). The workers are
separate Python processes, as on separate machines; they share nothing but the URL.
Heartbeat semantics checked here (Optuna 5.0): a worker records a heartbeat every
``heartbeat_interval`` s while a trial runs; a RUNNING trial whose last heartbeat is
older than ``grace_period`` s (server clock) is failed by the next ``fail_stale_trials``,
which ``optimize`` calls before each trial it starts, and the storage's stale-trial
callback then enqueues its retry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

HEARTBEAT_INTERVAL = 1
GRACE_PERIOD = 2

# A worker: `python -c WORKER URL STUDY INTERVAL GRACE N_TRIALS SLEEP [GATE]`, with a
# storage configured as the parent's. Each trial records the worker's pid and sleeps SLEEP
# seconds. With GATE, the worker creates GATE.<pid> once connected, then waits for GATE.
WORKER = """
import os, sys, time, warnings
warnings.simplefilter("ignore")
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, study_name, interval, grace, n_trials, sleep, *gate = sys.argv[1:]
storage = RDBStorage(
    url, heartbeat_interval=int(interval), grace_period=int(grace),
    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
)
study = optuna.load_study(study_name=study_name, storage=storage)
if gate:
    open(gate[0] + "." + str(os.getpid()), "w").close()
    while not os.path.exists(gate[0]):
        time.sleep(0.01)
def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("pid", os.getpid())
    time.sleep(float(sleep))
    return x
study.optimize(objective, n_trials=int(n_trials))
"""


def storage_for(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        grace_period=GRACE_PERIOD,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
    )


def worker(url: str, study: str, n_trials: int, sleep: float, *gate: str) -> subprocess.Popen:
    heartbeat = [str(HEARTBEAT_INTERVAL), str(GRACE_PERIOD)]
    cmd = [sys.executable, "-c", WORKER, url, study, *heartbeat, str(n_trials), str(sleep), *gate]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out


def wait_for(what: str, cond, timeout: float = 60, procs: tuple = ()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        for p in procs:
            assert p.poll() is None, f"worker died while waiting for {what}: {p.communicate()[0]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_processes_share_a_study(postgres_url, tmp_path):
    study = optuna.create_study(study_name="shared", storage=storage_for(postgres_url))
    gate = str(tmp_path / "go")
    workers = [worker(postgres_url, "shared", 3, 0.2, gate) for _ in range(2)]
    # Both connected before either starts a trial, so they ask for trials concurrently.
    wait_for("both workers", lambda: len(list(tmp_path.glob("go.*"))) == 2, procs=workers)
    (tmp_path / "go").touch()
    for p in workers:
        finish(p)

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert sorted(t.number for t in trials) == list(range(6))
    assert len({t._trial_id for t in trials}) == 6
    by_pid = {}
    for t in trials:
        by_pid.setdefault(t.user_attrs["pid"], []).append(t.number)
    assert sorted(by_pid) == sorted(p.pid for p in workers)
    assert all(len(numbers) == 3 for numbers in by_pid.values()), by_pid
    assert all(t.value == t.params["x"] for t in trials)


def test_killed_worker_trial_fails_after_grace_and_is_retried(postgres_url):
    storage = storage_for(postgres_url)
    study = optuna.create_study(study_name="stale", storage=storage)

    def fail_stale():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)

    hung = worker(postgres_url, "stale", 1, 600)
    try:
        running = wait_for(
            "a RUNNING trial",
            lambda: study.get_trials(states=(TrialState.RUNNING,)),
            procs=(hung,),
        )
        assert [t.number for t in running] == [0]
        # Alive and beating: not stale, though it has run longer than the grace period.
        time.sleep(GRACE_PERIOD + 1)
        fail_stale()
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    finally:
        os.kill(hung.pid, signal.SIGKILL)
        hung.communicate(timeout=30)
    assert hung.returncode == -signal.SIGKILL

    # Dead: nothing fails the trial by itself; it stays RUNNING until someone checks.
    killed_at = time.monotonic()
    assert study.get_trials()[0].state == TrialState.RUNNING
    # Its last heartbeat was before the kill; after the grace period it is stale, and a new
    # worker's optimize fails it (and the callback enqueues a retry) before its own trial.
    time.sleep(GRACE_PERIOD + 0.5)
    retrier = worker(postgres_url, "stale", 1, 0)
    finish(retrier)
    assert time.monotonic() - killed_at > GRACE_PERIOD

    failed, retried = study.get_trials()
    assert failed.number == 0 and failed.state == TrialState.FAIL
    assert failed.user_attrs["pid"] == hung.pid
    assert retried.number == 1 and retried.state == TrialState.COMPLETE
    assert retried.user_attrs["pid"] == retrier.pid
    assert retried.params == failed.params
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retried) == 0
    assert RetryHeartbeatStaleTrialCallback.retry_history(retried) == [0]
    # Checking again finds nothing stale: no second failure, no second retry.
    fail_stale()
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
