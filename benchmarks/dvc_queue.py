"""Parallel queued experiments: `dvc queue start -j 2` vs the same two experiments in turn.

Clones the committed HEAD of this repository into a scratch folder, skips the search
(``tune.n_trials=0``), runs `dvc repro` once and commits its lock file, so each
experiment below reruns only train and evaluate. Then times

- sequential: `dvc exp run -S train.lr=A`, then `dvc exp run -S train.lr=B`
  (torch's default threads: the whole machine for one experiment at a time);
- queued: `dvc exp run --queue -S train.lr=C -S train.threads=1` and `... D`,
  then `dvc queue start -j 2`, until both experiments are recorded and `dvc
  queue status` shows neither queued nor running (two experiments, one core
  each; the runs' `rnnexp.threads` tags are checked to say 1).

The four learning rates differ, so DVC's run-cache restores none of them. Prints
both wall-clock times and their ratio.

Usage: python benchmarks/dvc_queue.py [--epochs 15] [--keep]
Target (issue 6): queued <= 75 % of sequential on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def experiment_refs(repo: Path, env: dict) -> int:
    """How many experiments DVC has recorded: refs/exps/<sha prefix>/<sha>/<name>
    (not its working refs under refs/exps/exec and refs/exps/celery)."""
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, env)
    return sum(1 for ref in refs.split() if ref.split("/")[2] not in ("exec", "celery"))


def wait_for_queue(repo: Path, env: dict, done: int, timeout: float = 3600) -> str:
    """Wait until ``done`` experiment refs exist, then return `dvc queue status`.

    Polling `git for-each-ref` (milliseconds) instead of `dvc queue status` (a
    second of CPU per call) keeps the benchmark from stealing a core from the
    experiments it times.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if experiment_refs(repo, env) >= done:
            status = sh(["dvc", "queue", "status"], repo, env)
            if "Queued" not in status and "Running" not in status:
                return status
        time.sleep(0.5)
    raise SystemExit(f"queue not done in {timeout} s")


def train_threads(repo: Path) -> dict[str, str]:
    """train.lr -> the ``rnnexp.threads`` tag of each train run in the workspace store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
    return {r.data.params["train.lr"]: r.data.tags.get("rnnexp.threads", "?") for r in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="train.max_epochs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-queuebench-"))
    repo = scratch / "repo"
    env = {**os.environ, **GIT_ENV, "CI": "true"}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        sh(["git", "clone", "-q", str(ROOT), str(repo)], scratch, env)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["tune"]["n_trials"] = 0
        params["train"]["max_epochs"] = args.epochs
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(["dvc", "repro"], repo, env)
        sh(["git", "add", "-A"], repo, env)
        sh(["git", "commit", "-qm", "baseline"], repo, env)

        start = time.perf_counter()
        for lr in ("0.002", "0.003"):
            sh(["dvc", "exp", "run", "-S", f"train.lr={lr}"], repo, env)
        sequential = time.perf_counter() - start

        for lr in ("0.004", "0.005"):
            sets = ["-S", f"train.lr={lr}", "-S", "train.threads=1"]
            sh(["dvc", "exp", "run", "--queue", *sets], repo, env)
        done = experiment_refs(repo, env) + 2
        start = time.perf_counter()
        sh(["dvc", "queue", "start", "-j", "2"], repo, env)
        status = wait_for_queue(repo, env, done)
        queued = time.perf_counter() - start
        sh(["dvc", "queue", "stop"], repo, env)
        if status.count("Success") != 2:
            raise SystemExit(f"queued experiments did not both succeed:\n{status}")
        threads = train_threads(repo)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"two experiments (train + evaluate, {args.epochs} epochs each on digits)")
    print(f"torch threads per run (train.lr: threads): {threads}")
    print(f"sequential dvc exp run x2:        {sequential:.1f} s")
    print(f"dvc queue start -j 2 (2 queued):  {queued:.1f} s")
    print(f"ratio: {queued / sequential:.2f} (target <= 0.75)")


if __name__ == "__main__":
    main()
