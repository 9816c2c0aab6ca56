"""The ``rnnexp`` command: dispatch only.

It parses the command line, loads and validates params (before any work or MLflow
run starts) and calls the ``main(args, params)`` of a DVC stage module
(:mod:`rnnexp.stages`) or of a command (:mod:`rnnexp.commands`). Errors the user
can fix print one clear message and exit with status 2; Ctrl-C exits with 130.

DVC runs each stage's module directly (``python -m rnnexp.stages.train``), which
comes back here for the same parsing and error handling; so a change to this file
reruns no stage.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys

from rnnexp import console
from rnnexp.config import load_params
from rnnexp.errors import RnnexpError

STAGES = ("fetch", "prepare", "tune", "classifier", "train", "evaluate")
COMMANDS = ("sample", "complete", "compare", "doctor", "server", "dashboard", "serve", "replay")


def _module(command: str) -> str:
    """The module whose ``main(args, params)`` runs ``command``."""
    return f"rnnexp.{'stages' if command in STAGES else 'commands'}.{command}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnexp", description="PixelRNN experiments: DVC stages tracked in MLflow."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verbose(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--verbose",
            action="store_true",
            help=f"debug lines and the libraries' usual output ({console.ENV}=debug)",
        )

    def stage(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        verbose(p)
        p.add_argument("--params", default="params.yaml", help="params file (params.yaml)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a param for this run (repeatable)",
        )
        return p

    p = stage("fetch", "write data/raw/ from data.source")
    p.add_argument("--out", default="data/raw")
    p.add_argument("--downloads", default="data/downloads", help="download cache (idx URLs)")
    p = stage("prepare", "quantize and split data/raw/ into data/prepared/")
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--out", default="data/prepared")
    p = stage("tune", "search hyperparameters (Optuna); best params to reports/")
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="reports")
    p.add_argument("--workers", type=int, default=None, help="worker processes (tune.workers)")
    p.add_argument(
        "--trial-out", default="models/tuned", help="the best trial's checkpoints (for train)"
    )
    p = stage(
        "classifier", "train the scoring classifier of the prepared data (sample scores); models/"
    )
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="models/classifier.pt")
    p = stage("train", "train the generator; checkpoints under models/")
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument("--out", default="models")
    p.add_argument("--tuned", default="reports/best_params.yaml", help="tune stage output")
    p.add_argument(
        "--trial", default="models/tuned", help="the best trial's checkpoints, to continue"
    )
    p = stage("evaluate", "score the best checkpoint; reports/")
    p.add_argument("--checkpoint", default="models/best.ckpt")
    p.add_argument("--prepared", default="data/prepared")
    p.add_argument(
        "--classifier",
        default="models/classifier.pt",
        help="scoring classifier (classifier stage); without it sample scores are skipped",
    )
    p.add_argument("--out", default="reports")
    p = stage("sample", "write a PNG grid of samples from a checkpoint")
    p.add_argument("--checkpoint", default="models/best.ckpt")
    p.add_argument("--n", type=int, default=64, help="number of images (1..10000)")
    p.add_argument("--seed", type=int, default=0, help="0..2^32-1")
    p.add_argument("--temperature", type=float, default=1.0, help="above 0, at most 100")
    p.add_argument("--class", dest="class_", type=int, help="class of every image (default: all)")
    p.add_argument("--out", default="samples.png")
    p = stage(
        "complete",
        "translate or complete images with a checkpoint; writes source | output | target rows",
    )
    p.add_argument("--checkpoint", default="models/best.ckpt")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument(
        "--as-source",
        action="store_true",
        help="the inputs are sources (noisy / low-resolution images), not targets",
    )
    p.add_argument("--seed", type=int, default=0, help="0..2^32-1")
    p.add_argument("--temperature", type=float, default=1.0, help="above 0, at most 100")
    p.add_argument("--out", default="completions.png")
    p = stage("compare", "compare train runs side by side: key params and metrics")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="default: the experiment's runs")
    p.add_argument("--experiment", metavar="NAME", help="default: tracking.experiment")
    p.add_argument("--dvc-exp", metavar="NAME", help="only runs of this DVC experiment")
    p.add_argument("--format", choices=["text", "csv", "markdown"], default="text")
    stage(
        "doctor", "check the tracking store, Optuna storage, DVC remote, data, devices and versions"
    )
    p = sub.add_parser(
        "server",
        help="run the team's MLflow tracking server (mlflow server)",
        description="Run `mlflow server` with a SQLite or PostgreSQL backend and served "
        "artifacts; bound to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--root", help="server files (SQLite store, artifacts, auth); default "
                   "<repo>/mlflow-server")  # fmt: skip
    p.add_argument("--backend-store-uri", help="default sqlite:///<root>/mlflow-server.db; "
                   "or postgresql+psycopg://user:pw@host/db")  # fmt: skip
    p.add_argument("--artifacts-destination", help="default <root>/artifacts; or s3://...")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--allowed-hosts", help="Host headers MLflow accepts (see mlflow server)")
    p.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app; first start needs MLFLOW_AUTH_ADMIN_PASSWORD",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    verbose(p)
    p = stage("dashboard", "run optuna-dashboard on the tune stage's study storage (tune.storage)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    p = stage("serve", "serve a logged generator over HTTP (mlflow models serve)")
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, "
        "runs:/<run id> or a run id; default models:/<registered model>@champion",
    )
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve the network")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--timeout", type=int, default=60, help="seconds a request may take")
    p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    help_text = "send mlflow-undelivered/*.json to the MLflow store once it is back"
    p = sub.add_parser("replay", help=help_text, description=help_text + ", exactly once")
    p.add_argument("files", nargs="*", metavar="FILE", help="default: every undelivered file")
    p.add_argument("--tracking-uri", help="send to this store, not the one each file names")
    verbose(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rnnexp`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    console.setup(args.verbose)
    try:
        # Every stage validates params.yaml first; `server` reads none. A stage commits
        # its outputs only while the file holds the bytes it read (DVC records them).
        watch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if args.command in STAGES:
            from rnnexp.util.watch import unchanged_while

            watch = unchanged_while(args.params, f"the {args.command} stage")
        params = load_params(args.params, args.overrides) if hasattr(args, "params") else None
        with watch:
            status = importlib.import_module(_module(args.command)).main(args, params)
    except RnnexpError as exc:
        print(f"rnnexp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user must fix: a file where a folder goes, no access
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rnnexp {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rnnexp {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


def entry(argv: list[str] | None = None) -> None:
    """The console script (and ``python -m rnnexp.stages.<stage>``): :func:`main`, then
    a fast exit.

    Tearing down the interpreter after torch, Lightning and MLflow were imported
    takes seconds (measured 1-5 s on 2 cores), all after the stage's outputs are
    written and its MLflow run has ended: a kill then would look like a failed
    stage that had in fact finished. So, once main returns, the exit handlers run
    (logging and MLflow flush there) and the process ends without module teardown.
    """
    command = (sys.argv[1:] if argv is None else argv)[:1]
    if command in (["train"], ["tune"]):  # before the stage module imports torch
        from rnnexp.util.allocator import rerun_under_tcmalloc

        rerun_under_tcmalloc()
    status = main(argv)
    atexit._run_exitfuncs()  # what a normal exit runs, minus the module teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
