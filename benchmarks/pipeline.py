"""Time the default pipeline on digits: a fresh `dvc repro`, a no-op one, evaluate.

Clones the committed HEAD of this repository into a scratch folder, so it measures
what a new user gets. Prints the wall-clock times, the test NLL and the sample
scores of the evaluate stage, then times `rnnexp evaluate` again on its own (a
fresh process each time, as `dvc repro` runs it).

Usage: python benchmarks/pipeline.py [--keep] [--evaluate-runs N]
Targets: fresh repro <= 300 s on 2 cores (issue 2; <= 480 s with tune, issue 4),
test NLL <= 85 nats/image (issue 2; <= 80 with tune, issue 4); no-op repro <= 5 s;
evaluate incl. classifier scores over 1,000 samples <= 60 s, Frechet distance of
the model's samples <= half the per-pixel baseline's, classifier test accuracy
>= 95% (issue 5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone")
    parser.add_argument("--evaluate-runs", type=int, default=3, help="timed evaluate runs")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-bench-"))
    repo = scratch / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["CI"] = "true"  # no progress bar
    try:
        fresh = timed(["dvc", "repro"], repo, env)
        noop = [timed(["dvc", "repro"], repo, env) for _ in range(3)]
        metrics = json.loads((repo / "reports/metrics.json").read_text())
        evaluate = [timed(["rnnexp", "evaluate"], repo, env) for _ in range(args.evaluate_runs)]
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"fresh dvc repro: {fresh:.1f} s (target <= 300)")
    print(f"no-op dvc repro: median {statistics.median(noop):.2f} s, max {max(noop):.2f} s")
    test, base = metrics["test"], metrics["baseline"]
    print(f"test NLL: {test['nll_nats']:.2f} nats/image, {test['bpd']:.4f} bits/dim (target <= 85)")
    print(f"independent-per-pixel baseline: {base['nll_nats']:.2f} nats/image")
    sample, scorer = metrics["sample"], metrics["classifier"]
    ratio = sample["frechet"] / base["frechet"]
    print(
        f"Frechet distance over {sample['samples']} samples: model {sample['frechet']:.2f}, "
        f"per-pixel baseline {base['frechet']:.2f}, ratio {ratio:.3f} (target <= 0.5); "
        f"real train vs test {scorer['real_train_frechet']:.2f}"
    )
    print(f"classifier test accuracy: {scorer['test_accuracy']:.4f} (target >= 0.95)")
    print(f"completion accuracy (lower halves drawn): {metrics['completion']['accuracy']:.4f}")
    if evaluate:
        print(
            f"rnnexp evaluate, {len(evaluate)} runs: median {statistics.median(evaluate):.1f} s, "
            f"max {max(evaluate):.1f} s (target <= 60)"
        )


if __name__ == "__main__":
    main()
