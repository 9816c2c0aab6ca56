"""The bad-input harness: the good workspace, the Case table's type, and the check.

The promise (issue 7): a bad params file, data file or checkpoint stops the stage with

- exit status 2 and one message on stderr (``rnnexp <stage>: error: ...``, no
  traceback) that names what is wrong and where (key and file, file path,
  checkpoint path);
- no partial output: the workspace is byte-identical afterwards (previous outputs
  kept as they were, no new file, no temporary file left behind);
- no MLflow run left RUNNING: for most cases no run is opened at all (validation
  comes first); where the stage's work itself finds the problem (fetch reading
  the source), the one run it opened ended FAILED.

Each case is a declarative :class:`Case` (a setup that writes the bad input into a
copy of the good workspace built by :func:`build_world`, the stage and its
arguments, the words the message must hold). The cases live in the stage test
modules (``CASES`` of each module in :data:`CASE_MODULES`; setups shared between
them in ``bad_input_setups.py``). :func:`run_case` runs one and lists the broken
promises; ``benchmarks/bad_inputs.py`` imports :func:`all_cases` and :func:`run_case`
and prints the count. The stages run in-process (``rnnexp.cli.main``) for speed.
Not collected by pytest (no ``test_`` prefix); its self-tests are in
``test_bad_input_harness.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from helpers import TINY, digits_subsample, tiny
from mlflow import MlflowClient
from mlflow.entities import ViewType

from rnnexp.cli import main
from rnnexp.config import load_params, params_to_yaml
from rnnexp.data.prepare import prepare, write_prepared
from rnnexp.data.sources import write_raw
from rnnexp.models.generator import GeneratorConfig, PixelRNN
from rnnexp.training.system import PixelRNNSystem

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "bad-input"
# The real params.yaml with the tiny model, shrunk further to evaluate in a blink.
GOOD_SET = tiny(
    {
        "train.max_epochs": 1,
        "train.batch_size": 32,
        "train.use_tuned": False,
        "train.progress_bar": "never",
        "train.sample_every": 0,
        "tune.n_trials": 1,
        "tune.epochs": 1,
        "evaluate.batch_size": 64,
        "evaluate.score_samples": 0,
        "tracking.experiment": EXPERIMENT,
    }
)
PREVIOUS = b"previous output, must survive a failed stage\n"
# The stage test modules holding CASES, and the stages their cases run (None: any).
CASE_MODULES: dict[str, set[str] | None] = {
    "test_bad_input_params": None,
    "test_bad_input_data": {"fetch", "prepare"},
    "test_bad_input_train": {"tune", "train", "classifier"},
    "test_bad_input_evaluate": {"evaluate", "sample", "complete"},
    "test_bad_input_store": None,
    "test_bad_input_serve": {"serve"},
}
P = "params.yaml"  # short names for the case tables' words
CKPT = "models/best.ckpt"


# --------------------------------------------------------------------------- the good workspace


def write_checkpoint(
    path: Path,
    *,
    arch: str = "row_lstm",
    levels: int = 17,
    shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 0,
    source_channels: int = 0,
    task: str = "unconditional",
) -> None:
    """A checkpoint as the train stage writes it (Lightning's keys plus ``rnnexp``).

    The generator is the tests' tiny model (helpers.TINY's ``model.*`` keys).
    """
    sizes = {key[len("model.") :]: v for key, v in TINY.items() if key.startswith("model.")}
    config = GeneratorConfig(
        arch=arch,
        channels=shape[0],
        levels=levels,
        kernel=3,
        num_classes=num_classes,
        source_channels=source_channels,
        **sizes,
    )
    torch.manual_seed(0)
    data_info = {"content_hash": "0" * 64, "levels": levels, "shape": list(shape), "task": task}
    data_info.update(occlusion="lower_half", noise_level=0.2)
    system = PixelRNNSystem(PixelRNN(config), shape, 0.01, data_info=data_info)
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "state_dict": system.state_dict(),
        "hyper_parameters": dict(system.hparams),
        "rnnexp": {"history": [], "run_id": None, "data": data_info},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def build_world(path: Path) -> Path:
    """A workspace where every stage would succeed: params, raw, prepared, a checkpoint.

    Previous outputs (reports, sample grids) are in place too, so that a failed stage
    is seen to leave them byte-identical.
    """
    path.mkdir(parents=True)
    params = load_params(REPO / "params.yaml", GOOD_SET)
    (path / "params.yaml").write_text(params_to_yaml(params))
    raw = digits_subsample()
    write_raw(raw, path / "data" / "raw")
    write_prepared(prepare(raw, 17, 0, 0.2, 0.2), path / "data" / "prepared")
    write_checkpoint(path / "models" / "best.ckpt")
    for name in ("reports/metrics.json", "samples.png", "completions.png"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(PREVIOUS)
    return path


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        name: unique id (pytest's and the benchmark's).
        stage: the ``rnnexp`` subcommand run.
        setup: writes the bad input into the workspace; returns extra CLI arguments.
        words: what the error message must mention (the thing and where it is).
        run: "none": no MLflow run may be created; "failed": exactly one, ended FAILED.
        marker: a file the bad input would create if its code ever ran.
        absent: what the message must not say (noise, misleading advice).
        env: environment variables set (None: unset) while the stage runs.
    """

    name: str
    stage: str
    setup: Callable[[Path], list[str]]
    words: tuple[str, ...]
    run: str = "none"
    marker: str | None = None
    absent: tuple[str, ...] = ()
    env: tuple[tuple[str, str | None], ...] = ()


