"""How many bad inputs get the promised behaviour? (issue 7, "Reliability")

Runs every case of ``tests/test_bad_input_*.py`` (the same tables the tests use,
gathered by ``tests/bad_input_harness.py``) in a scratch folder against a fresh
MLflow SQLite store, and prints one line per case and the count. The promise, per
case: exit status 2; a one-line error on stderr that names what is wrong and where;
the workspace byte-identical afterwards (no partial output, no temporary file); no
MLflow run left RUNNING (and none opened, unless the stage's own work found the
problem: then it ended FAILED).

Usage: python benchmarks/bad_inputs.py [-k SUBSTRING] [--verbose]
Target: all cases, at least 25.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_harness():
    """tests/bad_input_harness.py (all_cases, build_world, run_case), tests/ put on sys.path."""
    sys.path.insert(0, str(ROOT / "tests"))  # the harness imports helpers and the stage modules
    import bad_input_harness

    return bad_input_harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--verbose", action="store_true", help="print each error message")
    args = parser.parse_args()

    harness = load_harness()
    cases = [c for c in harness.all_cases() if args.k in c.name]
    with tempfile.TemporaryDirectory(prefix="rnnexp-bad-inputs-") as tmp:
        scratch = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
        from mlflow import MlflowClient

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        client.search_experiments()  # creates the tables once, outside the timing
        world = harness.build_world(scratch / "world")
        cases_dir = scratch / "cases"
        cases_dir.mkdir()
        kept = 0
        start = time.perf_counter()
        for case in cases:
            outcome = harness.run_case(case, world, cases_dir, client)
            ok = not outcome.problems
            kept += ok
            verdict = "ok  " if ok else "FAIL"
            print(f"{verdict} {case.stage:9s} {case.name}")
            for problem in outcome.problems:
                print(f"       {problem}")
            if args.verbose or not ok:
                message = outcome.stderr.strip().splitlines()
                print("       stderr: " + (" | ".join(message[-3:]) if message else "(empty)"))
        elapsed = time.perf_counter() - start
    print(
        f"{len(cases)} cases tried, {kept} gave the promised behaviour "
        f"({elapsed:.1f} s, {len({c.stage for c in cases})} stages)"
    )
    return 0 if kept == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
