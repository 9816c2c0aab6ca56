"""End to end: `dvc repro` in a fresh git repo, checked through outputs, DVC and MLflow."""

import json

import pytest
import yaml
from helpers import make_git_project, project_env, run
from mlflow import MlflowClient

from rnnexp.util.allocator import find_tcmalloc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    env = project_env()
    repo = make_git_project(
        tmp_path_factory.mktemp("project"),
        {
            "train.max_epochs": 3,
            "train.sample_every": 1,
            "evaluate.n_samples": 16,
            "tune.n_trials": 2,
            "tune.epochs": 2,
        },
        env,
    )
    log = run(["dvc", "repro"], repo, env)
    return repo, env, log


def runs_by_stage(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["rnnexp.stage"], []).append(r)
    return client, by_stage


def test_repro_writes_outputs_metrics_and_plots(project):
    repo, env, log = project
    for stage in ("fetch", "prepare", "tune", "classifier", "train", "evaluate"):
        assert f"Running stage '{stage}'" in log
    tuned = yaml.safe_load((repo / "reports/best_params.yaml").read_text())
    assert set(tuned["params"]) == {
        "train.lr",
        "model.hidden",
        "model.layers",
        "model.dropout",
        "train.weight_decay",
    }
    trials = (repo / "reports/tune_trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 2
    assert (repo / "data/raw/dataset.npz").is_file()
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["splits"] == {"train": 1437, "val": 180, "test": 180}
    assert (repo / "models/best.ckpt").is_file() and (repo / "models/last.ckpt").is_file()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["test"]["nll_nats"] < metrics["baseline"]["nll_nats"]
    assert metrics["baseline"]["nll_nats"] == pytest.approx(108, abs=3)
    curve = (repo / "reports/val_curve.csv").read_text().splitlines()
    assert curve[0].split(",")[:2] == ["epoch", "train_nll"] and len(curve) == 1 + 3
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env))
    dvc_metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    assert dvc_metrics["test"]["bpd"] == pytest.approx(metrics["test"]["bpd"])
    # sample scores of the classifier stage's scorer, as DVC metrics columns
    assert dvc_metrics["sample"]["frechet"] == pytest.approx(metrics["sample"]["frechet"])
    assert dvc_metrics["sample"]["samples"] == 1000
    assert metrics["sample"]["frechet"] < metrics["baseline"]["frechet"]
    assert metrics["classifier"]["test_accuracy"] > 0.9
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo, env))
    for plot in ("val_curve.csv", "samples.png", "completions.png", "nll_heatmap.png"):
        assert f"reports/{plot}" in json.dumps(plots)
    # DVC outputs are git-ignored, the store sits at the repo root.
    ignored = run(["git", "check-ignore", "data/raw", "models/best.ckpt", "mlflow.db"], repo, env)
    assert len(ignored.split()) == 3


def test_every_stage_is_a_finished_mlflow_run_with_tags(project):
    repo, env, _ = project
    client, by_stage = runs_by_stage(repo)
    assert {stage: len(r) for stage, r in by_stage.items()} == {
        "fetch": 1,
        "prepare": 1,
        "tune": 1,
        "trial": 2,
        "classifier": 1,
        "train": 1,
    }  # evaluate joins the model's run
    (tune,) = by_stage["tune"]
    assert {r.data.tags["mlflow.parentRunId"] for r in by_stage["trial"]} == {tune.info.run_id}
    head = run(["git", "rev-parse", "HEAD"], repo, env).strip()
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    (train,) = by_stage["train"]
    for runs in by_stage.values():
        for r in runs:
            assert r.info.status == "FINISHED"
            assert r.data.tags["mlflow.source.git.commit"] == head
    assert train.data.tags["rnnexp.data_hash"] == meta["content_hash"]
    assert train.data.tags["rnnexp.evaluated"] == "true"
    # The train and tune stages ran themselves again under tcmalloc where it is
    # installed (.ci/run installs it), and their trainings' runs say so.
    allocator = "tcmalloc" if find_tcmalloc() else "system"
    assert {r.data.tags["rnnexp.allocator"] for r in [train, *by_stage["trial"]]} == {allocator}
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert train.data.metrics["test/nll_nats"] == pytest.approx(metrics["test"]["nll_nats"])
    assert train.data.params["train.max_epochs"] == "3"
    # the train stage trained the tuned configuration
    tuned = yaml.safe_load((repo / "reports/best_params.yaml").read_text())["params"]
    assert float(train.data.params["train.lr"]) == pytest.approx(tuned["train.lr"])
    assert train.data.params["model.hidden"] == str(tuned["model.hidden"])
    steps = [m.step for m in client.get_metric_history(train.info.run_id, "val/bpd")]
    assert steps == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert "checkpoints" in artifacts and "images" in artifacts


def test_second_repro_is_a_no_op_and_evaluate_param_reruns_only_evaluate(project):
    repo, env, _ = project
    log = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in log
    _, before = runs_by_stage(repo)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["n_samples"] = 9
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = run(["dvc", "repro"], repo, env)
    assert "Running stage 'evaluate'" in log
    for stage in ("fetch", "prepare", "tune", "classifier", "train"):
        assert f"Running stage '{stage}'" not in log
    _, after = runs_by_stage(repo)
    assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in before.items()}


def changed_stages(repo, env) -> set[str]:
    """The stages `dvc status` calls changed (keys may be `dvc.yaml:<stage>`)."""
    status = json.loads(run(["dvc", "status", "--json"], repo, env) or "{}")
    return {name.rsplit(":", 1)[-1] for name in status}


def test_a_code_edit_reruns_only_the_stages_whose_outputs_it_decides(project):
    repo, env, _ = project
    run(["dvc", "repro"], repo, env)  # up to date whatever the tests before changed
    assert changed_stages(repo, env) == set()
    reporting = [repo / "rnnexp/cli.py", *sorted((repo / "rnnexp/commands").glob("*.py"))]
    reporting += sorted((repo / "rnnexp/tracking").glob("*.py"))
    expected = {path: set() for path in reporting}
    expected[repo / "rnnexp/stages/evaluate.py"] = {"evaluate"}
    expected[repo / "rnnexp/models/row_lstm.py"] = {"tune", "train", "evaluate"}
    assert len(reporting) >= 8  # the commands and the tracking package are there
    for path, stages in expected.items():
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit that changes no output\n")
        try:
            assert changed_stages(repo, env) == stages, path.relative_to(repo)
        finally:
            path.write_bytes(original)
    assert changed_stages(repo, env) == set()
