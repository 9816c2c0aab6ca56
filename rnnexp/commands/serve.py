"""``rnnexp serve``: a logged generator over HTTP, through ``mlflow models serve``.

The model is checked first (:func:`rnnexp.tracking.find_served_model`): a run that
logged no model, a registry name or alias that does not exist, or a model rnnexp did
not log is an error naming the reference, before MLflow's scoring server starts
(which would fail only after loading, with its own traceback). So is an address that
cannot be bound. Then ``mlflow models serve`` replaces this process, in this
environment (``--env-manager local``: rnnexp and torch are here), bound to 127.0.0.1
unless ``--host`` says otherwise; ``MLFLOW_TRACKING_URI`` is the store the model was
found in. Requests and answers are the pyfunc's (:mod:`rnnexp.tracking._pyfunc`):
POST ``/invocations`` with ``{"dataframe_records": [{"n": 4, "seed": 0}]}``.

Example:
    >>> serve_command("models:/m-1a2b", "127.0.0.1", 5001, 60)[1:]
    ['-m', 'mlflow', 'models', 'serve', '-m', 'models:/m-1a2b', '--env-manager', 'local', \
'-h', '127.0.0.1', '-p', '5001', '-t', '60']
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from rnnexp.config import Params
from rnnexp.errors import RnnexpError
from rnnexp.util.servers import become_server, check_address, check_host_port

MAX_TIMEOUT_S = 24 * 3600


def serve_command(model_uri: str, host: str, port: int, timeout_s: int) -> list[str]:
    """The argv of ``mlflow models serve`` for ``model_uri`` in this interpreter."""
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    return cmd + ["--env-manager", "local", "-h", host, "-p", str(port), "-t", str(timeout_s)]


def main(args: Any, params: Params) -> int:
    """Serve (or, ``--dry-run``, print the command serving) the model ``args.model``."""
    from rnnexp.tracking import find_served_model

    check_host_port(args.host, args.port)
    if not 1 <= args.timeout <= MAX_TIMEOUT_S:
        raise RnnexpError(f"--timeout must lie in 1..{MAX_TIMEOUT_S} seconds, got {args.timeout}")
    model = find_served_model(params, args.model)
    cmd = serve_command(model.uri, args.host, args.port, args.timeout)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    check_address(args.host, args.port)
    where = f"http://{args.host}:{args.port}/invocations"
    banner = f"serve: {model.reference} is {model.description}; POST to {where}"
    become_server(cmd, banner, {**os.environ, "MLFLOW_TRACKING_URI": model.store})
    return 0  # not reached
