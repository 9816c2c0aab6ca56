"""Start-up of the commands that do not train: the imports before their first line of work.

Times, for this working tree and for an earlier commit checked out into a scratch
worktree, interleaved, ``python -c "import ..."`` of

- evaluate: rnnexp.cli, the evaluate stage, rnnexp.tracking (evaluate, sample, complete);
- tune: rnnexp.cli, the tune stage (what `rnnexp tune` loads; with ``tune.n_trials: 0``,
  as in every DVC experiment that skips the search, that is all it does);

(module names of the tree's own layout: ``rnnexp.stages.*`` since the layout issue,
``rnnexp.evaluate`` / ``rnnexp.tune`` before it)

and prints the medians and their ratio.

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
IMPORTS = {
    "evaluate": "import rnnexp.cli, rnnexp.stages.evaluate, rnnexp.tracking",
    "tune": "import rnnexp.cli, rnnexp.stages.tune",
}
OLD_LAYOUT = {"rnnexp.stages.evaluate": "rnnexp.evaluate", "rnnexp.stages.tune": "rnnexp.tune"}


def imports_of(tree: Path, imports: str) -> str:
    """``imports`` in the module names of ``tree``'s layout."""
    if (tree / "rnnexp" / "stages").is_dir():
        return imports
    for new, old in OLD_LAYOUT.items():
        imports = imports.replace(new, old)
    return imports


def import_seconds(tree: Path, imports: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    imports = imports_of(tree, imports)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", imports], cwd=tree, env=env, check=True)
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
            times = {(name, tree): [] for name in IMPORTS for tree in ("before", "now")}
            trees = {"before": old, "now": ROOT}
            for name, tree in times:  # warm the .pyc and page caches
                import_seconds(trees[tree], IMPORTS[name])
            for _ in range(args.reps):
                for (name, tree), runs in times.items():
                    runs.append(import_seconds(trees[tree], IMPORTS[name]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"median of {args.reps}, before = {args.before}")
    for name, imports in IMPORTS.items():
        before = statistics.median(times[name, "before"])
        now = statistics.median(times[name, "now"])
        print(
            f"{name:9} before {before:.2f} s, now {now:.2f} s, ratio {now / before:.2f} ({imports})"
        )


if __name__ == "__main__":
    main()
