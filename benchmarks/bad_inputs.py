"""How many bad inputs get the promised behaviour? (issue 7, "Reliability")

Runs every case of ``tests/test_bad_input.py`` (the same table the tests use) in a
scratch folder against a fresh MLflow SQLite store, and prints one line per case
and the count. The promise, per case: exit status 2; a one-line error on stderr
that names what is wrong and where; the workspace byte-identical afterwards (no
partial output, no temporary file); no MLflow run left RUNNING (and none opened,
unless the stage's own work found the problem: then it ended FAILED).

Usage: python benchmarks/bad_inputs.py [-k SUBSTRING] [--verbose]
Target: all cases, at least 25.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_table():
    """The test module holding CASES, build_world and run_case (imported by path)."""
    path = ROOT / "tests" / "test_bad_input.py"
    spec = importlib.util.spec_from_file_location("bad_input_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--verbose", action="store_true", help="print each error message")
    args = parser.parse_args()

    table = load_table()
    cases = [c for c in table.CASES if args.k in c.name]
    with tempfile.TemporaryDirectory(prefix="rnnexp-bad-inputs-") as tmp:
        scratch = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
        from mlflow import MlflowClient

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        client.search_experiments()  # creates the tables once, outside the timing
        world = table.build_world(scratch / "world")
        cases_dir = scratch / "cases"
        cases_dir.mkdir()
        kept = 0
        start = time.perf_counter()
        for case in cases:
            outcome = table.run_case(case, world, cases_dir, client)
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
