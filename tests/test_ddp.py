"""Multi-process training: rank detection, rank-0-only logging, DDP over gloo on CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import PARAMS_YAML
from helpers import BIN, TRAINED, project_env, set_args, tiny
from mlflow import MlflowClient

from rnnexp import tracking
from rnnexp.training.checkpoint import load_checkpoint
from rnnexp.util.distributed import global_rank, is_global_zero


@pytest.mark.parametrize(
    "env, devices, rank",
    [
        ({}, 1, 0),
        ({"LOCAL_RANK": "1"}, 2, 1),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 4, 4),
        ({"NODE_RANK": "2", "LOCAL_RANK": "3"}, 4, 11),
        ({"RANK": "5", "LOCAL_RANK": "1", "NODE_RANK": "2"}, 2, 5),  # torchrun's RANK wins
        ({"SLURM_PROCID": "3"}, 1, 3),
    ],
)
def test_global_rank_from_launcher_environment(env, devices, rank):
    assert global_rank(devices, env) == rank
    assert is_global_zero(devices, env) == (rank == 0)


def test_non_zero_rank_opens_no_mlflow_run(store, all_runs, tiny_params, monkeypatch):
    before = len(all_runs(store))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with tracking.tracked_run(tiny_params("train.devices=2"), "train") as run:
        run.log_metrics({"x": 1.0})
        run.set_tags({"a": "b"})
    assert isinstance(run, tracking.NullRunHandle) and run.run_id is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    with tracking.tracked_run(tiny_params("train.devices=2"), "train") as run:
        pass
    assert run.run_id is not None  # rank 0 of the same run does log
    assert len(all_runs(store)) == before + 1


def test_tracking_disabled_opens_no_run(store, all_runs, tiny_params):
    before = len(all_runs(store))
    with tracking.tracked_run(tiny_params("tracking.enabled=false"), "train") as run:
        run.log_metrics({"x": 1.0})
    assert run.run_id is None
    assert len(all_runs(store)) == before


def _train(tmp_path, prepared_dir, uri, name, *overrides):
    changes = {"train.max_epochs": 4, "train.sample_every": 0, "train.use_tuned": False}
    sets = set_args(tiny(TRAINED, changes, *overrides))
    cmd = [str(BIN / "rnnexp"), "train", "--params", str(PARAMS_YAML),
           "--prepared", str(prepared_dir), "--out", str(tmp_path / name), *sets]  # fmt: skip
    env = project_env(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if re.match(r"train: \d+ epochs", line)]
    return load_checkpoint(tmp_path / name / "last.ckpt").history, lines


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="DDP over gloo is tested on Linux")
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, prepared_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # same effective batch: one process of 32, or two of 16 (DistributedSampler halves data)
    single, single_lines = _train(tmp_path, prepared_dir, uri, "one", "train.batch_size=32")
    ddp, ddp_lines = _train(
        tmp_path,
        prepared_dir,
        uri,
        "ddp",
        "train.batch_size=16",
        "train.strategy=ddp",
        "train.devices=2",
    )
    one = [row["val_nll"] for row in single]
    two = [row["val_nll"] for row in ddp]
    assert len(one) == len(two) == 4
    for curve in (one, two):  # the same shape: falling every epoch
        assert all(b < a for a, b in zip(curve, curve[1:], strict=False)), curve
    for a, b in zip(one, two, strict=True):  # and close to each other, epoch by epoch
        assert b == pytest.approx(a, rel=0.05), (one, two)
    total_drop = one[0] - one[-1]
    assert abs(one[-1] - two[-1]) < 0.5 * total_drop  # closer than the curve moves

    # only rank 0 prints its result (the console's rank-zero filter) and has an MLflow run
    assert len(ddp_lines) == 1 and not ddp_lines[0].endswith("run None"), ddp_lines
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rnnexp").experiment_id])
    assert len(runs) == 2  # one per training, not one per process
    (ddp_run,) = [r for r in runs if r.data.params["train.strategy"] == "ddp"]
    steps = [m.step for m in client.get_metric_history(ddp_run.info.run_id, "val/nll")]
    assert steps == [0, 1, 2, 3]
    logged = [m.value for m in client.get_metric_history(ddp_run.info.run_id, "val/nll")]
    assert logged == pytest.approx(two)  # rank 0 logged the mean over both processes' shards


def test_evaluate_joins_no_run_when_tracking_is_off_or_not_rank_zero(
    store, tiny_params, monkeypatch
):
    with tracking.tracked_run(tiny_params(), "train") as run:
        pass
    assert tracking.open_existing_run(tiny_params(), run.run_id).run_id == run.run_id
    assert tracking.open_existing_run(tiny_params("tracking.enabled=false"), run.run_id) is None
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert tracking.open_existing_run(tiny_params("train.devices=2"), run.run_id) is None
