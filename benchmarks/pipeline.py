"""Time the default pipeline on digits: a fresh `dvc repro` and a no-op one.

Clones the committed HEAD of this repository into a scratch folder, so it measures
what a new user gets. Prints the wall-clock times and the test NLL.

Usage: python benchmarks/pipeline.py [--keep]
Targets (issue 2): fresh repro <= 300 s on 2 cores, test NLL <= 85 nats/image;
no-op repro <= 5 s.
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
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"fresh dvc repro: {fresh:.1f} s (target <= 300)")
    print(f"no-op dvc repro: median {statistics.median(noop):.2f} s, max {max(noop):.2f} s")
    test, base = metrics["test"], metrics["baseline"]
    print(f"test NLL: {test['nll_nats']:.2f} nats/image, {test['bpd']:.4f} bits/dim (target <= 85)")
    print(f"independent-per-pixel baseline: {base['nll_nats']:.2f} nats/image")


if __name__ == "__main__":
    main()
