"""Parallel queued experiments: `dvc queue start -j 2` vs the same two experiments in turn.

Clones the committed HEAD of this repository into a scratch folder, skips the search
(``tune.n_trials=0``), runs `dvc repro` once and commits its lock file, so each
experiment below reruns only train and evaluate. Then, in each repetition (the
order of the two flips every repetition, so drift in the machine's speed hits
both), times

- sequential: `dvc exp run -S train.lr=A`, then `dvc exp run -S train.lr=B`
  (torch's default threads: the whole machine for one experiment at a time);
- queued: `dvc exp run --queue -S train.lr=C -S train.threads=1 -S
  evaluate.threads=1` and `... D`, then `dvc queue start -j 2` (two experiments,
  one core each; the runs' `rnnexp.threads` tags must say 1), to two moments:
  *recorded*, when both experiments are in the repository (`dvc exp show` lists
  them, `dvc exp apply` takes them), and *idle*, when `dvc queue status` shows
  neither queued nor running, after DVC has also deleted its temporary copies.

Every learning rate is new (and none is the committed 3.0e-3), so DVC's run-cache
restores no training. The workspace is reset to the committed baseline before each
timing. Also prints when each experiment's MLflow run (train, then evaluate) began
and ended, in seconds after the timing started: the two queued spans overlap when
DVC ran the experiments side by side, and the time outside the spans is DVC's own.

Usage: python benchmarks/dvc_queue.py [--epochs 15] [--reps 3] [--keep]
Target (issue 6): queued <= 75 % of sequential on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
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
    """Run ``cmd`` and return its stdout; exit naming it if it fails.

    Output goes to files, not pipes: `dvc queue start` leaves worker daemons that
    inherit its stdout and stderr, and reading a pipe to its end would wait for
    them to exit (the whole queue, plus the workers' 10 s idle timeout).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=err).returncode
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stdout}\n{stderr}")
    return stdout


# A recorded experiment: refs/exps/<2 hex>/<38 hex>/<name> (baseline commit, name).
# DVC's working refs (exec/, celery/, temp/ while a queued run is merged) do not count.
EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+")


def experiment_refs(repo: Path, env: dict) -> int:
    """How many experiments DVC has recorded in the repository."""
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, env)
    return sum(1 for ref in refs.split() if EXPERIMENT_REF.fullmatch(ref))


