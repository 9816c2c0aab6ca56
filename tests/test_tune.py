"""Tune stage: a real Optuna study on the digits subsample, tracked in MLflow."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from rnnexp.cli import main
from rnnexp.config import with_overrides
from rnnexp.data.prepare import read_meta
from rnnexp.errors import ConfigError
from rnnexp.models.generator import PixelRNN
from rnnexp.stages.tune import default_study_name, open_storage
from rnnexp.stages.tune import run as run_tuning

SPACE = "tune.space={train.lr: {type: float, low: 1.0e-5, high: 3.0e-2, log: true}}"


@pytest.fixture
def tune_params(tiny_params, tmp_path):
    def make(*extra):
        return tiny_params(
            SPACE,
            f"tune.storage=sqlite:///{tmp_path}/optuna.db",
            "tune.epochs=4",
            "tune.startup_trials=2",
            "tune.n_trials=6",
            "tune.heartbeat=1",
            *extra,
        )

    return make


def states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def load(params, name):
    return optuna.load_study(study_name=name, storage=open_storage(params, 1))


def test_study_prunes_and_trials_are_nested_runs(store, prepared_dir, tune_params):
    params = tune_params()
    result = run_tuning(params, prepared_dir)
    study = load(params, result.study_name)
    assert len(study.trials) == 6
    assert states(study).count(TrialState.PRUNED) >= 1
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(len(t.intermediate_values) < 4 for t in pruned)  # stopped early
    # trial 0 is the configuration of params.yaml
    assert study.trials[0].params["train.lr"] == pytest.approx(params.train.lr)
    assert result.best_value == pytest.approx(study.best_value)
    assert result.best_overrides == study.best_params
    # the trials table (tune_trials.csv): one row per trial, as the study holds them
    table = result.trials
    assert list(table["number"]) == [t.number for t in study.trials]
    assert list(table["state"]) == [t.state.name.lower() for t in study.trials]
    assert list(table["epochs"]) == [len(t.intermediate_values) for t in study.trials]
    assert list(table["user_attrs_mlflow_run_id"]) == [
        t.user_attrs["mlflow_run_id"] for t in study.trials
    ]
    assert table["params_train.lr"].tolist() == [t.params["train.lr"] for t in study.trials]
    assert (table["duration"] > 0).all()

    parent = store.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rnnexp.stage"] == "tune"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.info.run_name == f"tune {result.study_name}"
    assert "system/cpu_utilization_percentage" in parent.data.metrics
    artifacts = {a.path for a in store.list_artifacts(result.run_id)}
    assert {"best_params.json", "trials.csv", "optimization_history.html"} <= artifacts
    for trial in study.trials:
        run = store.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.data.tags["rnnexp.trial"] == str(trial.number)
        assert run.data.tags["rnnexp.study"] == result.study_name
        assert run.data.tags["rnnexp.trial_state"] == trial.state.name.lower()
        assert run.info.status == "FINISHED"
        assert run.info.run_name.startswith(f"trial {trial.number} {params.model.arch} h")
        pruned = f"(pruned at epoch {len(trial.intermediate_values)})"
        assert run.info.run_name.endswith(pruned) == (trial.state == TrialState.PRUNED)
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        steps = store.get_metric_history(run.info.run_id, "val/bpd")
        assert [m.value for m in steps] == pytest.approx(list(trial.intermediate_values.values()))
    names = [store.get_run(t.user_attrs["mlflow_run_id"]).info.run_name for t in study.trials]
    assert len(set(names)) == len(names)


def test_rerun_resumes_and_counts_finished_trials(store, prepared_dir, tune_params):
    first = run_tuning(tune_params("tune.n_trials=2"), prepared_dir)
    second = run_tuning(tune_params("tune.n_trials=3"), prepared_dir)
    assert first.study_name == second.study_name
    study = load(tune_params(), second.study_name)
    assert [t.number for t in study.trials] == [0, 1, 2]
    again = run_tuning(tune_params("tune.n_trials=3"), prepared_dir)
    assert len(load(tune_params(), again.study_name).trials) == 3  # nothing left to do


def test_nan_trial_fails_and_study_goes_on(store, prepared_dir, tune_params, monkeypatch):
    original = PixelRNN.nll

    def nll(self, x, **cond):
        out = original(self, x, **cond)
        return out * float("nan") if self.config.hidden == 8 else out

    monkeypatch.setattr(PixelRNN, "nll", nll)
    space = "tune.space={model.hidden: {type: categorical, choices: [4, 8]}}"
    params = tune_params(space, "tune.n_trials=4", "tune.pruner=none", "tune.sampler=random")
    result = run_tuning(params, prepared_dir)
    study = load(params, result.study_name)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["model.hidden"] == 8 for t in failed)
    assert result.best_overrides == {"model.hidden": 4}
    run = store.get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["rnnexp.trial_state"] == "failed"


def test_sqlite_refuses_several_workers(tune_params):
    with pytest.raises(ConfigError, match="journal:.*postgresql"):
        open_storage(tune_params(), workers=2)


def test_study_name_follows_search_settings_not_budget(tune_params):
    a = default_study_name(tune_params(), "h")
    assert a == default_study_name(tune_params("tune.n_trials=50"), "h")
    assert a != default_study_name(tune_params("tune.epochs=5"), "h")
    assert a != default_study_name(tune_params(), "other-data")


def test_zero_trials_writes_untouched_params_and_train_merges_tuned(
    store, prepared_dir, tune_params, tmp_path
):
    out = tmp_path / "reports"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tune_params("tune.n_trials=0").to_dict()))
    args = ["tune", "--params", str(params_file), "--prepared", str(prepared_dir)]
    assert main([*args, "--out", str(out)]) == 0
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["params"] == {}
    header = (out / "tune_trials.csv").read_text().splitlines()
    assert header == ["number,state,value,epochs,duration"]  # DVC's plot reads number, value
    # a tuned file is merged over params.yaml by the train stage
    from rnnexp.stages.train import tuned as _tuned

    (out / "best_params.yaml").write_text(yaml.safe_dump({"params": {"train.lr": 0.0042}}))
    merged = _tuned(tune_params(), str(out / "best_params.yaml"))
    assert merged.train.lr == 0.0042
    assert _tuned(with_overrides(merged, {"train.use_tuned": False}), "missing.yaml").train.lr


@pytest.mark.slow
def test_killed_tune_resumes_and_retries_the_dead_trial(tmp_path, prepared_dir, tune_params):
    """SIGKILL the tune command mid-study; the rerun fails the orphan trial and finishes."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    params_file = tmp_path / "params.yaml"
    params = tune_params("tune.n_trials=5", "tune.epochs=6", "tune.pruner=none")
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "CI": "1"}
    cmd = [sys.executable, "-m", "rnnexp.cli", "tune", "--params", str(params_file)]
    cmd += ["--prepared", str(prepared_dir), "--out", str(tmp_path / "reports")]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    name = default_study_name(params, read_meta(prepared_dir)["content_hash"])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            now = states(study)
            if now.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in now:
                break
        except KeyError:
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphan = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert orphan, "the study should have had a running trial when killed"
    time.sleep(2.5)  # beyond the grace period of 2 heartbeats
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[orphan[0]].state == TrialState.FAIL
    assert states(study).count(TrialState.COMPLETE) == 5
    retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in study.trials if retry_of(t) == orphan[0]]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE


def check_shared_study(store, params, result, workers=2):
    """All trials finished, numbered 0..n-1 once each, run by ``workers`` processes."""
    study = optuna.load_study(study_name=result.study_name, storage=open_storage(params, workers))
    n = params.tune.n_trials
    assert sorted(t.number for t in study.trials) == list(range(n))
    assert states(study) == [TrialState.COMPLETE] * n
    pids = {
        store.get_run(t.user_attrs["mlflow_run_id"]).data.tags["rnnexp.pid"] for t in study.trials
    }
    assert len(pids) == workers


@pytest.mark.slow
def test_two_workers_share_a_journal_study(store, prepared_dir, tune_params, tmp_path):
    storage = f"tune.storage=journal:{tmp_path}/journal.log"
    params = tune_params(storage, "tune.n_trials=6", "tune.pruner=none")
    result = run_tuning(params, prepared_dir, workers=2)
    check_shared_study(store, params, result)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(store, prepared_dir, tune_params, postgres_url):
    params = tune_params(f"tune.storage={postgres_url}", "tune.n_trials=6", "tune.pruner=none")
    result = run_tuning(params, prepared_dir, workers=2)
    check_shared_study(store, params, result)
