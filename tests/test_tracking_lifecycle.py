"""What a run carries beyond params and metrics: its name, the experiment's kind, the
dataset it read, and MLflow's system metrics (started and stopped with the run)."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rnnexp import tracking
from rnnexp.cli import main as cli_main
from rnnexp.config import Params, with_overrides
from rnnexp.data.prepare import read_meta
from rnnexp.errors import RnnexpError
from rnnexp.tracking import _runs, _sysmetrics
from rnnexp.training.fit import run_training

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
CPU, MEMORY = "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"


def params(*pairs: tuple[str, object]) -> Params:
    return with_overrides(Params(), dict(pairs), "test")


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("system-metrics-")]


def system_metrics(client: MlflowClient, run_id: str) -> set[str]:
    return {k for k in client.get_run(run_id).data.metrics if k.startswith("system/")}


def dataset_inputs(client: MlflowClient, run_id: str) -> list:
    return client.get_run(run_id).inputs.dataset_inputs


# --------------------------------------------------------------------------- experiment


def test_a_new_experiment_declares_model_training(store):
    with tracking.tracked_run(params(("tracking.experiment", "kind-new")), "fetch") as run:
        pass
    tags = store.get_experiment(run.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_gets_the_kind_unless_declared(store):
    plain = store.create_experiment("kind-plain")
    guessed = store.create_experiment("kind-guessed", tags={"mlflow.experimentKind": "x_inferred"})
    genai = store.create_experiment(
        "kind-genai", tags={"mlflow.experimentKind": "genai_development"}
    )
    for name in ("kind-plain", "kind-guessed", "kind-genai"):
        with tracking.tracked_run(params(("tracking.experiment", name)), "fetch"):
            pass
    kind = {e: store.get_experiment(e).tags["mlflow.experimentKind"] for e in (plain, guessed)}
    assert set(kind.values()) == {"custom_model_development"}
    assert store.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"


# --------------------------------------------------------------------------- names


def test_runs_are_named_for_their_stage_and_dvc_experiment(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "gawky-bump")
    p = params(("train.lr", 0.0085), ("model.hidden", 48), ("model.layers", 3))
    names = []
    for stage, tags in [("fetch", {}), ("train", {}), ("trial", {"rnnexp.trial": 3})]:
        random.seed(0)  # as training seeds it: MLflow's random names would all be equal
        with tracking.tracked_run(p, stage, tags=tags) as run:
            pass
        names.append(store.get_run(run.run_id).info.run_name)
    assert names == [
        "fetch digits [exp gawky-bump]",
        "train row_lstm h48x3 lr8.5e-3 [exp gawky-bump]",
        "trial 3 row_lstm h48x3 lr8.5e-3 [exp gawky-bump]",
    ]


def test_a_name_note_goes_before_the_experiment(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "gawky-bump")
    with tracking.tracked_run(Params(), "trial", tags={"rnnexp.trial": 2}) as run:
        run.add_name_note("pruned at epoch 5")
    info = store.get_run(run.run_id)
    assert (
        info.info.run_name == "trial 2 row_lstm h32x2 lr3e-3 (pruned at epoch 5) [exp gawky-bump]"
    )
    assert info.data.tags["mlflow.runName"] == info.info.run_name


# --------------------------------------------------------------------------- datasets


def test_dataset_input_carries_hash_source_splits_and_context(store, prepared_dir):
    meta = read_meta(prepared_dir)
    with tracking.tracked_run(Params(), "evaluate") as run:
        run.log_dataset(meta, prepared_dir, "evaluation", "digits")
    (item,) = dataset_inputs(store, run.run_id)
    assert item.dataset.name == "digits-17"
    assert meta["content_hash"].startswith(item.dataset.digest) and len(item.dataset.digest) == 12
    assert json.loads(item.dataset.source) == {"uri": str(prepared_dir.resolve())}
    profile = json.loads(item.dataset.profile)
    assert profile["splits"] == meta["splits"] and profile["content_hash"] == meta["content_hash"]
    assert json.loads(item.dataset.schema)["mlflow_tensorspec"]["features"]
    assert {t.key: t.value for t in item.tags} == {"mlflow.data.context": "evaluation"}


def test_a_dataset_context_must_be_training_or_evaluation(store, prepared_dir):
    with pytest.raises(ValueError, match="testing"):
        with tracking.tracked_run(Params(), "evaluate") as run:
            run.log_dataset(read_meta(prepared_dir), prepared_dir, "testing", "digits")
    assert store.get_run(run.run_id).info.status == "FAILED"


def test_null_handle_logs_no_dataset(prepared_dir):
    off = params(("tracking.enabled", False))
    with tracking.tracked_run(off, "train", system_metrics=True) as run:
        run.log_dataset(read_meta(prepared_dir), prepared_dir, "training", "digits")
        run.add_name_note("pruned")
        assert monitor_threads() == []
    assert run.run_id is None


# --------------------------------------------------------------------------- system metrics


def test_system_metrics_logged_while_the_run_is_open_and_stopped_with_it(store):
    with tracking.tracked_run(Params(), "tune", system_metrics=True) as run:
        assert [t.name for t in monitor_threads()] == [f"system-metrics-{run.run_id[:8]}"]
    assert monitor_threads() == []
    assert {CPU, MEMORY} <= system_metrics(store, run.run_id)  # one sample at least
    assert store.get_run(run.run_id).info.status == "FINISHED"


def test_a_failed_run_stops_its_monitor_too(store):
    with pytest.raises(RnnexpError):
        with tracking.tracked_run(Params(), "train", system_metrics=True) as run:
            raise RnnexpError("boom")
    assert monitor_threads() == []
    assert store.get_run(run.run_id).info.status == "FAILED"
    assert CPU in system_metrics(store, run.run_id)


def test_no_system_metrics_unless_asked(store):
    with tracking.tracked_run(Params(), "train") as run:
        pass
    assert system_metrics(store, run.run_id) == set()


def test_a_stuck_monitor_is_closed_and_logs_nothing_after_the_run_ended(store, monkeypatch):
    """The monitor thread waits on an unreachable store: the run ends anyway, and what the
    thread would log afterwards is dropped."""
    entered, release, monitors = threading.Event(), threading.Event(), []

    def stuck_collect(self):
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            release.wait()
        return {}

    def start(*args):
        monitors.append(_sysmetrics.start_monitor(*args))
        return monitors[-1]

    monkeypatch.setattr(_sysmetrics.RunMonitor, "collect_metrics", stuck_collect)
    monkeypatch.setattr(_sysmetrics, "JOIN_TIMEOUT_S", 0.1)
    monkeypatch.setattr(_runs, "start_monitor", start)
    with tracking.tracked_run(Params(), "train", system_metrics=True) as run:
        assert entered.wait(60)
    (monitor,) = monitors
    assert store.get_run(run.run_id).info.status == "FINISHED"
    monitor.publish_metrics({"cpu_utilization_percentage": 1.0})  # as the thread would
    release.set()
    for thread in monitor_threads():
        thread.join(60)
    assert system_metrics(store, run.run_id) == set()


# --------------------------------------------------------------------------- training


def test_train_run_is_named_and_has_its_dataset_and_system_metrics(trained, store, prepared_dir):
    result, params_ = trained
    run = store.get_run(result.run_id)
    m = params_.model
    assert run.info.run_name.startswith(f"train {m.arch} h{m.hidden}x{m.layers} lr")
    (item,) = dataset_inputs(store, result.run_id)
    assert item.dataset.digest == read_meta(prepared_dir)["content_hash"][:12]
    assert {t.key: t.value for t in item.tags} == {"mlflow.data.context": "training"}
    assert {CPU, MEMORY} <= system_metrics(store, result.run_id)


def test_train_without_system_metrics(store, tiny_params, prepared_dir, tmp_path):
    p = tiny_params("train.max_epochs=1", "tracking.system_metrics=false")
    result = run_training(p, prepared_dir, tmp_path / "models", save_checkpoints=False)
    assert system_metrics(store, result.run_id) == set()
    assert len(dataset_inputs(store, result.run_id)) == 1


def test_evaluate_in_its_own_run_logs_the_dataset_for_evaluation(
    trained, prepared_dir, tmp_path, monkeypatch
):
    """The model's run is not in this store: evaluate opens its own run, named for the model."""
    result, _ = trained
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", "--checkpoint", str(result.best_checkpoint), "--prepared"]
    argv += [str(prepared_dir), "--classifier", "none.pt", "--out", "reports"]
    argv += ["--params", str(PARAMS_YAML)]
    assert cli_main([*argv, "--set", "evaluate.n_samples=2", "--set", "evaluate.threads=1"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rnnexp").experiment_id])
    assert run.info.run_name == f"evaluate model {result.run_id[:8]}"
    (item,) = run.inputs.dataset_inputs
    assert item.dataset.digest == read_meta(prepared_dir)["content_hash"][:12]
    assert {t.key: t.value for t in item.tags} == {"mlflow.data.context": "evaluation"}
