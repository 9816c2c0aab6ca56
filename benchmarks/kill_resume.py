"""Kill `rnnexp train` at random moments and resume it: do all runs end equal?

Prepares 8x8 digits (the first ``--images``) in a scratch folder and trains a small
Row LSTM once without interruption (the reference). Then, per cycle, starts
`rnnexp train` in a subprocess, SIGKILLs it at a moment drawn uniformly from
``--earliest`` seconds (default 0) to 90% of the reference's duration, and reruns
it until it completes (``--earliest`` past Python's start-up puts more kills
inside the training itself). At the
end each cycle's final weights (``last.ckpt`` and ``best.ckpt`` state_dict
tensors) are compared with ``torch.equal`` to the reference's, and its MLflow runs
are counted.

Prints per cycle: the kill time, whether the rerun resumed from a checkpoint (a
kill before the first epoch's checkpoint restarts from scratch, in the same MLflow
run; a kill after the run ended FINISHED, while the process exits, leaves a
finished training, which a rerun trains anew in a new run), the number of reruns,
the MLflow runs of the cycle's output folder, and whether the weights are equal;
then the totals.

Usage: python benchmarks/kill_resume.py [--cycles 20] [--seed 0] [--epochs 4] [--images 600]
       [--earliest 0] [--keep]
Target (issue 7): all cycles complete, all end with the reference's weights, one
MLflow run per cycle. Timings vary with load: a kill may come after the training
finished ("finished first"); raise --cycles for more resumed cycles.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
print = functools.partial(print, flush=True)  # noqa: A001 - progress shows under a pipe
RNNEXP = str(Path(sys.executable).parent / "rnnexp")


def overrides(epochs: int) -> list[str]:
    sets = [
        "model.hidden=8",
        "model.layers=1",
        "model.head_hidden=16",
        f"train.max_epochs={epochs}",
        "train.batch_size=64",
        "train.sample_every=0",
        "train.progress_bar=never",
        "train.use_tuned=false",
    ]
    return [arg for item in sets for arg in ("--set", item)]


def train_cmd(out: Path, epochs: int) -> list[str]:
    params = str(ROOT / "params.yaml")
    return [RNNEXP, "train", "--params", params, "--out", str(out), *overrides(epochs)]


def same_weights(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=600, help="digits used (of 1,797)")
    parser.add_argument("--earliest", type=float, default=0.0, help="earliest kill (s)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-kill-resume-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    try:
        subprocess.run(
            [sys.executable, "-c", PREPARE, str(scratch / "data" / "prepared"), str(args.images)],
            check=True,
        )
        start = time.perf_counter()
        subprocess.run(
            train_cmd(scratch / "reference", args.epochs),
            cwd=scratch,
            env=env,
            check=True,
            capture_output=True,
        )
        duration = time.perf_counter() - start
        print(f"reference: {args.epochs} epochs in {duration:.1f} s")

        totals = {
            "completed": 0,
            "resumed": 0,
            "restarted": 0,
            "after_finish": 0,
            "equal": 0,
            "one_run": 0,
        }
        for cycle in range(args.cycles):
            out = scratch / f"cycle{cycle}"
            kill_at = rng.uniform(min(args.earliest, 0.9 * duration), 0.9 * duration)
            proc = subprocess.Popen(
                train_cmd(out, args.epochs),
                cwd=scratch,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                proc.wait(timeout=kill_at)
                killed = False  # finished before the kill
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = True
            reruns, resumed, finished = 0, False, not killed
            while not finished and reruns < 3:
                reruns += 1
                done = subprocess.run(
                    train_cmd(out, args.epochs), cwd=scratch, env=env, capture_output=True
                )
                resumed = resumed or "resuming from" in done.stderr.decode()
                finished = done.returncode == 0
                if not finished:
                    print(done.stderr.decode()[-2000:], file=sys.stderr)
            equal = finished and all(
                same_weights(out / name, scratch / "reference" / name)
                for name in ("last.ckpt", "best.ckpt")
            )
            found = runs_of(env["MLFLOW_TRACKING_URI"], out)
            runs = len(found)
            # Killed after its run had ended FINISHED (while the process exited): the
            # training was complete, so the rerun is a new training (and a new run).
            after = killed and not resumed and runs == 2 and found[0].info.status == "FINISHED"
            totals["completed"] += finished
            totals["resumed"] += resumed
            totals["after_finish"] += after
            totals["restarted"] += killed and not resumed and not after
            totals["equal"] += equal
            totals["one_run"] += runs == 1
            how = "resumed" if resumed else "after its run finished" if after else "from scratch"
            print(
                f"cycle {cycle:2d}: kill at {kill_at:5.1f} s "
                f"{'killed' if killed else 'finished first'}, "
                f"{how if killed else '-'}, "
                f"reruns {reruns}, MLflow train runs {runs}, weights equal {equal}"
            )
        n = args.cycles
        print(
            f"kill-resume: {totals['completed']}/{n} completed, "
            f"{totals['resumed']}/{n} resumed from a checkpoint, "
            f"{totals['restarted']}/{n} killed before the first checkpoint (restarted in its run), "
            f"{totals['after_finish']}/{n} killed after their run had finished (trained anew), "
            f"{totals['equal']}/{n} final weights equal to the uninterrupted run, "
            f"{totals['one_run']}/{n} with a single MLflow run"
        )
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def runs_of(uri: str, out: Path) -> list:
    """MLflow runs whose checkpoints went to ``out`` (tag ``rnnexp.out_dir``), oldest first."""
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=f"tags.`rnnexp.out_dir` = '{out}'")
    return sorted(found, key=lambda run: run.info.start_time)


PREPARE = """
import sys
from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import RawDataset, load_digits
raw = load_digits()
n = int(sys.argv[2])
raw = RawDataset(raw.images[:n], raw.labels[:n], raw.max_value, raw.class_names, raw.source, "d")
write_prepared(prepare(raw, 17, 0, 0.1, 0.1), sys.argv[1])
"""


if __name__ == "__main__":
    main()
