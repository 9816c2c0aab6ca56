"""Parallel queued experiments: `dvc queue start -j 2` vs the same two experiments in turn.

Clones the committed HEAD of this repository into a scratch folder, skips the search
(``tune.n_trials=0``), runs `dvc repro` once and commits its lock file, so each
experiment below reruns only train and evaluate. Then times

- sequential: `dvc exp run -S train.lr=A`, then `dvc exp run -S train.lr=B`
  (torch's default threads: the whole machine for one experiment at a time);
- queued: `dvc exp run --queue -S train.lr=C -S train.threads=1 -S
  evaluate.threads=1` and `... D`, then `dvc queue start -j 2`, until both
  experiments are recorded and `dvc queue status` shows neither queued nor
  running (two experiments, one core each; the runs' `rnnexp.threads` tags must
  say 1).

Also prints when each experiment's MLflow run (train, then evaluate) began and
ended, in seconds after the first `dvc exp run` or after `dvc queue start`: the
two queued spans overlap when DVC ran the experiments side by side, and the gaps
before and after the spans are DVC's own work.

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


def run_spans(repo: Path, lrs: tuple[str, ...], since: float) -> dict[str, tuple]:
    """train.lr -> (rnnexp.threads tag, start s, end s after ``since``) of its train run."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
    return {
        r.data.params["train.lr"]: (
            r.data.tags.get("rnnexp.threads"),
            r.info.start_time / 1000 - since,
            r.info.end_time / 1000 - since,
        )
        for r in runs
        if r.data.params["train.lr"] in lrs
    }


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

        sequential_lrs = ("0.002", "0.003")
        start, sequential_at = time.perf_counter(), time.time()
        for lr in sequential_lrs:
            sh(["dvc", "exp", "run", "-S", f"train.lr={lr}"], repo, env)
        sequential = time.perf_counter() - start

        queued_lrs = ("0.004", "0.005")
        for lr in queued_lrs:
            sets = ["-S", f"train.lr={lr}", "-S", "train.threads=1", "-S", "evaluate.threads=1"]
            sh(["dvc", "exp", "run", "--queue", *sets], repo, env)
        done = experiment_refs(repo, env) + 2
        start, started_at = time.perf_counter(), time.time()
        sh(["dvc", "queue", "start", "-j", "2"], repo, env)
        status = wait_for_queue(repo, env, done)
        queued = time.perf_counter() - start
        sh(["dvc", "queue", "stop"], repo, env)
        if status.count("Success") != 2:
            raise SystemExit(f"queued experiments did not both succeed:\n{status}")
        spans = run_spans(repo, queued_lrs, started_at)
        sequential_spans = run_spans(repo, sequential_lrs, sequential_at)
        if sorted(threads for threads, _, _ in spans.values()) != ["1", "1"]:
            raise SystemExit(f"queued runs did not train with one thread each: {spans}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"two experiments (train + evaluate, {args.epochs} epochs each on digits)")
    for lr, (_, begin, end) in sorted(sequential_spans.items()):
        print(f"sequential run train.lr={lr}: {begin:.1f} s to {end:.1f} s after the first start")
    for lr, (_, begin, end) in sorted(spans.items()):
        print(f"queued run train.lr={lr}: {begin:.1f} s to {end:.1f} s after queue start")
    print(f"sequential dvc exp run x2:        {sequential:.1f} s")
    print(f"dvc queue start -j 2 (2 queued):  {queued:.1f} s")
    print(f"ratio: {queued / sequential:.2f} (target <= 0.75)")


if __name__ == "__main__":
    main()
