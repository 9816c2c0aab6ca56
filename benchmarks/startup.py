"""Start-up of the commands that do not train: importing what `rnnexp evaluate` needs.

Times ``python -c "import rnnexp.cli, rnnexp.evaluate, rnnexp.tracking"`` (what the
evaluate, sample and complete commands load before their first line of work) for
this working tree and for an earlier commit checked out into a scratch worktree,
interleaved, and prints the medians and their ratio.

Usage: python benchmarks/startup.py [--before REV] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = "import rnnexp.cli, rnnexp.evaluate, rnnexp.tracking"


def import_seconds(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], cwd=tree, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD~1", help="commit to compare against")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnexp-startup-") as scratch:
        old = Path(scratch) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.before],
                       cwd=ROOT, check=True)  # fmt: skip
        try:
            times: dict[str, list[float]] = {"before": [], "now": []}
            import_seconds(old), import_seconds(ROOT)  # warm the .pyc and page caches
            for _ in range(args.reps):
                times["before"].append(import_seconds(old))
                times["now"].append(import_seconds(ROOT))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{IMPORTS!r}, median of {args.reps}")
    print(f"before ({args.before}): {before:.2f} s   now: {now:.2f} s   ratio {now / before:.2f}")


if __name__ == "__main__":
    main()
