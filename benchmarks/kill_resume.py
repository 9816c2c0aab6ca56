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

``--early-peak`` (issue 16): a validation curve that peaks early, and every kill after
a later epoch than the best. The data: ``--images`` digits (default 200) to train on,
60 images to validate on of which 30 are uniform noise, which the model predicts
worse the more it learns digits; with ``train.lr`` 5e-2 (``--lr``) val/bpd is best
at epoch 1 of 8 and worse at every epoch after. The reference's curve is checked
first (the best epoch must leave a later epoch to kill after). Then per run an epoch
``k`` is drawn from (best epoch + 1) .. (epochs - 3), and the run is SIGKILLed a
random moment (under 80% of the reference's shortest epoch) after ``last.ckpt``
holds epoch ``k``: inside a later epoch than the best, and before the last epoch
even when the kill lands an epoch late (an epoch takes 0.1-0.2 s). A run passes
when the rerun resumes "after epoch" (epochs done) 1 + the epoch ``last.ckpt`` held
at the kill, a later one than the best; its ``last.ckpt`` and ``best.ckpt`` weights
equal the reference's tensor for tensor; ``last.ckpt`` is the final epoch and
``best.ckpt`` the reference's best; its history (what ``reports/val_curve.csv`` is
written from) equals the reference's, one row per epoch; and its output folder has
one MLflow run. Epochs are numbered from 0, as in the checkpoints. Prints per run
the drawn epoch, the checkpoints' epochs at the kill, where it resumed and each
check; then "N of N runs ..."; exits 1 unless all pass.

Usage: python benchmarks/kill_resume.py --early-peak [--runs 20] [--seed 0] [--epochs 8]
       [--images 200] [--lr 5e-2] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import re
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


def overrides(epochs: int, extra: tuple[str, ...] = ()) -> list[str]:
    sets = [
        "model.hidden=8",
        "model.layers=1",
        "model.head_hidden=16",
        f"train.max_epochs={epochs}",
        "train.batch_size=64",
        "train.sample_every=0",
        "train.progress_bar=never",
        "train.use_tuned=false",
        *extra,
    ]
    return [arg for item in sets for arg in ("--set", item)]


def train_cmd(out: Path, epochs: int, extra: tuple[str, ...] = ()) -> list[str]:
    params = str(ROOT / "params.yaml")
    return [RNNEXP, "train", "--params", params, "--out", str(out), *overrides(epochs, extra)]


