"""The layout's figures (issue 12): what a code edit reruns, module sizes, console noise.

1. In a workspace after a complete ``dvc repro``, appends a comment line to each
   module of the CLI, the commands, the tracking package and the console set-up,
   then to the evaluate stage's module and to ``rnnexp/models/row_lstm.py``, one at a
   time (restoring each), and prints the stages ``dvc status`` then calls changed.
2. Prints the longest modules under ``rnnexp/``.
3. Reads the console output of that ``dvc repro`` and counts the lines with library
   noise and the lines per tune trial.

Without ``--workspace`` it clones this repository into a scratch folder and runs
``dvc repro`` there first (a few minutes), with this environment's tools.

Usage: python benchmarks/layout.py [--workspace DIR --log FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Tip:", "LeafSpec", "ExperimentalWarning", "GPU available", "TPU available")


def changed_stages(workspace: Path) -> list[str]:
    out = subprocess.run(
        ["dvc", "status", "--json"], cwd=workspace, capture_output=True, text=True, check=True
    ).stdout
    return sorted(name.rsplit(":", 1)[-1] for name in json.loads(out or "{}"))


def edits(workspace: Path) -> list[tuple[str, list[str]]]:
    """(module, stages changed after appending a comment to it) for each module edited."""
    package = workspace / "rnnexp"
    paths = [package / "cli.py", package / "console.py", *sorted(package.glob("commands/*.py"))]
    paths += sorted(package.glob("tracking/*.py"))
    paths += [package / "stages" / "evaluate.py", package / "models" / "row_lstm.py"]
    found = []
    for path in paths:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit that changes no output\n")
        try:
            found.append((str(path.relative_to(workspace)), changed_stages(workspace)))
        finally:
            path.write_bytes(original)
    return found


def console_figures(log: str) -> dict[str, float]:
    """Noise lines, trials and the tune stage's lines per trial in a repro's console.

    The tune stage's lines run from the end of the one before it (DVC's "Running stage
    'tune'", or the prepare stage's summary where stdout and stderr were kept apart)
    to its own summary line; DVC's own lines are not counted.
    """
    lines = log.splitlines()
    trials = [line for line in lines if re.match(r"tune: trial \d+ ", line)]
    end = next(i for i, line in enumerate(lines) if line.startswith("tune: study "))
    start = max(
        i
        for i, line in enumerate(lines[:end])
        if "Running stage 'tune'" in line or line.startswith("prepare: ")
    )
    dvc = ("Running stage", "> python", "Updating lock", "Generating lock")
    tune = [line for line in lines[start + 1 : end + 1] if line and not line.startswith(dvc)]
    return {
        "noise lines": sum(any(word in line for word in NOISE) for line in lines),
        "trials": len(trials),
        "tune stage lines per trial": len(tune) / max(len(trials), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace after `dvc repro`")
    parser.add_argument("--log", type=Path, help="that repro's console (stdout and stderr)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnexp-layout-") as scratch:
        workspace, log = args.workspace, args.log.read_text() if args.log else None
        if workspace is None:
            workspace = Path(scratch) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(workspace)], check=True)
            started = time.perf_counter()
            repro = subprocess.run(
                ["dvc", "repro"],
                cwd=workspace,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # interleaved, as on a console
                text=True,
                check=True,
            )  # not a terminal: what a user sees in CI or in a redirected log
            print(f"dvc repro: {time.perf_counter() - started:.0f} s")
            log = repro.stdout
        machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs"
        print(f"machine: {machine}, load {os.getloadavg()[0]:.2f}")
        for module, stages in edits(workspace):
            print(f"edit {module:34} -> dvc status changed: {', '.join(stages) or 'none'}")
    sizes = sorted((len(p.read_text().splitlines()), p) for p in (ROOT / "rnnexp").rglob("*.py"))
    for lines, path in sizes[-3:]:
        print(f"module {path.relative_to(ROOT)}: {lines} lines")
    if log is not None:
        for name, value in console_figures(log).items():
            print(f"console {name}: {value:g}")


if __name__ == "__main__":
    main()
