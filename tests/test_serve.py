"""``rnnexp serve``: every model reference finds the logged generator it names.

The models are real (conftest's ``model_run``: a run with the ``trained`` fixture's
checkpoint logged as a pyfunc, registered through the champion rule). ``--dry-run``
prints the ``mlflow models serve`` command, whose ``-m`` must be the one model the
reference names; the round trip over HTTP is the slow ``test_serving.py``. The bad
references are cases of the bad-input table (``test_bad_input_serve.py``).
"""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
import socket
import subprocess
import sys

from helpers import ROOT

from rnnexp.cli import main

NAME = "serve-models"


def serve(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["serve", *argv])
    return code, out.getvalue(), err.getvalue()


def served_uri(*argv: str) -> str:
    """The ``-m`` of the command ``rnnexp serve --dry-run`` prints."""
    code, out, err = serve("--dry-run", *argv)
    assert code == 0, err
    cmd = shlex.split(out.strip())
    assert cmd[1:5] == ["-m", "mlflow", "models", "serve"]
    assert cmd[cmd.index("--env-manager") + 1] == "local"
    return cmd[cmd.index("-m", 2) + 1]


def test_every_reference_form_names_its_model(store, model_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    best, worse = model_run("a" * 64), model_run("a" * 64)
    best.register_champion(NAME, {"test/nll_nats": 70.0}, {})
    worse.register_champion(NAME, {"test/nll_nats": 80.0}, {})
    ids = [store.get_run(r.run_id).data.tags["rnnexp.model_id"] for r in (best, worse)]
    assert ids[0] != ids[1]

    # the default is the champion of tracking.registered_model
    assert served_uri("--set", f"tracking.registered_model={NAME}") == f"models:/{ids[0]}"
    assert served_uri(f"models:/{NAME}@champion") == f"models:/{ids[0]}"
    assert served_uri(f"models:/{NAME}@challenger") == f"models:/{ids[1]}"
    assert served_uri(f"models:/{NAME}/2") == f"models:/{ids[1]}"
    assert served_uri(f"models:/{ids[1]}") == f"models:/{ids[1]}"
    assert served_uri(f"runs:/{worse.run_id}/generator") == f"models:/{ids[1]}"
    assert served_uri(best.run_id) == f"models:/{ids[0]}"


def test_options_reach_the_scoring_server(store, model_run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    run = model_run("c" * 64)
    code, out, err = serve("--dry-run", run.run_id, "--host", "0.0.0.0", "--port", "6123")
    assert code == 0, err
    cmd = shlex.split(out.strip())
    assert cmd[0] == sys.executable
    assert cmd[cmd.index("-h") + 1 :] == ["0.0.0.0", "-p", "6123", "-t", "60"]


def test_a_busy_port_is_refused_before_the_server_starts(store, model_run, tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    run = model_run("d" * 64)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "rnnexp.cli", "serve", run.run_id, "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"--port {port}: the address is in use" in done.stderr
    assert "Traceback" not in done.stderr
