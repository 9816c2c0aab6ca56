"""Faults under `dvc repro`: Ctrl-C during training, then resume; corrupted outputs.

One fresh project (tiny model, no tuning) goes through: `dvc repro` interrupted by
SIGINT to its process group (what Ctrl-C in a terminal sends) after the first
epoch's checkpoint; `dvc status`; `dvc repro` again, which resumes the same MLflow
run to the weights of an uninterrupted run; then a truncated checkpoint and a
modified prepared file, each detected by `dvc status` and by rnnexp, and rebuilt by
`dvc repro`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from helpers import BIN, GIT_ENV, TINY_PIPELINE, make_project, run
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

TINY = {
    **TINY_PIPELINE,
    "train.max_epochs": 3,
    "train.batch_size": 128,
    "train.sample_every": 0,
    "train.progress_bar": "never",
}


def dvc_status(repo, env) -> str:
    """`dvc status` of the train stage and the stages before it."""
    return run(["dvc", "status", "train"], repo, env)


def rnnexp(args, repo, env):
    return subprocess.run(
        ["rnnexp", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def train_runs(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
    return client, runs


def test_interrupt_resume_and_corruption_under_dvc_repro(tmp_path):
    repo = make_project(tmp_path, TINY)
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_EXP_NAME", None)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)

    # 1. Ctrl-C once the first epoch's checkpoint is written.
    repro = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    last = repo / "models" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists() and repro.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert repro.poll() is None, repro.stdout.read().decode()
    os.killpg(repro.pid, signal.SIGINT)
    log = repro.communicate(timeout=120)[0].decode()
    assert repro.returncode != 0, log
    client, (interrupted,) = train_runs(repo)
    assert interrupted.info.status == "KILLED"
    assert torch.load(last, weights_only=True)["epoch"] < 2  # whole, and not the end
    # the promise: both checkpoints whole, no temporary file left (DVC may add its own)
    names = {p.name for p in last.parent.iterdir()}
    assert {"best.ckpt", "last.ckpt"} <= names and not [n for n in names if ".tmp-" in n]
    assert "train:" in dvc_status(repo, env)  # not recorded as done

    # 2. `dvc repro` resumes it: the same run, the weights of an uninterrupted run.
    log = run(["dvc", "repro", "train"], repo, env)
    assert "resuming from" in log
    client, runs = train_runs(repo)
    assert [r.info.run_id for r in runs] == [interrupted.info.run_id]
    assert runs[0].info.status == "FINISHED"
    assert "Data and pipelines are up to date" in dvc_status(repo, env)
    reference = rnnexp(["train", "--out", "reference"], repo, env)
    assert reference.returncode == 0, reference.stderr
    for name in ("last.ckpt", "best.ckpt"):
        ours, theirs = weights(repo / "models" / name), weights(repo / "reference" / name)
        differ = {k: (ours[k] - theirs[k]).abs().max().item() for k in theirs
                  if not torch.equal(ours[k], theirs[k])}  # fmt: skip
        assert not differ, f"{name}: largest differences {differ}"

    # 3. A truncated checkpoint: dvc status sees it, rnnexp names it, dvc repro rebuilds it.
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 3])
    assert "modified:           models/last.ckpt" in dvc_status(repo, env)
    sample = rnnexp(["sample", "--checkpoint", "models/last.ckpt", "--out", "s.png"], repo, env)
    assert sample.returncode == 2
    assert "models/last.ckpt" in sample.stderr and "error" in sample.stderr
    log = run(["dvc", "repro", "train"], repo, env)
    assert "not resumable" in log
    rebuilt, theirs = weights(last), weights(repo / "reference" / "last.ckpt")
    assert all(torch.equal(rebuilt[k], theirs[k]) for k in theirs)  # trained again, whole
    assert "Data and pipelines are up to date" in dvc_status(repo, env)

    # 4. A modified prepared file: dvc status sees it, rnnexp refuses it, dvc repro rebuilds.
    train_npz = repo / "data" / "prepared" / "train.npz"
    original = train_npz.read_bytes()
    train_npz.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert "modified:           data/prepared" in dvc_status(repo, env)
    refused = rnnexp(["train", "--out", "other"], repo, env)
    assert refused.returncode == 2
    assert "train.npz" in refused.stderr and "rnnexp train: error:" in refused.stderr
    assert not (repo / "other").exists()
    run(["dvc", "repro", "train"], repo, env)
    assert train_npz.read_bytes() == original
    assert "Data and pipelines are up to date" in dvc_status(repo, env)
