"""MLflow logging overhead: digits training logging to a local `mlflow server` vs tracking off.

Starts `rnnexp server` (SQLite store, served artifacts) on a free localhost port in a
scratch folder, then times whole `rnnexp train` processes on the full digits set,
alternating the two modes in each repetition (the order flips every repetition, so
drift in the machine's load hits both):

- server: MLFLOW_TRACKING_URI=http://127.0.0.1:<port> — params, per-epoch curves,
  sample grids every ``train.sample_every`` epochs and the checkpoint artifact go
  over HTTP;
- off: ``tracking.enabled=false`` — the same training with no MLflow run at all
  (the sample grids are still drawn, only not sent).

Prints each pair and the medians; the overhead is median(server) / median(off) - 1.

Usage: python benchmarks/logging_overhead.py [--reps 5] [--epochs 10] [--keep]
Target (issue 6): overhead <= 5 %.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("mlflow server exited; see server.log")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"mlflow server did not answer in {timeout} s")


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="pairs of runs")
    parser.add_argument("--epochs", type=int, default=10, help="train.max_epochs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rnnexp-logbench-"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CI": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    shutil.copy(ROOT / "params.yaml", scratch / "params.yaml")
    common = ["--set", f"train.max_epochs={args.epochs}", "--set", "train.use_tuned=false"]
    setup_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'setup.db'}"}
    subprocess.run(["rnnexp", "fetch"], cwd=scratch, env=setup_env, check=True)
    subprocess.run(["rnnexp", "prepare"], cwd=scratch, env=setup_env, check=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_cmd = ["rnnexp", "server", "--root", str(scratch / "srv"), "--port", str(port)]
    with (scratch / "server.log").open("wb") as log:
        server = subprocess.Popen(
            server_cmd, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    modes = {
        "server": ({**env, "MLFLOW_TRACKING_URI": url}, []),
        "off": (env, ["--set", "tracking.enabled=false"]),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        wait_healthy(url, server)
        for rep in range(args.reps):
            order = list(modes) if rep % 2 == 0 else list(reversed(modes))
            for mode in order:
                mode_env, extra = modes[mode]
                models = scratch / f"models-{mode}"
                shutil.rmtree(models, ignore_errors=True)  # each run writes fresh checkpoints
                out = ["--out", str(models)]
                times[mode].append(
                    timed(["rnnexp", "train", *common, *extra, *out], scratch, mode_env)
                )
            print(
                f"rep {rep + 1}: server {times['server'][-1]:.1f} s, off {times['off'][-1]:.1f} s"
            )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    server_s, off_s = statistics.median(times["server"]), statistics.median(times["off"])
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"digits, {args.epochs} epochs, {args.reps} interleaved pairs of `rnnexp train`")
    print(f"tracking to mlflow server over HTTP: median {server_s:.2f} s")
    print(f"tracking off (tracking.enabled=false): median {off_s:.2f} s")
    print(f"overhead: {100 * (server_s / off_s - 1):+.1f} % (target <= 5 %)")


if __name__ == "__main__":
    main()