def all_cases() -> list[Case]:
    """Every case of the stage modules of :data:`CASE_MODULES`, in that order.

    Imports them by name, so ``tests/`` must be on ``sys.path`` (pytest puts it there).
    """
    return [c for name in CASE_MODULES for c in importlib.import_module(name).CASES]


# --------------------------------------------------------------------------- the check


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 (folders: "dir")."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def environment(changes: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables; restore them afterwards."""

    def apply(values: dict[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in changes}
    apply(changes)
    try:
        yield
    finally:
        apply(saved)


@dataclass
class Outcome:
    """What a case did and which promises it broke (``problems`` empty: all kept)."""

    case: Case
    status: int | None
    stderr: str
    problems: list[str]


def in_process(argv: list[str]) -> tuple[int | None, str, str | None]:
    """Run ``rnnexp argv`` through ``rnnexp.cli.main``: (status, stderr, exception raised)."""
    out, err = io.StringIO(), io.StringIO()
    status, raised = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except BaseException as exc:  # noqa: BLE001 - a raw exception is a broken promise
            raised = f"{type(exc).__name__}: {exc}"
    return status, err.getvalue(), raised


def in_subprocess(argv: list[str]) -> tuple[int | None, str, str | None]:
    """Run ``rnnexp argv`` as its own Python process (the console script's path)."""
    code = "import sys; from rnnexp.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stderr, None


def run_case(
    case: Case,
    world: Path,
    scratch: Path,
    client: MlflowClient,
    runner: Callable[[list[str]], tuple[int | None, str, str | None]] = in_process,
) -> Outcome:
    """Copy ``world`` to ``scratch/<name>``, write the bad input, run the stage, check it.

    ``MLFLOW_TRACKING_URI`` must point at ``client``'s store.
    """
    ws = scratch / case.name
    shutil.copytree(world, ws)
    with working_dir(ws):
        extra = case.setup(ws)
        before_files = snapshot(ws)
        before_runs = {r.info.run_id for r in all_runs(client)}
        with environment(dict(case.env)):
            status, stderr, raised = runner([case.stage, *extra])
    problems = []
    if raised is not None:
        problems.append(f"raised instead of exiting: {raised}")
    elif status != 2:
        problems.append(f"exit status {status}, expected 2")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    prefix = f"rnnexp {case.stage}: error: "
    message = stderr[stderr.find(prefix) :] if prefix in stderr else ""
    if not message:
        problems.append(f"no '{prefix}...' line on stderr")
    missing = [w for w in case.words if w not in message]
    if missing:
        problems.append(f"message lacks {missing}")
    noise = [w for w in case.absent if w in message]
    if noise:
        problems.append(f"message says {noise}")
    after_files = snapshot(ws)
    changed = sorted(
        k
        for k in before_files.keys() | after_files.keys()
        if before_files.get(k) != after_files.get(k)
    )
    if changed:
        problems.append(f"workspace changed: {changed}")
    if case.marker and (ws / case.marker).exists():
        problems.append(f"the payload ran: {case.marker} exists")
    new = [r for r in all_runs(client) if r.info.run_id not in before_runs]
    statuses = sorted(r.info.status for r in new)
    if "RUNNING" in statuses:
        problems.append(f"run left RUNNING: {statuses}")
    expected = [] if case.run == "none" else ["FAILED"]
    if statuses != expected:
        problems.append(f"new MLflow runs {statuses}, expected {expected}")
    return Outcome(case, status, stderr, problems)