def same_weights(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", "--runs", type=int, default=20, help="killed runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--epochs", type=int, help="default 4; --early-peak: 8")
    parser.add_argument("--images", type=int, help="digits used (of 1,797); default 600, "
                        "--early-peak: 200 to train on")  # fmt: skip
    parser.add_argument("--earliest", type=float, default=0.0, help="earliest kill (s)")
    early = "a validation curve that peaks early; kills after later epochs"
    parser.add_argument("--early-peak", action="store_true", help=early)
    parser.add_argument("--lr", type=float, default=5e-2, help="--early-peak: train.lr")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if args.early_peak:
        args.epochs, args.images = args.epochs or 8, args.images or 200
        sys.exit(early_peak(args))
    args.epochs, args.images = args.epochs or 4, args.images or 600
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


def early_peak(args: argparse.Namespace) -> int:
    """The ``--early-peak`` benchmark (see the module's docstring); 0 when every run passes."""
    rng = random.Random(args.seed)
    extra = (f"train.lr={args.lr}", "train.patience=0")  # every epoch trained
    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-kill-resume-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    try:
        prepared = str(scratch / "data" / "prepared")
        subprocess.run([sys.executable, "-c", PREPARE_EARLY_PEAK, prepared, str(args.images)],
                       check=True)  # fmt: skip
        reference = scratch / "reference"
        start = time.perf_counter()
        proc, watch = start_training(reference, args.epochs, extra, scratch, env)
        while proc.poll() is None:
            watch.poll()
            time.sleep(POLL_S)
        duration = time.perf_counter() - start
        if proc.returncode != 0:
            print((scratch / "reference.log").read_text()[-2000:], file=sys.stderr)
            return 1
        history = read_ckpt(reference / "last.ckpt")["rnnexp"]["history"]
        curve = [row["val_bpd"] for row in history]
        best = min(range(len(curve)), key=curve.__getitem__)
        times = [watch.seen[epoch] for epoch in sorted(watch.seen)]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        epoch_s = min(gaps) if gaps else duration / args.epochs
        print(
            f"reference: {args.epochs} epochs in {duration:.1f} s "
            f"(shortest epoch {epoch_s:.2f} s); "
            f"val/bpd by epoch {', '.join(f'{v:.3f}' for v in curve)}: best at epoch {best}"
        )
        if len(curve) != args.epochs or best + 1 > args.epochs - 3:
            print("the validation curve does not peak early enough to kill after a later epoch; "
                  "raise --lr or --epochs")  # fmt: skip
            return 1

        passed = 0
        for i in range(args.cycles):
            out = scratch / f"run{i}"
            after = rng.randint(best + 1, args.epochs - 3)  # kill inside a later epoch
            delay = rng.uniform(0.0, 0.8 * epoch_s)
            proc, watch = start_training(out, args.epochs, extra, scratch, env)
            killed = False
            if wait_for_epoch(proc, watch, after):
                try:
                    proc.wait(timeout=delay)  # finished before the kill
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
            proc.wait()
            last_at_kill = ckpt_epoch(out / "last.ckpt")
            best_at_kill = ckpt_epoch(out / "best.ckpt")
            rerun = subprocess.run(train_cmd(out, args.epochs, extra), cwd=scratch, env=env,
                                   capture_output=True, text=True)  # fmt: skip
            if rerun.returncode != 0:
                print(rerun.stderr[-2000:], file=sys.stderr)
            found = re.search(r"resuming from \S+ after epoch (\d+)", rerun.stderr)
            done = int(found.group(1)) if found else None  # epochs done before the resume
            finished = rerun.returncode == 0
            checks = {
                "killed": killed,
                "resumed from last.ckpt": last_at_kill is not None and done == last_at_kill + 1,
                "later than the best": last_at_kill is not None and last_at_kill > best,
                "weights equal": finished
                and all(
                    same_weights(out / name, reference / name)
                    for name in ("last.ckpt", "best.ckpt")
                ),
                "epochs of last/best": finished
                and ckpt_epoch(out / "last.ckpt") == args.epochs - 1
                and ckpt_epoch(out / "best.ckpt") == best,
                "curve equal": finished
                and read_ckpt(out / "last.ckpt")["rnnexp"]["history"] == history,
                "one MLflow run": len(runs_of(env["MLFLOW_TRACKING_URI"], out)) == 1,
            }
            passed += all(checks.values())
            resumed = f"resumed from epoch {done - 1}" if done else "not resumed"
            print(
                f"run {i:2d}: kill {delay:.2f} s after epoch {after}'s checkpoint: "
                f"{'killed' if killed else 'finished first'} with last.ckpt at epoch "
                f"{last_at_kill}, best.ckpt at epoch {best_at_kill}; {resumed}; "
                + ", ".join(f"{name} {value}" for name, value in checks.items())
            )
        n = args.cycles
        print(
            f"early-peak kill-resume: {passed} of {n} runs killed after a later epoch than the "
            f"best (epoch {best}) resumed from their last epoch and ended with the "
            "uninterrupted run's final weights (and its checkpoint epochs, curve and one "
            "MLflow run)"
        )
        return 0 if passed == n else 1
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


POLL_S = 0.02  # how often a running training's last.ckpt is looked at


def read_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def ckpt_epoch(path: Path) -> int | None:
    """The epoch (from 0) a checkpoint holds; None when there is none."""
    return int(read_ckpt(path)["epoch"]) if path.is_file() else None


class CheckpointWatch:
    """The epoch a running training's ``last.ckpt`` holds (written atomically: a new
    file each epoch), and when each epoch's first appeared (``seen``)."""

    def __init__(self, path: Path) -> None:
        self.path, self.stamp, self.epoch = path, None, None
        self.seen: dict[int, float] = {}

    def poll(self) -> int | None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return self.epoch
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp != self.stamp:
            self.stamp, self.epoch = stamp, ckpt_epoch(self.path)
            if self.epoch is not None:
                self.seen.setdefault(self.epoch, time.perf_counter())
        return self.epoch


def start_training(out: Path, epochs: int, extra: tuple[str, ...], cwd: Path, env: dict):
    """`rnnexp train` into ``out`` in the background (its stderr in ``out``.log)."""
    with open(out.with_name(out.name + ".log"), "wb") as log:
        proc = subprocess.Popen(train_cmd(out, epochs, extra), cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    return proc, CheckpointWatch(out / "last.ckpt")


def wait_for_epoch(proc: subprocess.Popen, watch: CheckpointWatch, epoch: int) -> bool:
    """Wait until ``last.ckpt`` holds ``epoch`` or a later one; False when the training
    ended first."""
    while True:
        held = watch.poll()
        if held is not None and held >= epoch:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(POLL_S)


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

# --early-peak: train on the first n digits; validate on 60 others, 30 of them replaced
# by uniform noise, which a model of digits predicts worse the more it learns
PREPARE_EARLY_PEAK = """
import dataclasses, sys
import numpy as np
from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import load_digits
n = int(sys.argv[2])
data = prepare(load_digits(), 17, 0, 0.0, 0.0)  # quantised, all in train
x, y = data.splits["train"]
val = x[n : n + 60].copy()
val[:30] = np.random.default_rng(0).integers(0, 17, val[:30].shape, dtype=val.dtype)
splits = {"train": (x[:n], y[:n]), "val": (val, y[n : n + 60]),
          "test": (x[n + 60 : n + 100], y[n + 60 : n + 100])}
write_prepared(dataclasses.replace(data, splits=splits), sys.argv[1])
"""


if __name__ == "__main__":
    main()