def wait_for_queue(repo: Path, env: dict, done: int, timeout: float = 3600) -> tuple:
    """Wait until ``done`` experiment refs exist, then until the queue is idle.

    Returns (seconds waited to the refs, seconds waited to idle, `dvc queue status`).
    Polling `git for-each-ref` (milliseconds) instead of `dvc queue status` (a
    second of CPU per call) keeps the benchmark from stealing a core from the
    experiments it times.
    """
    start = time.perf_counter()
    deadline = start + timeout
    while experiment_refs(repo, env) < done:
        if time.perf_counter() > deadline:
            raise SystemExit(f"experiments not recorded in {timeout} s")
        time.sleep(0.2)
    recorded = time.perf_counter() - start
    while True:
        status = sh(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            return recorded, time.perf_counter() - start, status
        if time.perf_counter() > deadline:
            raise SystemExit(f"queue not idle in {timeout} s:\n{status}")
        time.sleep(0.5)


def reset_workspace(repo: Path, env: dict) -> None:
    """Back to the committed baseline: params, lock file and outputs."""
    sh(["git", "reset", "-q", "--hard"], repo, env)
    sh(["dvc", "checkout", "-q", "--force"], repo, env)


def run_spans(repo: Path, lrs: tuple[str, ...], since: float) -> dict[str, tuple]:
    """train.lr -> (rnnexp.util.threads tag, start s, end s after ``since``) of its train run."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rnnexp")
    runs = client.search_runs([experiment.experiment_id], "tags.`rnnexp.stage` = 'train'")
    wanted = {float(lr): lr for lr in lrs}  # MLflow holds 0.0050 as "0.005"
    spans: dict[str, tuple] = {}
    for r in runs:  # newest first: the run of this timing, not an older one of the lr
        lr = wanted.get(float(r.data.params["train.lr"]))
        if lr is not None and lr not in spans:
            start, end = r.info.start_time / 1000 - since, (r.info.end_time or 0) / 1000 - since
            spans[lr] = (r.data.tags.get("rnnexp.threads"), start, end)
    return spans


def time_sequential(repo: Path, env: dict, lrs: tuple[str, str]) -> tuple[float, dict]:
    reset_workspace(repo, env)
    start, since = time.perf_counter(), time.time()
    for lr in lrs:
        sh(["dvc", "exp", "run", "-S", f"train.lr={lr}"], repo, env)
    return time.perf_counter() - start, run_spans(repo, lrs, since)


def time_queued(repo: Path, env: dict, lrs: tuple[str, str]) -> tuple[float, float, dict]:
    reset_workspace(repo, env)
    for lr in lrs:
        sets = ["-S", f"train.lr={lr}", "-S", "train.threads=1", "-S", "evaluate.threads=1"]
        sh(["dvc", "exp", "run", "--queue", *sets], repo, env)
    done = experiment_refs(repo, env) + len(lrs)
    since = time.time()
    sh(["dvc", "queue", "start", "-j", "2"], repo, env)
    recorded, idle, status = wait_for_queue(repo, env, done)
    sh(["dvc", "queue", "stop"], repo, env)
    while "0 active, 0 idle" not in sh(["dvc", "queue", "status"], repo, env):
        time.sleep(1)  # the workers are gone before the next timing starts
    if status.count("Success") < len(lrs) or "Failed" in status:
        raise SystemExit(f"queued experiments did not both succeed:\n{status}")
    spans = run_spans(repo, lrs, since)
    if sorted(threads for threads, _, _ in spans.values()) != ["1", "1"]:
        raise SystemExit(f"queued runs did not train with one thread each: {spans}")
    return recorded, idle, spans


def show_spans(kind: str, spans: dict) -> None:
    for lr, (_, begin, end) in sorted(spans.items()):
        print(f"  {kind} run train.lr={lr}: {begin:5.1f} s to {end:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="train.max_epochs")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of both timings")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-queuebench-"))
    repo = scratch / "repo"
    env = {**os.environ, **GIT_ENV, "CI": "true"}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    for name in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS"):
        env.pop(name, None)
    new_lrs = (f"{0.004 + 0.0001 * k:.4f}" for k in range(1000))
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"two experiments per timing (train + evaluate, {args.epochs} epochs on digits)")
    rows = []
    try:
        sh(["git", "clone", "-q", str(ROOT), str(repo)], scratch, env)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["tune"]["n_trials"] = 0
        params["train"]["max_epochs"] = args.epochs
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(["dvc", "repro"], repo, env)
        sh(["git", "add", "-A"], repo, env)
        sh(["git", "commit", "-qm", "baseline"], repo, env)
        for rep in range(args.reps):
            sequential_lrs = (next(new_lrs), next(new_lrs))
            queued_lrs = (next(new_lrs), next(new_lrs))
            for kind in ("sequential", "queued") if rep % 2 == 0 else ("queued", "sequential"):
                if kind == "sequential":
                    sequential, sequential_spans = time_sequential(repo, env, sequential_lrs)
                else:
                    recorded, idle, queued_spans = time_queued(repo, env, queued_lrs)
            rows.append((sequential, recorded, idle))
            print(
                f"rep {rep + 1}: sequential {sequential:.1f} s; queued: recorded {recorded:.1f} s "
                f"(ratio {recorded / sequential:.2f}), idle {idle:.1f} s "
                f"(ratio {idle / sequential:.2f})"
            )
            show_spans("sequential", sequential_spans)
            show_spans("queued", queued_spans)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    sequential = statistics.median(row[0] for row in rows)
    recorded = statistics.median(row[1] for row in rows)
    idle = statistics.median(row[2] for row in rows)
    print(f"median of {len(rows)}: sequential dvc exp run x2 {sequential:.1f} s")
    print(
        f"dvc queue start -j 2, both recorded: {recorded:.1f} s, ratio {recorded / sequential:.2f}"
    )
    print(f"dvc queue start -j 2, queue idle:    {idle:.1f} s, ratio {idle / sequential:.2f}")
    print("target: ratio <= 0.75")


if __name__ == "__main__":
    main()
