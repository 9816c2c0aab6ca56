"""Helpers shared by the tests: tiny params, project copies, free ports, server processes.

Plain functions, imported as ``from helpers import ...`` (pytest puts ``tests/`` on
``sys.path``); fixtures stay in the test modules and ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The one definition of the tests' tiny model and training sizes: the real params.yaml
# with these keys changed trains a 1-layer Row LSTM (h=4) for an epoch on the 200-image
# digits subsample in well under a second. Each use adds its own changes through
# tiny() (``section.key=value`` strings for load_params and --set) or tiny_mapping()
# (typed values for a project copy's params.yaml).
TINY: dict[str, Any] = {
    "model.hidden": 4,
    "model.layers": 1,
    "model.head_hidden": 8,
    "model.input_kernel": 3,
    "train.max_epochs": 2,
    "train.sample_every": 1,
    "train.sample_grid": 4,
    "evaluate.n_samples": 4,
}
# What conftest's tiny_params and trained fixtures add: 3 quick epochs (lr 1e-2), no
# progress bar. Subprocess tests that must match the ``trained`` fixture use tiny(TRAINED).
TRAINED: dict[str, Any] = {
    "train.max_epochs": 3,
    "train.batch_size": 32,
    "train.lr": 1.0e-2,
    "train.sample_every": 2,
    "train.progress_bar": "never",
    "evaluate.batch_size": 16,
}


def tiny_mapping(*changes: Mapping[str, Any]) -> dict[str, Any]:
    """TINY with ``changes`` applied in order: ``section.key`` -> value, as make_project takes."""
    merged = dict(TINY)
    for change in changes:
        merged.update(change)
    return merged


def _yaml_text(value: Any) -> str:
    # JSON is YAML: true, null and numbers read back as the same value; strings stay bare.
    return value if isinstance(value, str) else json.dumps(value)


def tiny(*changes: Mapping[str, Any] | str) -> list[str]:
    """TINY with ``changes`` applied, as ``section.key=value`` strings (load_params, --set).

    Each change is a mapping (``{"train.max_epochs": 1}``) or one ``section.key=value``
    string; a later change of a key replaces the earlier value (one string per key).
    """
    texts = {key: _yaml_text(value) for key, value in TINY.items()}
    for change in changes:
        if isinstance(change, str):
            key, sep, text = change.partition("=")
            if not sep:
                raise ValueError(f"{change!r}: expected section.key=value")
            texts[key] = text
        else:
            texts.update((key, _yaml_text(value)) for key, value in change.items())
    return [f"{key}={text}" for key, text in texts.items()]


def set_args(overrides: Iterable[str]) -> list[str]:
    """``["--set", o1, "--set", o2, ...]``: overrides as rnnexp command-line arguments."""
    return [arg for text in overrides for arg in ("--set", text)]


# Params of a project copy whose whole pipeline runs in seconds (no tuning).
TINY_PIPELINE = tiny_mapping({"tune.n_trials": 0})
SERVER_START_S = 120  # mlflow server on a busy 2-core machine: ~10 s, 60+ s seen under load

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def run(cmd, cwd, env=None, timeout=900) -> str:
    """Run ``cmd``; assert it succeeded; its stdout + stderr."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def project_env(**extra: str) -> dict[str, str]:
    """os.environ with the venv's tools first on PATH, git identity, no store overrides."""
    env = {**os.environ, **GIT_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "RANK", "LOCAL_RANK", "NODE_RANK"):
        env.pop(key, None)
    env.update(extra)
    return env


def make_project(dest: Path, overrides: Mapping) -> Path:
    """A copy of this project's files in ``dest``, with params shrunk for speed.

    Tracked and untracked-but-not-ignored files, without tests/ and benchmarks/.
    """
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not name.startswith(("tests/", "benchmarks/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def make_git_project(dest: Path, overrides: Mapping, env: Mapping[str, str]) -> Path:
    """:func:`make_project`, then ``git init`` and one commit of everything."""
    make_project(dest, overrides)
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "init"], dest, env)
    return dest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    cmd: list[str], log: Path, url: str, env=None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start an HTTP server process in its own process group; wait for ``url``/health.

    Raises AssertionError with the log's tail if it exits or does not answer within
    SERVER_START_S. Stop it with :func:`stop_server`.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd
        )
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "exited" if proc.poll() is not None else f"no answer in {SERVER_START_S} s"
            stop_server(proc)
            raise AssertionError(f"server {why}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and job runner too), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    else:  # the leader is gone; its children may not be
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


N_IMAGES = 200  # the tests' digits subsample: 120 train, 40 val, 40 test


def digits_subsample():
    """The first ``N_IMAGES`` of scikit-learn's digits, as the fetch stage would store them."""
    from rnnexp.data.sources import RawDataset, load_digits

    digits = load_digits()
    return RawDataset(
        digits.images[:N_IMAGES],
        digits.labels[:N_IMAGES],
        digits.max_value,
        digits.class_names,
        digits.source,
        "digits[:200]",
    )
